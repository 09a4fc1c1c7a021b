"""UCR/UEA archive datasets as a tensorflow-datasets builder writing array_record files.

:class:`UeaArchive` (tfds name ``uea_archive``) has one builder config per archive
dataset (:data:`ARCHIVE_DATASETS`; :func:`archive_config` makes one on the fly for
any other folder in the archive's ``.ts`` format). It converts the ``TRAIN`` and
``TEST`` files of a dataset into the splits ``train`` and ``test`` of array_record
files, in file order, with the features

  series  Tensor (T, C) float32   NaN where a value is missing
  label   ClassLabel              names from the ``@classLabel`` header, in order
  length  int32                   T
  index   int64                   position of the example in its ``.ts`` file

Neither writing nor reading needs TensorFlow: examples are serialised with the
protos bundled in tfds and read back with ``builder.as_data_source`` (array_record
random access, decoded with numpy). The lengths and labels of every split are
stored in the prepared dataset's ``metadata.json``, so :class:`TfdsSource` gives
the input pipeline its ``lengths`` / ``labels`` arrays without reading the records.

Where the ``.ts`` files come from: the folders of ``sources.dataset_folders`` (the one
search order of every reader), the first that holds both ``<Name>_TRAIN.ts`` and
``<Name>_TEST.ts``:

1. ``source_dir`` when given, and only there: ``<source_dir>/<Name>/`` or ``<source_dir>``;
2. the data bundled with seqtrain (``seqtrain/data/archive/<Name>/``);
3. the download cache of ``seqtrain data download <Name>``
   (``seqtrain.data.download.cache_dir()/<Name>/``).

Usage::

  prepare("BasicMotions", "/data/tfds")            # once; later calls do nothing
  train = data_source("BasicMotions", "train", "/data/tfds")
  train[0]["series"].shape, train.lengths, train.labels
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqtrain.data.download import ARCHIVE, Progress
from seqtrain.data.sources import BUNDLED_DIR, dataset_folders, split_file
from seqtrain.data.ts import SeriesDataset, read_ts

__all__ = ["ARCHIVE_DATASETS", "BUNDLED_DIR", "SPLITS", "DatasetNotFoundError", "UeaArchive",
           "archive_config", "find_ts_files", "prepare", "is_prepared", "data_source",
           "TfdsSource"]

# The UEA multivariate classification archive (timeseriesclassification.com).
# The predefined configs: the datasets of the download registry (download.ARCHIVE, the
# one list of archive datasets); any other archive name gets a config on the fly.
ARCHIVE_DATASETS: tuple[str, ...] = tuple(sorted(ARCHIVE, key=str.lower))

SPLITS: tuple[str, ...] = ("train", "test")
# A config name becomes a directory name: letters, digits and ``_ + - .``.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+.-]*$")
_FILE_FORMAT = "array_record"


class DatasetNotFoundError(FileNotFoundError):
  """The ``.ts`` files of a dataset, or its prepared tfds files, are not where we looked."""


def _check_name(name: str) -> str:
  if not isinstance(name, str) or not _NAME_RE.match(name):
    raise ValueError(f"invalid dataset name {name!r}: use letters, digits and '_', '+', '-', "
                     "'.' (the name of the <Name>_TRAIN.ts file)")
  return name


def find_ts_files(name: str, source_dir: str | os.PathLike | None = None) -> dict[str, Path]:
  """Resolves the ``.ts`` files of dataset ``name``: ``{"train": path, "test": path}``.

  Looks only in ``source_dir`` (directly or in ``source_dir/<name>``) when it is
  given, else in the bundled data, then in the download cache. The first folder
  holding both files wins.

  Raises:
    DatasetNotFoundError: no folder holds both files; the message lists where it looked.
  """
  _check_name(name)
  dirs = dataset_folders(name, source_dir, defaults=source_dir is None)
  for d in dirs:
    files = {split: split_file(d, name, split, (".ts",)) for split in SPLITS}
    if all(files.values()):
      return files
  looked = "\n".join(f"  {d / f'{name}_TRAIN.ts'} (and _TEST.ts)" for d in dirs)
  if source_dir is not None:
    hint = (f"put {name}_TRAIN.ts and {name}_TEST.ts in {source_dir} (or in {name}/ inside it)")
  else:
    hint = (f"download it with `seqtrain data download {name}`, or pass source_dir= a folder "
            f"holding {name}_TRAIN.ts and {name}_TEST.ts")
  raise DatasetNotFoundError(f"dataset {name!r} not found; looked for\n{looked}\n{hint}")


def archive_config(name: str) -> tfds.core.BuilderConfig:
  """The builder config of dataset ``name``: the predefined one for an archive dataset,
  else a new one (for users' own folders in the archive's ``.ts`` format)."""
  _check_name(name)
  config = UeaArchive.builder_configs.get(name)
  if config is not None:
    return config
  return tfds.core.BuilderConfig(name=name, description=f"{name} (user folder, .ts format)")


def _features(num_channels: int, class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "series": tfds.features.Tensor(shape=(None, num_channels), dtype=np.float32,
                                     encoding=tfds.features.Encoding.BYTES,
                                     doc="(T, C) values, NaN where missing"),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "length": tfds.features.Scalar(dtype=np.int32, doc="T, the number of steps"),
      "index": tfds.features.Scalar(dtype=np.int64, doc="position in the .ts file"),
  })


class UeaArchive(tfds.core.GeneratorBasedBuilder):
  """UCR/UEA archive datasets (one config per dataset) as array_record files.

  Args (keyword only):
    source_dir: folder holding ``<Name>_TRAIN.ts`` / ``<Name>_TEST.ts`` (directly or in
      ``<Name>/``); default: the bundled data, then the download cache.
    progress: while preparing, a progress line per split on stderr (download.Progress).
    config, data_dir, version, file_format: as for every tfds builder; the file format
      defaults to array_record.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Series, label, length and file index from the .ts files."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"UEA archive: {n}")
                     for n in ARCHIVE_DATASETS]
  # Bundled with seqtrain, so `tfds.builder("uea_archive")` works offline.
  DEFAULT_BUILDER_CONFIG_NAME = "BasicMotions"
  # tfds infers this (for checksum files) through `importlib_resources`, which it only
  # requires on Python < 3.9 and fails without; this builder downloads nothing.
  code_path = epath.Path(__file__)

  def __init__(self, *, source_dir: str | os.PathLike | None = None, progress: bool = False,
               **kwargs: Any):
    # `_info()` runs inside the base constructor, so the source is set first.
    self._source_dir = None if source_dir is None else Path(source_dir).expanduser()
    self._progress = progress
    kwargs.setdefault("file_format", _FILE_FORMAT)
    super().__init__(**kwargs)
    # For pickling: a predefined config is restored by name (tfds refuses a copy of it).
    config = self._original_state.get("config")
    if (isinstance(config, tfds.core.BuilderConfig)
        and self.builder_configs.get(config.name) is config):
      self._original_state["config"] = config.name
    self._original_state.update(source_dir=source_dir, file_format=kwargs["file_format"])

  def _source_files(self) -> dict[str, Path]:
    return find_ts_files(self.builder_config.name, self._source_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    data_dir = getattr(self, "_data_dir", None)
    if data_dir and (Path(data_dir) / "features.json").is_file():
      # Prepared: the stored features, no need for the source files.
      features = tfds.features.FeaturesDict.from_config(data_dir)
    else:
      path = self._source_files()["train"]
      head = read_ts(path)
      features = _features(head.num_channels, head.class_names)
      self._parsed = (path, head)  # kept for _generate_examples: big files parse slowly
    return tfds.core.DatasetInfo(
        builder=self,
        description="UCR/UEA time-series classification archive, one config per dataset.",
        features=features,
        supervised_keys=("series", "label"),
        homepage="https://www.timeseriesclassification.com",
        disable_shuffling=True,  # keep the order of the .ts files
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    del dl_manager  # the files are local
    files = self._source_files()
    return {split: self._generate_examples(split, files[split]) for split in SPLITS}

  def _generate_examples(self, split: str, path: Path) -> Iterator[tuple[int, dict]]:
    parsed, self._parsed = getattr(self, "_parsed", None), None
    data = parsed[1] if parsed is not None and parsed[0] == path else read_ts(path)
    features = self.info.features
    channels = features["series"].shape[1]
    names = list(features["label"].names)
    if data.num_channels != channels:
      raise ValueError(f"{path}: {data.num_channels} channels but the train file has {channels}")
    unknown = sorted(set(data.class_names) - set(names))
    if unknown:
      raise ValueError(f"{path}: classes {unknown} are not in the train file's {names}")
    remap = np.array([names.index(c) for c in data.class_names], np.int32)
    labels = remap[data.labels]
    # Stored in metadata.json with the dataset: TfdsSource's lengths / labels.
    self.info.metadata[split] = {"lengths": [int(n) for n in data.lengths],
                                 "labels": [int(y) for y in labels]}
    bar = (Progress(f"preparing {self.builder_config.name} {split}", len(data.series),
                    unit="series") if self._progress else None)
    for i, (x, y) in enumerate(zip(data.series, labels)):
      yield i, {"series": x, "label": int(y), "length": np.int32(x.shape[0]),
                "index": np.int64(i)}
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()


def _builder(name: str, data_dir: str | os.PathLike,
             source_dir: str | os.PathLike | None = None, progress: bool = False) -> UeaArchive:
  return UeaArchive(config=archive_config(name), data_dir=os.fspath(data_dir),
                    source_dir=source_dir, progress=progress)


def _prepared_dir(name: str, data_dir: str | os.PathLike) -> Path:
  return Path(data_dir) / UeaArchive.name / _check_name(name) / str(UeaArchive.VERSION)


def is_prepared(name: str, data_dir: str | os.PathLike) -> bool:
  """Whether dataset ``name`` has been prepared under ``data_dir``."""
  return (_prepared_dir(name, data_dir) / "dataset_info.json").is_file()


@contextlib.contextmanager
def _tfds_silenced():
  """tfds's own output off while it prepares: its "Downloading and preparing" prints
  (nothing is downloaded), absl's config lines and its tqdm bars (the progress line
  is the package's own, download.Progress); all restored afterwards."""
  from tensorflow_datasets.core.utils import tqdm_utils
  previous = getattr(tqdm_utils, "_active", True)
  absl_logger = logging.getLogger("absl")  # "Using custom data configuration ..."
  level = absl_logger.level
  tqdm_utils.display_progress_bar(False)
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(previous)
    absl_logger.setLevel(level)


def prepare(name: str, data_dir: str | os.PathLike,
            source_dir: str | os.PathLike | None = None, *,
            progress: bool = False) -> UeaArchive:
  """Writes dataset ``name`` as array_record files under ``data_dir`` (in
  ``uea_archive/<name>/1.0.0``) and returns its builder. Does nothing when it is
  already prepared there. No internet, no TensorFlow. ``progress``: a progress
  line per split on stderr (tfds's own output is silenced either way).

  Raises:
    DatasetNotFoundError: the ``.ts`` files are not found (see :func:`find_ts_files`).
  """
  if is_prepared(name, data_dir):
    return _builder(name, data_dir)
  builder = _builder(name, data_dir, source_dir, progress)
  with _tfds_silenced():
    builder.download_and_prepare(
        file_format=_FILE_FORMAT,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def data_source(name: str, split: str, data_dir: str | os.PathLike) -> "TfdsSource":
  """Random access to split ``split`` ("train" or "test") of the prepared dataset ``name``.

  Raises:
    DatasetNotFoundError: the dataset is not prepared under ``data_dir``.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if not is_prepared(name, data_dir):
    raise DatasetNotFoundError(
        f"dataset {name!r} is not prepared in {data_dir} (no {_prepared_dir(name, data_dir)}); "
        f"prepare it first: seqtrain.data.tfds_builder.prepare({name!r}, {os.fspath(data_dir)!r})")
  return TfdsSource.from_builder(_builder(name, data_dir), split)


class TfdsSource:
  """A prepared tfds split as a source of the grain input pipeline.

  ``source[i]`` is ``{"series": (T, C) float32, "label": int32}``; ``lengths`` and
  ``labels`` come from the dataset's stored metadata (or, for datasets prepared
  without it, from one pass over the records, done once). Safe to share between
  threads.
  """

  def __init__(self, records: Sequence[dict], info: tfds.core.DatasetInfo, split: str):
    self._records = records
    self._info = info
    self.split = split
    self._lock = threading.Lock()
    self._lengths: np.ndarray | None = None
    self._labels: np.ndarray | None = None

  @classmethod
  def from_builder(cls, builder: tfds.core.DatasetBuilder, split: str) -> "TfdsSource":
    return cls(builder.as_data_source(split=split), builder.info, split)

  def __len__(self) -> int:
    return len(self._records)

  @staticmethod
  def _convert(record: dict) -> dict:
    series = np.asarray(record["series"], np.float32)
    if not series.flags.writeable:
      series = series.copy()
    return {"series": series, "label": np.int32(record["label"])}

  def __getitem__(self, i: int) -> dict:
    n = len(self)
    i = int(i)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for {n} examples")
    return self._convert(self._records[i % n])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    return [self._convert(r) for r in self._records.__getitems__([int(i) for i in indices])]

  def _load_metadata(self) -> None:
    if self._lengths is not None:
      return
    with self._lock:
      if self._lengths is not None:
        return
      stored = (self._info.metadata or {}).get(self.split)
      if stored is not None:
        lengths, labels = stored["lengths"], stored["labels"]
      else:  # prepared without metadata: one pass over the records
        lengths, labels = [], []
        for record in self._records:
          lengths.append(int(record["length"]))
          labels.append(int(record["label"]))
      lengths = np.asarray(lengths, np.int64)
      labels = np.asarray(labels, np.int32)
      if len(lengths) != len(self) or len(labels) != len(self):
        raise ValueError(f"{self.name}/{self.split}: metadata for {len(lengths)} examples, "
                         f"the records hold {len(self)}")
      self._labels = labels
      self._lengths = lengths

  @property
  def lengths(self) -> np.ndarray:
    """``(N,)`` int64 number of steps of each example."""
    self._load_metadata()
    return self._lengths

  @property
  def labels(self) -> np.ndarray:
    """``(N,)`` int32 class index of each example."""
    self._load_metadata()
    return self._labels

  @property
  def name(self) -> str:
    return self._info.config_name or self._info.name

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self._info.features["label"].names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_channels(self) -> int:
    return int(self._info.features["series"].shape[1])

  def to_series_dataset(self) -> SeriesDataset:
    """Every example of the split in memory, as read from a ``.ts`` file."""
    items = [self[i] for i in range(len(self))]
    return SeriesDataset([it["series"] for it in items], self.labels, self.class_names, self.name,
                         f"tfds:{UeaArchive.name}/{self.name}/{self.split}")

  def __repr__(self) -> str:
    return (f"TfdsSource({self.name}/{self.split}: {len(self)} examples, "
            f"{self.num_channels} channels, {self.num_classes} classes)")
