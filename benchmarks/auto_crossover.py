"""method="auto" against sequential (lax.scan) and quasi-DEER, in one run.

    python benchmarks/auto_crossover.py --out benchmarks/results/<machine>/ [--T 100,1000,10000]

Times ParallelRNN(GRU) forward passes (B=16, float32) for each T and D with
the three methods, after compile and one warm-up call (median of --repeats),
and writes auto_crossover.json / .md: the method "auto" resolved to, each
time, and auto's ratio to the faster of the other two.  On a GPU the rows show
where quasi-DEER overtakes the scan: copy that length into
seqtrain.solvers.api.CROSSOVER for the platform.
"""
from __future__ import annotations

import argparse
import time


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--T", default="100,1000,10000")
  ap.add_argument("--D", default="8,64")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  from seqtrain.bench.common import dry_run
  if dry_run(args, "auto crossover"):
    return 0

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import linen as nn
  from seqtrain import bench
  from seqtrain.nn import ParallelRNN
  from seqtrain.solvers import resolve_method

  rows = []
  for t in [int(v) for v in args.T.split(",")]:
    for d in [int(v) for v in args.D.split(",")]:
      x = jax.random.normal(jax.random.key(0), (args.batch, t, d), jnp.float32)
      params = ParallelRNN(nn.GRUCell(d), method="sequential").init(jax.random.key(1), x)
      row = {"T": t, "D": d, "B": args.batch, "auto_runs": resolve_method("auto", t)}
      for method in ("sequential", "quasi_deer", "auto"):
        mod = ParallelRNN(nn.GRUCell(d), method=method)
        f = jax.jit(lambda p, x, mod=mod: mod.apply(p, x, mutable=["solver_stats"])[0])
        jax.block_until_ready(f(params, x))
        jax.block_until_ready(f(params, x))
        times = []
        for _ in range(args.repeats):
          t0 = time.perf_counter()
          jax.block_until_ready(f(params, x))
          times.append(time.perf_counter() - t0)
        row[f"{method}_ms"] = round(1e3 * float(np.median(times)), 3)
      best = min(row["sequential_ms"], row["quasi_deer_ms"])
      row["auto_vs_best"] = round(row["auto_ms"] / best, 3)
      rows.append(row)
      print(row, flush=True)

  env = bench.environment_info(argv)
  lines = ["# method=auto vs sequential and quasi_deer (GRU forward, float32)", ""]
  lines += bench._env_lines(env)
  lines += ["| T | D | B | auto runs | sequential ms | quasi_deer ms | auto ms | auto / best |",
            "|---:|---:|---:|---|---:|---:|---:|---:|"]
  lines += [f"| {r['T']} | {r['D']} | {r['B']} | {r['auto_runs']} | {r['sequential_ms']} | "
            f"{r['quasi_deer_ms']} | {r['auto_ms']} | {r['auto_vs_best']} |" for r in rows]
  bench._write_json_markdown(args.out, "auto_crossover", "auto_crossover", rows, env,
                             {"repeats": args.repeats}, "\n".join(lines))

if __name__ == "__main__":
  main()
