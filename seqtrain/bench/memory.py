"""Training-step memory per layer: the compiled train step's temporaries over one
layer's output (B x T x width float32), by depth, with and without
``model.recompute``.

    python benchmarks/train_memory.py --out DIR        # T = 2^15, B = 2, depths 1-3
    python benchmarks/train_memory.py --T 4096 --depths 1,2 --method sequential

Compiles only (nothing runs): XLA's own figure for the program
(``memory_analysis().temp_size_in_bytes``). The "each further layer" column is
the slope between the smallest and the largest depth.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from seqtrain.bench.common import (_env_lines, _write_json_markdown, default_out_dir, dry_run,
                                   environment_info)


def train_step_temp(depth: int, recompute: bool, *, T: int = 4096, batch: int = 2,
                    width: int = 32, method: str = "quasi_deer", cell: str = "gru") -> float:
  """Compiled train-step temporaries / one layer's output: the base config's blocks
  (``cell``, MLP ratio 2) at ``depth``, one device."""
  import jax
  import jax.numpy as jnp

  from seqtrain.parallel import mesh as mesh_lib
  from seqtrain.train import config as config_lib, steps as steps_lib
  c = config_lib.base_config()
  c.model.depth, c.model.width, c.model.cell, c.model.recompute = depth, width, cell, recompute
  c.model.solver.method = method
  mesh = mesh_lib.make_mesh(("data",), (1,), devices=jax.devices()[:1])
  setup = steps_lib.build_train_state(config_lib.validate(c), 2, 1, mesh)
  step = jax.jit(steps_lib.make_train_step(setup.model, setup.tx, mesh, setup.lr_schedule))
  spec = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype)
  batch_spec = {"inputs": spec((batch, T, 1), jnp.float32), "lengths": spec((batch,)),
                "labels": spec((batch,)), "mask": spec((batch,), jnp.float32),
                "index": spec((batch,))}
  mem = step.lower(setup.abstract, batch_spec).compile().memory_analysis()
  return mem.temp_size_in_bytes / (batch * T * width * 4)


def run_train_memory(*, T: int, batch: int, width: int, method: str, cell: str,
                     depths: Sequence[int], log=print) -> list[dict]:
  rows = []
  for recompute in (False, True):
    ratios = {}
    for d in depths:
      ratios[d] = train_step_temp(d, recompute, T=T, batch=batch, width=width, method=method,
                                  cell=cell)
      log(f"recompute={recompute} depth {d}: {ratios[d]:.1f}x one layer's output")
    lo, hi = min(depths), max(depths)
    slope = (ratios[hi] - ratios[lo]) / (hi - lo) if hi > lo else None
    rows.append({"recompute": recompute, "T": T, "batch": batch, "width": width,
                 "method": method, "cell": cell,
                 "ratios": {str(d): r for d, r in ratios.items()}, "per_further_layer": slope})
  return rows


def train_memory_markdown(rows: list[dict], env: dict | None = None) -> str:
  depths = list(rows[0]["ratios"]) if rows else []
  r0 = rows[0] if rows else {}
  lines = ["# Training-step memory per layer", ""] + _env_lines(env) + [
      f"Base config blocks ({r0.get('cell')}-{r0.get('width')}, MLP ratio 2), "
      f"{r0.get('method')}, T={r0.get('T')}, batch {r0.get('batch')}, one device: compiled "
      "train-step temporaries over one layer's output.", "",
      "| model.recompute | " + " | ".join(f"depth {d}" for d in depths)
      + " | each further layer |",
      "|---|" + "---:|" * (len(depths) + 1)]
  for r in rows:
    slope = "-" if r["per_further_layer"] is None else f"{r['per_further_layer']:.1f}x"
    lines.append(f"| {'on' if r['recompute'] else 'off'} | "
                 + " | ".join(f"{r['ratios'][d]:.1f}x" for d in depths) + f" | {slope} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="benchmarks/train_memory.py",
                              description=__doc__.split("\n")[0])
  p.add_argument("--T", type=int, default=2 ** 15)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--method", default="quasi_deer")
  p.add_argument("--cell", default="gru")
  p.add_argument("--depths", default="1,2,3", help="comma-separated depths")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  try:
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
  except ValueError:
    p.error(f"--depths: expected comma-separated integers, got {args.depths!r}")
  if dry_run(args, "train_memory"):
    return 0
  env = environment_info(argv)
  rows = run_train_memory(T=args.T, batch=args.batch, width=args.width, method=args.method,
                          cell=args.cell, depths=depths)
  out = Path(args.out) if args.out else default_out_dir()
  paths = _write_json_markdown(out, "train_memory", "train_memory", rows, env,
                               {k: v for k, v in vars(args).items() if k != "out"},
                               train_memory_markdown(rows, env))
  print(train_memory_markdown(rows))
  print("wrote " + ", ".join(str(v) for v in paths.values()), flush=True)
  return 0
