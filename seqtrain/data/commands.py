"""The ``seqtrain data`` commands: list, download, prepare and inspect datasets.

    seqtrain data list [--cache-dir DIR] [--json]
    seqtrain data download NAME [NAME...] [--cache-dir DIR] [--url URL] [--sha256 HEX]
                                          [--force] [--quiet]
    seqtrain data prepare NAME [--data-dir DIR] [--source-dir DIR] [--quiet]
    seqtrain data inspect NAME_OR_FILE [--data-dir DIR] [--split S] [--json]
                                       [--examples N] [--channels N]

``list`` shows the datasets bundled with seqtrain (read from their files), the
archive registry with the datasets already in the download cache marked, and the
synthetic tasks with their options. ``download`` fetches archive datasets into the
cache (:func:`seqtrain.data.download.download`). ``prepare`` writes a dataset as
tensorflow-datasets array_record files (:func:`seqtrain.data.tfds_builder.prepare`).
``inspect`` is the data quality report to read before training: series, channels,
lengths, classes with counts, missing values and per-channel value statistics of
an archive dataset, a ``.ts`` / ``.npz`` file, a folder holding
``<Name>_TRAIN.ts``, or a synthetic task (``synthetic:<task>[:length][:option=value...]``,
e.g. ``synthetic:motif:4096``; only the first few examples are generated).

The seqtrain CLI adds the commands with :func:`add_data_commands` and runs them
with :func:`run_data`. Errors a user can cause (unknown dataset, malformed file,
failed download, dataset not downloaded) print one line
``seqtrain data: error: ...`` to stderr and return exit code 2.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from seqtrain.data.moments import Moments
from seqtrain.data.ts import DataFormatError, SeriesDataset

__all__ = ["add_data_commands", "run_data", "inspect_report", "list_report", "EXIT_ERROR"]

EXIT_OK = 0
EXIT_ERROR = 2
_PREFIX = "seqtrain data"
_SYNTHETIC = "synthetic:"
_SYNTHETIC_LENGTH = 1024
_ARCHIVE_SPLITS = ("train", "validation", "test")


class CommandError(Exception):
  """An error the user caused; its message is printed as one line."""


# --------------------------------------------------------------------------- parser


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
  """Adds the ``data`` command, with sub-commands list / download / prepare / inspect,
  to ``subparsers`` (the sub-parsers object of the ``seqtrain`` parser)."""
  data = subparsers.add_parser(
      "data", help="list, download, prepare and inspect datasets",
      description="List, download, prepare (as tfds array_record) and inspect datasets.")
  sub = data.add_subparsers(dest="data_command", required=True,
                            metavar="{list,download,prepare,inspect}")

  p = sub.add_parser("list", help="bundled datasets, the archive registry and synthetic tasks",
                     description="Bundled datasets, the archive registry (datasets in the "
                     "download cache marked) and the synthetic tasks with their options.")
  p.add_argument("--cache-dir", metavar="DIR", help="download cache (default: "
                 "$SEQTRAIN_DATA_DIR or ~/.cache/seqtrain/datasets)")
  p.add_argument("--json", action="store_true", help="print a JSON object")

  p = sub.add_parser("download", help="download archive datasets into the cache",
                     description="Download UCR/UEA archive datasets into the cache.")
  p.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s), e.g. EigenWorms")
  p.add_argument("--cache-dir", metavar="DIR", help="download cache (default: "
                 "$SEQTRAIN_DATA_DIR or ~/.cache/seqtrain/datasets)")
  p.add_argument("--url", help="where to get the archive: http(s)://, file:// or a local "
                 "path (one NAME only); default: the archive's <Name>.zip")
  p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive (one NAME only)")
  p.add_argument("--force", action="store_true", help="download again even if cached")
  p.add_argument("--quiet", action="store_true", help="no progress line or warnings")

  p = sub.add_parser("prepare", help="write a dataset as tfds array_record files",
                     description="Write an archive dataset (bundled, downloaded or in "
                     "--source-dir) as tensorflow-datasets array_record files.")
  p.add_argument("name", metavar="NAME")
  p.add_argument("--data-dir", metavar="DIR",
                 help="tfds output folder (default: <cache dir>/tfds)")
  p.add_argument("--source-dir", metavar="DIR", help="folder holding <NAME>_TRAIN.ts and "
                 "<NAME>_TEST.ts, directly or in <NAME>/ (default: bundled, then the cache)")
  p.add_argument("--quiet", action="store_true", help="no progress line")

  p = sub.add_parser(
      "inspect", help="data quality report of a dataset, file or synthetic task",
      description="Series, channels, lengths, classes, missing values and per-channel value "
      "statistics of an archive dataset, a .ts/.npz file, a folder holding <Name>_TRAIN.ts, "
      "or synthetic:<task>[:length][:option=value...] (first --examples examples only).")
  p.add_argument("target", metavar="NAME_OR_FILE")
  p.add_argument("--data-dir", metavar="DIR", help="folder searched first for archive "
                 "datasets (then the bundled data and the download cache)")
  p.add_argument("--split", choices=["train", "validation", "test", "all"], default="all")
  p.add_argument("--examples", type=_positive_int, default=8, metavar="N",
                 help="synthetic tasks: examples generated per split (default 8)")
  p.add_argument("--channels", type=_positive_int, default=8, metavar="N",
                 help="channels shown in the per-channel table (default 8; --json has all)")
  p.add_argument("--json", action="store_true", help="print a JSON object")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def run_data(args: argparse.Namespace) -> int:
  """Runs ``seqtrain data <command>``; returns the exit code (0, or 2 on an error)."""
  commands: dict[str, Callable[[argparse.Namespace], int]] = {
      "list": _cmd_list, "download": _cmd_download, "prepare": _cmd_prepare,
      "inspect": _cmd_inspect}
  try:
    return commands[args.data_command](args)
  except (CommandError, DataFormatError, ValueError, OSError) as e:
    return _error(e)
  except Exception as e:  # DownloadError and the like: still one line, no traceback
    from seqtrain.data.download import DownloadError
    if isinstance(e, DownloadError):
      return _error(e)
    raise


def _one_line(message: object) -> str:
  """A possibly multi-line message as one line."""
  parts = [line.strip() for line in str(message).splitlines() if line.strip()]
  if not parts:
    return type(message).__name__ if isinstance(message, BaseException) else "unknown error"
  return parts[0] + (" " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def _error(message: object) -> int:
  text = _one_line(message)
  if isinstance(message, OSError) and not isinstance(message, DataFormatError) \
      and message.filename is not None and str(message.filename) not in text:
    text = f"{message.filename}: {text}"
  print(f"{_PREFIX}: error: {text}", file=sys.stderr)
  return EXIT_ERROR


def _print_json(obj: Any) -> None:
  print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.floating):
    return float(value)
  if isinstance(value, Path):
    return str(value)
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: float) -> float | None:
  """A float for JSON: None instead of NaN."""
  return None if value is None or not math.isfinite(value) else float(value)


def _plural(n: int, word: str) -> str:
  """``3 channels``, ``1 class``."""
  return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _fmt(value: float | None) -> str:
  return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _table(rows: Sequence[Sequence[Any]], right: Sequence[bool], indent: str = "  ") -> list[str]:
  """Aligned text columns; ``right[i]`` right-aligns column i."""
  cells = [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
  lines = []
  for r in cells:
    text = "  ".join(c.rjust(w) if right[i] else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths)))
    lines.append(indent + text.rstrip())
  return lines


# --------------------------------------------------------------------------- list


def _length_text(lo: int, hi: int) -> str:
  return str(lo) if lo == hi else f"{lo}..{hi}"


def list_report(cache_dir: str | None = None) -> dict:
  """What ``seqtrain data list --json`` prints: bundled datasets, the archive registry
  (with ``downloaded`` set for datasets in the cache), other cached datasets and the
  synthetic tasks."""
  from seqtrain.data import download as dl
  from seqtrain.data import synthetic
  from seqtrain.data.sources import BUNDLED_DIR, bundled_datasets, find_split_file
  from seqtrain.data.ts import read_series_file

  root = Path(cache_dir).expanduser() if cache_dir else dl.cache_dir()
  cached = set(dl.cached_datasets(root))
  bundled = []
  for name in bundled_datasets():
    splits = {}
    for split in _ARCHIVE_SPLITS:
      path = find_split_file(name, split, BUNDLED_DIR)
      if path is not None:
        splits[split] = read_series_file(path, name)
    train = splits["train"]
    lengths = np.concatenate([d.lengths for d in splits.values()])
    bundled.append({
        "name": name, "path": str(BUNDLED_DIR / name),
        **{split: len(d) for split, d in splits.items()},
        "channels": train.num_channels, "length_min": int(lengths.min()),
        "length_max": int(lengths.max()), "classes": train.num_classes,
        "class_names": list(train.class_names)})
  bundled_names = {b["name"] for b in bundled}
  archive = []
  for entry in sorted(dl.ARCHIVE.values(), key=lambda e: e.name.lower()):
    archive.append({
        "name": entry.name, "channels": entry.channels, "length": entry.length,
        "variable_length": entry.variable_length, "classes": entry.n_classes,
        "train": entry.n_train, "test": entry.n_test, "note": entry.note, "url": entry.url,
        "sha256": entry.sha256, "bundled": entry.name in bundled_names,
        "downloaded": entry.name in cached,
        "path": str(root / entry.name) if entry.name in cached else None})
  others = [{"name": name, "path": str(root / name)}
            for name in sorted(cached - set(dl.ARCHIVE))]
  tasks = []
  for name, cls in synthetic.TASKS.items():
    doc = (cls.__doc__ or "").strip().splitlines()
    tasks.append({"name": name, "spec": f"{_SYNTHETIC}{name}[:length]",
                  "description": doc[0].rstrip(".") if doc else "",
                  "options": synthetic.task_options(name)})
  return {"cache_dir": str(root), "bundled": bundled, "archive": archive,
          "cached_other": others, "synthetic": tasks}


def _cmd_list(args: argparse.Namespace) -> int:
  report = list_report(args.cache_dir)
  if args.json:
    _print_json(report)
    return EXIT_OK
  out = ["Bundled with seqtrain (no download needed):"]
  rows = [("name", "train", "test", "channels", "length", "classes")]
  for b in report["bundled"]:
    rows.append((b["name"], b.get("train", "-"), b.get("test", "-"), b["channels"],
                 _length_text(b["length_min"], b["length_max"]), b["classes"]))
  out += _table(rows, [False, True, True, True, True, True])
  n_cached = sum(a["downloaded"] for a in report["archive"])
  out += ["", f"Archive datasets (`seqtrain data download NAME`); cache {report['cache_dir']}, "
          f"{n_cached} of {len(report['archive'])} downloaded:"]
  rows = [("", "name", "channels", "length", "classes", "train", "test", "note")]
  for a in report["archive"]:
    mark = "downloaded" if a["downloaded"] else ("bundled" if a["bundled"] else "")
    length = f"<={a['length']}" if a["variable_length"] else str(a["length"])
    rows.append((mark, a["name"], a["channels"], length, a["classes"], a["train"], a["test"],
                 a["note"]))
  out += _table(rows, [False, False, True, True, True, True, True, False])
  if report["cached_other"]:
    out += ["", "Other datasets in the cache:"]
    out += _table([("downloaded", o["name"], o["path"]) for o in report["cached_other"]],
                  [False, False, False])
  out += ["", f"Synthetic tasks ({_SYNTHETIC}<task>[:length][:option=value...], generated on "
          "the fly):"]
  width = max(len(t["name"]) for t in report["synthetic"])
  for t in report["synthetic"]:
    options = ", ".join(f"{k}={v}" for k, v in t["options"].items())
    out += [f"  {t['name']:<{width}}  {t['description']}",
            f"  {'':<{width}}  options: {options}"]
  print("\n".join(out))
  return EXIT_OK


# --------------------------------------------------------------------------- download


def _cmd_download(args: argparse.Namespace) -> int:
  from seqtrain.data import download as dl

  if len(args.names) > 1 and (args.url or args.sha256):
    raise CommandError("--url and --sha256 describe one archive: give a single NAME with them")
  status = EXIT_OK
  for name in args.names:
    try:
      _download_one(dl, name, args)
    except (CommandError, dl.DownloadError, ValueError, OSError) as e:
      status = _error(e)
  return status


def _download_one(dl: Any, name: str, args: argparse.Namespace) -> None:
  if args.url is None and dl.lookup(name) is None:
    dl._canonical(name)  # an invalid name says so
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in dl.ARCHIVE], n=3,
                                      cutoff=0.6)
    by_lower = {n.lower(): n for n in dl.ARCHIVE}
    hint = f" Did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
    raise CommandError(
        f"unknown dataset {name!r}.{hint} `seqtrain data list` shows the known datasets; for "
        f"another archive dataset pass --url (e.g. --url {dl.archive_url(name)}, or the path "
        f"of a zip copied by hand).")
  root = Path(args.cache_dir).expanduser() if args.cache_dir else dl.cache_dir()
  canon = dl._canonical(name)
  before = dl._read_manifest(root / canon) if dl.dataset_dir(canon, root) else None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    folder = dl.download(name, cache_dir=root, url=args.url, sha256=args.sha256,
                         force=args.force, progress=not args.quiet)
  manifest = dl._read_manifest(folder)
  fresh = args.force or (manifest is not None and manifest != before)
  print(f"{canon}: {'downloaded to' if fresh else 'already in the cache at'} {folder}")
  if manifest is None:
    print("  sha256 not recorded (the files were placed by hand)")
  else:
    print(f"  sha256 {manifest.get('sha256')}; checksum: {manifest.get('checksum', 'unknown')}")
    files = manifest.get("files") or {}
    if isinstance(files, dict) and files:
      print("  files " + ", ".join(
          f"{f} ({info.get('size', '?')} bytes)" if isinstance(info, dict) else f
          for f, info in sorted(files.items())))
  for w in caught:
    if args.quiet:
      continue
    if issubclass(w.category, dl.UnverifiedDownloadWarning):
      sha = manifest.get("sha256") if manifest else "?"
      print(f"{_PREFIX}: warning: {canon}: the archive publishes no checksum, so this download "
            f"was trusted on first use; later downloads must match sha256 {sha} (pin it with "
            f"--sha256)", file=sys.stderr)
    else:
      print(f"{_PREFIX}: warning: {_one_line(w.message)}", file=sys.stderr)


# --------------------------------------------------------------------------- prepare


def _canonical_name(name: str) -> str:
  """The registry spelling of an archive dataset name (``basicmotions`` -> ``BasicMotions``)."""
  from seqtrain.data.download import lookup
  try:
    entry = lookup(name)
  except (AttributeError, ValueError):
    return name
  return entry.name if entry is not None else name


def _cmd_prepare(args: argparse.Namespace) -> int:
  from seqtrain.data import tfds_builder as tb
  from seqtrain.data.download import cache_dir

  name = _canonical_name(args.name)
  data_dir = Path(args.data_dir).expanduser() if args.data_dir else cache_dir() / "tfds"
  already = tb.is_prepared(name, data_dir)
  try:
    builder = tb.prepare(name, data_dir, source_dir=args.source_dir,
                         progress=not args.quiet and sys.stderr.isatty())
  except tb.DatasetNotFoundError as e:
    raise CommandError(str(e).replace("pass source_dir= a folder", "pass --source-dir a folder")) \
      from None
  path = Path(builder.data_dir)
  print(f"{name}: {'already prepared in' if already else 'prepared in'} {path}")
  features = builder.info.features
  print(f"  {_plural(features['series'].shape[1], 'channel')}, "
        f"{_plural(features['label'].num_classes, 'class')}")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")
  return EXIT_OK


# --------------------------------------------------------------------------- inspect


class _Moments(Moments):
  """``Moments`` with the inspect report's views."""

  def channels(self) -> list[dict]:
    std = self.std()
    return [{"channel": c, "min": _finite(self.lo[c]), "max": _finite(self.hi[c]),
             "mean": _finite(self.mean[c]) if self.n[c] else None,
             "std": _finite(std[c]) if self.n[c] else None, "missing": int(self.missing[c])}
            for c in range(len(self.n))]

  def overall(self) -> dict:
    n = int(self.n.sum())
    if n == 0:
      return {"min": None, "max": None, "mean": None, "std": None}
    mean = float((self.n * self.mean).sum() / n)
    m2 = float((self.m2 + self.n * (self.mean - mean) ** 2).sum())
    return {"min": _finite(np.nanmin(self.lo)), "max": _finite(np.nanmax(self.hi)),
            "mean": mean, "std": math.sqrt(m2 / n)}


