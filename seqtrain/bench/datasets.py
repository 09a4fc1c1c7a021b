"""``seqtrain bench datasets``: the default recipe against the classic baselines.

For each dataset (an archive name such as ``BasicMotions`` or a ``*_TRAIN.ts`` /
``.npz`` file, whose ``*_TEST`` sibling is the test split), trains the recipe
(``configs/files.py`` unless ``--config`` names another) in
``<workdir>/<dataset>`` (a finished run is reused, an interrupted one resumes),
evaluates the run's model on the test split and fits 1-NN Euclidean and 1-NN DTW
(10% window, where affordable) on the same training series. Prints and writes
the table dataset | length | classes | seqtrain | 1-NN ED | 1-NN DTW | time as
JSON and markdown under ``--out`` (default ``benchmarks/results/<date>-<device>``).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Sequence

DEFAULT_CONFIG = "configs/files.py"
_SPLIT = re.compile(r"_TRAIN(\.[A-Za-z0-9]+)$")


class DatasetSpecError(ValueError):
  """A dataset argument that names no dataset."""


def dataset_overrides(spec: str) -> tuple[str, list[str]]:
  """(row name, ``data.*`` overrides) for an archive name or a training file."""
  path = Path(spec)
  if path.suffix.lower() in (".ts", ".npz") or path.exists():
    if not path.is_file():
      raise DatasetSpecError(f"{spec}: no such file")
    out = ["data.source=files", f"data.train_file={path}", "data.name="]
    test = path.with_name(_SPLIT.sub(r"_TEST\1", path.name))
    if test != path and test.is_file():
      out.append(f"data.test_file={test}")
    name = _SPLIT.sub("", path.name) if _SPLIT.search(path.name) else path.stem
    return name, out
  if not re.fullmatch(r"[A-Za-z0-9_\-]+", spec):
    raise DatasetSpecError(f"{spec!r}: not a .ts/.npz file or an archive dataset name")
  return spec, ["data.source=archive", f"data.name={spec}", "data.train_file=",
                "data.test_file="]


def run_dataset(spec: str, config_path: str, overrides: Sequence[str], workdir: Path) -> dict:
  """Trains and evaluates one dataset; returns its table row."""
  from seqtrain.train import config as config_lib
  from seqtrain.train.trainer import train_and_evaluate
  name, data_fields = dataset_overrides(spec)
  config = config_lib.load_config(config_path, [*data_fields, *overrides])
  t0 = time.perf_counter()
  result = train_and_evaluate(config, workdir / name)
  seconds = time.perf_counter() - t0
  split = "test" if "test" in result else "validation"
  m = result[split]
  base = m.get("baselines") or {}
  info = _data_info(workdir / name)
  return {"dataset": name, "spec": spec, "split": split, "length": info.get("max_length"),
          "classes": len(info.get("class_names", [])), "channels": info.get("num_channels"),
          "sizes": info.get("sizes"), "seqtrain": m["accuracy"],
          "1nn_euclidean": base.get("1nn_euclidean"), "1nn_dtw": base.get("1nn_dtw"),
          "dtw_window": base.get("dtw_window"), "dtw_skipped": base.get("dtw_skipped"),
          "seconds": seconds, "steps": result["step"], "model": result.get("model"),
          "workdir": str(workdir / name)}


def _data_info(workdir: Path) -> dict:
  import json
  try:
    return json.loads((workdir / "data.json").read_text())
  except (OSError, ValueError):
    return {}


def _acc(v) -> str:
  return "-" if v is None else f"{v:.3f}"


def table_markdown(rows: list[dict], env: dict | None = None) -> str:
  from seqtrain.bench.common import _env_lines
  lines = ["# Default recipe vs 1-NN baselines", "", *_env_lines(env),
           "| dataset | length | classes | seqtrain | 1-NN ED | 1-NN DTW | time |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['dataset']} | {r['length']} | {r['classes']} | {_acc(r['seqtrain'])} | "
                 f"{_acc(r['1nn_euclidean'])} | {_acc(r['1nn_dtw'])} | {r['seconds']:.0f} s |")
  return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("datasets", nargs="+", metavar="NAME_OR_TRAIN_FILE",
                 help="archive dataset names or *_TRAIN.ts / .npz files (*_TEST beside is the "
                      "test split)")
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help=f"the recipe (default {DEFAULT_CONFIG}: the default for your own data)")
  p.add_argument("--workdir", default="runs/bench-datasets",
                 help="one run per dataset under this folder (reused / resumed when present)")
  p.add_argument("--out", default=None,
                 help="folder for datasets.json / datasets.md (default "
                      "benchmarks/results/<date>-<device>)")


def run(args: argparse.Namespace, overrides: Sequence[str], argv: Sequence[str] | None) -> int:
  from seqtrain.bench.common import default_out_dir, environment_info, write_json
  from seqtrain.train import config as config_lib
  for spec in args.datasets:       # every argument and config checked before anything trains
    config_lib.load_config(args.config, [*dataset_overrides(spec)[1], *overrides])
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  workdir = Path(args.workdir)
  rows = []
  for spec in args.datasets:
    print(f"== {spec}", flush=True)
    row = run_dataset(spec, args.config, overrides, workdir)
    rows.append(row)
    print(f"== {row['dataset']}: seqtrain {_acc(row['seqtrain'])}, 1-NN Euclidean "
          f"{_acc(row['1nn_euclidean'])}, 1-NN DTW {_acc(row['1nn_dtw'])} "
          f"({row['seconds']:.0f} s)", flush=True)
  settings = {"config": args.config, "overrides": list(overrides), "datasets": args.datasets}
  json_path = write_json(out / "datasets.json", "datasets", rows, env, settings)
  text = table_markdown(rows, env)
  (out / "datasets.md").write_text(text)
  print(text, flush=True)
  print(f"wrote {json_path}, {out / 'datasets.md'}", flush=True)
  return 0
