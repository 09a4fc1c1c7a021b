"""grain input pipelines: sharded, seeded, resumable batches of padded series.

Any random-access *source* feeds them: an object with ``__len__``, ``__getitem__(i)``
returning ``{"series": (T_i, C) float32, "label": int}``, and the cheap metadata
arrays ``lengths`` and ``labels`` (a :class:`~seqtrain.data.ts.SeriesDataset`, a
synthetic task, a tfds array_record data source wrapped by
:class:`~seqtrain.data.tfds_builder.TfdsSource`).

The order of examples is a function of ``(seed, epoch)`` only: every process
computes the same global order and the same global batches, and process ``p`` of
``P`` reads only rows ``[p*b, (p+1)*b)`` of each global batch of ``G = P*b``
examples. So the host batches, concatenated in process order, are exactly the
batches of a single-process run with the same seed, each host reads only its
shard, and the iterator's whole state is one integer (grain's
``DatasetIterator.get_state()``), which Orbax saves beside the model.

Batches are dicts of numpy arrays::

  inputs  (b, L, C) float32   normalised, zero past each length and where missing
  lengths (b,)      int32     valid steps of each row
  labels  (b,)      int32
  mask    (b,)      float32   1 for a real example, 0 for padding rows (eval only)
  index   (b,)      int64     example index in the source, -1 for padding rows

``L`` is the same on every host for a given step: the longest series of the
*global* batch rounded up to the next bucket boundary (or the source's longest
series when no boundaries are given), so each distinct ``L`` compiles once.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Protocol, Sequence

import grain
import numpy as np

from seqtrain.data.moments import Moments

__all__ = ["Source", "Normalizer", "stratified_split", "ShardInfo", "train_dataset",
           "eval_dataset", "num_eval_batches", "pad_length_fn"]


class Source(Protocol):
  lengths: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int: ...

  def __getitem__(self, i: int) -> dict: ...


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """Which slice of every global batch this process reads."""
  index: int = 0
  count: int = 1

  def __post_init__(self):
    if self.count < 1 or not 0 <= self.index < self.count:
      raise ValueError(f"process index {self.index} outside [0, {self.count})")

  def host_batch_size(self, global_batch_size: int) -> int:
    if global_batch_size < 1 or global_batch_size % self.count:
      raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of the "
                       f"process count {self.count}")
    return global_batch_size // self.count


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Per-channel standardisation with statistics of the training split only."""
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @classmethod
  def fit(cls, source: Source, max_examples: int = 4096, seed: int = 0) -> "Normalizer":
    """Mean and standard deviation per channel over every observed (non-missing) step
    of up to ``max_examples`` examples (a seeded subset of larger sources)."""
    n = len(source)
    if n == 0:
      raise ValueError("cannot fit normalisation statistics on an empty training split")
    idx = np.arange(n) if n <= max_examples else np.sort(
        np.random.default_rng(seed).choice(n, max_examples, replace=False))
    moments = None
    for i in idx:
      x = np.asarray(source[int(i)]["series"], np.float64)
      moments = moments or Moments(x.shape[1])
      moments.add(x)
    mean, std = moments.mean, moments.std()
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    if x.shape[-1] != len(self.mean):
      raise ValueError(f"series has {x.shape[-1]} channels, normalisation statistics have "
                       f"{len(self.mean)}")
    y = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    return np.nan_to_num(y, nan=0.0).astype(np.float32)

  def to_json(self) -> dict:
    return {"mean": list(self.mean), "std": list(self.std)}

  @classmethod
  def from_json(cls, d: dict) -> "Normalizer":
    return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
  """Seeded stratified split of indices into (keep, held_out): ``round(fraction * n_c)``
  of every class ``c`` with at least two examples goes to ``held_out`` (at least one)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
  labels = np.asarray(labels)
  keep, held = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
    k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
    held.append(idx[:k])
    keep.append(idx[k:])
  return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def pad_length_fn(lengths: np.ndarray, bucket_boundaries: Sequence[int] | None = None):
  """``f(max_length_of_batch) -> padded length`` shared by every host."""
  longest = int(np.max(lengths))
  if not bucket_boundaries:
    return lambda n: longest
  bounds = sorted(int(b) for b in bucket_boundaries)
  if bounds[-1] < longest:
    bounds.append(longest)
  bounds = np.asarray(bounds)
  return lambda n: int(bounds[np.searchsorted(bounds, n)])


class _GlobalOrder:
  """Global example order for the training stream: epoch ``e`` is a permutation drawn
  from ``(seed, e)``; with ``bucket_window`` it is then grouped into windows of
  ``bucket_window`` global batches, each sorted by length, and the batches of a window
  shuffled, so batches hold series of similar length."""

  def __init__(self, lengths, global_batch, seed, shuffle, bucket_window):
    self.lengths = np.asarray(lengths)
    self.n = len(self.lengths)
    self.g = global_batch
    self.seed = seed
    self.shuffle = shuffle
    self.bucket_window = bucket_window

  @functools.lru_cache(maxsize=4)
  def epoch(self, e: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, e])
    order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
    if self.bucket_window:
      w = self.g * self.bucket_window
      parts = []
      for start in range(0, self.n, w):
        chunk = order[start:start + w]
        chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        nb = len(chunk) // self.g
        batches = [chunk[i * self.g:(i + 1) * self.g] for i in range(nb)]
        rest = chunk[nb * self.g:]
        batches = [batches[i] for i in rng.permutation(nb)] if self.shuffle else batches
        parts.extend(batches + ([rest] if len(rest) else []))
      order = np.concatenate(parts)
    return order

  def __getitem__(self, position: int) -> int:
    e, i = divmod(position, self.n)
    return int(self.epoch(e)[i])

  def batch(self, step: int) -> np.ndarray:
    return np.array([self[step * self.g + r] for r in range(self.g)])


def _example(source: Source, i: int, pad: int, normalizer: Normalizer | None):
  item = source[i]
  x = np.asarray(item["series"], np.float32)
  if x.ndim == 1:
    x = x[:, None]
  n = min(x.shape[0], pad)
  out = np.zeros((pad, x.shape[1]), np.float32)
  out[:n] = normalizer(x[:n]) if normalizer is not None else np.nan_to_num(x[:n])
  return {"inputs": out, "lengths": np.int32(n), "labels": np.int32(item["label"]),
          "mask": np.float32(1.0), "index": np.int64(i)}


def _padding_example(pad: int, channels: int):
  return {"inputs": np.zeros((pad, channels), np.float32), "lengths": np.int32(1),
          "labels": np.int32(0), "mask": np.float32(0.0), "index": np.int64(-1)}


def _stack(items: Sequence[dict]) -> dict:
  return {k: np.stack([it[k] for it in items]) for k in items[0]}


def _host_lengths(source: Source, split: str, max_length: int | None) -> np.ndarray:
  """The (cropped) lengths of a non-empty source."""
  if len(source) == 0:
    raise ValueError(f"the {split} split is empty")
  lengths = np.asarray(source.lengths)
  return np.minimum(lengths, max_length) if max_length else lengths


def _host_batches(element, steps: int, b: int, options: grain.ReadOptions) -> grain.IterDataset:
  """Host batch s = elements [s*b, (s+1)*b), stacked; one integer of iterator state."""
  ds = grain.MapDataset.range(steps * b).map(element).batch(b, drop_remainder=True,
                                                               batch_fn=_stack)
  return ds.to_iter_dataset(options)


def train_dataset(source: Source, *, global_batch_size: int, seed: int,
                  shard: ShardInfo = ShardInfo(), normalizer: Normalizer | None = None,
                  shuffle: bool = True, num_epochs: int | None = None,
                  bucket_boundaries: Sequence[int] | None = None, bucket_window: int = 0,
                  max_length: int | None = None, read_threads: int = 4,
                  prefetch: int = 8) -> grain.IterDataset:
  """The training stream of host batches for process ``shard.index``.

  Infinite unless ``num_epochs`` is given (then the last partial global batch is
  dropped). Iterate it with ``iter(...)``; the iterator's ``get_state()`` /
  ``set_state()`` resume it exactly. ``max_length`` crops longer series.
  """
  lengths = _host_lengths(source, "training", max_length)
  n = len(source)
  b = shard.host_batch_size(global_batch_size)
  order = _GlobalOrder(lengths, global_batch_size, seed, shuffle, bucket_window)
  pad_of = pad_length_fn(lengths, bucket_boundaries)
  steps = sys.maxsize // global_batch_size if num_epochs is None else (
      num_epochs * n) // global_batch_size
  if steps == 0:
    raise ValueError(f"{num_epochs} epoch(s) of {n} examples hold no full global batch of "
                     f"{global_batch_size}")

  @functools.lru_cache(maxsize=16)
  def pad_for_step(step: int) -> int:
    return pad_of(int(lengths[order.batch(step)].max()))

  def element(j: int) -> dict:
    step, r = divmod(j, b)
    i = order[step * global_batch_size + shard.index * b + r]
    return _example(source, i, pad_for_step(step), normalizer)

  return _host_batches(element, steps, b, grain.ReadOptions(num_threads=read_threads,
                                                            prefetch_buffer_size=prefetch))


def num_eval_batches(n: int, global_batch_size: int) -> int:
  return -(-n // global_batch_size)


def eval_dataset(source: Source, *, global_batch_size: int, shard: ShardInfo = ShardInfo(),
                 normalizer: Normalizer | None = None,
                 bucket_boundaries: Sequence[int] | None = None,
                 max_length: int | None = None, read_threads: int = 4) -> grain.IterDataset:
  """Every example exactly once, in order, in global batches of ``global_batch_size``;
  the last global batch is filled with padding rows (``mask`` 0, ``index`` -1) so every
  host runs the same number of equally shaped batches."""
  lengths = _host_lengths(source, "evaluation", max_length)
  n = len(source)
  b = shard.host_batch_size(global_batch_size)
  pad_of = pad_length_fn(lengths, bucket_boundaries)
  channels = int(np.asarray(source[0]["series"]).reshape(int(source.lengths[0]), -1).shape[1])
  steps = num_eval_batches(n, global_batch_size)

  def element(j: int) -> dict:
    step, r = divmod(j, b)
    g = step * global_batch_size
    pad = pad_of(int(lengths[g:g + global_batch_size].max()))
    i = g + shard.index * b + r
    return _example(source, i, pad, normalizer) if i < n else _padding_example(pad, channels)

  return _host_batches(element, steps, b, grain.ReadOptions(num_threads=read_threads,
                                                            prefetch_buffer_size=4))


