"""Every bad input a user can give gets one clear message and exit code 2.

The table in docs/bad_inputs.md is generated from these cases; the last test fails
when it is stale (regenerate with SEQTRAIN_WRITE_DOCS=1 pytest tests/test_bad_inputs.py).
"""
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqtrain import cli
from seqtrain.data.ts import SeriesDataset, write_ts

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
BM = ["--config", "configs/basic_motions.py:tiny"]
FILES = ["--config", "configs/files.py"]


def _files(tmp):
  """A small valid dataset and broken variants of it."""
  rng = np.random.default_rng(0)
  good = SeriesDataset([rng.normal(size=(20, 2)).astype(np.float32) for _ in range(12)],
                       np.arange(12) % 3, ("a", "b", "c"), "Mine")
  write_ts(tmp / "good.ts", good)
  write_ts(tmp / "wide.ts", SeriesDataset([np.zeros((20, 3), np.float32)] * 3, [0, 1, 2],
                                          ("a", "b", "c"), "Wide"))
  write_ts(tmp / "newclass.ts", SeriesDataset([np.zeros((20, 2), np.float32)] * 2, [0, 1],
                                              ("a", "z"), "New"))
  text = (tmp / "good.ts").read_text().splitlines()
  data_at = text.index("@data")
  bad = text.copy()
  bad[data_at + 3] = bad[data_at + 3].replace(",", ",abc,", 1)
  (tmp / "bad_value.ts").write_text("\n".join(bad) + "\n")
  (tmp / "empty.ts").write_text("\n".join(text[:data_at + 1]) + "\n")
  nan = text.copy()
  nan[data_at + 2] = ":".join(",".join(["?"] * 20) for _ in range(2)) + ":a"
  (tmp / "all_missing.ts").write_text("\n".join(nan) + "\n")
  np.savez(tmp / "noy.npz", X=np.zeros((4, 5, 2)))
  np.savez(tmp / "onecls.npz", X=np.zeros((4, 5, 2)), y=np.zeros(4))
  (tmp / "notadir").write_text("x")
  (tmp / "nowork").mkdir()
  (tmp / "config_noget.py").write_text("X = 1\n")
  (tmp / "config_crash.py").write_text("def get_config(arg=None):\n  return 42\n")
  (tmp / "config_syntax.py").write_text("def get_config(arg=None)\n  return 42\n")
  (tmp / "config_import.py").write_text("import no_such_module_here\n")
  with zipfile.ZipFile(tmp / "evil.zip", "w") as z:
    z.writestr("../Evil_TRAIN.ts", "x")
    z.writestr("Evil_TEST.ts", "x")
  return tmp


