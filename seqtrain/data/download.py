"""Downloading UCR/UEA archive datasets into a local cache.

    from seqtrain.data.download import download
    folder = download("EigenWorms")   # <cache>/EigenWorms/EigenWorms_{TRAIN,TEST}.ts

The archive (https://www.timeseriesclassification.com) serves one zip per dataset
at ``<base>/<Name>.zip`` with ``base = https://www.timeseriesclassification.com/
aeon-toolkit``, the scheme aeon's ``load_classification`` uses. The zip holds
``<Name>_TRAIN.ts`` / ``<Name>_TEST.ts``, sometimes inside a ``<Name>/`` folder and
next to ``.arff`` / ``.txt`` copies; only the ``.ts`` files are kept, flattened to
``<cache>/<Name>/``.

Integrity. Neither the archive nor aeon publishes checksums of these zips, so the
registry below pins none (``sha256=None``) rather than invent them. A checksum
given as ``sha256=`` or pinned in the registry is verified before anything is
extracted. Without one the download is trusted on first use: its sha256 is
computed, a warning says that nothing was verified, and the value is recorded in
``<cache>/<Name>/.seqtrain-download.json``; any later re-download of that dataset
(``force=True``, or after files went missing) must match it.

Robustness. The archive is streamed to a temporary file inside the cache,
checked, extracted into a temporary sibling folder and renamed into place only
when complete; on any failure every temporary file and folder is removed and a
:class:`DownloadError` names the dataset, the URL and the problem. Extraction
refuses absolute paths, ``..`` components, drive letters, links and anything
resolving outside the target, and caps the uncompressed size. ``.tar.gz`` (and
other tar) archives are accepted as well as zips.

Environment: ``SEQTRAIN_DATA_DIR`` (cache folder), ``SEQTRAIN_ARCHIVE_URL`` (base
URL of an archive mirror).
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

__all__ = [
    "ARCHIVE", "ArchiveEntry", "DEFAULT_BASE_URL", "DEFAULT_MAX_EXTRACT_BYTES", "DownloadError",
    "MANIFEST_NAME", "UnverifiedDownloadWarning", "archive_url", "cache_dir", "cached_datasets",
    "dataset_dir", "download", "lookup",
]

DEFAULT_BASE_URL = "https://www.timeseriesclassification.com/aeon-toolkit"
DATA_DIR_ENV = "SEQTRAIN_DATA_DIR"
ARCHIVE_URL_ENV = "SEQTRAIN_ARCHIVE_URL"
MANIFEST_NAME = ".seqtrain-download.json"
DEFAULT_MAX_EXTRACT_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEMES = ("http", "https", "file")


class DownloadError(RuntimeError):
  """A dataset could not be downloaded, verified or extracted (nothing was cached)."""


class UnverifiedDownloadWarning(UserWarning):
  """A download had no pinned checksum and was trusted on first use."""


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class ArchiveEntry:
  """One dataset of the archive: where its zip lives and what it holds.

  ``length`` is the series length (the longest one where lengths vary, see
  ``variable_length``); ``sha256`` pins the zip's checksum, or is None when no
  trustworthy value is known.
  """
  name: str
  url: str
  sha256: str | None
  channels: int
  length: int
  n_classes: int
  n_train: int
  n_test: int
  variable_length: bool = False
  note: str = ""

  @property
  def description(self) -> str:
    """Short human-readable summary: channels, length, classes, split sizes."""
    length = f"<= {self.length} (variable)" if self.variable_length else str(self.length)
    text = (f"{self.channels} channel{'s' if self.channels != 1 else ''}, length {length}, "
            f"{self.n_classes} classes, {self.n_train} train / {self.n_test} test")
    return f"{text}; {self.note}" if self.note else text


def archive_url(name: str, base_url: str | None = None) -> str:
  """URL of the archive zip of ``name``: ``<base_url>/<name>.zip``.

  ``base_url`` defaults to ``$SEQTRAIN_ARCHIVE_URL`` or :data:`DEFAULT_BASE_URL`.
  """
  base = base_url or os.environ.get(ARCHIVE_URL_ENV) or DEFAULT_BASE_URL
  return f"{base.rstrip('/')}/{name}.zip"


def _entry(name: str, channels: int, length: int, n_classes: int, n_train: int, n_test: int,
           note: str = "", variable_length: bool = False) -> ArchiveEntry:
  return ArchiveEntry(name=name, url=f"{DEFAULT_BASE_URL}/{name}.zip", sha256=None,
                      channels=channels, length=length, n_classes=n_classes, n_train=n_train,
                      n_test=n_test, variable_length=variable_length, note=note)


# No sha256 is pinned: the archive publishes none and we could not download the
# zips to compute them. Pin one by setting sha256 here once it is known.
_ENTRIES = [
  # The six long UEA sets of the long-sequence papers.
  _entry("EigenWorms", 6, 17984, 5, 128, 131, "C. elegans movement, very long"),
  _entry("SelfRegulationSCP1", 6, 896, 2, 268, 293, "EEG slow cortical potentials"),
  _entry("SelfRegulationSCP2", 7, 1152, 2, 200, 180, "EEG slow cortical potentials"),
  _entry("EthanolConcentration", 3, 1751, 4, 261, 263, "spectra of whisky bottles"),
  _entry("Heartbeat", 61, 405, 2, 204, 205, "heart sound spectrograms"),
  _entry("MotorImagery", 64, 3000, 2, 278, 100, "ECoG, imagined movement"),
  # Other UEA (multivariate) sets.
  _entry("BasicMotions", 6, 100, 4, 40, 40, "smartwatch accelerometer/gyroscope"),
  _entry("JapaneseVowels", 12, 29, 9, 270, 370, "LPC cepstra of speakers",
         variable_length=True),
  _entry("ArticularyWordRecognition", 9, 144, 25, 275, 300, "articulograph"),
  _entry("AtrialFibrillation", 2, 640, 3, 15, 15, "ECG"),
  _entry("CharacterTrajectories", 3, 182, 20, 1422, 1436, "pen tip trajectories",
         variable_length=True),
  _entry("Cricket", 6, 1197, 12, 108, 72, "umpire signals, accelerometers"),
  _entry("Epilepsy", 3, 206, 4, 137, 138, "wrist accelerometer"),
  _entry("FaceDetection", 144, 62, 2, 5890, 3524, "MEG"),
  _entry("Handwriting", 3, 152, 26, 150, 850, "wrist accelerometer"),
  _entry("NATOPS", 24, 51, 6, 180, 180, "body-hand gestures"),
  _entry("PEMS-SF", 963, 144, 7, 267, 173, "freeway occupancy"),
  _entry("SpokenArabicDigits", 13, 93, 10, 6599, 2199, "MFCCs", variable_length=True),
  _entry("StandWalkJump", 4, 2500, 3, 12, 15, "ECG"),
  _entry("UWaveGestureLibrary", 3, 315, 8, 120, 320, "accelerometer gestures"),
  # UCR (univariate) sets.
  _entry("Adiac", 1, 176, 37, 390, 391, "diatom outlines"),
  _entry("ArrowHead", 1, 251, 3, 36, 175, "arrowhead outlines"),
  _entry("CinCECGTorso", 1, 1639, 4, 40, 1380, "ECG"),
  _entry("Coffee", 1, 286, 2, 28, 28, "spectrographs"),
  _entry("ECG200", 1, 96, 2, 100, 100, "ECG"),
  _entry("ECG5000", 1, 140, 5, 500, 4500, "ECG"),
  _entry("ElectricDevices", 1, 96, 7, 8926, 7711, "household consumption"),
  _entry("FordA", 1, 500, 2, 3601, 1320, "engine noise"),
  _entry("FordB", 1, 500, 2, 3636, 810, "engine noise"),
  _entry("GunPoint", 1, 150, 2, 50, 150, "hand motion"),
  _entry("HandOutlines", 1, 2709, 2, 1000, 370, "hand outlines, long"),
  _entry("InlineSkate", 1, 1882, 7, 100, 550, "skating motion, long"),
  _entry("ItalyPowerDemand", 1, 24, 2, 67, 1029, "electricity demand"),
  _entry("Mallat", 1, 1024, 8, 55, 2345, "synthetic"),
  _entry("Rock", 1, 2844, 4, 20, 50, "satellite spectra, long"),
  _entry("StarLightCurves", 1, 1024, 3, 1000, 8236, "light curves"),
  _entry("Strawberry", 1, 235, 2, 613, 370, "spectrographs"),
  _entry("Wafer", 1, 152, 2, 1000, 6164, "semiconductor sensors"),
  _entry("Yoga", 1, 426, 2, 300, 3000, "body outlines"),
]

ARCHIVE: dict[str, ArchiveEntry] = {e.name: e for e in _ENTRIES}
"""Known datasets by canonical name. Any other archive dataset can be fetched with
``download(name, url=archive_url(name))``."""

_BY_LOWER = {k.lower(): k for k in ARCHIVE}


def lookup(name: str) -> ArchiveEntry | None:
  """The registry entry of ``name`` (case-insensitive), or None."""
  key = _BY_LOWER.get(name.lower())
  return ARCHIVE[key] if key is not None else None


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
  """The default dataset cache: ``$SEQTRAIN_DATA_DIR``, else
  ``$XDG_CACHE_HOME/seqtrain/datasets``, else ``~/.cache/seqtrain/datasets``."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return Path(env).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME")
  base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
  return base / "seqtrain" / "datasets"


