"""Per-channel moments of series, numerically stable (numpy only)."""
from __future__ import annotations

import numpy as np

__all__ = ["Moments"]


class Moments:
  """Per-channel count / mean / variance (and min, max, missing count) of series added
  one at a time, ignoring NaN: each series' moments about its own mean, combined
  pairwise (Chan, Golub and LeVeque), so a large offset does not cancel the variance
  as sum(x^2) / n - mean^2 would."""

  def __init__(self, channels: int):
    self.n = np.zeros(channels, np.int64)
    self.missing = np.zeros(channels, np.int64)
    self.mean = np.zeros(channels)
    self.m2 = np.zeros(channels)
    self.lo = np.full(channels, np.nan)
    self.hi = np.full(channels, np.nan)

  def add(self, x: np.ndarray) -> None:
    x = np.asarray(x, np.float64)
    valid = ~np.isnan(x)
    n_b = valid.sum(0)
    self.missing += x.shape[0] - n_b
    if not n_b.any():
      return
    safe = np.maximum(n_b, 1)
    mean_b = np.where(valid, x, 0.0).sum(0) / safe
    m2_b = np.where(valid, (x - mean_b) ** 2, 0.0).sum(0)
    n = self.n + n_b
    delta = mean_b - self.mean
    frac = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
    self.mean = self.mean + delta * frac
    self.m2 = self.m2 + m2_b + delta ** 2 * self.n * frac
    self.n = n
    self.lo = np.fmin(self.lo, np.fmin.reduce(x, axis=0))
    self.hi = np.fmax(self.hi, np.fmax.reduce(x, axis=0))

  def std(self) -> np.ndarray:
    """Population standard deviation per channel (0 where nothing was observed)."""
    return np.sqrt(self.m2 / np.maximum(self.n, 1))
