"""Finding datasets by name or path and splitting them into train / validation / test.

Archive datasets are looked up, in this order, in a user directory (``data_dir``),
the data bundled with seqtrain (BasicMotions, JapaneseVowels) and the download
cache (``seqtrain data download NAME``). A folder may hold ``<Name>_TRAIN.ts`` /
``<Name>_TEST.ts`` directly or inside ``<Name>/``; ``.npz`` files (``X``, ``y``) work
the same way. A dataset with only train and test gets a stratified, seeded
validation split carved from train.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np

from seqtrain.data.ts import DataFormatError, SeriesDataset, read_series_file

__all__ = ["BUNDLED_DIR", "bundled_datasets", "dataset_folders", "split_file", "find_split_file",
           "load_split", "Splits", "load_splits", "check_compatible", "unknown_classes",
           "relabel"]

BUNDLED_DIR = Path(__file__).parent / "archive"
SPLIT_FILES = {"train": "TRAIN", "test": "TEST", "validation": "VALIDATION"}


def bundled_datasets() -> list[str]:
  return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / f"{p.name}_TRAIN.ts").exists())


def _search_roots(data_dir: str | os.PathLike | None, defaults: bool = True) -> list[Path]:
  roots = [Path(data_dir).expanduser()] if data_dir else []
  if defaults or not roots:
    from seqtrain.data.download import cache_dir
    roots += [BUNDLED_DIR, cache_dir()]
  return roots


def dataset_folders(name: str, data_dir: str | os.PathLike | None = None, *,
                    defaults: bool = True) -> list[Path]:
  """The folders that may hold dataset ``name``'s ``<name>_<SPLIT>`` files, in the order
  they are searched: ``data_dir/<name>``, ``data_dir``, then (unless ``defaults`` is
  False and ``data_dir`` is given) the bundled data and the download cache, each as
  ``<root>/<name>`` then ``<root>``. The one search order of every reader (the
  in-memory loader here, the tfds builder)."""
  return [folder for root in _search_roots(data_dir, defaults) for folder in (root / name, root)]


def split_file(folder: Path, name: str, split: str,
               suffixes: tuple[str, ...] = (".ts", ".npz")) -> Path | None:
  """``folder/<name>_<SPLIT><suffix>`` for the first suffix that exists, else None."""
  if split not in SPLIT_FILES:
    raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLIT_FILES)}")
  for suffix in suffixes:
    path = folder / f"{name}_{SPLIT_FILES[split]}{suffix}"
    if path.is_file():
      return path
  return None


def find_split_file(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Path | None:
  """The file of ``split`` of archive dataset ``name``, or None if no folder has it."""
  for folder in dataset_folders(name, data_dir):
    path = split_file(folder, name, split)
    if path is not None:
      return path
  return None


def _not_found(name: str, data_dir) -> DataFormatError:
  from seqtrain.data.download import cache_dir
  known = bundled_datasets()
  cache = cache_dir()
  if cache.is_dir():
    known += sorted(p.name for p in cache.iterdir() if p.is_dir())
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  where = ", ".join(str(d) for d in _search_roots(data_dir))
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return DataFormatError(name, f"dataset not found (looked for {name}_TRAIN.ts/.npz in {where})."
                         f"{hint} Download archive datasets with `seqtrain data download {name}`.")


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None) -> SeriesDataset:
  path = find_split_file(name, split, data_dir)
  if path is None:
    if split == "train" or find_split_file(name, "train", data_dir) is None:
      raise _not_found(name, data_dir)
    raise DataFormatError(name, f"dataset has no {split} split ({name}_{SPLIT_FILES[split]}.ts)")
  return read_series_file(path, name)


@dataclasses.dataclass
class Splits:
  """The one container of a dataset's splits (random-access sources), whatever their
  origin: archive or users' files (``load_splits``), prepared tfds records or a synthetic
  task (``seqtrain.train.input_pipeline.build_data``, whose ``DataBundle`` adds the
  run's normalisation and padded length). ``test`` may be None; ``validation`` may be
  the test split itself when none was held out."""
  train: Any
  validation: Any
  test: Any | None
  class_names: tuple[str, ...]
  num_channels: int
  description: str = ""

  def items(self) -> list[tuple[str, Any]]:
    """(name, source) of the splits present, in train / validation / test order."""
    return [(k, v) for k, v in (("train", self.train), ("validation", self.validation),
                                ("test", self.test)) if v is not None]

  def split(self, name: str):
    """The source of split ``name``; DataFormatError if the dataset has none."""
    source = dict(self.items()).get(name)
    if source is None:
      raise DataFormatError(name, f"this dataset has no {name} split")
    return source

  def sizes(self) -> dict[str, int]:
    return {k: len(v) for k, v in self.items()}


def unknown_classes(data: SeriesDataset, class_names) -> list[str]:
  """Classes that ``data``'s examples use but ``class_names`` lacks, sorted."""
  known = set(class_names)
  return sorted({data.class_names[i] for i in np.unique(data.labels)} - known)


def relabel(data: SeriesDataset, class_names) -> SeriesDataset:
  """``data`` with labels indexing ``class_names`` (which must hold every used class)."""
  index = {c: i for i, c in enumerate(class_names)}
  labels = np.array([index[data.class_names[y]] for y in data.labels], np.int32)
  return SeriesDataset(data.series, labels, tuple(class_names), data.name, data.source)


def check_compatible(reference: SeriesDataset, other: SeriesDataset, what: str) -> SeriesDataset:
  """Maps ``other``'s labels onto ``reference``'s classes; clear errors on a mismatch."""
  if other.num_channels != reference.num_channels:
    raise DataFormatError(other.source, f"{what} has {other.num_channels} channels, the training "
                          f"data {reference.num_channels}")
  unknown = unknown_classes(other, reference.class_names)
  if unknown:
    raise DataFormatError(other.source, f"{what} holds classes {unknown} that "
                          f"the training data does not have ({list(reference.class_names)})")
  return relabel(other, reference.class_names)


def load_splits(name: str | None = None, *, train_file: str | None = None,
                test_file: str | None = None, validation_file: str | None = None,
                data_dir: str | os.PathLike | None = None, validation_fraction: float = 0.2,
                seed: int = 0) -> Splits:
  """Train / validation / test of an archive dataset (by ``name``) or of users' files.

  Without a validation file, ``validation_fraction`` of every class of train is held
  out (stratified, seeded by ``seed``); with ``validation_fraction=0`` the test split
  stands in as ``validation`` (the trainer then only monitors it: no checkpoint is
  selected on test data).
  """
  from seqtrain.data.pipeline import stratified_split
  if train_file:
    train = read_series_file(train_file, name)
    test = read_series_file(test_file, name) if test_file else None
    val = read_series_file(validation_file, name) if validation_file else None
  elif name:
    train = load_split(name, "train", data_dir)
    test = load_split(name, "test", data_dir) if find_split_file(name, "test", data_dir) else None
    val = (load_split(name, "validation", data_dir)
           if find_split_file(name, "validation", data_dir) else None)
  else:
    raise ValueError("give a dataset name or a train file")
  if len(train) == 0:
    raise DataFormatError(train.source, "the training split is empty")
  if test is not None:
    test = check_compatible(train, test, "the test split")
  if val is not None:
    val = check_compatible(train, val, "the validation split")
  elif validation_fraction > 0:
    keep, held = stratified_split(train.labels, validation_fraction, seed)
    train, val = train.subset(keep), train.subset(held)
  else:
    val = test
  if val is None:
    raise DataFormatError(train.source, "no validation data: give a test or validation file or a "
                          "validation_fraction > 0")
  missing = sorted(set(range(train.num_classes)) - set(np.unique(train.labels).tolist()))
  if missing:
    raise DataFormatError(train.source, f"the training split has no examples of classes "
                          f"{[train.class_names[i] for i in missing]}")
  return Splits(train, val, test, train.class_names, train.num_channels, train.summary())