_default_cache_dir = cache_dir  # parameters named cache_dir shadow the function below


def _root(cache: str | os.PathLike | None) -> Path:
  return Path(cache).expanduser() if cache is not None else _default_cache_dir()


def _canonical(name: str) -> str:
  if not isinstance(name, str) or not _NAME_RE.match(name):
    raise ValueError(f"invalid dataset name {name!r}: expected letters, digits, '_', '-', '.'")
  entry = lookup(name)
  return entry.name if entry is not None else name


def _required(name: str) -> tuple[str, str]:
  return f"{name}_TRAIN.ts", f"{name}_TEST.ts"


def _read_manifest(folder: Path) -> dict | None:
  try:
    data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def _complete(folder: Path, name: str, expected_sha256: str | None = None) -> bool:
  """Both split files are present; if a manifest exists, the files it lists have
  their recorded sizes and its archive checksum equals ``expected_sha256``."""
  if not all((folder / f).is_file() for f in _required(name)):
    return False
  manifest = _read_manifest(folder)
  if manifest is None:
    return True  # files placed by hand: nothing to check them against
  if expected_sha256 is not None and manifest.get("sha256") != expected_sha256:
    return False
  files = manifest.get("files")
  if isinstance(files, dict):
    for fname, info in files.items():
      path = folder / fname
      size = info.get("size") if isinstance(info, dict) else None
      if not path.is_file() or (isinstance(size, int) and path.stat().st_size != size):
        return False
  return True


