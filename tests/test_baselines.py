"""1-NN Euclidean / DTW baselines: DTW against a naive reference, resampling, NaN filling,
nearest-neighbour labels, ties and the DTW budget."""
import ast
import dataclasses
import inspect

import numpy as np
import pytest

from seqtrain import baselines as bl
from seqtrain.data.ts import SeriesDataset


def naive_dtw(a, b, window):
  """Textbook O(L^2) DTW over (L, C) series: squared Euclidean point cost, |i - j| <= window."""
  n, m = len(a), len(b)
  d = np.full((n + 1, m + 1), np.inf)
  d[0, 0] = 0.0
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      if abs(i - j) <= window:
        cost = float(np.sum((a[i - 1] - b[j - 1]) ** 2))
        d[i, j] = cost + min(d[i - 1, j - 1], d[i - 1, j], d[i, j - 1])
  return d[n, m]


@dataclasses.dataclass
class ListSource:
  series: list
  labels: np.ndarray

  def __len__(self):
    return len(self.series)

  def __getitem__(self, i):
    return {"series": self.series[i], "label": self.labels[i]}

  @property
  def lengths(self):
    return np.array([len(s) for s in self.series])


@pytest.mark.parametrize("length,channels,window", [
    (1, 1, 0), (2, 1, 1), (5, 1, 0), (6, 2, 1), (7, 3, 2), (8, 1, 3), (9, 2, 8), (10, 1, 50),
    (11, 4, 4), (12, 1, 5)])
def test_dtw_matches_naive_reference(length, channels, window):
  rng = np.random.default_rng(length * 100 + channels * 10 + window)
  train = rng.normal(size=(5, length, channels))
  test = rng.normal(size=(3, length, channels))
  got = bl.dtw_distances(train, test, window)
  want = np.array([[naive_dtw(q, x, window) for x in train] for q in test])
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_dtw_window_zero_is_euclidean_and_full_window_is_unconstrained():
  rng = np.random.default_rng(1)
  train, test = rng.normal(size=(7, 13, 2)), rng.normal(size=(4, 13, 2))
  euclid = bl.euclidean_distances(train, test)
  want = ((test[:, None] - train[None]) ** 2).sum(axis=(2, 3))
  np.testing.assert_allclose(euclid, want, rtol=1e-12)
  np.testing.assert_allclose(bl.dtw_distances(train, test, 0), euclid, rtol=1e-12)
  full = bl.dtw_distances(train, test, 12)
  np.testing.assert_array_equal(full, bl.dtw_distances(train, test, 1000))
  want = np.array([[naive_dtw(q, x, 10 ** 6) for x in train] for q in test])
  np.testing.assert_allclose(full, want, rtol=1e-12)
  assert np.all(full <= euclid + 1e-12)
  # DTW is symmetric in its two arguments
  np.testing.assert_allclose(bl.dtw_distances(test, train, 3), bl.dtw_distances(train, test, 3).T,
                             rtol=1e-12)


def test_dtw_band_limits_the_shift():
  a = np.zeros((10, 1))
  b = np.zeros((10, 1))
  a[5], b[7] = 1.0, 1.0  # the same pulse two steps later
  d = [float(bl.dtw_distances(b[None], a[None], w)[0, 0]) for w in range(4)]
  assert d[0] == 2.0  # Euclidean
  assert d[1] > 0.0
  assert d[2] == d[3] == 0.0


