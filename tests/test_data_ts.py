"""The .ts / .npz readers: bundled files round-trip, malformed input fails clearly."""
import math

import numpy as np
import pytest

from seqtrain.data import sources
from seqtrain.data.ts import (DataFormatError, SeriesDataset, read_npz, read_series_file, read_ts,
                              write_npz, write_ts)

BUNDLED = sorted(sources.BUNDLED_DIR.glob("*/*.ts"))

GOOD = """# a comment
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:4,5,6:a
1.5,?,2:0,0,1e3:b
7,8:9,10:a
"""


def _write(tmp_path, text, name="Tiny_TRAIN.ts"):
  p = tmp_path / name
  p.write_text(text)
  return p


def test_bundled_shapes():
  assert sources.bundled_datasets() == ["BasicMotions", "JapaneseVowels"]
  bm = read_ts(sources.BUNDLED_DIR / "BasicMotions" / "BasicMotions_TRAIN.ts")
  assert (len(bm), bm.num_channels, bm.num_classes, bm.equal_length) == (40, 6, 4, True)
  assert set(bm.lengths) == {100}
  jv = read_ts(sources.BUNDLED_DIR / "JapaneseVowels" / "JapaneseVowels_TEST.ts")
  assert (len(jv), jv.num_channels, jv.num_classes, jv.equal_length) == (370, 12, 9, False)
  assert jv.lengths.min() == 7 and jv.lengths.max() == 29
  assert sum(f.stat().st_size for f in BUNDLED) < 5 * 2**20


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", ["ts", "npz"])
def test_bundled_round_trip(tmp_path, path, fmt):
  data = read_ts(path)
  out = tmp_path / f"copy.{fmt}"
  (write_ts if fmt == "ts" else write_npz)(out, data)
  back = read_series_file(out)
  assert back.class_names == data.class_names
  np.testing.assert_array_equal(back.labels, data.labels)
  assert len(back) == len(data)
  for a, b in zip(data.series, back.series):
    np.testing.assert_array_equal(a, b)


def test_missing_values_and_variable_length(tmp_path):
  d = read_ts(_write(tmp_path, GOOD))
  assert d.lengths.tolist() == [3, 3, 2] and d.num_channels == 2
  assert math.isnan(d.series[1][1, 0]) and d.series[1][2, 1] == 1000.0
  assert d.labels.tolist() == [0, 1, 0] and d.has_missing
  back = read_ts(write_ts(tmp_path / "w.ts", d))
  np.testing.assert_array_equal(back.series[1], d.series[1])


def test_archive_header_quirks(tmp_path):
  """As in the archive's UnitTest files: '%' comment lines and @problemName twice."""
  text = ("%# a cut-down Chinatown\n%\n@problemName UnitTest\n@problemName Chinatown\n"
          "@classLabel true 1 2\n@data\n% a comment among the data\n1,2,3:1\n4,5,6:2\n")
  d = read_ts(_write(tmp_path, text))
  assert d.labels.tolist() == [0, 1] and d.lengths.tolist() == [3, 3]