def _split_report(source: Any, split: str, where: str, examples: int | None = None) -> dict:
  """The quality report of one split. ``source`` is a :class:`SeriesDataset` or any
  source with ``len``, ``[i]["series"]``, ``lengths``, ``labels``, ``class_names`` and
  ``num_channels`` (synthetic tasks); ``examples`` limits the series read for values."""
  n = len(source)
  lengths = np.asarray(source.lengths, np.int64)
  labels = np.asarray(source.labels, np.int64)
  class_names = list(source.class_names)
  counts = np.bincount(labels, minlength=len(class_names)) if n else np.zeros(len(class_names))
  examined = n if examples is None else min(n, examples)
  moments = _Moments(int(source.num_channels))
  series_missing = 0
  for i in range(examined):
    x = source.series[i] if isinstance(source, SeriesDataset) else source[i]["series"]
    before = int(moments.missing.sum())
    moments.add(x)
    series_missing += int(moments.missing.sum()) > before
  channels = moments.channels()
  report = {
      "split": split, "source": where, "series": n, "channels": int(source.num_channels),
      "length": {"min": int(lengths.min()) if n else None,
                 "mean": float(lengths.mean()) if n else None,
                 "max": int(lengths.max()) if n else None,
                 "equal": bool(n == 0 or (lengths == lengths[0]).all())},
      "classes": [{"name": c, "count": int(k)} for c, k in zip(class_names, counts)],
      "num_classes": len(class_names),
      "examined": examined,
      "missing": {"values": int(moments.missing.sum()), "series": series_missing},
      "values": moments.overall(),
      "channel_stats": channels,
  }
  report["notes"] = _notes(report)
  return report


