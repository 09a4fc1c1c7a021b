"""The tfds builder of archive datasets: array_record files written and read back
without TensorFlow, exactly the examples of the ``.ts`` files, in file order."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from seqtrain.data import tfds_builder as tb
from seqtrain.data.ts import read_ts

BUNDLED = ("BasicMotions", "JapaneseVowels")
REPO = Path(__file__).resolve().parents[1]


def _tf_modules() -> list[str]:
  """TensorFlow itself, not tensorflow_datasets / tensorflow_metadata."""
  return sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))


def _bundled(name: str, split: str):
  return read_ts(tb.BUNDLED_DIR / name / f"{name}_{split.upper()}.ts")


def _prepared_files(data_dir: Path, name: str) -> dict[str, tuple[int, int]]:
  root = data_dir / "uea_archive" / name
  return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
  d = tmp_path_factory.mktemp("tfds")
  for name in BUNDLED:
    tb.prepare(name, d)
  return d


def test_configs():
  configs = tb.UeaArchive.builder_configs
  for name in ("BasicMotions", "JapaneseVowels", "EigenWorms", "SelfRegulationSCP1",
               "SelfRegulationSCP2", "EthanolConcentration", "Heartbeat", "MotorImagery"):
    assert configs[name].name == name
    assert tb.archive_config(name) is configs[name]
  assert tb.UeaArchive.name == "uea_archive"
  assert str(tb.UeaArchive.VERSION) == "1.0.0"
  own = tb.archive_config("MyOwnData")
  assert own.name == "MyOwnData" and "MyOwnData" not in configs
  for bad in ("", "../x", "a/b", "has space"):
    with pytest.raises(ValueError, match="invalid dataset name"):
      tb.archive_config(bad)


def test_prepare_writes_array_record(data_dir):
  assert _tf_modules() == []
  for name in BUNDLED:
    root = data_dir / "uea_archive" / name / "1.0.0"
    for split in tb.SPLITS:
      assert list(root.glob(f"uea_archive-{split}.array_record-*-of-*")), split
    info = json.loads((root / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    assert [s["name"] for s in info["splits"]] == ["train", "test"]
    assert tb.is_prepared(name, data_dir)
  builder = tb.prepare("BasicMotions", data_dir)
  series = builder.info.features["series"]
  assert series.shape == (None, 6) and series.np_dtype == np.float32
  assert builder.info.features["label"].names == list(_bundled("BasicMotions", "train").class_names)


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("split", tb.SPLITS)
def test_round_trip_matches_ts(data_dir, name, split):
  expected = _bundled(name, split)
  source = tb.data_source(name, split, data_dir)
  assert len(source) == len(expected)
  assert source.name == name
  assert source.class_names == expected.class_names
  assert source.num_classes == expected.num_classes
  assert source.num_channels == expected.num_channels
  assert source.lengths.dtype == np.int64 and source.labels.dtype == np.int32
  np.testing.assert_array_equal(source.lengths, expected.lengths)
  np.testing.assert_array_equal(source.labels, expected.labels)
  for i, want in enumerate(expected.series):
    item = source[i]
    assert set(item) == {"series", "label"}
    got = item["series"]
    assert got.dtype == np.float32 and got.shape == want.shape, i
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got, want)  # NaN == NaN for assert_array_equal
    assert isinstance(item["label"], np.int32) and item["label"] == expected.labels[i]
  # The raw records carry the file position and the length too.
  raw = tb.UeaArchive(config=name, data_dir=data_dir).as_data_source(split)
  for i in (0, len(expected) // 2, len(expected) - 1):
    assert int(raw[i]["index"]) == i and int(raw[i]["length"]) == expected.lengths[i]


def test_registered_with_tfds(data_dir):
  import tensorflow_datasets as tfds
  ds = tfds.data_source("uea_archive/JapaneseVowels", split="test", data_dir=os.fspath(data_dir))
  expected = _bundled("JapaneseVowels", "test")
  assert len(ds) == len(expected)
  np.testing.assert_array_equal(ds[5]["series"], expected.series[5])


def test_lengths_stored_and_scan_fallback(data_dir, tmp_path):
  meta = json.loads((data_dir / "uea_archive/JapaneseVowels/1.0.0/metadata.json").read_text())
  expected = _bundled("JapaneseVowels", "train")
  assert meta["train"]["lengths"] == expected.lengths.tolist()
  assert meta["train"]["labels"] == expected.labels.tolist()
  # Without the stored arrays the source reads them off the records.
  copy = tmp_path / "copy"
  shutil.copytree(data_dir / "uea_archive" / "JapaneseVowels",
                  copy / "uea_archive" / "JapaneseVowels")
  (copy / "uea_archive/JapaneseVowels/1.0.0/metadata.json").write_text("{}")
  source = tb.data_source("JapaneseVowels", "train", copy)
  np.testing.assert_array_equal(source.lengths, expected.lengths)
  np.testing.assert_array_equal(source.labels, expected.labels)
  assert source.lengths.dtype == np.int64 and source.labels.dtype == np.int32


def test_threads(data_dir):
  expected = _bundled("JapaneseVowels", "test")
  source = tb.data_source("JapaneseVowels", "test", data_dir)  # fresh: nothing read yet

  def read(i):
    return source[i], source.lengths[i], source.labels[i]

  with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(read, range(len(source))))
  for i, (item, length, label) in enumerate(results):
    np.testing.assert_array_equal(item["series"], expected.series[i])
    assert length == expected.lengths[i] and label == item["label"] == expected.labels[i]
  items = source.__getitems__([3, 1, 2])
  np.testing.assert_array_equal(items[0]["series"], expected.series[3])


_TRAIN = """\
# hand-written: two channels, lengths 2..4, missing values
@problemName Tiny
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1.5,2,?:0,0.25,1:down
?,3:4,5:up
0.5,1.5,-2.5,7:?,1,2,3:up
"""

_TEST = """\
@problemName Tiny
@missing true
@dimensions 2
@equalLength false
@classLabel true down up
@data
9,8:7,?:up
1,?,3:4,5,6:down
"""


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_user_source_dir(tmp_path, nested):
  src = tmp_path / "mine"
  folder = src / "Tiny" if nested else src
  folder.mkdir(parents=True)
  (folder / "Tiny_TRAIN.ts").write_text(_TRAIN)
  (folder / "Tiny_TEST.ts").write_text(_TEST)
  out = tmp_path / "tfds"
  tb.prepare("Tiny", out, source_dir=src)
  shutil.rmtree(src)  # reading needs only the prepared files
  train = tb.data_source("Tiny", "train", out)
  test = tb.data_source("Tiny", "test", out)
  assert train.class_names == test.class_names == ("up", "down")
  assert train.num_channels == 2
  nan = np.nan
  want_train = [np.array([[1.5, 0], [2, 0.25], [nan, 1]], np.float32),
                np.array([[nan, 4], [3, 5]], np.float32),
                np.array([[0.5, nan], [1.5, 1], [-2.5, 2], [7, 3]], np.float32)]
  want_test = [np.array([[9, 7], [8, nan]], np.float32),
               np.array([[1, 4], [nan, 5], [3, 6]], np.float32)]
  for source, want, labels in ((train, want_train, [1, 0, 0]), (test, want_test, [0, 1])):
    assert len(source) == len(want)
    np.testing.assert_array_equal(source.labels, labels)  # test's header order remapped
    np.testing.assert_array_equal(source.lengths, [len(w) for w in want])
    for i, w in enumerate(want):
      got = source[i]["series"]
      np.testing.assert_array_equal(np.isnan(got), np.isnan(w))
      np.testing.assert_array_equal(got, w)
      assert source[i]["label"] == labels[i]
  # Prepared already: no source needed, nothing rebuilt.
  assert tb.prepare("Tiny", out).info.splits["train"].num_examples == 3


def test_missing_dataset(tmp_path, monkeypatch):
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", os.fspath(tmp_path / "cache"))
  out = tmp_path / "tfds"
  with pytest.raises(tb.DatasetNotFoundError) as e:
    tb.prepare("EigenWorms", out)
  message = str(e.value)
  assert "seqtrain data download EigenWorms" in message
  assert os.fspath(tb.BUNDLED_DIR / "EigenWorms" / "EigenWorms_TRAIN.ts") in message
  assert not (out / "uea_archive" / "EigenWorms").exists()
  # An explicit source_dir is the only place looked at, even for a bundled dataset.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(tb.DatasetNotFoundError, match="BasicMotions") as e:
    tb.prepare("BasicMotions", out, source_dir=empty)
  assert os.fspath(empty / "BasicMotions_TRAIN.ts") in str(e.value)
  assert os.fspath(tb.BUNDLED_DIR) not in str(e.value)
  with pytest.raises(tb.DatasetNotFoundError, match="not prepared"):
    tb.data_source("BasicMotions", "train", out)
  with pytest.raises(ValueError, match="unknown split"):
    tb.data_source("BasicMotions", "validation", out)


def test_prepare_twice_does_not_rebuild(data_dir, monkeypatch):
  before = {name: _prepared_files(data_dir, name) for name in BUNDLED}
  assert all(before.values())

  def fail(*args, **kwargs):
    raise AssertionError("download_and_prepare called on a prepared dataset")

  for name in BUNDLED:
    tb.prepare(name, data_dir)
  monkeypatch.setattr(tb.UeaArchive, "download_and_prepare", fail)
  for name in BUNDLED:
    assert tb.prepare(name, data_dir).is_prepared()
  assert {name: _prepared_files(data_dir, name) for name in BUNDLED} == before


def test_no_tensorflow_imported(tmp_path):
  """In a fresh process where an importable `tensorflow` is faked: preparing and
  reading never imports it (probing whether it exists is allowed)."""
  script = textwrap.dedent(f"""
      import importlib.abc, importlib.machinery, json, sys
      imported = []

      class FakeTensorflow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
          if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self)
          return None

        def create_module(self, spec):
          return None

        def exec_module(self, module):
          imported.append(module.__name__)
          raise ImportError("tensorflow must not be imported")

      sys.meta_path.insert(0, FakeTensorflow())
      from seqtrain.data import tfds_builder as tb
      for name in {BUNDLED!r}:
        tb.prepare(name, {os.fspath(tmp_path)!r})
        for split in tb.SPLITS:
          source = tb.data_source(name, split, {os.fspath(tmp_path)!r})
          [source[i] for i in range(len(source))]
          source.lengths
      tf = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
      print(json.dumps({{"imported": imported, "modules": tf}}))
  """)
  path = os.pathsep.join(p for p in (os.fspath(REPO), os.environ.get("PYTHONPATH")) if p)
  env = dict(os.environ, PYTHONPATH=path)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == {"imported": [], "modules": []}
  assert list(tmp_path.glob("uea_archive/*/1.0.0/*.array_record-*"))


@pytest.mark.parametrize("progress", [False, True])
def test_prepare_prints_only_its_own_progress_line(tmp_path, capfd, progress):
  """tfds's prints and tqdm bars are off; with ``progress`` one line per split
  (download.Progress, counting series), without it nothing at all."""
  src = tmp_path / "mine"
  src.mkdir()
  (src / "Tiny_TRAIN.ts").write_text(_TRAIN)
  (src / "Tiny_TEST.ts").write_text(_TEST)
  tb.prepare("Tiny", tmp_path / "tfds", source_dir=src, progress=progress)
  out, err = capfd.readouterr()
  assert out == ""
  if progress:
    assert "preparing Tiny train: 3 / 3 (100%) series" in err
    assert "preparing Tiny test: 2 / 2 (100%) series" in err
  assert "Downloading and preparing" not in out + err and "%|" not in err
  if not progress:
    assert "preparing Tiny" not in err