# (what, argv with {tmp}, expected fragment of the message)
CASES = [
    ("config: unknown field", ["train", *BM, "--workdir", "{tmp}/w", "--config.train.stpes=5"],
     "unknown config field 'train.stpes'; did you mean train.steps"),
    ("config: wrong type", ["train", *BM, "--workdir", "{tmp}/w", "--config.train.steps=5.5"],
     "--config.train.steps=5.5: expected an int, got a float"),
    ("config: not a boolean", ["train", *BM, "--workdir", "{tmp}/w", "--config.data.normalize=maybe"],
     "expected true or false"),
    ("config: unknown solver", ["train", *BM, "--workdir", "{tmp}/w",
                                "--config.model.solver.method=newton"],
     "model.solver.method='newton': unknown solver method 'newton'; valid methods: auto, "
     "sequential, deer"),
    ("config: ELK across devices", ["train", *BM, "--workdir", "{tmp}/w",
                                    "--config.mesh.axes=data,seq", "--config.mesh.shape=1,1",
                                    "--config.model.solver.method=elk"],
     "method 'elk' is not sequence-parallel (seq_axis='seq')"),
    ("config: unknown mesh axis", ["train", *BM, "--workdir", "{tmp}/w",
                                   "--config.mesh.axes=data,model", "--config.mesh.shape=1,1"],
     "mesh.axes=('data', 'model'): expected ('data',) or ('data', 'seq')"),
    ("config: unknown cell", ["train", *BM, "--workdir", "{tmp}/w", "--config.model.cell=tcn"],
     "model.cell='tcn'"),
    ("config: batch size 0", ["train", *BM, "--workdir", "{tmp}/w", "--config.train.batch_size=0"],
     "train.batch_size=0: must be >= 1"),
    ("config: negative learning rate", ["train", *BM, "--workdir", "{tmp}/w",
                                        "--config.train.learning_rate=-1.0"],
     "train.learning_rate=-1.0: must be > 0"),
    ("config: validation fraction out of range", ["train", *BM, "--workdir", "{tmp}/w",
                                                  "--config.data.validation_fraction=1.5"],
     "data.validation_fraction=1.5: must be in [0, 1)"),
    ("config: train_min_length on file data", ["train", *BM, "--workdir", "{tmp}/w",
                                              "--config.data.train_min_length=50"],
     "data.train_min_length=50: applies to synthetic tasks only"),
    ("synthetic: train_min_length too short for the task",
     ["train", "--config", "configs/synthetic_long.py:order,256", "--workdir", "{tmp}/w",
      "--config.data.train_min_length=40"], "min_length=40"),
    ("config: dropout out of range", ["train", *BM, "--workdir", "{tmp}/w",
                                      "--config.model.dropout=1.0"], "model.dropout=1.0"),
    ("config: mesh larger than the machine", ["train", *BM, "--workdir", "{tmp}/w",
                                              "--config.mesh.shape=(8,)"],
     "mesh.shape (8,) holds 8 devices, but 1 are available"),
    ("config: override without a value", ["train", *BM, "--workdir", "{tmp}/w",
                                          "--config.train.steps"], "expected --config.field=value"),
    ("config: file not found", ["train", "--config", "configs/nope.py", "--workdir", "{tmp}/w"],
     "config file 'configs/nope.py' not found"),
    ("config: unknown variant", ["train", "--config", "configs/basic_motions.py:huge", "--workdir",
                                 "{tmp}/w"], "unknown variant 'huge'"),
    ("config: file without get_config", ["train", "--config", "{tmp}/config_noget.py", "--workdir",
                                         "{tmp}/w"], "defines no get_config(arg) function"),
    ("config: get_config returns no ConfigDict", ["train", "--config", "{tmp}/config_crash.py",
                                                  "--workdir", "{tmp}/w"],
     "get_config returned int, not a ConfigDict"),
    ("data: source=files without a file", ["train", *FILES, "--workdir", "{tmp}/w"],
     "source=files needs a .ts or .npz training file"),
    ("data: unknown archive dataset", ["train", *BM, "--workdir", "{tmp}/w",
                                       "--config.data.name=BasicMotion"],
     "Did you mean BasicMotions"),
    ("data: training file missing", ["train", *FILES, "--workdir", "{tmp}/w",
                                     "--config.data.train_file={tmp}/missing.ts"],
     "missing.ts: file not found"),
    ("data: non-numeric value in .ts", ["train", *FILES, "--workdir", "{tmp}/w",
                                        "--config.data.train_file={tmp}/bad_value.ts"],
     "bad_value.ts, line 12: channel 0: 'abc' is not a number"),
    ("data: .ts without examples", ["train", *FILES, "--workdir", "{tmp}/w",
                                    "--config.data.train_file={tmp}/empty.ts"],
     "empty.ts: no examples after @data"),
    ("data: example with only missing values", ["train", *FILES, "--workdir", "{tmp}/w",
                                                "--config.data.train_file={tmp}/all_missing.ts"],
     "every value of the example is missing"),
    ("data: .npz without labels", ["train", *FILES, "--workdir", "{tmp}/w",
                                   "--config.data.train_file={tmp}/noy.npz"],
     "noy.npz: missing array 'y'"),
    ("data: a single class", ["train", *FILES, "--workdir", "{tmp}/w",
                              "--config.data.train_file={tmp}/onecls.npz"],
     "holds a single class"),
    ("data: test labels not in train", ["train", *FILES, "--workdir", "{tmp}/w",
                                        "--config.data.train_file={tmp}/good.ts",
                                        "--config.data.test_file={tmp}/newclass.ts"],
     "holds classes ['z'] that the training data does not have"),
    ("data: test channels differ from train", ["train", *FILES, "--workdir", "{tmp}/w",
                                               "--config.data.train_file={tmp}/good.ts",
                                               "--config.data.test_file={tmp}/wide.ts"],
     "has 3 channels, the training data 2"),
    ("data: unknown file type", ["train", *FILES, "--workdir", "{tmp}/w",
                                 "--config.data.train_file={tmp}/notadir"],
     "unknown file type ''"),
    ("workdir: is a file", ["train", *BM, "--workdir", "{tmp}/notadir"],
     "exists and is not a directory"),
    ("eval: not a workdir", ["eval", "--workdir", "{tmp}/nowork"],
     "config.json not found: is"),
    ("data: download of an unknown dataset", ["data", "download", "EigenWorm", "--cache-dir",
                                              "{tmp}/cache"], "EigenWorms"),
    ("data: archive escaping the target", ["data", "download", "Evil", "--cache-dir", "{tmp}/cache",
                                           "--url", "file://{tmp}/evil.zip", "--quiet"],
     "refusing unsafe archive member"),
    ("data: inspect a malformed file", ["data", "inspect", "{tmp}/bad_value.ts"],
     "line 12"),
    ("config: unknown train.select", ["train", *BM, "--workdir", "{tmp}/w",
                                      "--config.train.select=first"],
     "train.select='first': expected last or best"),
    ("bench datasets: no such training file", ["bench", "datasets", "BasicMotions",
                                               "{tmp}/Nope_TRAIN.ts", "--workdir", "{tmp}/w"],
     "Nope_TRAIN.ts: no such file"),
    ("config: empty variant", ["train", "--config", "configs/basic_motions.py:", "--workdir",
                               "{tmp}/w"], "empty variant after ':'"),
    ("config: syntax error", ["train", "--config", "{tmp}/config_syntax.py", "--workdir",
                              "{tmp}/w"], "config_syntax.py, line 1: syntax error"),
    ("config: import error", ["train", "--config", "{tmp}/config_import.py", "--workdir",
                              "{tmp}/w"], "ModuleNotFoundError: No module named"),
    ("config: select=best without a validation split",
     ["train", *BM, "--workdir", "{tmp}/w", "--config.data.validation_fraction=0",
      "--config.train.select=best"], "test data never picks a checkpoint"),
    ("cpu devices: zero", ["train", *BM, "--workdir", "{tmp}/w", "--cpu-devices", "0"],
     "SEQTRAIN_CPU_DEVICES=0: must be >= 1"),
    ("multi-process: unreachable coordinator",
     ["train", *BM, "--workdir", "{tmp}/w", "--coordinator", "127.0.0.1:9", "--num-processes",
      "2", "--process-id", "1", "--distributed-timeout", "1"],
     "coordinator 127.0.0.1:9 not reachable after 1 s"),
    ("multi-process: incomplete flags", ["train", *BM, "--workdir", "{tmp}/w", "--process-id", "1"],
     "missing: coordinator, num-processes"),
]


