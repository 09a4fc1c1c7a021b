"""Command lines of the benchmarks: ``seqtrain bench`` and the scripts in benchmarks/."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from seqtrain.bench.common import (CELLS, DEFAULT_GRID_METHODS, GRID_METHODS, PERSTEP_VARIANTS,
                                   SOLVER_METHODS, TRAIN_METHODS, _METHOD_ALIASES,
                                   canonical_grid_method, default_out_dir, dry_run,
                                   environment_info)
from seqtrain.bench.grid import (plot_grid, run_check, run_grid, write_check_report,
                                 write_grid_report)
from seqtrain.bench.report import summarize
from seqtrain.bench.stability import (STABILITY_METHODS, STABILITY_SYSTEMS, run_stability,
                                      stability_variants, write_stability_report)
from seqtrain.bench.training import run_training, write_training_report


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
  try:
    return [int(float(v)) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _float_list(text: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _str_list(text: str) -> list[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def _grid_methods(text: str) -> list[str]:
  try:
    return [canonical_grid_method(v) for v in _str_list(text)]
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e))


def _solver_methods(text: str) -> list[str]:
  out = []
  for v in _str_list(text):
    m = canonical_grid_method(v) if v.lower() in GRID_METHODS or v.lower() in _METHOD_ALIASES \
        else v
    if m not in SOLVER_METHODS and m not in PERSTEP_VARIANTS:
      valid = ", ".join(SOLVER_METHODS + tuple(PERSTEP_VARIANTS))
      raise argparse.ArgumentTypeError(f"unknown solver method {v!r}; valid: {valid}")
    out.append(m)
  return out


def _systems(text: str) -> list[str]:
  out = _str_list(text)
  bad = [v for v in out if v not in STABILITY_SYSTEMS]
  if bad:
    raise argparse.ArgumentTypeError(
        f"unknown system {bad[0]!r}; valid: {', '.join(STABILITY_SYSTEMS)}")
  return out


def _cells(text: str) -> list[str]:
  out = _str_list(text)
  bad = [c for c in out if c not in CELLS]
  if bad:
    raise argparse.ArgumentTypeError(f"unknown cell {bad[0]!r}; valid: {', '.join(CELLS)}")
  return out


SMOKE_GRID = {"T": [64, 256], "D": [4], "batch": [2], "repeats": 2}
SMOKE_CHECK = {"T": 64, "D": 4, "batch": 2, "cells": ("gru",),
               "methods": ("sequential", "quasi_deer", "deer", "quasi_elk")}


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
  """The layer-grid flags shared by ``seqtrain bench`` and ``benchmarks/solvers.py``."""
  p.add_argument("--T", type=_int_list, default=[1000, 10000],
                 help="sequence lengths, comma-separated (1e5 style accepted)")
  p.add_argument("--D", type=_int_list, default=[8, 64], help="hidden sizes")
  p.add_argument("--batch", type=_int_list, default=[16], help="batch sizes")
  p.add_argument("--cells", type=_cells, default=["gru"], help=f"of {', '.join(CELLS)}")
  p.add_argument("--methods", type=_grid_methods, default=list(DEFAULT_GRID_METHODS),
                 help=f"of {', '.join(GRID_METHODS)} (sequential always runs: the reference)")
  p.add_argument("--grad", action="store_true", help="also time forward+gradient")
  p.add_argument("--grad-max-T", type=int, default=None,
                 help="gradient pass only up to this T")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
  p.add_argument("--time-limit", type=float, default=10.0,
                 help="seconds of timed calls per row: fewer repeats for slow rows")
  p.add_argument("--max-call-s", type=float, default=60.0,
                 help="skip a row whose call, extrapolated from the previous T, would take longer")
  p.add_argument("--deadline-s", type=float, default=None,
                 help="skip the rows left after this many seconds")
  p.add_argument("--memory-budget-gb", type=float, default=None,
                 help="skip programs needing more (default 90%% of device memory; CPU: half RAM)")
  p.add_argument("--max-iter", type=int, default=None, help="solver max_iter (default: the causal bound)")
  p.add_argument("--chunk", type=int, default=None,
                 help="steps per chunk of the chunked solvers (default: by T)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None,
                 help="output folder (default benchmarks/results/<date>-<device>)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny grid (T=64,256, D=4, batch 2, 2 repeats) for testing the plumbing; "
                 "with --check: T=64, D=4, gru, four methods")
  p.add_argument("--check", action="store_true",
                 help="only the correctness check: every method vs sequential at T=200, D=8 "
                 "(forward and gradient, gru and lstm); exit 1 on failure")


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
  """Adds ``seqtrain bench`` (the layer grid) to the ``seqtrain`` sub-parsers."""
  p = subparsers.add_parser(
      "bench", help="time the solvers on one layer over a grid of T, D, batch and method",
      description="Time ParallelRNN (forward, optionally forward+gradient) against lax.scan, "
      "nn.RNN and cuDNN over a grid; writes JSON, markdown and a PNG plot.")
  add_grid_arguments(p)
  return p


def run_bench(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
  """Runs ``seqtrain bench`` (or ``benchmarks/solvers.py``) from parsed flags; returns
  the exit code (1 when ``--check`` fails)."""
  if dry_run(args, "check" if args.check else "layer grid"):
    return 0
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  if args.check:
    check = dict(SMOKE_CHECK) if args.smoke else {}
    ok, rows = run_check(**check)
    paths = write_check_report(ok, rows, env, out, check)
    print(f"wrote {paths['markdown']}", flush=True)
    return 0 if ok else 1
  grid = dict(T=args.T, D=args.D, batch=args.batch, repeats=args.repeats)
  if args.smoke:
    grid.update(SMOKE_GRID)
  settings = dict(grid, cells=args.cells, methods=args.methods, grad=args.grad,
                  grad_max_T=args.grad_max_T, time_limit=args.time_limit,
                  max_call_s=args.max_call_s, deadline_s=args.deadline_s,
                  memory_budget_gb=args.memory_budget_gb, max_iter=args.max_iter,
                  chunk=args.chunk, seed=args.seed, smoke=args.smoke)
  budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None
  print(f"layer grid on {env['device_kind']}: T={grid['T']} D={grid['D']} "
        f"batch={grid['batch']} cells={args.cells} -> {out}", flush=True)
  rows = run_grid(T=grid["T"], D=grid["D"], batch=grid["batch"], cells=args.cells,
                  methods=args.methods, grad=args.grad, grad_max_T=args.grad_max_T,
                  repeats=grid["repeats"], time_limit=args.time_limit,
                  max_call_s=args.max_call_s, deadline_s=args.deadline_s, memory_budget=budget,
                  max_iter=args.max_iter, chunk=args.chunk, seed=args.seed)
  paths = write_grid_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def main_solvers(argv: Sequence[str] | None = None) -> int:
  """``benchmarks/solvers.py``: the same flags as ``seqtrain bench``."""
  p = argparse.ArgumentParser(prog="benchmarks/solvers.py", description=__doc__.split("\n")[0])
  add_grid_arguments(p)
  args = p.parse_args(argv)
  return run_bench(args, argv)


def training_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="benchmarks/training.py",
      description="Steps/s of the 5-layer GRU-32 EigenWorms classifier per method.")
  p.add_argument("--T", type=int, default=17_984)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=5, help="timed steps per method (median)")
  p.add_argument("--depth", type=int, default=5)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--cell", default="gru", choices=["gru", "lstm", "simple", "diag_gru",
                                                    "diag_lstm"])
  p.add_argument("--methods", type=_solver_methods, default=list(TRAIN_METHODS))
  p.add_argument("--time-limit", type=float, default=60.0,
                 help="seconds of timed steps per method: fewer steps for slow methods")
  p.add_argument("--deadline-s", type=float, default=None,
                 help="skip the methods left after this many seconds")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--recompute", choices=["off", "on", "both"], default="off",
                 help="model.recompute for every method (both: a row with and one without)")
  p.add_argument("--smoke", action="store_true", help="T=64, depth 2, 2 steps")
  return p


def main_training(argv: Sequence[str] | None = None) -> int:
  args = training_parser().parse_args(argv)
  if dry_run(args, "training"):
    return 0
  if args.smoke:
    args.T, args.depth, args.steps = 64, 2, 2
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  print(f"training benchmark on {env['device_kind']}: T={args.T} batch={args.batch} "
        f"depth={args.depth} width={args.width} -> {out}", flush=True)
  rows = run_training(T=args.T, batch=args.batch, steps=args.steps, methods=args.methods,
                      depth=args.depth, width=args.width, cell=args.cell, seed=args.seed,
                      time_limit=args.time_limit, deadline_s=args.deadline_s,
                      recompute={"off": (False,), "on": (True,), "both": (False, True)}[
                          args.recompute])
  paths = write_training_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def stability_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="benchmarks/stability.py",
      description="Iterations, wall-clock and error of each method on Lorenz-96 and an "
      "expansive tanh RNN (float64), adaptive vs fixed lambda.")
  p.add_argument("--T", type=int, default=1000)
  p.add_argument("--trials", type=int, default=10, help="initial conditions / input draws")
  p.add_argument("--systems", type=_systems, default=list(STABILITY_SYSTEMS),
                 help=f"of {', '.join(STABILITY_SYSTEMS)}")
  p.add_argument("--methods", type=_solver_methods, default=list(STABILITY_METHODS))
  p.add_argument("--fixed-lams", type=_float_list, default=[1e-3, 1e-1],
                 help="fixed-lambda settings run for elk and quasi_elk (empty: none)")
  p.add_argument("--fixed-step", choices=["smoother", "filter"], default="smoother",
                 help="ELK step for the fixed-lambda settings (filter: the paper's code)")
  p.add_argument("--max-iter", type=int, default=None, help="default T")
  p.add_argument("--repeats", type=int, default=1, help="timed calls per trial (median)")
  p.add_argument("--deadline-s", type=float, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="T=50, 2 trials")
  return p


def main_stability(argv: Sequence[str] | None = None) -> int:
  args = stability_parser().parse_args(argv)
  if dry_run(args, "stability"):
    return 0
  if args.smoke:
    args.T, args.trials = 50, 2
  import jax
  jax.config.update("jax_enable_x64", True)
  env = environment_info(argv)
  out = Path(args.out) if args.out else default_out_dir()
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  print(f"stability benchmark on {env['device_kind']}: T={args.T} trials={args.trials} "
        f"float64 -> {out}", flush=True)
  rows = run_stability(T=args.T, trials=args.trials, systems=args.systems,
                       variants=stability_variants(args.methods, args.fixed_lams,
                                                   args.fixed_step),
                       max_iter=args.max_iter, repeats=args.repeats, seed=args.seed,
                       deadline_s=args.deadline_s)
  paths = write_stability_report(rows, env, out, settings)
  print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
  return 0


def main_report(argv: Sequence[str] | None = None) -> int:
  """``benchmarks/report.py DIR``: print and write DIR/summary.md from the reports in DIR."""
  p = argparse.ArgumentParser(prog="benchmarks/report.py",
                              description="Summarise the benchmark reports in a folder.")
  p.add_argument("dir", help="folder holding check/solvers/training/stability JSON reports")
  p.add_argument("--plot", action="store_true", help="(re)draw the PNG of each solvers JSON")
  args = p.parse_args(argv)
  out = Path(args.dir)
  if not out.is_dir():
    print(f"report: error: {out} is not a folder", file=sys.stderr)
    return 2
  if dry_run(args, "report"):
    return 0
  if args.plot:
    for path in out.rglob("*.json"):
      try:
        doc = json.loads(path.read_text())
      except (OSError, ValueError):
        continue
      if isinstance(doc, dict) and doc.get("kind") == "solvers":
        png = plot_grid(doc["rows"], path.with_suffix(".png"))
        print(f"wrote {png}" if png else f"no plot for {path} (matplotlib missing or no rows)")
  text = summarize(out)
  (out / "summary.md").write_text(text + "\n")
  print(text, flush=True)
  return 0