def dataset_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
  """``<cache>/<Name>`` if ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts`` are fully
  present there (sizes as recorded at download), else None."""
  canon = _canonical(name)
  folder = _root(cache_dir) / canon
  return folder if _complete(folder, canon) else None


def cached_datasets(cache_dir: str | os.PathLike | None = None) -> list[str]:
  """Sorted names of the datasets fully present in the cache."""
  root = _root(cache_dir)
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and _complete(p, p.name))


# --------------------------------------------------------------------------- download


def _unknown(name: str) -> ValueError:
  close = difflib.get_close_matches(name.lower(), list(_BY_LOWER), n=5, cutoff=0.6)
  hint = f" Did you mean: {', '.join(_BY_LOWER[c] for c in close)}?" if close else ""
  return ValueError(
    f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(sorted(ARCHIVE))}. "
    f"For another archive dataset pass its URL, e.g. url=archive_url({name!r}), "
    f"or url='file:///path/to/{name}.zip' for a zip copied by hand.")


def _normalize_url(url: str) -> str:
  scheme = urllib.parse.urlsplit(url).scheme.lower()
  if len(scheme) <= 1:  # a plain (or Windows drive) path
    return Path(url).expanduser().resolve().as_uri()
  if scheme not in _SCHEMES:
    raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: expected one of {_SCHEMES}")
  return url


def _check_sha256(value: str | None, what: str) -> str | None:
  if value is None:
    return None
  value = value.strip().lower()
  if not _SHA256_RE.match(value):
    raise ValueError(f"{what} must be 64 hexadecimal digits, got {value!r}")
  return value


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"  # pragma: no cover