def test_blocking_does_not_change_results(monkeypatch):
  rng = np.random.default_rng(2)
  train, test = rng.normal(size=(9, 8, 2)), rng.normal(size=(6, 8, 2))
  train[6] = train[2]  # a tie that straddles a block boundary
  labels = np.arange(9)
  whole_d = bl.dtw_distances(train, test, 2)
  whole_e = bl.euclidean_distances(train, test)
  monkeypatch.setattr(bl, "_BLOCK_BYTES", 1)  # one (test, train) pair per block
  np.testing.assert_allclose(bl.dtw_distances(train, test, 2), whole_d, rtol=1e-12)
  np.testing.assert_allclose(bl.euclidean_distances(train, test), whole_e, rtol=1e-12)
  np.testing.assert_array_equal(bl.one_nn_dtw(train, labels, test, 2), np.argmin(whole_d, 1))
  np.testing.assert_array_equal(bl.one_nn_euclidean(train, labels, test), np.argmin(whole_e, 1))
  test[0] = train[2] + 1e-3
  assert bl.one_nn_euclidean(train, labels, test)[0] == 2
  assert bl.one_nn_dtw(train, labels, test, 2)[0] == 2


def test_ties_go_to_the_lowest_train_index():
  x = np.array([[0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])[..., None]
  y = np.array([7, 3, 1, 0])
  q = np.array([[0.0, 1.0, 0.1], [0.1, 1.0, 0.0]])[..., None]
  np.testing.assert_array_equal(bl.one_nn_euclidean(x, y, q), [7, 7])
  np.testing.assert_array_equal(bl.one_nn_dtw(x, y, q, 1), [7, 7])
  # equidistant from two different series: still the lower index
  x2 = np.array([[1.0, 1.0], [-1.0, -1.0]])[..., None]
  np.testing.assert_array_equal(bl.one_nn_euclidean(x2, np.array([4, 9]), np.zeros((1, 2, 1))),
                                [4])
  np.testing.assert_array_equal(bl.one_nn_euclidean(x2[::-1], np.array([9, 4]),
                                                    np.zeros((1, 2, 1))), [9])


def test_fill_missing():
  x = np.array([[np.nan, np.nan, 1.0], [2.0, np.nan, np.nan], [np.nan, np.nan, 3.0],
                [6.0, np.nan, np.nan], [np.nan, np.nan, np.nan]], np.float32)
  got = bl.fill_missing(x)
  assert got.dtype == np.float64 and not np.isnan(got).any()
  np.testing.assert_allclose(got[:, 0], [2.0, 2.0, 4.0, 6.0, 6.0])  # interior linear, edges held
  np.testing.assert_array_equal(got[:, 1], 0.0)  # all missing
  np.testing.assert_allclose(got[:, 2], [1.0, 2.0, 3.0, 3.0, 3.0])
  assert np.isnan(x).sum() == 11  # input untouched


def test_resample():
  ramp = np.stack([np.arange(5.0), 10 - 2 * np.arange(5.0)], axis=1)
  up = bl.resample(ramp, 9)
  np.testing.assert_allclose(up[:, 0], np.linspace(0, 4, 9))
  np.testing.assert_allclose(up[:, 1], np.linspace(10, 2, 9))
  np.testing.assert_allclose(bl.resample(up, 5), ramp)
  np.testing.assert_array_equal(bl.resample(np.array([[3.0, 4.0]]), 4), [[3.0, 4.0]] * 4)
  np.testing.assert_array_equal(bl.resample(ramp, 5), ramp)
  np.testing.assert_allclose(bl.resample(np.array([[0.0], [1.0], [0.0]]), 5)[:, 0],
                             [0.0, 0.5, 1.0, 0.5, 0.0])


def test_as_matrix_fills_then_resamples_to_the_longest():
  series = [np.array([[0.0, 1.0], [np.nan, 1.0], [4.0, 1.0]], np.float32),
            np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [4.0, np.nan], [5.0, 7.0]],
                     np.float32)]
  data = SeriesDataset(series, np.array([0, 1]), ("a", "b"))
  x = bl.as_matrix(data)
  assert x.shape == (2, 5, 2) and x.dtype == np.float64
  np.testing.assert_allclose(x[0, :, 0], [0.0, 1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(x[0, :, 1], 1.0)
  np.testing.assert_allclose(x[1, :, 0], [1, 2, 3, 4, 5])
  np.testing.assert_allclose(x[1, :, 1], 7.0)
  assert bl.as_matrix(data, length=3).shape == (2, 3, 2)
  np.testing.assert_allclose(bl.as_matrix(data, length=3)[1, :, 0], [1, 3, 5])


def _toy(n_per_class, length, rng):
  t = np.linspace(0, 1, length)
  series, labels = [], []
  for label, freq in enumerate((1.0, 3.0)):
    for _ in range(n_per_class):
      phase = rng.uniform(0, 0.05)
      wave = np.sin(2 * np.pi * freq * (t + phase)) + 0.1 * rng.normal(size=length)
      series.append(wave[:, None])
      labels.append(label)
  return ListSource(series, np.array(labels))


def test_one_nn_on_a_separable_toy_set():
  rng = np.random.default_rng(3)
  train, test = _toy(5, 40, rng), _toy(6, 40, rng)
  x_train, x_test = bl.as_matrix(train), bl.as_matrix(test)
  np.testing.assert_array_equal(bl.one_nn_euclidean(x_train, train.labels, x_test), test.labels)
  np.testing.assert_array_equal(bl.one_nn_dtw(x_train, train.labels, x_test, 4), test.labels)
  out = bl.baselines(train, test)
  assert out["1nn_euclidean"] == 1.0 and out["1nn_dtw"] == 1.0
  assert out["length"] == 40 and out["dtw_window"] == 4 and "dtw_skipped" not in out
  assert set(out["seconds"]) == {"resample", "1nn_euclidean", "1nn_dtw"}


def test_baselines_resample_both_sets_to_the_longest_series():
  rng = np.random.default_rng(4)
  train, test = _toy(4, 20, rng), _toy(4, 31, rng)
  out = bl.baselines(train, test, dtw_window_fraction=0.2)
  assert out["length"] == 31 and out["dtw_window"] == 6
  assert out["1nn_euclidean"] == 1.0 and out["1nn_dtw"] == 1.0


def test_dtw_skipped_when_over_budget():
  rng = np.random.default_rng(5)
  train, test = _toy(3, 20, rng), _toy(2, 20, rng)  # 6 x 4 pairs, L = 20, window 2: band 5
  cells = 6 * 4 * 20 * 5
  out = bl.baselines(train, test, max_dtw_cells=cells - 1)
  assert out["1nn_dtw"] is None and "not affordable" in out["dtw_skipped"]
  assert out["1nn_euclidean"] == 1.0 and "1nn_dtw" not in out["seconds"]
  out = bl.baselines(train, test, max_dtw_cells=cells)
  assert out["1nn_dtw"] == 1.0 and "dtw_skipped" not in out
  out = bl.baselines(train, test, max_euclidean_cells=6 * 4 * 20 - 1)  # one channel
  assert out["1nn_euclidean"] is None and "not affordable" in out["euclidean_skipped"]
  out = bl.baselines(train, test, max_matrix_bytes=8 * (6 + 4) * 20 - 1)
  assert out["1nn_euclidean"] is None and "GiB resampled" in out["euclidean_skipped"]


def test_baselines_map_test_labels_by_class_name():
  rng = np.random.default_rng(6)
  train, test = _toy(3, 16, rng), _toy(3, 16, rng)
  train = SeriesDataset(train.series, train.labels, ("slow", "fast"))
  test = SeriesDataset(test.series, 1 - test.labels, ("fast", "slow"))
  assert bl.baselines(train, test)["1nn_euclidean"] == 1.0


def test_window_and_input_checks():
  assert bl.dtw_window(0.1, 286) == 28
  assert bl.dtw_window(0.1, 30) == 3
  assert bl.dtw_window(0.0, 30) == 0
  with pytest.raises(ValueError, match="window"):
    bl.dtw_distances(np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), -1)
  with pytest.raises(ValueError, match="as_matrix"):
    bl.euclidean_distances(np.zeros((1, 3, 1)), np.zeros((1, 4, 1)))


def test_module_does_not_import_jax():
  tree = ast.parse(inspect.getsource(bl))
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not [n for n in names if n.split(".")[0] == "jax"]