BAD = {
    "no_data_tag": ("@problemName X\n@classLabel true a b\n1,2:a\n", "expected a header"),
    "header_never_ends": ("@problemName X\n@classLabel true a b\n", "no @data line"),
    "unknown_tag": ("@problemName X\n@colour red\n@data\n", "unknown header tag @colour"),
    "duplicate_tag": ("@missing false\n@missing false\n@data\n", "duplicate header tag"),
    "bad_bool": ("@missing maybe\n@data\n", "must be 'true' or 'false'"),
    "bad_length_tag": ("@seriesLength ten\n@data\n", "positive integer"),
    "one_class": ("@classLabel true a\n@data\n1:a\n", "at least two class names"),
    "no_labels": ("@classLabel false\n@data\n1,2\n", "no class labels"),
    "regression": ("@targetLabel true\n@data\n", "regression"),
    "timestamps": ("@timeStamps true\n@classLabel true a b\n@data\n(0,1):a\n", "timestamped"),
    "unknown_label": ("@classLabel true a b\n@data\n1,2:c\n", "class label 'c' is not one"),
    "not_a_number": ("@classLabel true a b\n@data\n1,x2:a\n", "'x2' is not a number"),
    "wrong_dims": ("@dimensions 2\n@classLabel true a b\n@data\n1,2:a\n", "1 channels, expected 2"),
    "univariate_many": ("@univariate true\n@classLabel true a b\n@data\n1:2:a\n", "@univariate"),
    "ragged_channels": ("@classLabel true a b\n@data\n1,2:3:a\n", "different lengths"),
    "length_mismatch": ("@equalLength true\n@seriesLength 3\n@classLabel true a b\n@data\n1,2:a\n",
                        "header says @seriesLength 3"),
    "unequal": ("@equalLength true\n@classLabel true a b\n@data\n1,2:a\n1:b\n", "lengths differ"),
    "missing_forbidden": ("@missing false\n@classLabel true a b\n@data\n1,?:a\n", "@missing false"),
    "nan_forbidden": ("@missing false\n@classLabel true a b\n@data\n1,NaN:a\n", "('?' or NaN)"),
    "all_missing": ("@classLabel true a b\n@data\n?,?:a\n", "every value"),
    "empty_data": ("@classLabel true a b\n@data\n\n", "no examples"),
    "no_label_field": ("@classLabel true a b\n@data\n1,2,3\n", "separated by ':'"),
    "tag_after_data": ("@classLabel true a b\n@data\n1:a\n@missing true\n", "after @data"),
    "infinite": ("@classLabel true a b\n@data\n1,inf:a\n", "infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_ts_rejected(tmp_path, case):
  text, message = BAD[case]
  path = _write(tmp_path, text)
  with pytest.raises(DataFormatError) as err:
    read_ts(path)
  assert message in str(err.value)
  assert str(path) in str(err.value)


def test_error_names_the_line(tmp_path):
  path = _write(tmp_path, GOOD.replace("7,8:9,10:a", "7,8:9,zz:a"))
  with pytest.raises(DataFormatError, match=r"line 12: channel 1: 'zz'") as err:
    read_ts(path)
  assert err.value.line == 12


def test_file_errors(tmp_path):
  with pytest.raises(DataFormatError, match="file not found"):
    read_ts(tmp_path / "nope.ts")
  (tmp_path / "bin.ts").write_bytes(b"\xff\xfe\x00bad")
  with pytest.raises(DataFormatError, match="not a UTF-8"):
    read_ts(tmp_path / "bin.ts")
  with pytest.raises(DataFormatError, match="unknown file type '.csv'"):
    read_series_file(tmp_path / "x.csv")


def test_npz_inputs(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5, 2))
  np.savez(tmp_path / "own.npz", X=x, y=np.array(["up", "down"] * 3))
  d = read_npz(tmp_path / "own.npz")
  assert d.class_names == ("down", "up") and d.labels.tolist() == [1, 0] * 3
  np.testing.assert_allclose(d.series[2], x[2].astype(np.float32))
  np.savez(tmp_path / "uni.npz", X=x[..., 0], y=np.arange(6) % 3, lengths=np.array([5, 4, 3] * 2))
  d = read_npz(tmp_path / "uni.npz")
  assert d.num_channels == 1 and d.lengths.tolist() == [5, 4, 3] * 2 and d.num_classes == 3


@pytest.mark.parametrize("arrays,message", [
    (dict(X=np.zeros((3, 4))), "missing array 'y'"),
    (dict(X=np.zeros((3, 4, 2, 1)), y=np.arange(3)), "shape (N, T, C)"),
    (dict(X=np.zeros((3, 4)), y=np.arange(2)), "y must have shape (3,)"),
    (dict(X=np.zeros((3, 4)), y=np.zeros(3)), "single class"),
    (dict(X=np.zeros((2, 4)), y=np.array([0.5, 1.0])), "non-integer"),
    (dict(X=np.full((2, 4), np.inf), y=np.arange(2)), "infinite"),
    (dict(X=np.zeros((2, 4)), y=np.arange(2), lengths=np.array([0, 4])), "lengths"),
    (dict(X=np.array([["a", "b"]] * 2), y=np.arange(2)), "real numbers"),
    (dict(X=np.zeros((2, 4)), y=np.array([0, 5]), class_names=np.array(["a", "b"])), "outside"),
])
def test_malformed_npz_rejected(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(DataFormatError) as err:
    read_npz(tmp_path / "bad.npz")
  assert message in str(err.value) and "bad.npz" in str(err.value)


def test_npz_with_objects_refused_without_pickle(tmp_path):
  np.savez(tmp_path / "obj.npz", X=np.array([np.zeros(2), np.zeros(3)], dtype=object),
           y=np.arange(2))
  with pytest.raises(DataFormatError, match="without pickle"):
    read_npz(tmp_path / "obj.npz")


def test_load_splits_stratified_validation():
  s = sources.load_splits("BasicMotions", validation_fraction=0.3, seed=3)
  assert (len(s.train), len(s.validation), len(s.test)) == (28, 12, 40)
  assert s.validation.class_counts().tolist() == [3, 3, 3, 3]
  assert s.train.class_counts().tolist() == [7, 7, 7, 7]
  again = sources.load_splits("BasicMotions", validation_fraction=0.3, seed=3)
  for a, b in zip(s.validation.series, again.validation.series):
    np.testing.assert_array_equal(a, b)
  other = sources.load_splits("BasicMotions", validation_fraction=0.3, seed=4)
  assert any(not np.array_equal(a, b) for a, b in zip(s.validation.series, other.validation.series))


def test_load_splits_errors(tmp_path):
  with pytest.raises(DataFormatError, match="Did you mean BasicMotions"):
    sources.load_splits("BasicMotion", data_dir=tmp_path)
  train = SeriesDataset([np.zeros((3, 1), np.float32)] * 4, [0, 1, 0, 1], ("a", "b"), "T")
  test = SeriesDataset([np.zeros((3, 1), np.float32)] * 2, [0, 1], ("a", "z"), "T")
  write_ts(tmp_path / "T_TRAIN.ts", train)
  write_ts(tmp_path / "T_TEST.ts", test)
  with pytest.raises(DataFormatError, match=r"holds classes \['z'\]"):
    sources.load_splits("T", data_dir=tmp_path)
  wide = SeriesDataset([np.zeros((3, 2), np.float32)] * 2, [0, 1], ("a", "b"), "T")
  write_ts(tmp_path / "T_TEST.ts", wide)
  with pytest.raises(DataFormatError, match="2 channels, the training data 1"):
    sources.load_splits("T", data_dir=tmp_path)


def test_a_file_without_newlines_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
  """Lines are read one at a time with a cap: a huge single line is refused at the
  cap (named, with its line number), never loaded whole."""
  from seqtrain.data import ts as ts_module
  monkeypatch.setattr(ts_module, "MAX_LINE_CHARS", 1000)
  path = tmp_path / "blob_TRAIN.ts"
  path.write_text("@problemName blob\n@classLabel true a b\n@data\n" + "1," * 5000 + "2:a\n")
  with pytest.raises(DataFormatError, match=r"line 4.*longer than 1,000 characters"):
    read_ts(path)
  path.write_text("@problemName ok\n@classLabel true a b\n@data\n" + "1," * 100 + "2:a\n"
                  + "3,4:b\n")
  data = read_ts(path)
  assert len(data) == 2 and data.lengths.tolist() == [101, 2]