class Progress:
  """A one-line progress report on stderr: done / total (percent), speed. ``unit``:
  "bytes" (sizes as KiB / MiB) or a noun counted as is ("series"). The one progress
  line of the package: downloads and `seqtrain data prepare` both use it."""

  def __init__(self, label: str, total: int | None, stream: IO[str] | None = None,
               unit: str = "bytes"):
    self.label, self.total, self.done, self.unit = label, total, 0, unit
    self.stream = stream if stream is not None else sys.stderr
    self.start = self.last = time.monotonic()

  def _fmt(self, n: float) -> str:
    return _fmt_bytes(n) if self.unit == "bytes" else f"{n:,.0f}"

  def _line(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-6)
    text = f"{self.label}: {self._fmt(self.done)}"
    if self.total:
      text += f" / {self._fmt(self.total)} ({100 * self.done / self.total:.0f}%)"
    rate = self.done / elapsed
    return (f"{text}  {_fmt_bytes(rate)}/s" if self.unit == "bytes"
            else f"{text} {self.unit}  {rate:,.0f}/s")

  def update(self, n: int) -> None:
    self.done += n
    now = time.monotonic()
    if now - self.last >= 0.1:
      self.last = now
      self.stream.write("\r" + self._line())
      self.stream.flush()

  def close(self) -> None:
    self.stream.write("\r" + self._line() + "\n")
    self.stream.flush()


def _fetch(url: str, out: IO[bytes], label: str, timeout: float, progress: bool) -> tuple[str, int]:
  """Stream ``url`` into ``out``; returns (sha256, size). Raises DownloadError."""
  req = urllib.request.Request(url, headers={"User-Agent": "seqtrain-dataset-downloader"})
  digest, size = hashlib.sha256(), 0
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      length = resp.headers.get("Content-Length")
      total = int(length) if length and length.strip().isdigit() else None
      bar = Progress(label, total) if progress else None
      try:
        while chunk := resp.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          size += len(chunk)
          if bar is not None:
            bar.update(len(chunk))
      finally:
        if bar is not None:
          bar.close()
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{label}: HTTP {e.code} {e.reason} from {url}") from e
  except urllib.error.URLError as e:
    raise DownloadError(f"{label}: could not fetch {url}: {e.reason}") from e
  except (OSError, http.client.HTTPException) as e:
    raise DownloadError(f"{label}: download from {url} failed: {e!r}") from e
  if total is not None and size != total:
    raise DownloadError(f"{label}: incomplete download from {url}: got {size} of {total} bytes")
  return digest.hexdigest(), size


def _looks_like_html(path: Path) -> bool:
  with open(path, "rb") as f:
    head = f.read(512).lstrip().lower()
  return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


# --------------------------------------------------------------------------- extraction


@dataclasses.dataclass
class _Member:
  path: str  # as stored in the archive
  size: int  # declared uncompressed size
  kind: str  # "file", "dir", "link" or "other"
  encrypted: bool
  open: Callable[[], IO[bytes]]


def _unsafe_reason(member: str, target: Path) -> str | None:
  """Why ``member`` may not be extracted under ``target``, or None if it is safe."""
  if "\x00" in member:
    return "contains a NUL byte"
  norm = member.replace("\\", "/")
  if norm.startswith("/"):
    return "is an absolute path"
  if re.match(r"^[A-Za-z]:", norm):
    return "has a drive letter"
  if ".." in PurePosixPath(norm).parts:
    return "has a '..' component"
  base = target.resolve()
  dest = (base / norm).resolve()
  if dest != base and base not in dest.parents:
    return "resolves outside the target folder"
  return None


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
  for info in zf.infolist():
    fmt = stat.S_IFMT(info.external_attr >> 16)  # 0 where the tool stored no Unix mode
    if fmt == stat.S_IFLNK:
      kind = "link"
    elif info.is_dir() or fmt == stat.S_IFDIR:
      kind = "dir"
    elif fmt in (0, stat.S_IFREG):
      kind = "file"
    else:
      kind = "other"
    yield _Member(info.filename, info.file_size, kind, bool(info.flag_bits & 0x1),
                  lambda info=info: zf.open(info))


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
  for info in tf.getmembers():
    if info.isdir():
      kind = "dir"
    elif info.issym() or info.islnk():
      kind = "link"
    elif info.isfile():
      kind = "file"
    else:
      kind = "other"
    yield _Member(info.name, info.size, kind, False, lambda info=info: tf.extractfile(info))


