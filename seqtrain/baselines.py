"""The classic UCR/UEA baselines: 1-NN Euclidean and 1-NN DTW on resampled series.

Both sets are brought to one length by :func:`as_matrix` (missing values
interpolated, every series linearly resampled to the longest length, no
normalisation), then each test series takes the label of its nearest training
series (ties go to the lowest training index) under

* the squared Euclidean distance over all steps and channels
  (:func:`one_nn_euclidean`), or
* dependent multivariate DTW: squared Euclidean point cost summed over the
  channels, warping confined to a Sakoe-Chiba band of ``window`` steps
  (:func:`one_nn_dtw`), computed exactly (no lower bounds, no early abandon).

:func:`baselines` runs both on a train / test pair of sources and reports the
accuracies, skipping DTW when its cost (cells of the band over all pairs)
exceeds a budget. Pure numpy; nothing here imports JAX.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

__all__ = ["fill_missing", "resample", "as_matrix", "euclidean_distances", "dtw_distances",
           "one_nn_euclidean", "one_nn_dtw", "dtw_window", "baselines", "describe"]

# Bytes of temporaries one distance block may use (bounds memory, keeps blocks in cache-friendly
# sizes); blocks are cut over test and train series to fit.
_BLOCK_BYTES = 64 << 20


def fill_missing(series: np.ndarray) -> np.ndarray:
  """``(T, C)`` float64 copy with NaN replaced channel by channel: linear interpolation in time
  between valid values, the nearest valid value at the edges, 0 for an all-NaN channel."""
  x = np.array(series, np.float64, copy=True)
  if x.ndim == 1:
    x = x[:, None]
  missing = np.isnan(x)
  if not missing.any():
    return x
  t = np.arange(x.shape[0], dtype=np.float64)
  for c in np.flatnonzero(missing.any(axis=0)):
    valid = ~missing[:, c]
    x[:, c] = np.interp(t, t[valid], x[valid, c]) if valid.any() else 0.0
  return x


def resample(series: np.ndarray, length: int) -> np.ndarray:
  """``(T, C)`` series linearly interpolated to ``(length, C)``: both ends kept, the steps
  spread evenly over [0, 1] (``np.interp`` per channel)."""
  x = np.asarray(series, np.float64)
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  if x.shape[0] == length:
    return x.copy()
  if x.shape[0] == 1:
    return np.repeat(x, length, axis=0)
  old = np.linspace(0.0, 1.0, x.shape[0])
  new = np.linspace(0.0, 1.0, length)
  return np.stack([np.interp(new, old, x[:, c]) for c in range(x.shape[1])], axis=1)


def as_matrix(source, length: int | None = None) -> np.ndarray:
  """``(N, length, C)`` float64 array of a source's series: NaN filled (:func:`fill_missing`),
  then each series resampled to ``length`` (default: the longest series of ``source``)."""
  n = len(source)
  series = [fill_missing(source[i]["series"]) for i in range(n)]
  if length is None:
    length = max((s.shape[0] for s in series), default=0)
  channels = series[0].shape[1] if series else 0
  out = np.empty((n, int(length), channels), np.float64)
  for i, s in enumerate(series):
    if s.shape[1] != channels:
      raise ValueError(f"series {i} has {s.shape[1]} channels, series 0 has {channels}")
    out[i] = resample(s, int(length))
  return out


def _check_pair(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  if a.ndim == 2:
    a = a[..., None]
  if b.ndim == 2:
    b = b[..., None]
  if a.ndim != 3 or b.shape[1:] != a.shape[1:]:
    raise ValueError(f"train and test must be (N, L, C) arrays of one (L, C); got {a.shape} and "
                     f"{b.shape} (resample with as_matrix first)")
  return a, b


def euclidean_distances(train_x: np.ndarray, test_x: np.ndarray) -> np.ndarray:
  """``(n_test, n_train)`` squared Euclidean distances between ``(N, L, C)`` series, summed over
  steps and channels; computed from the differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation)."""
  return _blocked(train_x, test_x, _euclidean_block, _euclidean_bytes)[2]


def dtw_distances(train_x: np.ndarray, test_x: np.ndarray, window: int) -> np.ndarray:
  """``(n_test, n_train)`` DTW distances: the cheapest warping path from (0, 0) to (L-1, L-1)
  with steps (1, 0), (0, 1), (1, 1), point cost the squared Euclidean distance over channels,
  cells restricted to ``|i - j| <= window`` (Sakoe-Chiba band)."""
  window = _check_window(window)
  return _blocked(train_x, test_x, lambda q, x: _dtw_block(q, x, window),
                  lambda length, channels: _dtw_bytes(length, channels, window))[2]


def one_nn_euclidean(train_x: np.ndarray, train_y, test_x: np.ndarray) -> np.ndarray:
  """Labels of the nearest training series (squared Euclidean distance; ties: lowest index)."""
  index = _blocked(train_x, test_x, _euclidean_block, _euclidean_bytes, keep=False)[0]
  return np.asarray(train_y)[index]


def one_nn_dtw(train_x: np.ndarray, train_y, test_x: np.ndarray, window: int) -> np.ndarray:
  """Labels of the nearest training series under windowed DTW (:func:`dtw_distances`; ties:
  lowest index). Exact: every band cell of every pair is computed."""
  window = _check_window(window)
  index = _blocked(train_x, test_x, lambda q, x: _dtw_block(q, x, window),
                   lambda length, channels: _dtw_bytes(length, channels, window), keep=False)[0]
  return np.asarray(train_y)[index]


def dtw_window(fraction: float, length: int) -> int:
  """Sakoe-Chiba band in steps: ``floor(fraction * length)`` (fraction 0.1 = the "10% window")."""
  if not 0 <= fraction:
    raise ValueError(f"dtw window fraction must be >= 0, got {fraction}")
  return int(math.floor(fraction * length + 1e-9))


def _check_window(window) -> int:
  if int(window) != window or window < 0:
    raise ValueError(f"window must be a non-negative integer number of steps, got {window!r}")
  return int(window)


def _euclidean_bytes(length: int, channels: int) -> int:
  return 8 * length * channels


def _euclidean_block(q: np.ndarray, x: np.ndarray) -> np.ndarray:
  d = q.reshape(len(q), 1, -1) - x.reshape(1, len(x), -1)
  return np.einsum("bnk,bnk->bn", d, d)


def _dtw_bytes(length: int, channels: int, window: int) -> int:
  # three diagonal buffers of length L + 2, plus the difference / cost temporaries of one diagonal
  return 8 * (3 * (length + 2) + 2 * (window + 1) * (channels + 1))


def _dtw_block(q: np.ndarray, x: np.ndarray, window: int) -> np.ndarray:
  """DTW between every (query, train) pair of a block, swept by anti-diagonal ``k = i + j``.

  Cell (i, j) needs (i-1, j-1) on diagonal k-2 and (i-1, j), (i, j-1) on diagonal k-1, so a
  whole diagonal of every pair is one vectorised update. A diagonal is stored by ``i`` (index
  ``i + 1``; indices 0 and L + 1 stay inf) in a ``(L + 2, B, N)`` buffer.
  """
  length = q.shape[1]
  b, n = len(q), len(x)
  qt = np.ascontiguousarray(q.transpose(1, 0, 2))[:, :, None, :]  # (L, B, 1, C)
  xr = np.ascontiguousarray(x[:, ::-1].transpose(1, 0, 2))[:, None, :, :]  # (L, 1, N, C), j flipped
  bufs = [np.full((length + 2, b, n), np.inf) for _ in range(3)]
  prev2, prev1, cur = bufs
  for k in range(2 * length - 1):
    lo = max(0, k - length + 1, (k - window + 1) // 2)
    hi = min(length - 1, k, (k + window) // 2)
    if hi >= lo:
      # cells i = lo..hi, j = k - i; x reversed so that j runs over a contiguous slice
      r0 = length - 1 - k + lo
      diff = qt[lo:hi + 1] - xr[r0:r0 + hi - lo + 1]
      cost = np.einsum("mbnc,mbnc->mbn", diff, diff) if diff.shape[-1] > 1 else diff[..., 0] ** 2
      if k == 0:
        cur[1] = cost[0]
      else:
        best = np.minimum(prev2[lo:hi + 1], prev1[lo:hi + 1])
        np.minimum(best, prev1[lo + 1:hi + 2], out=best)
        np.add(cost, best, out=cur[lo + 1:hi + 2])
    # cells lo - 1 and hi + 1 are read by the next two diagonals: they must be inf
    cur[lo] = np.inf
    cur[hi + 2] = np.inf
    prev2, prev1, cur = prev1, cur, prev2
  return prev1[length].copy()


def _blocked(train_x, test_x, block_fn, bytes_fn, keep: bool = True):
  """Runs ``block_fn(test_block, train_block) -> (b, n) distances`` over blocks sized to
  ``_BLOCK_BYTES`` and returns (nearest train index, its distance, the full matrix or None).
  A later train block replaces the nearest only when strictly closer: ties -> lowest index."""
  train, test = _check_pair(train_x, test_x)
  n_train, n_test = len(train), len(test)
  if n_train == 0:
    raise ValueError("no training series")
  per_pair = max(1, bytes_fn(train.shape[1], train.shape[2]))
  pairs = max(1, _BLOCK_BYTES // per_pair)
  train_block = min(n_train, pairs)
  test_block = max(1, min(n_test, pairs // train_block))
  nearest = np.zeros(n_test, np.int64)
  best = np.full(n_test, np.inf)
  full = np.empty((n_test, n_train)) if keep else None
  for t0 in range(0, n_test, test_block):
    t1 = min(n_test, t0 + test_block)
    for s0 in range(0, n_train, train_block):
      s1 = min(n_train, s0 + train_block)
      d = block_fn(test[t0:t1], train[s0:s1])
      if keep:
        full[t0:t1, s0:s1] = d
      i = np.argmin(d, axis=1)  # first minimum: lowest index within the block
      v = d[np.arange(t1 - t0), i]
      closer = v < best[t0:t1]
      best[t0:t1] = np.where(closer, v, best[t0:t1])
      nearest[t0:t1] = np.where(closer, s0 + i, nearest[t0:t1])
  return nearest, best, full


def _labels_for(train_source, test_source) -> tuple[np.ndarray, np.ndarray]:
  """Train and test labels on one scale: when both sources name their classes
  (``class_names``) and the names differ, test labels are mapped by name (-1 if unknown)."""
  train_y = np.asarray(train_source.labels)
  test_y = np.asarray(test_source.labels)
  a = getattr(train_source, "class_names", None)
  b = getattr(test_source, "class_names", None)
  if a is not None and b is not None and tuple(a) != tuple(b):
    index = {name: i for i, name in enumerate(a)}
    test_y = np.array([index.get(b[y], -1) for y in test_y], train_y.dtype)
  return train_y, test_y


def baselines(train_source, test_source, *, dtw_window_fraction: float = 0.1,
              max_dtw_cells: float = 2e9, max_euclidean_cells: float = 2e10,
              max_matrix_bytes: float = 2 * 2**30) -> dict[str, Any]:
  """Test accuracy of 1-NN Euclidean and 1-NN DTW trained on ``train_source``.

  Both sets are resampled to the longest series over train and test (:func:`as_matrix`). The
  DTW band is ``dtw_window(dtw_window_fraction, L)`` steps; DTW is skipped (accuracy None,
  ``dtw_skipped`` says why) when ``n_train * n_test * L * (2 * window + 1)`` exceeds
  ``max_dtw_cells``; both are skipped when ``n_train * n_test * L * C`` exceeds
  ``max_euclidean_cells`` or the resampled float64 series would take more than
  ``max_matrix_bytes``. ``seconds`` holds the wall time of each part.
  """
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  lengths = np.concatenate([np.asarray(train_source.lengths), np.asarray(test_source.lengths)])
  length = int(lengths.max())
  channels = train_source[0]["series"].shape[-1]
  cells = float(len(train_source)) * len(test_source) * length * channels
  matrix_bytes = 8.0 * (len(train_source) + len(test_source)) * length * channels
  if cells > max_euclidean_cells or matrix_bytes > max_matrix_bytes:
    reason = (f"not affordable: {len(train_source)} train x {len(test_source)} test x length "
              f"{length} = {cells:.3g} cells (limit {max_euclidean_cells:.3g}), "
              f"{matrix_bytes / 2**30:.2g} GiB resampled (limit {max_matrix_bytes / 2**30:.2g})")
    return {"1nn_euclidean": None, "1nn_dtw": None, "length": length, "seconds": seconds,
            "euclidean_skipped": reason, "dtw_skipped": reason}
  train_x = as_matrix(train_source, length)
  test_x = as_matrix(test_source, length)
  train_y, test_y = _labels_for(train_source, test_source)
  seconds["resample"] = time.perf_counter() - start

  start = time.perf_counter()
  euclid = float(np.mean(one_nn_euclidean(train_x, train_y, test_x) == test_y))
  seconds["1nn_euclidean"] = time.perf_counter() - start

  window = dtw_window(dtw_window_fraction, length)
  cells = float(len(train_x)) * len(test_x) * length * (2 * window + 1)
  out: dict[str, Any] = {"1nn_euclidean": euclid, "1nn_dtw": None, "dtw_window": window,
                         "length": length, "seconds": seconds}
  if cells > max_dtw_cells:
    out["dtw_skipped"] = (f"not affordable: {len(train_x)} train x {len(test_x)} test x length "
                          f"{length} x band {2 * window + 1} = {cells:.3g} cells > max_dtw_cells "
                          f"{max_dtw_cells:.3g}")
    return out
  start = time.perf_counter()
  out["1nn_dtw"] = float(np.mean(one_nn_dtw(train_x, train_y, test_x, window) == test_y))
  seconds["1nn_dtw"] = time.perf_counter() - start
  return out


def describe(out: dict[str, Any]) -> str:
  """One line for a :func:`baselines` result."""
  def acc(key, skipped):
    return f"{out[key]:.4f}" if out.get(key) is not None else f"skipped ({out.get(skipped, '')})"
  window = f" (window {out['dtw_window']} steps)" if "dtw_window" in out else ""
  return (f"1-NN Euclidean {acc('1nn_euclidean', 'euclidean_skipped')}, 1-NN DTW{window} "
          f"{acc('1nn_dtw', 'dtw_skipped')}")