def _notes(r: dict) -> list[str]:
  """Things worth knowing before training on a split."""
  notes = []
  counts = [c["count"] for c in r["classes"]]
  empty = [c["name"] for c in r["classes"] if c["count"] == 0]
  if empty:
    notes.append(f"no examples of class{'es' if len(empty) > 1 else ''} {', '.join(empty)}")
  present = [k for k in counts if k > 0]
  if len(present) > 1 and max(present) >= 3 * min(present):
    notes.append(f"imbalanced classes: {max(present)} vs {min(present)} examples")
  if r["missing"]["values"]:
    notes.append(f"{_plural(r['missing']['values'], 'missing value')} (NaN) in "
                 f"{r['missing']['series']} series; the input pipeline fills them with the channel "
                 "mean (0 after normalisation)")
  constant = [c["channel"] for c in r["channel_stats"] if c["std"] == 0.0]
  if constant:
    shown = ", ".join(map(str, constant[:8])) + (", ..." if len(constant) > 8 else "")
    notes.append(f"constant channel{'s' if len(constant) > 1 else ''} {shown}")
  empty_ch = [c["channel"] for c in r["channel_stats"] if c["mean"] is None]
  if empty_ch and r["examined"]:
    notes.append(f"channels with no values at all: {', '.join(map(str, empty_ch[:8]))}")
  stds = [c["std"] for c in r["channel_stats"] if c["std"]]
  if len(stds) > 1 and max(stds) > 100 * min(stds):
    notes.append(f"channel scales differ {max(stds) / min(stds):.0f}x (std {min(stds):.3g} .. "
                 f"{max(stds):.3g}): per-channel normalisation matters")
  if not r["length"]["equal"] and r["length"]["min"] is not None \
      and r["length"]["max"] >= 4 * r["length"]["min"]:
    notes.append(f"lengths vary {r['length']['min']}..{r['length']['max']}: batches are padded")
  if r["examined"] < r["series"]:
    notes.append(f"value statistics from the first {r['examined']} of {r['series']} series")
  return notes


