"""``seqtrain bench seq-parallel``: one sequence split over P devices.

    seqtrain bench seq-parallel [--P 1,2,4,8] [--T 1048576] [--batch 4] [--D 32]
                                [--check-T 16384] [--cpu-devices 8] [--out DIR]

For each P, a ParallelRNN(GRU-D) layer with ``seq_axis="seq"`` inside
``jax.shard_map`` over the first P devices (the time axis split into P blocks):

* memory: the compiled program's per-device temporaries + output at --T (forward,
  and forward + gradient), next to the same layer on one device without the
  axis (the "P = 1 / no axis" row), and their ratio: compiled, never run, so
  T = 2^20 fits a laptop;
* correctness and iterations at --check-T (run): the largest error against
  lax.scan on one device (forward states and the parameters' gradient), the
  solver's iterations and convergence;
* time at --check-T (median of --repeats calls after warm-up); on forced CPU
  devices all "devices" share the host's cores, so times there say nothing of
  a cluster: they are for GPU hosts with several GPUs.

On CPU, --cpu-devices N forces N host devices (the flag must be set before JAX
starts: run from a fresh process). Writes seq_parallel.json / .md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

from seqtrain.bench.common import dry_run

__all__ = ["run_seq_parallel", "seq_parallel_markdown", "main"]


def _layer(d: int, method: str, seq_axis: str | None, options: dict):
  from flax import linen as nn
  from seqtrain.nn import ParallelRNN
  return ParallelRNN(nn.GRUCell(d), method=method, seq_axis=seq_axis, solver_options=options)


def _programs(d: int, n: int, method: str, options: dict):
  """(forward, forward+gradient) callables of (params, x) for n devices (0: no axis)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import AxisType, PartitionSpec as P

  if n == 0:
    layer = _layer(d, method, None, options)
    fwd = lambda p, x: layer.apply({"params": p}, x, mutable=["solver_stats"])
  else:
    layer = _layer(d, method, "seq", options)
    mesh = jax.make_mesh((n,), ("seq",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    inner = lambda p, x: layer.apply({"params": p}, x, mutable=["solver_stats"])
    fwd = jax.shard_map(inner, mesh=mesh, in_specs=(P(), P(None, "seq")),
                        out_specs=(P(None, "seq"), P()))

  def loss(p, x):
    y, _ = fwd(p, x)
    return jnp.sum(jnp.sin(y))

  return jax.jit(fwd), jax.jit(jax.grad(loss))


def _memory(fn, *args) -> dict:
  from seqtrain.bench.common import compiled_memory
  m = compiled_memory(fn.lower(*args).compile())
  m["temp_plus_output"] = (m["temp_bytes"] or 0) + (m["output_bytes"] or 0)
  return m


def run_seq_parallel(*, P: Sequence[int] = (1, 2, 4, 8), T: int = 2 ** 20, batch: int = 4,
                     D: int = 32, check_T: int = 16384, method: str = "quasi_deer",
                     repeats: int = 3, log=print) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from seqtrain.bench.common import _max_abs_diff, _rel_tree_error, _solver_stats

  options = {}
  available = jax.device_count()
  rows = []
  params = _layer(D, method, None, options).init(
      jax.random.key(0), jnp.zeros((1, 8, D), jnp.float32))["params"]
  big = jax.ShapeDtypeStruct((batch, T, D), jnp.float32)
  x = jax.random.normal(jax.random.key(1), (batch, check_T, D), jnp.float32)
  ref_fwd, ref_grad = _programs(D, 0, "sequential", options)
  ref_y = ref_fwd(params, x)[0]
  ref_g = ref_grad(params, x)
  base = {}
  for n in [0] + [p for p in P if p <= available]:
    fwd, grad = _programs(D, n, method, options)
    row = {"devices": n or 1, "axis": bool(n), "method": method, "T": T, "batch": batch, "D": D,
           "block": T // max(n, 1)}
    if T % max(n, 1) or check_T % max(n, 1):
      row["skipped"] = f"T={T} or check_T={check_T} not divisible by P={n}"
      rows.append(row)
      continue
    for name, fn in (("forward", fwd), ("gradient", grad)):
      mem = _memory(fn, params, big)
      row[f"{name}_bytes"] = mem["temp_plus_output"]
      if n == 0:
        base[name] = mem["temp_plus_output"]
      row[f"{name}_ratio"] = mem["temp_plus_output"] / base[name] if base.get(name) else None
    y, stats = fwd(params, x)
    g = grad(params, x)
    row.update(_solver_stats(stats.get("solver_stats")))
    row["state_error"] = _max_abs_diff(y, ref_y)
    row["grad_rel_error"] = _rel_tree_error(g, ref_g)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fwd(params, x))
      times.append(time.perf_counter() - t0)
    row["check_T"] = check_T
    row["forward_s"] = statistics.median(times)
    rows.append(row)
    log(_line(row))
  for p in P:
    if p > available:
      rows.append({"devices": p, "axis": True, "skipped": f"{available} devices available"})
      log(f"P={p}: skipped ({available} devices available)")
  return rows


def _mib(v) -> str:
  return "-" if v is None else f"{v / 2 ** 20:,.0f}"


def _line(r: dict) -> str:
  if "skipped" in r:
    return f"P={r['devices']}: skipped ({r['skipped']})"
  label = f"P={r['devices']}" + ("" if r["axis"] else " (no axis)")
  ratio = lambda v: "-" if v is None else f"{v:.3f}"
  return (f"{label}: forward {_mib(r['forward_bytes'])} MiB/device ({ratio(r['forward_ratio'])}x), "
          f"gradient {_mib(r['gradient_bytes'])} MiB/device ({ratio(r['gradient_ratio'])}x); "
          f"T={r['check_T']}: {r['iterations']} iterations, state error {r['state_error']:.1e}, "
          f"gradient error {r['grad_rel_error']:.1e}, {r['forward_s'] * 1e3:.1f} ms")


def seq_parallel_markdown(rows: list[dict], env: dict | None = None) -> str:
  from seqtrain.bench.common import _env_lines
  r0 = next((r for r in rows if "skipped" not in r), {})
  out = ["# Sequence parallelism: one sequence over P devices", ""] + _env_lines(env) + [
      f"ParallelRNN(GRU-{r0.get('D')}), {r0.get('method')}, batch {r0.get('batch')}. Memory: "
      f"compiled per-device temporaries + output at T = {r0.get('T')} (ratio to one device "
      f"without the axis). Errors, iterations and time: run at T = {r0.get('check_T')} "
      "against lax.scan on one device.", "",
      "| P | block | forward MiB/device | ratio | fwd+grad MiB/device | ratio | iterations | "
      "converged | state error | grad rel. error | forward ms |",
      "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
  for r in rows:
    if "skipped" in r:
      out.append(f"| {r['devices']} | skipped: {r['skipped']} | | | | | | | | | |")
      continue
    label = str(r["devices"]) + ("" if r["axis"] else " (no axis)")
    ratio = lambda v: "-" if v is None else f"{v:.3f}"
    out.append(f"| {label} | {r['block']} | {_mib(r['forward_bytes'])} | "
               f"{ratio(r['forward_ratio'])} | {_mib(r['gradient_bytes'])} | "
               f"{ratio(r['gradient_ratio'])} | {r['iterations']} | {r['converged']} | "
               f"{r['state_error']:.1e} | {r['grad_rel_error']:.1e} | "
               f"{r['forward_s'] * 1e3:.1f} |")
  return "\n".join(out)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--P", type=_ints, default=[1, 2, 4, 8], help="device counts (default 1,2,4,8)")
  p.add_argument("--T", type=int, default=2 ** 20, help="length for the memory columns")
  p.add_argument("--check-T", type=int, default=16384,
                 help="length that is run: errors, iterations, time")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--D", type=int, default=32)
  p.add_argument("--method", default="quasi_deer", choices=["quasi_deer", "deer"])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--cpu-devices", type=int, default=8,
                 help="forced host devices when JAX runs on CPU (0: leave as is)")
  p.add_argument("--out", default=None, help="folder for seq_parallel.json / .md "
                 "(default benchmarks/results/<date>-<device>)")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="seqtrain bench seq-parallel",
                                   description=__doc__.split("\n")[0])
  add_arguments(parser)
  args = parser.parse_args(argv)
  if dry_run(args, "sequence parallel"):
    return 0
  if args.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  import jax
  from seqtrain.bench.common import _write_json_markdown, default_out_dir, environment_info
  bad = [p for p in args.P if p < 1]
  if bad or args.T < 1 or args.check_T < 1:
    parser.error(f"--P, --T and --check-T take positive integers (got {args.P}, {args.T}, "
                 f"{args.check_T})")
  print(f"seq-parallel: {jax.device_count()} {jax.default_backend()} device(s)", flush=True)
  rows = run_seq_parallel(P=args.P, T=args.T, batch=args.batch, D=args.D,
                          check_T=args.check_T, method=args.method, repeats=args.repeats)
  env = environment_info(["bench", "seq-parallel", *(argv or [])])
  out = Path(args.out) if args.out else default_out_dir()
  paths = _write_json_markdown(out, "seq_parallel", "seq_parallel", rows, env, vars(args),
                               seq_parallel_markdown(rows, env))
  print(f"wrote {paths['json']}, {paths['markdown']}")
  return 0