@pytest.fixture(scope="module")
def tmp_files(tmp_path_factory):
  return _files(tmp_path_factory.mktemp("bad"))


def _run(argv, tmp, capsys):
  argv = [a.replace("{tmp}", str(tmp)) for a in argv]
  code = cli.main(argv)
  captured = capsys.readouterr()
  return code, captured.err.strip()


@pytest.mark.parametrize("what,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, argv, fragment, tmp_files, capsys):
  code, err = _run(argv, tmp_files, capsys)
  assert code == 2, err
  assert fragment in err, err
  lines = [l for l in err.splitlines() if "error" in l]
  assert len(lines) == 1 and "Traceback" not in err, err
  assert not (tmp_files / "w" / "checkpoints").exists()  # failed before writing anything
  if argv[0] == "train" and "{tmp}/w" in argv:   # and left no empty workdir behind
    assert not (tmp_files / "w").exists(), sorted((tmp_files / "w").rglob("*"))


def test_bad_inputs_table_is_current(tmp_files, capsys):
  assert len(CASES) >= 25
  rows = ["# Bad inputs and the messages they get", "",
          "Generated by `tests/test_bad_inputs.py` (each row is a test: exit code 2, one line on "
          "stderr, nothing written). `TMP` is the test's scratch folder.", "",
          "| input | command | message |", "|---|---|---|"]
  for what, argv, _ in CASES:
    _, err = _run(argv, tmp_files, capsys)
    line = [l for l in err.splitlines() if "error" in l][0]
    line = line.replace(str(tmp_files), "TMP").replace(str(ROOT) + "/", "")
    line = re.sub(r"/tmp/\S*?/", "TMP/", line)
    cmd = "seqtrain " + " ".join(argv).replace("{tmp}", "TMP")
    rows.append(f"| {what} | `{cmd}` | {line.replace('|', '/')} |")
  text = "\n".join(rows) + "\n"
  if os.environ.get("SEQTRAIN_WRITE_DOCS"):
    DOC.write_text(text)
  assert DOC.exists() and DOC.read_text() == text, (
      "docs/bad_inputs.md is stale: run SEQTRAIN_WRITE_DOCS=1 pytest tests/test_bad_inputs.py")