def _cross_notes(splits: dict[str, dict]) -> list[str]:
  """Differences between the splits of one dataset."""
  train = splits.get("train")
  if train is None:
    return []
  notes = []
  train_classes = {c["name"] for c in train["classes"] if c["count"]}
  for split, r in splits.items():
    if split == "train":
      continue
    if r["channels"] != train["channels"]:
      notes.append(f"{split} has {r['channels']} channels, train {train['channels']}")
    extra = sorted({c["name"] for c in r["classes"] if c["count"]} - train_classes)
    if extra:
      notes.append(f"{split} holds classes not in train: {', '.join(extra)}")
    if r["length"]["max"] is not None and train["length"]["max"] is not None \
        and r["length"]["max"] > train["length"]["max"]:
      notes.append(f"{split} has longer series (up to {r['length']['max']}) than train "
                   f"(up to {train['length']['max']})")
  return notes


def _parse_option(text: str) -> Any:
  low = text.strip().lower()
  if low == "none":
    return None
  if low in ("true", "false"):
    return low == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _synthetic(spec: str, split: str, examples: int) -> dict:
  """The report of ``synthetic:<task>[:length][:option=value...]``."""
  from seqtrain.data import synthetic

  parts = spec[len(_SYNTHETIC):].split(":")
  task = parts[0]
  if not task:
    raise CommandError(f"{spec!r}: expected {_SYNTHETIC}<task>[:length], tasks: "
                       f"{', '.join(synthetic.TASKS)}")
  length, options = None, {}
  for part in parts[1:]:
    key, eq, value = part.partition("=")
    if eq:
      options[key.strip()] = _parse_option(value)
    elif length is None:
      try:
        length = int(part)
      except ValueError:
        raise CommandError(f"{spec!r}: length must be an integer, got {part!r}") from None
    else:
      raise CommandError(f"{spec!r}: expected option=value after the length, got {part!r}")
  length = _SYNTHETIC_LENGTH if length is None else length
  splits = list(synthetic.SPLITS) if split == "all" else [split]
  reports = {}
  for s in splits:
    try:
      source = synthetic.make_task(task, split=s, length=length, **options)
    except (TypeError, ValueError) as e:
      raise CommandError(f"{spec}: {e}") from None
    reports[s] = _split_report(source, s, f"synthetic task {task!r}, split {s}, length {length}",
                               examples)
  return {"name": spec, "kind": "synthetic", "task": task, "length": length,
          "options": {**synthetic.task_options(task), **options}, "splits": reports,
          "notes": _cross_notes(reports)}


