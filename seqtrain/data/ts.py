"""Reader and writer for the UCR/UEA archive's ``.ts`` format, and ``.npz`` inputs.

A ``.ts`` file is a header of ``@tag value`` lines, then ``@data`` and one example
per line: the channels separated by ``:``, the values of a channel by ``,``, the
class label last. ``?`` (or ``NaN``) marks a missing value; channels of one
example have the same length, examples may differ in length when the header says
``@equalLength false``. ``#`` or ``%`` starts a comment line. Timestamped series
(``@timeStamps true``) and regression targets are not supported and say so.

Everything is read into a :class:`SeriesDataset`: a list of ``(T_i, C)`` float32
arrays (NaN where missing), integer labels and the class names in header order.
Malformed input raises :class:`DataFormatError` naming the file, the line and
what is wrong.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["DataFormatError", "SeriesDataset", "read_ts", "write_ts", "read_npz", "write_npz",
           "read_series_file"]


class DataFormatError(ValueError):
  """A data file that cannot be read: the message names the file, line and problem."""

  def __init__(self, path, message: str, line: int | None = None):
    where = f"{path}" if line is None else f"{path}, line {line}"
    super().__init__(f"{where}: {message}")
    self.path = str(path)
    self.line = line


@dataclasses.dataclass
class SeriesDataset:
  """A labelled set of multichannel series held in memory.

  Attributes:
    series: one ``(T_i, C)`` float32 array per example; NaN marks a missing value.
    labels: ``(N,)`` int32 indices into ``class_names``.
    class_names: the class labels as written in the file, in header order.
    name: the problem name.
    source: where the data came from (a path or a description).
  """

  series: list[np.ndarray]
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str = ""
  source: str = ""

  def __post_init__(self):
    self.labels = np.asarray(self.labels, np.int32)
    if len(self.series) != len(self.labels):
      raise ValueError(f"{self.source or self.name}: {len(self.series)} series but "
                       f"{len(self.labels)} labels")
    self.class_names = tuple(str(c) for c in self.class_names)
    if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
      raise ValueError(f"{self.source or self.name}: labels outside [0, {len(self.class_names)})")

  def __len__(self) -> int:
    return len(self.series)

  def __getitem__(self, i: int) -> dict:
    return {"series": self.series[i], "label": self.labels[i]}

  @property
  def num_channels(self) -> int:
    return int(self.series[0].shape[1]) if self.series else 0

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([s.shape[0] for s in self.series], np.int64)

  @property
  def equal_length(self) -> bool:
    lengths = self.lengths
    return bool(len(lengths) == 0 or np.all(lengths == lengths[0]))

  @property
  def has_missing(self) -> bool:
    return any(bool(np.isnan(s).any()) for s in self.series)

  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=self.num_classes)

  def subset(self, indices: Iterable[int], name: str | None = None) -> "SeriesDataset":
    indices = [int(i) for i in indices]
    return SeriesDataset([self.series[i] for i in indices], self.labels[indices], self.class_names,
                         self.name if name is None else name, self.source)

  def summary(self) -> str:
    lengths = self.lengths
    span = (f"{lengths.min()}" if self.equal_length else
            f"{lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f})") if len(self) else "-"
    counts = ", ".join(f"{c}: {n}" for c, n in zip(self.class_names, self.class_counts()))
    return (f"{self.name}: {len(self)} series x {self.num_channels} channels, length {span}, "
            f"{self.num_classes} classes ({counts}){', missing values' if self.has_missing else ''}")


_BOOL_TAGS = ("timestamps", "missing", "univariate", "equallength")
_KNOWN_TAGS = {"problemname", "timestamps", "missing", "univariate", "dimensions", "equallength",
               "serieslength", "classlabel", "targetlabel", "data"}


def _parse_bool(path, lineno, tag, value) -> bool:
  v = value.strip().lower()
  if v not in ("true", "false"):
    raise DataFormatError(path, f"@{tag} must be 'true' or 'false', got {value.strip()!r}", lineno)
  return v == "true"


# The longest line read (characters): a .ts data line holds one whole example, so
# this caps one example at about 10^7 values; a file with no newlines is refused
# after this much instead of being read whole into memory.
MAX_LINE_CHARS = 128 * 2 ** 20


def _lines(path: Path, f):
  """(line number, line) from an open text file, one line in memory at a time."""
  lineno = 0
  while True:
    lineno += 1
    try:
      line = f.readline(MAX_LINE_CHARS + 1)
    except UnicodeDecodeError as e:
      raise DataFormatError(path, f"not a UTF-8 text file ({e.reason})", lineno) from None
    if not line:
      return
    if len(line) > MAX_LINE_CHARS:
      raise DataFormatError(path, f"line longer than {MAX_LINE_CHARS:,} characters (one "
                            "example per line; is this a .ts file?)", lineno)
    yield lineno, line


def _parse_header(path, lines):
  """Reads ``(lineno, line)`` pairs up to and including @data."""
  header: dict = {}
  for lineno, raw in lines:
    line = raw.strip()
    if not line or line.startswith(("#", "%")):
      continue
    if not line.startswith("@"):
      raise DataFormatError(path, f"expected a header '@tag' line or '@data' before the data, got "
                            f"{line[:40]!r}", lineno)
    tag, _, value = line[1:].partition(" ")
    key = tag.lower()
    if key not in _KNOWN_TAGS:
      raise DataFormatError(path, f"unknown header tag @{tag} (known: "
                            f"{', '.join('@' + t for t in sorted(_KNOWN_TAGS))})", lineno)
    if key == "problemname" and key in header:
      continue  # archive files repeat it (UnitTest: "UnitTest", then "Chinatown"); the first names it
    if key in header:
      raise DataFormatError(path, f"duplicate header tag @{tag}", lineno)
    if key == "data":
      return header, lineno
    if key in _BOOL_TAGS:
      header[key] = _parse_bool(path, lineno, tag, value)
    elif key in ("dimensions", "serieslength"):
      try:
        header[key] = int(value)
        if header[key] < 1:
          raise ValueError
      except ValueError:
        raise DataFormatError(path, f"@{tag} must be a positive integer, got {value.strip()!r}",
                              lineno) from None
    elif key == "classlabel":
      flag, _, names = value.strip().partition(" ")
      if _parse_bool(path, lineno, tag, flag):
        names = names.split()
        if len(names) < 2:
          raise DataFormatError(path, f"@classLabel true needs at least two class names, got "
                                f"{names}", lineno)
        if len(set(names)) != len(names):
          raise DataFormatError(path, f"@classLabel lists a class twice: {names}", lineno)
        header[key] = names
      else:
        header[key] = None
    elif key == "targetlabel":
      raise DataFormatError(path, "@targetLabel (regression) files are not supported: seqtrain "
                            "trains classifiers", lineno)
    else:
      header[key] = value.strip()
  raise DataFormatError(path, "no @data line: the header never ends")


def _parse_value(token: str) -> float:
  t = token.strip()
  if t in ("?", "NaN", "nan", ""):
    return math.nan
  return float(t)


def read_ts(path: str | os.PathLike, name: str | None = None) -> SeriesDataset:
  """Reads a ``.ts`` classification file (see the module docstring for the format)."""
  path = Path(path)
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError:
    raise DataFormatError(path, "file not found") from None
  except IsADirectoryError:
    raise DataFormatError(path, "is a directory, expected a .ts file") from None
  with f:
    return _read_ts(path, _lines(path, f), name)


def _read_ts(path: Path, lines, name: str | None) -> SeriesDataset:
  header, _ = _parse_header(path, lines)
  if header.get("timestamps"):
    raise DataFormatError(path, "@timeStamps true: timestamped series are not supported "
                          "(resample them to a regular grid first)")
  if "classlabel" not in header or header["classlabel"] is None:
    raise DataFormatError(path, "no class labels: the header needs '@classLabel true <names...>'")
  class_names = header["classlabel"]
  index = {c: i for i, c in enumerate(class_names)}
  allow_missing = header.get("missing", True)
  univariate = header.get("univariate")
  dims = header.get("dimensions", 1 if univariate else None)
  equal = header.get("equallength")
  length = header.get("serieslength")
  if equal is False and length is not None:
    raise DataFormatError(path, "@seriesLength given but @equalLength is false")

  series, labels = [], []
  for lineno, raw in lines:
    line = raw.strip()
    if not line or line.startswith(("#", "%")):
      continue
    if line.startswith("@"):
      raise DataFormatError(path, f"header tag {line.split()[0]!r} after @data", lineno)
    fields = line.split(":")
    if len(fields) < 2:
      raise DataFormatError(path, "expected channels separated by ':' and a class label last", lineno)
    label, channels = fields[-1].strip(), fields[:-1]
    if "(" in line:
      raise DataFormatError(path, "timestamped values '(t,v)' are not supported", lineno)
    if label not in index:
      raise DataFormatError(path, f"class label {label!r} is not one of the header's "
                            f"@classLabel names {class_names}", lineno)
    if dims is None:
      dims = len(channels)
    if len(channels) != dims:
      raise DataFormatError(path, f"{len(channels)} channels, expected {dims}"
                            f"{' (@univariate true)' if univariate else ''}", lineno)
    values = []
    for c, channel in enumerate(channels):
      tokens = channel.split(",")
      try:
        values.append([_parse_value(t) for t in tokens])
      except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise DataFormatError(path, f"channel {c}: {bad.strip()!r} is not a number or '?'",
                              lineno) from None
    lens = {len(v) for v in values}
    if len(lens) != 1:
      raise DataFormatError(path, f"channels have different lengths {sorted(lens)}; every channel "
                            "of an example must have the same length", lineno)
    x = np.asarray(values, np.float64).T
    if np.isinf(x).any():
      raise DataFormatError(path, "infinite value", lineno)
    if len(values[0]) == 1 and np.isnan(x).all():
      raise DataFormatError(path, "empty series", lineno)
    if np.isnan(x).all():
      raise DataFormatError(path, "every value of the example is missing", lineno)
    if not allow_missing and np.isnan(x).any():
      raise DataFormatError(path, "missing value ('?' or NaN) but the header says @missing false", lineno)
    if length is not None and x.shape[0] != length:
      raise DataFormatError(path, f"series of length {x.shape[0]}, header says @seriesLength "
                            f"{length}", lineno)
    series.append(x.astype(np.float32))
    labels.append(index[label])
  if not series:
    raise DataFormatError(path, "no examples after @data")
  if equal and len({s.shape[0] for s in series}) > 1:
    raise DataFormatError(path, f"@equalLength true but lengths differ: "
                          f"{sorted({s.shape[0] for s in series})[:5]}")
  problem = header.get("problemname") or path.stem.rsplit("_", 1)[0]
  return SeriesDataset(series, np.asarray(labels, np.int32), tuple(class_names),
                       name or problem, str(path))


def _is_number(token: str) -> bool:
  try:
    _parse_value(token)
    return True
  except ValueError:
    return False


def _format(v: float) -> str:
  return "?" if math.isnan(v) else repr(float(v))


def write_ts(path: str | os.PathLike, data: SeriesDataset, comment: str | None = None) -> Path:
  """Writes ``data`` as a ``.ts`` file (read back by :func:`read_ts` unchanged in float32)."""
  path = Path(path)
  for c in data.class_names:
    if not c or any(ch.isspace() for ch in c) or ":" in c:
      raise ValueError(f"class name {c!r} cannot be written to a .ts header")
  lengths = data.lengths
  lines = [f"# {line}" for line in (comment or "").splitlines()]
  lines += [f"@problemName {data.name or path.stem}", "@timeStamps false",
            f"@missing {str(data.has_missing).lower()}",
            f"@univariate {str(data.num_channels == 1).lower()}",
            f"@dimensions {data.num_channels}", f"@equalLength {str(data.equal_length).lower()}"]
  if data.equal_length:
    lines.append(f"@seriesLength {int(lengths[0])}")
  lines += [f"@classLabel true {' '.join(data.class_names)}", "@data"]
  for x, y in zip(data.series, data.labels):
    channels = [",".join(_format(v) for v in x[:, c]) for c in range(x.shape[1])]
    lines.append(":".join(channels + [data.class_names[int(y)]]))
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
  os.replace(tmp, path)
  return path


def read_npz(path: str | os.PathLike, name: str | None = None) -> SeriesDataset:
  """Reads users' own arrays from an ``.npz`` file (loaded with ``allow_pickle=False``).

  Keys: ``X`` of shape ``(N, T, C)`` or ``(N, T)`` (univariate), float; ``y`` of shape ``(N,)``
  holding integer or string labels. Optional: ``lengths`` ``(N,)`` for padded variable-length
  series (steps past the length are dropped) and ``class_names`` ``(K,)`` strings.
  """
  path = Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except FileNotFoundError:
    raise DataFormatError(path, "file not found") from None
  except ValueError as e:
    raise DataFormatError(path, f"cannot load without pickle: {e}") from None
  except Exception as e:  # zipfile.BadZipFile, OSError, ...
    raise DataFormatError(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None
  for key in ("X", "y"):
    if key not in arrays:
      raise DataFormatError(path, f"missing array {key!r} (found {sorted(arrays)}); expected X "
                            "(N, T, C) and y (N,)")
  x, y = arrays["X"], arrays["y"]
  if x.ndim == 2:
    x = x[:, :, None]
  if x.ndim != 3:
    raise DataFormatError(path, f"X must have shape (N, T, C) or (N, T), got {x.shape}")
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise DataFormatError(path, f"X must be real numbers, got dtype {x.dtype}")
  if y.ndim != 1 or len(y) != len(x):
    raise DataFormatError(path, f"y must have shape ({len(x)},) to match X, got {y.shape}")
  if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
    raise DataFormatError(path, f"X is empty: shape {x.shape}")
  if np.isinf(x).any():
    raise DataFormatError(path, "X holds infinite values")
  lengths = arrays.get("lengths")
  if lengths is None:
    lengths = np.full(len(x), x.shape[1])
  elif lengths.shape != (len(x),) or lengths.min() < 1 or lengths.max() > x.shape[1]:
    raise DataFormatError(path, f"lengths must be (N,) integers in [1, {x.shape[1]}]")
  if "class_names" in arrays:
    class_names = [str(c) for c in arrays["class_names"]]
    if np.issubdtype(y.dtype, np.integer):
      if y.min() < 0 or y.max() >= len(class_names):
        raise DataFormatError(path, f"y holds labels outside [0, {len(class_names)}) of class_names")
      labels = y.astype(np.int32)
    else:
      index = {c: i for i, c in enumerate(class_names)}
      unknown = sorted({str(v) for v in y} - set(index))
      if unknown:
        raise DataFormatError(path, f"y holds labels {unknown[:5]} not in class_names")
      labels = np.array([index[str(v)] for v in y], np.int32)
  else:
    if np.issubdtype(y.dtype, np.floating):
      if not np.all(y == np.round(y)):
        raise DataFormatError(path, "y holds non-integer floats; classification needs class labels")
      y = y.astype(np.int64)
    values = np.unique(y)
    class_names = [str(v) for v in values]
    labels = np.searchsorted(values, y).astype(np.int32)
  if len(class_names) < 2:
    raise DataFormatError(path, f"y holds a single class {class_names}; need at least two")
  series = [np.asarray(x[i, :int(n)], np.float32) for i, n in enumerate(lengths)]
  for i, s in enumerate(series):
    if np.isnan(s).all():
      raise DataFormatError(path, f"example {i}: every value is missing (NaN)")
  return SeriesDataset(series, labels, tuple(class_names), name or path.stem, str(path))


def write_npz(path: str | os.PathLike, data: SeriesDataset) -> Path:
  """Writes ``data`` as ``.npz`` (X zero-padded to the longest series, with lengths)."""
  path = Path(path)
  lengths = data.lengths
  x = np.zeros((len(data), int(lengths.max()), data.num_channels), np.float32)
  for i, s in enumerate(data.series):
    x[i, :len(s)] = s
  with open(path, "wb") as f:
    np.savez(f, X=x, y=data.labels, lengths=lengths, class_names=np.array(data.class_names))
  return path


def read_series_file(path: str | os.PathLike, name: str | None = None) -> SeriesDataset:
  """Reads a ``.ts`` or ``.npz`` file, chosen by its suffix."""
  suffix = Path(path).suffix.lower()
  if suffix == ".ts":
    return read_ts(path, name)
  if suffix == ".npz":
    return read_npz(path, name)
  raise DataFormatError(path, f"unknown file type {suffix!r}: expected .ts or .npz")