def _select(members: list[_Member], name: str, target: Path, label: str,
            max_bytes: int) -> dict[str, _Member]:
  """Check every member and pick the ``.ts`` split files of ``name`` (flattened):
  ``<name>[_variant]_TRAIN.ts`` / ``_TEST.ts``, keyed by their output file name."""
  pattern = re.compile(rf"^{re.escape(name)}((?:_[A-Za-z0-9]+)*?)_(TRAIN|TEST)\.ts$", re.IGNORECASE)
  chosen: dict[str, _Member] = {}
  for m in members:
    reason = _unsafe_reason(m.path, target)
    if reason is None and m.kind == "link":
      reason = "is a symbolic or hard link"
    if reason is None and m.kind == "other":
      reason = "is not a regular file or folder"
    if reason is not None:
      raise DownloadError(f"{label}: refusing unsafe archive member {m.path!r}: it {reason}")
    if m.kind != "file":
      continue
    match = pattern.match(m.path.replace("\\", "/").rsplit("/", 1)[-1])
    if match is None:
      continue
    out = f"{name}{match.group(1)}_{match.group(2).upper()}.ts"
    if out in chosen:
      raise DownloadError(f"{label}: archive is ambiguous: both {chosen[out].path!r} and "
                          f"{m.path!r} would become {out}")
    if m.encrypted:
      raise DownloadError(f"{label}: archive member {m.path!r} is encrypted")
    chosen[out] = m
  missing = [f for f in _required(name) if f not in chosen]
  if missing:
    found = sorted(m.path for m in members if m.path.lower().endswith(".ts"))
    raise DownloadError(f"{label}: archive lacks {', '.join(missing)} (its .ts files: "
                        f"{', '.join(found) or 'none'})")
  total = sum(m.size for m in chosen.values())
  if total > max_bytes:
    raise DownloadError(f"{label}: archive would extract to {total} bytes, over the limit of "
                        f"{max_bytes} (max_extract_bytes); refusing it as a possible zip bomb")
  return chosen


def _extract(archive: Path, name: str, target: Path, label: str,
             max_bytes: int) -> dict[str, dict]:
  """Safely extract the split files of ``name`` from ``archive`` into ``target``
  (flat). Returns {file: {"size", "sha256"}}. Raises DownloadError."""
  with open(archive, "rb") as f:
    magic = f.read(4)
  try:
    if magic[:2] == b"PK" or zipfile.is_zipfile(archive):
      container = zipfile.ZipFile(archive)
      members_of = _zip_members
    elif tarfile.is_tarfile(archive):
      container = tarfile.open(archive, "r:*")
      members_of = _tar_members
    else:
      html = " (the server sent an HTML page: is the dataset name right?)" \
        if _looks_like_html(archive) else ""
      raise DownloadError(f"{label}: download is neither a zip nor a tar archive{html}")
    with container:
      chosen = _select(list(members_of(container)), name, target, label, max_bytes)
      written, files = 0, {}
      for out, m in sorted(chosen.items()):
        digest, size = hashlib.sha256(), 0
        with m.open() as src, open(target / out, "xb") as dst:
          while chunk := src.read(_CHUNK):
            size += len(chunk)
            written += len(chunk)
            if size > m.size or written > max_bytes:
              raise DownloadError(f"{label}: member {m.path!r} holds more data than declared "
                                  f"or than max_extract_bytes; refusing it")
            dst.write(chunk)
            digest.update(chunk)
        if size != m.size:
          raise DownloadError(f"{label}: member {m.path!r} is truncated ({size} of {m.size} bytes)")
        files[out] = {"size": size, "sha256": digest.hexdigest()}
      return files
  except DownloadError:
    raise
  except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError,
          OSError, ValueError, NotImplementedError, RuntimeError) as e:
    raise DownloadError(f"{label}: corrupt or unreadable archive: {e}") from e


def _remove(path: Path) -> None:
  try:
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink()
  except FileNotFoundError:
    pass