def inspect_report(target: str, split: str = "all", data_dir: str | None = None,
                   examples: int = 8) -> dict:
  """What ``seqtrain data inspect --json`` prints for ``target``: an archive dataset
  name, a ``.ts`` / ``.npz`` file, a folder holding ``<folder name>_TRAIN.ts``, or
  ``synthetic:<task>[:length][:option=value...]``.

  Raises:
    DataFormatError: the dataset is not found or a file is malformed.
    CommandError, ValueError: a bad target or option.
  """
  from seqtrain.data.sources import find_split_file, load_split
  from seqtrain.data.ts import read_series_file

  if target.startswith(_SYNTHETIC):
    return _synthetic(target, split, examples)
  path = Path(target).expanduser()
  if path.suffix.lower() in (".ts", ".npz") or path.is_file():
    if split not in ("all", "train"):
      raise CommandError(f"--split {split} applies to datasets with splits; {target} is one file")
    data = read_series_file(path)
    reports = {"file": _split_report(data, "file", str(path))}
    return {"name": data.name, "kind": "file", "splits": reports, "notes": []}
  if path.is_dir() and find_split_file(path.name, "train", path) is not None:
    name, data_dir, kind = path.name, str(path), "folder"
  else:
    name, kind = _canonical_name(target), "archive"
  wanted = list(_ARCHIVE_SPLITS) if split == "all" else [split]
  reports = {}
  for s in wanted:
    if split == "all" and s != "train" and find_split_file(name, s, data_dir) is None:
      continue
    data = load_split(name, s, data_dir)
    reports[s] = _split_report(data, s, data.source)
  return {"name": name, "kind": kind, "splits": reports, "notes": _cross_notes(reports)}


