"""Config -> train / validation / test sources, normalisation and iterators."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from seqtrain.data import pipeline, sources
from seqtrain.data.pipeline import Normalizer, ShardInfo
from seqtrain.data.ts import DataFormatError

__all__ = ["Subset", "Concat", "DataBundle", "build_data", "synthetic_split",
           "train_pad_lengths", "baseline_report"]


class Subset:
  """Rows ``indices`` of a random-access source."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.lengths = np.asarray(source.lengths)[self.indices]
    self.labels = np.asarray(source.labels)[self.indices]
    for attr in ("class_names", "num_channels", "num_classes", "name"):
      if hasattr(source, attr):
        setattr(self, attr, getattr(source, attr))

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


class Concat:
  """Random-access sources one after the other (same classes and channels)."""

  def __init__(self, *sources):
    self.sources = sources
    self.offsets = np.cumsum([0] + [len(s) for s in sources])
    self.lengths = np.concatenate([np.asarray(s.lengths) for s in sources])
    self.labels = np.concatenate([np.asarray(s.labels) for s in sources])
    for attr in ("class_names", "num_channels", "num_classes"):
      if hasattr(sources[0], attr):
        setattr(self, attr, getattr(sources[0], attr))

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    return self.sources[k][int(i - self.offsets[k])]


@dataclasses.dataclass
class DataBundle(sources.Splits):
  """A run's splits (``sources.Splits``) with the normalisation fitted on its training
  split and the padded length of its batches."""
  normalizer: Normalizer | None = None
  max_length: int = 0

  def info(self) -> dict:
    return {"class_names": list(self.class_names), "num_channels": self.num_channels,
            "max_length": self.max_length, "description": self.description,
            "normalizer": self.normalizer.to_json() if self.normalizer else None,
            "sizes": self.sizes()}


def baseline_report(bundle: "DataBundle", source, split: str, say=None) -> dict | None:
  """1-NN Euclidean / DTW (``seqtrain.baselines``) on ``source``, fitted on the run's
  training data: the train split, plus the validation split held out of it when
  ``source`` is not that validation split. None for synthetic tasks (their
  reference is the task's oracle) and when the training data is not at hand."""
  from seqtrain import baselines
  if bundle.train is None or hasattr(bundle.train, "oracle"):
    return None
  parts = [bundle.train]
  if (bundle.validation is not None and bundle.validation is not bundle.test
      and split != "validation"):
    parts.append(bundle.validation)
  out = baselines.baselines(Concat(*parts) if len(parts) > 1 else parts[0], source)
  out["train_size"] = sum(len(p) for p in parts)
  if say is not None:
    say("baselines on the same " + split + " examples (fitted on the " + str(out["train_size"])
        + " training series): " + baselines.describe(out))
  return out


def synthetic_split(config, split: str):
  """Split ``split`` of the config's synthetic task (at ``data.length``, of
  ``data.<split>_size`` examples); with ``data.train_min_length`` the training
  series' lengths are uniform in [train_min_length, length] (validation and test
  stay at ``length``)."""
  from seqtrain.data.synthetic import TooShortError, make_task
  d = config.data
  min_length = d.train_min_length if split == "train" else 0
  try:
    return make_task(d.name, split=split, length=d.length, size=d[f"{split}_size"],
                     seed=config.seed, num_classes=d.num_classes, channels=d.channels,
                     min_length=min_length or None)
  except TooShortError as e:
    if e.field != "min_length":
      raise
    from seqtrain.train.config import ConfigError
    raise ConfigError(f"config field data.train_min_length={min_length}: too short for the "
                      f"{d.name} task ({e})") from None


def _synthetic(config):
  return tuple(synthetic_split(config, s) for s in ("train", "validation", "test"))


def _tfds(config, workdir):
  from seqtrain.data import tfds_builder
  d = config.data
  if d.tfds_dir:
    root = Path(d.tfds_dir).expanduser()
  else:   # where `seqtrain data prepare` writes: prepared once, reused by every run
    from seqtrain.data.download import cache_dir
    root = cache_dir() / "tfds"
  # once per cache folder; a progress line where someone watches (not in logs)
  tfds_builder.prepare(d.name, root, source_dir=d.data_dir or None,
                       progress=sys.stderr.isatty())
  train = tfds_builder.data_source(d.name, "train", root)
  test = tfds_builder.data_source(d.name, "test", root)
  if d.validation_fraction > 0:
    keep, held = pipeline.stratified_split(train.labels, d.validation_fraction, config.seed)
    return Subset(train, keep), Subset(train, held), test
  return train, test, test


def build_data(config, workdir: str | Path | None = None) -> DataBundle:
  d = config.data
  if d.source == "synthetic":
    train, val, test = _synthetic(config)
  elif d.format == "tfds":
    if d.source != "archive":
      raise DataFormatError(d.source, "data.format=tfds reads archive datasets (data.source="
                            "archive); use data.format=memory for files")
    train, val, test = _tfds(config, workdir or ".")
  else:
    splits = sources.load_splits(
        d.name if d.source == "archive" else (d.name or None),
        train_file=d.train_file or None if d.source == "files" else None,
        test_file=d.test_file or None, validation_file=d.validation_file or None,
        data_dir=d.data_dir or None, validation_fraction=d.validation_fraction, seed=config.seed)
    train, val, test = splits.train, splits.validation, splits.test
  class_names = tuple(train.class_names)
  channels = int(train.num_channels)
  lengths = np.concatenate([np.asarray(s.lengths) for s in (train, val, test) if s is not None])
  max_length = int(lengths.max())
  if d.max_length:
    max_length = min(max_length, d.max_length)
  normalizer = None
  if d.normalize:
    budget = max(8, min(4096, int(2e7 // max(1, max_length))))
    normalizer = Normalizer.fit(train, max_examples=budget, seed=config.seed)
  description = (f"{d.name or d.train_file}: {len(train)} train / {len(val)} validation / "
                 f"{len(test) if test is not None else 0} test, {channels} channels, "
                 f"{len(class_names)} classes, length <= {max_length}")
  return DataBundle(train, val, test, class_names, channels, description=description,
                    normalizer=normalizer, max_length=max_length)


def train_iterator(bundle: DataBundle, config, shard: ShardInfo):
  d = config.data
  ds = pipeline.train_dataset(bundle.train, global_batch_size=config.train.batch_size,
                              seed=config.seed, shard=shard, normalizer=bundle.normalizer,
                              bucket_boundaries=d.bucket_boundaries or None,
                              bucket_window=d.bucket_window, max_length=d.max_length or None,
                              read_threads=d.read_threads)
  return iter(ds)


def train_pad_lengths(bundle: DataBundle, config) -> list[int]:
  """Every padded length T that the training stream can feed the model, sorted (one
  without bucketing: the longest, cropped, training series)."""
  d = config.data
  lengths = np.asarray(bundle.train.lengths)
  if d.max_length:
    lengths = np.minimum(lengths, d.max_length)
  pad_of = pipeline.pad_length_fn(lengths, d.bucket_boundaries or None)
  return sorted({pad_of(int(n)) for n in np.unique(lengths)})


def eval_batches(source, bundle: DataBundle, config, shard: ShardInfo):
  d = config.data
  return pipeline.eval_dataset(source, global_batch_size=config.train.eval_batch_size,
                               shard=shard, normalizer=bundle.normalizer,
                               bucket_boundaries=d.bucket_boundaries or None,
                               max_length=d.max_length or None, read_threads=d.read_threads)