def download(name: str, *, cache_dir: str | os.PathLike | None = None, url: str | None = None,
             sha256: str | None = None, force: bool = False, progress: bool = True,
             base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT,
             max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES) -> Path:
  """Download archive dataset ``name`` into the cache; returns ``<cache>/<Name>``.

  Args:
    name: dataset name, case-insensitive for registry (:data:`ARCHIVE`) datasets;
      the folder uses the canonical spelling. Other names need ``url``.
    cache_dir: cache folder (default :func:`cache_dir`).
    url: where to get the archive (``http(s)://``, ``file://`` or a local path);
      default ``<base_url>/<Name>.zip``.
    sha256: expected checksum of the archive; overrides the registry and the
      trust-on-first-use value recorded by an earlier download.
    force: download again even if the dataset is cached.
    progress: print a progress line (bytes, total, speed) to stderr.
    base_url: archive mirror (default ``$SEQTRAIN_ARCHIVE_URL`` or the archive).
    timeout: socket timeout in seconds.
    max_extract_bytes: cap on the uncompressed size of the extracted files.

  A cached dataset (both split files present, recorded sizes and checksum
  matching) is returned at once without touching the network.

  Raises:
    ValueError: unknown name without ``url`` (with suggestions), bad arguments.
    DownloadError: the download, checksum or extraction failed; nothing partial
      is left in the cache and an existing copy stays untouched.
  """
  canon = _canonical(name)
  entry = lookup(canon)
  if url is None and entry is None:
    raise _unknown(name)
  sha256 = _check_sha256(sha256, "sha256")
  if url is not None:
    source = _normalize_url(url)
  elif base_url is not None or os.environ.get(ARCHIVE_URL_ENV):
    source = _normalize_url(archive_url(canon, base_url))
  else:
    source = entry.url
  pinned, pin_source = (sha256, "argument") if sha256 is not None else (None, None)
  if pinned is None and entry is not None and entry.sha256 is not None:
    pinned, pin_source = _check_sha256(entry.sha256, f"registry sha256 of {canon}"), "registry"

  root = _root(cache_dir)
  final = root / canon
  if not force and _complete(final, canon, pinned):
    return final

  expected, expected_source = pinned, pin_source
  if expected is None:
    previous = _read_manifest(final)
    if previous is not None and isinstance(previous.get("sha256"), str):
      expected, expected_source = previous["sha256"], "recorded"

  label = f"{canon} ({source})"
  root.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{canon}-", suffix=".download", dir=root)
  tmp_file, tmp_dir, old_dir = Path(tmp_name), None, None
  try:
    with os.fdopen(fd, "wb") as out:
      digest, size = _fetch(source, out, canon, timeout, progress)
    if expected is not None and digest != expected:
      why = {"argument": "the sha256 argument", "registry": "the registry",
             "recorded": f"the first download recorded in {final / MANIFEST_NAME} (trust on "
                         f"first use; delete that folder or pass sha256= to accept a new archive)"}
      html = " The server sent an HTML page, not an archive." if _looks_like_html(tmp_file) else ""
      raise DownloadError(f"{canon}: checksum mismatch for {source}: expected sha256 {expected} "
                          f"(from {why[expected_source]}), got {digest} ({size} bytes).{html}")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{canon}-", dir=root))
    files = _extract(tmp_file, canon, tmp_dir, label, max_extract_bytes)
    manifest = {
      "name": canon, "url": source, "sha256": digest, "size": size,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "checksum": {"argument": "pinned (sha256 argument)", "registry": "pinned (registry)",
                   "recorded": "verified against the first download",
                   None: "trusted on first use (not verified)"}[expected_source],
      "files": files,
    }
    (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if final.exists() or final.is_symlink():
      old_dir = root / f"{_TMP_PREFIX}{canon}-old-{uuid.uuid4().hex[:8]}"
      os.rename(final, old_dir)
    try:
      os.rename(tmp_dir, final)
    except OSError as e:
      if old_dir is not None:
        os.rename(old_dir, final)
        old_dir = None
      elif _complete(final, canon, pinned):  # a concurrent download finished first
        return final
      raise DownloadError(f"{canon}: could not move the download into {final}: {e}") from e
    tmp_dir = None
  except OSError as e:  # local file system trouble (disk full, permissions)
    raise DownloadError(f"{canon}: could not store the download from {source} in {root}: {e}") \
      from e
  finally:
    for leftover in (tmp_file, tmp_dir, old_dir):
      if leftover is not None:
        _remove(leftover)
  if expected is None:
    warnings.warn(
      f"{canon}: no pinned checksum exists for {source}; trusting it on first use. Recorded "
      f"sha256 {digest} in {final / MANIFEST_NAME}: re-downloads will be verified against it "
      f"(pass sha256='{digest}' to pin it explicitly).", UnverifiedDownloadWarning, stacklevel=2)
  return final