def _render_inspect(report: dict, max_channels: int) -> str:
  out = [f"{report['name']} ({report['kind']})"]
  if report["kind"] == "synthetic":
    options = ", ".join(f"{k}={v}" for k, v in report["options"].items())
    out.append(f"  length {report['length']}; {options}")
  for split, r in report["splits"].items():
    ln = r["length"]
    if ln["min"] is None:
      length = "-"
    elif ln["equal"]:
      length = f"{ln['min']}"
    else:
      length = f"min {ln['min']}, mean {ln['mean']:.1f}, max {ln['max']}"
    out += ["", f"{split}: {r['series']} series x {_plural(r['channels'], 'channel')}, "
            f"length {length}, {_plural(r['num_classes'], 'class')}",
            f"  source   {r['source']}"]
    total = max(r["series"], 1)
    out.append("  classes  " + ", ".join(
        f"{c['name']} {c['count']} ({100 * c['count'] / total:.0f}%)" for c in r["classes"]))
    out.append(f"  missing  {_plural(r['missing']['values'], 'value')} in "
               f"{r['missing']['series']} series")
    v = r["values"]
    out.append(f"  values   min {_fmt(v['min'])}, max {_fmt(v['max'])}, mean {_fmt(v['mean'])}, "
               f"std {_fmt(v['std'])}"
               + (f" (first {r['examined']} series)" if r["examined"] < r["series"] else ""))
    rows = [("channel", "min", "max", "mean", "std", "missing")]
    for c in r["channel_stats"][:max_channels]:
      rows.append((c["channel"], _fmt(c["min"]), _fmt(c["max"]), _fmt(c["mean"]), _fmt(c["std"]),
                   c["missing"]))
    out += _table(rows, [True] * 6, indent="    ")
    hidden = len(r["channel_stats"]) - max_channels
    if hidden > 0:
      out.append(f"    ... {hidden} more channel{'s' if hidden > 1 else ''} (--channels N or "
                 "--json shows them)")
    for note in r["notes"]:
      out.append(f"  note: {note}")
  if report["notes"]:
    out.append("")
    out += [f"note: {note}" for note in report["notes"]]
  return "\n".join(out)


def _cmd_inspect(args: argparse.Namespace) -> int:
  report = inspect_report(args.target, args.split, args.data_dir, args.examples)
  if args.json:
    _print_json(report)
  else:
    print(_render_inspect(report, args.channels))
  return EXIT_OK
