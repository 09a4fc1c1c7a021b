"""The training framework end to end on bundled data: train, resume, evaluate, plot."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from grids import FULL
from seqtrain import cli
from seqtrain.train import config as config_lib
from seqtrain.train import steps as steps_lib
from seqtrain.train.evaluate import evaluate_workdir
from seqtrain.train.trainer import ResumeError, train_and_evaluate
from seqtrain.train.writers import read_metrics

TINY = ["model.width=8", "model.depth=1", "model.mlp_ratio=1", "train.batch_size=8",
        "train.eval_batch_size=40", "train.log_every=1", "train.eval_every=10",
        "train.checkpoint_every=10", "train.warmup_steps=0", "train.learning_rate=0.01"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  """The README quick-start job: configs/basic_motions.py as shipped."""
  workdir = tmp_path_factory.mktemp("bm")
  config = config_lib.load_config("configs/basic_motions.py")
  result = train_and_evaluate(config, workdir)
  return workdir, result


def test_quickstart_reaches_target_accuracy(quickstart, capsys):
  workdir, result = quickstart
  assert result["test"]["accuracy"] >= 0.95
  assert result["test"]["count"] == 40  # every test example counted once
  for name in ("config.json", "data.json", "metrics.jsonl", "final_metrics.json"):
    assert (workdir / name).exists(), name
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  kinds = {r["kind"] for r in read_metrics(workdir)}
  assert {"train", "validation", "final_test"} <= kinds
  train = [r for r in read_metrics(workdir) if r["kind"] == "train"]
  # solver statistics per layer; method "auto" runs lax.scan on CPU (no iterations)
  assert all(r["block_0/rnn/iterations"] == 0 and r["block_0/rnn/converged"] == 1 for r in train)
  # one number per run: the last weights (train.select=last) are the run's model, and the
  # 1-NN baselines fitted on the same 40 training series (train + validation) sit beside it
  assert result["model"] == {"checkpoint": "latest", "step": 300}
  base = result["test"]["baselines"]
  assert (base["1nn_euclidean"], base["1nn_dtw"], base["train_size"]) == (0.6, 0.975, 40)
  summary = (workdir / "results.md").read_text()
  assert "latest checkpoint, step 300" in summary and "| 1-NN Euclidean | 0.6000 |" in summary
  (solver,) = [r for r in read_metrics(workdir) if r["kind"] == "solver"]
  assert (solver["method"], solver["resolved"]) == ("auto", "sequential")
  assert result["solver"]["resolved"] == "sequential"


def test_eval_writes_reports_and_refuses_other_shapes(quickstart, capsys):
  workdir, result = quickstart
  metrics = evaluate_workdir(workdir, split="test")  # default: the run's model, as reported
  report = json.loads((workdir / "eval" / "test-latest.json").read_text())
  assert report["accuracy"] == metrics["accuracy"] == result["test"]["accuracy"] >= 0.95
  assert report["baselines"]["1nn_euclidean"] == 0.6
  assert "| 1-NN DTW (window 10) | 0.9750 |" in (workdir / "eval" / "test-latest.md").read_text()
  assert "1-NN Euclidean 0.6000" in capsys.readouterr().out
  assert set(report["per_class"]) == {"Standing", "Running", "Walking", "Badminton"}
  assert np.sum(report["confusion_matrix"]) == 40
  assert (workdir / "eval" / "test-latest.png").stat().st_size > 1000
  # another file of the same shape
  from seqtrain.data.sources import BUNDLED_DIR
  other = evaluate_workdir(workdir, data=str(BUNDLED_DIR / "BasicMotions" / "BasicMotions_TEST.ts"))
  assert other["count"] == 40 and other["accuracy"] >= 0.95
  assert (workdir / "eval" / "BasicMotions_TEST-latest.json").exists()
  assert cli.main(["eval", "--workdir", str(workdir), "--data", "JapaneseVowels"]) == 2
  err = capsys.readouterr().err
  assert "12 channels; the model was trained on 6" in err
  capsys.readouterr()
  by_step = evaluate_workdir(workdir, checkpoint="300")   # a step names its own report
  assert by_step["accuracy"] == metrics["accuracy"] and by_step["step"] == 300
  assert (workdir / "eval" / "test-step300.json").exists()
  assert "evaluating the checkpoint of step 300" in capsys.readouterr().out
  assert cli.main(["eval", "--workdir", str(workdir), "--checkpoint", "7"]) == 2
  assert "no checkpoint of step 7" in capsys.readouterr().err


def test_plot(quickstart):
  workdir, _ = quickstart
  assert cli.main(["plot", "--workdir", str(workdir)]) == 0
  assert (workdir / "curves.png").stat().st_size > 10_000


def test_rerun_on_finished_workdir_resumes(quickstart, capsys):
  workdir, result = quickstart
  config = config_lib.load_config("configs/basic_motions.py")
  again = train_and_evaluate(config, workdir)
  assert "already trained" in capsys.readouterr().out
  assert again["test"]["accuracy"] == result["test"]["accuracy"]
  other = config_lib.load_config("configs/basic_motions.py", ["model.width=16"])
  with pytest.raises(ResumeError, match=r"model.width: 32 -> 16"):
    train_and_evaluate(other, workdir)


def _params(result):
  return jax.tree.leaves(jax.device_get(result["state"].params))


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
  config = config_lib.load_config("configs/basic_motions.py", TINY + ["train.steps=30"])
  full = train_and_evaluate(config, tmp_path / "full")
  part = train_and_evaluate(config, tmp_path / "cut", stop_after=17)  # dies after step 17
  assert part["step"] == 17
  resumed = train_and_evaluate(config, tmp_path / "cut")          # restarts from step 10
  assert resumed["step"] == 30
  for a, b in zip(_params(full), _params(resumed)):
    np.testing.assert_array_equal(a, b)
  steps = [r["step"] for r in read_metrics(tmp_path / "cut") if r["kind"] == "train"]
  assert steps == list(range(1, 31))
  train_and_evaluate(config, tmp_path / "cut")                    # finished: run once more
  # no (kind, step) is written twice, resumed or rerun (the raw file, not read_metrics)
  raw = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["kind"], r["step"]) for r in raw]
  assert len(keys) == len(set(keys)) and ("final_test", 30) in keys
  assert [r["step"] for r in raw if r["kind"] == "train"] == list(range(1, 31))


def test_select_best_reports_and_evaluates_the_best_checkpoint(tmp_path, capsys):
  config = config_lib.load_config("configs/basic_motions.py",
                                  TINY + ["train.steps=30", "train.select=best"])
  result = train_and_evaluate(config, tmp_path)
  best = max((r for r in read_metrics(tmp_path) if r["kind"] == "validation"),
             key=lambda r: (r["accuracy"], -r["loss"]))  # the trainer's rule
  assert result["model"] == {"checkpoint": "best", "step": best["step"]}
  assert result["validation"]["accuracy"] == best["accuracy"]
  assert "final test (best checkpoint, step" in capsys.readouterr().out
  assert evaluate_workdir(tmp_path)["accuracy"] == result["test"]["accuracy"]


def test_without_validation_split_test_data_picks_no_checkpoint(tmp_path, capsys):
  config = config_lib.load_config("configs/basic_motions.py",
                                  TINY + ["train.steps=20", "data.validation_fraction=0"])
  result = train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert "test (monitoring only) at step 10" in out and "no checkpoint is selected" in out
  assert not any((tmp_path / "best").glob("*"))          # nothing selected on test data
  kinds = {r["kind"] for r in read_metrics(tmp_path)}
  assert "test_monitor" in kinds and "validation" not in kinds and "final_validation" not in kinds
  assert result["model"] == {"checkpoint": "latest", "step": 20} and "validation" not in result
  with pytest.raises(config_lib.ConfigError, match="test data never picks a checkpoint"):
    config_lib.load_config("configs/basic_motions.py",
                           ["data.validation_fraction=0", "train.select=best"])


def test_batch_larger_than_the_training_set_is_warned(tmp_path, capsys):
  workdir = tmp_path / "my run"   # a space: the suggested commands quote it
  assert cli.main(["train", "--config", "configs/basic_motions.py", "--workdir", str(workdir),
                   *(f"--config.{o}" for o in TINY + ["train.steps=2",
                                                      "train.batch_size=64"])]) == 0
  out = capsys.readouterr().out
  assert ("warning: train.batch_size=64 exceeds the 32 training series: every batch holds "
          "each series about 2.0 times") in out
  assert f"`seqtrain eval --workdir '{workdir}'`" in out


def test_bench_datasets_table(tmp_path, capsys):
  from seqtrain.data.sources import BUNDLED_DIR
  src = BUNDLED_DIR / "BasicMotions"
  for split in ("TRAIN", "TEST"):   # a user's files: <name>_TRAIN.ts beside <name>_TEST.ts
    (tmp_path / f"Mine_{split}.ts").write_text((src / f"BasicMotions_{split}.ts").read_text())
  args = ["bench", "datasets", "JapaneseVowels", str(tmp_path / "Mine_TRAIN.ts"),
          "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
          "--config", "configs/files.py", *(f"--config.{o}" for o in TINY),
          "--config.train.steps=10"]
  assert cli.main(args) == 0
  doc = json.loads((tmp_path / "out" / "datasets.json").read_text())
  rows = {r["dataset"]: r for r in doc["rows"]}
  assert set(rows) == {"JapaneseVowels", "Mine"}
  mine = json.loads((tmp_path / "runs" / "Mine" / "final_metrics.json").read_text())
  assert rows["Mine"]["seqtrain"] == mine["test"]["accuracy"]
  assert (rows["Mine"]["1nn_euclidean"], rows["Mine"]["1nn_dtw"]) == (0.6, 0.975)
  assert (rows["JapaneseVowels"]["length"], rows["JapaneseVowels"]["classes"]) == (29, 9)
  table = (tmp_path / "out" / "datasets.md").read_text()
  assert "| Mine | 100 | 4 |" in table and "| JapaneseVowels | 29 | 9 |" in table
  # a bad argument fails in one line before anything trains
  capsys.readouterr()
  assert cli.main(["bench", "datasets", "BasicMotions", "nope/Missing_TRAIN.ts",
                   "--workdir", str(tmp_path / "runs2")]) == 2
  err = capsys.readouterr().err
  assert "Missing_TRAIN.ts: no such file" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "runs2").exists()


def test_solver_method_changes_speed_not_results(tmp_path):
  results = {}
  # every method with SEQTRAIN_FULL_TESTS=1; by default one of each family (each compiles
  # its own train step, most of this test's time)
  methods = ("sequential", "deer", "quasi_deer", "elk", "quasi_elk") if FULL else \
      ("sequential", "quasi_deer", "quasi_elk")
  for method in methods:
    config = config_lib.load_config("configs/basic_motions.py",
                                    TINY + ["train.steps=40", f"model.solver.method={method}"])
    result = train_and_evaluate(config, tmp_path / method)
    first = [r for r in read_metrics(tmp_path / method) if r["kind"] == "train"][0]
    results[method] = (first["loss"], result["test"]["accuracy"])
  losses = np.array([v[0] for v in results.values()])
  accuracies = np.array([v[1] for v in results.values()])
  np.testing.assert_allclose(losses, losses[0], rtol=1e-4)
  assert accuracies.min() >= 0.85 and np.ptp(accuracies) <= 0.1, results


def test_config_errors():
  with pytest.raises(config_lib.ConfigError, match="did you mean train.learning_rate"):
    config_lib.load_config("configs/basic_motions.py", ["train.learning_rat=1"])
  with pytest.raises(config_lib.ConfigError, match="expected an int"):
    config_lib.load_config("configs/basic_motions.py", ["train.steps=ten"])
  with pytest.raises(config_lib.ConfigError, match="model.solver.method='newton'"):
    config_lib.load_config("configs/basic_motions.py", ["model.solver.method=newton"])
  with pytest.raises(config_lib.ConfigError, match="train.batch_size=0: must be >= 1"):
    config_lib.load_config("configs/basic_motions.py", ["train.batch_size=0"])
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_config("configs/nope.py")
  with pytest.raises(ValueError, match="unknown variant 'fast'"):
    config_lib.load_config("configs/basic_motions.py:fast")
  config = config_lib.load_config("configs/basic_motions.py:tiny", ["data.bucket_boundaries=50,100"])
  assert config.train.steps == 20 and config.data.bucket_boundaries == (50, 100)
  with pytest.raises(AttributeError):
    config.train.new_field = 1  # locked
  back = config_lib.config_from_json(config_lib.config_to_json(config))
  assert config_lib.config_diff(back.to_dict(), config.to_dict()) == []
  with pytest.raises(config_lib.ConfigError, match="model.solver.mode='fast'"):
    config_lib.load_config("configs/basic_motions.py", ["model.solver.mode=fast"])
  with pytest.raises(config_lib.ConfigError, match="model.solver.chunk=-1"):
    config_lib.load_config("configs/basic_motions.py", ["model.solver.chunk=-1"])
  config = config_lib.load_config("configs/basic_motions.py", [
      "model.solver.mode=store", "model.solver.chunk=8", "model.solver.adjoint=quasi"])
  assert steps_lib.solver_options(config) == dict(chunk=8, mode="store", adjoint="quasi")


def test_config_reads_the_solver_names_from_the_spec_without_jax():
  """The solver's option names have one source, seqtrain.solvers.spec (no JAX import);
  config.py repeats only the model's names, checked here."""
  code = ("import sys; from seqtrain.train import config as c; "
          "cfg = c.load_config('configs/basic_motions.py', ['model.solver.mode=store']); "
          "print(c.solver_spec(cfg).mode, 'jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=120)
  assert out.stdout.split() == ["store", "False"], out.stderr
  from seqtrain.models import classifier
  assert config_lib.CELLS == tuple(classifier.CELLS)
  assert config_lib.POOLINGS == classifier.POOLINGS


@pytest.mark.parametrize("name", ["basic_motions", "japanese_vowels", "synthetic_long", "eigenworms",
                                  "files"])
def test_shipped_configs_load(name):
  overrides = ["data.train_file=x.ts"] if name == "files" else []
  config = config_lib.load_config(f"configs/{name}.py", overrides)
  assert config.train.steps > 0


def test_tfds_format_feeds_the_same_batches(tmp_path):
  from seqtrain.data.pipeline import ShardInfo
  from seqtrain.train import input_pipeline as data_lib
  batches = {}
  for fmt in ("memory", "tfds"):
    config = config_lib.load_config("configs/japanese_vowels.py",
                                    [f"data.format={fmt}", f"data.tfds_dir={tmp_path}"])
    bundle = data_lib.build_data(config, tmp_path)
    it = data_lib.train_iterator(bundle, config, ShardInfo())
    batches[fmt] = [next(it) for _ in range(3)]
    assert (len(bundle.train), len(bundle.validation), len(bundle.test)) == (234, 36, 370)
  assert list((tmp_path / "uea_archive").rglob("*.array_record*"))
  for a, b in zip(batches["memory"], batches["tfds"]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_tfds_runs_reuse_what_data_prepare_wrote(tmp_path, monkeypatch, capsys):
  from seqtrain.train import input_pipeline as data_lib
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", str(tmp_path / "cache"))
  assert cli.main(["data", "prepare", "BasicMotions", "--quiet"]) == 0
  files = sorted((tmp_path / "cache" / "tfds").rglob("*.array_record*"))
  assert files
  stamps = [f.stat().st_mtime_ns for f in files]
  config = config_lib.load_config("configs/basic_motions.py", ["data.format=tfds"])
  bundle = data_lib.build_data(config, tmp_path / "work")
  assert len(bundle.train) + len(bundle.validation) == 40
  assert sorted((tmp_path / "cache" / "tfds").rglob("*.array_record*")) == files
  assert [f.stat().st_mtime_ns for f in files] == stamps       # read, not written again
  assert not (tmp_path / "work" / "tfds").exists()


def test_eval_report_folder_is_checked_before_any_work(quickstart, tmp_path, monkeypatch, capsys):
  """A workdir that cannot take the report: one line naming --out, exit 2, before the
  checkpoint is even read; --out writes the report elsewhere."""
  import os as os_module
  from seqtrain.train import evaluate as evaluate_lib
  workdir, _ = quickstart
  real_access = os_module.access
  monkeypatch.setattr(evaluate_lib.os, "access",   # a read-only workdir (root ignores modes)
                      lambda p, mode: False if Path(p).is_relative_to(workdir)
                      else real_access(p, mode))
  monkeypatch.setattr(evaluate_lib, "_load_json", lambda *a: pytest.fail("work was done"))
  assert cli.main(["eval", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "cannot write the report to" in err and "--out DIR" in err
  assert len(err.strip().splitlines()) == 1
  monkeypatch.undo()
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  assert cli.main(["eval", "--workdir", str(workdir), "--out", str(blocker / "eval")]) == 2
  assert "is not a writable folder" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--out", str(tmp_path / "r" / "eval")]) == 0
  assert (tmp_path / "r" / "eval" / "test-latest.json").exists()


def test_confusion_plot_title_fits_with_two_classes(tmp_path):
  from seqtrain.train.plots import _pyplot, plot_confusion
  plt = _pyplot()
  seen = {}
  real_savefig = plt.Figure.savefig

  def savefig(fig, *args, **kwargs):
    fig.canvas.draw()
    artist = fig._suptitle if fig._suptitle is not None else fig.axes[0].title
    title = artist.get_window_extent()
    seen["inside"] = fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1
    return real_savefig(fig, *args, **kwargs)

  plt.Figure.savefig = savefig
  try:
    plot_confusion([[20, 0], [1, 19]], ["Arrowhead_long", "Other"], tmp_path / "c.png",
                   "validation-lengthN-best: accuracy 0.975 (long title)")
  finally:
    plt.Figure.savefig = real_savefig
  assert seen["inside"] and (tmp_path / "c.png").stat().st_size > 0


def test_shipped_configs_resolve_from_any_folder(tmp_path, monkeypatch):
  """The configs are installed with the package: by name, or as configs/NAME.py from a
  folder that has no configs/ of its own; a file at the given path wins."""
  monkeypatch.chdir(tmp_path)
  for spec in ("basic_motions", "configs/basic_motions.py", "configs/long_context.py:4096"):
    config = config_lib.load_config(spec)
    assert config.train.steps >= 1
  assert config_lib.load_config("configs/long_context.py:4096").data.length == 4096
  own = tmp_path / "configs" / "basic_motions.py"
  own.parent.mkdir()
  own.write_text("from seqtrain.train.config import base_config\n"
                 "def get_config():\n  c = base_config()\n  c.train.steps = 7\n  return c\n")
  assert config_lib.load_config("configs/basic_motions.py").train.steps == 7
  with pytest.raises(config_lib.ConfigError, match="long_context, synthetic_long"):
    config_lib.load_config("configs/nope.py")


def test_step_metrics_reach_the_host_only_on_log_eval_and_checkpoint_steps(tmp_path,
                                                                            monkeypatch):
  """The loop never waits for the device between log steps: the metrics of the steps
  since the last fetch come over in one transfer."""
  fetches = []
  real = jax.device_get

  def counting(x):
    if isinstance(x, list) and x and isinstance(x[0], dict) and "loss" in x[0]:
      fetches.append(len(x))
    return real(x)

  monkeypatch.setattr(jax, "device_get", counting)
  config = config_lib.load_config("configs/basic_motions.py", TINY + [
      "train.steps=20", "train.log_every=5", "train.eval_every=10",
      "train.checkpoint_every=20"])
  train_and_evaluate(config, tmp_path)
  assert fetches == [5, 5, 5, 5]
  steps = [r["step"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
  assert steps == [5, 10, 15, 20]
