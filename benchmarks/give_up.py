"""What giving up early buys on a chaotic recurrence (Lorenz-96, float64).

    python benchmarks/give_up.py --T 10000 --out benchmarks/results/<machine>/

Times solve() with the default options (give_up=0.5: projected to need more than
half the causal bound -> the exact sequential path) and with give_up=None (Newton
runs to max_iter = the causal bound), next to lax.scan, in one run; writes
give_up.json / .md with ratios, iterations, status and the error vs lax.scan.
"""
from __future__ import annotations

import argparse
import time


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--T", type=int, default=10_000)
  ap.add_argument("--methods", default="quasi_deer,deer,quasi_elk")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no-give-up-max-T", type=int, default=2000,
                  help="run give_up=None only up to this T (it costs ~C passes)")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)

  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  from seqtrain import bench
  from seqtrain.bench import lorenz96_problem
  from seqtrain.solvers import STATUS, solve

  step, params, h0s, xs = lorenz96_problem(T=args.T, trials=1)
  h0, xs = h0s[0], xs[0]

  def timed(f):
    out = jax.block_until_ready(f(h0))
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f(h0))
      times.append(time.perf_counter() - t0)
    return out, 1e3 * float(np.median(times))

  ref, scan_ms = timed(jax.jit(lambda h: solve(step, params, h, xs, "sequential")[0]))
  rows = [{"method": "sequential", "give_up": None, "ms": round(scan_ms, 2), "ratio": 1.0}]
  settings = [0.5] + ([None] if args.T <= args.no_give_up_max_T else [])
  for method in args.methods.split(","):
    for give_up in settings:
      f = jax.jit(lambda h, m=method, g=give_up: solve(step, params, h, xs, m, give_up=g))
      (hs, info), ms = timed(f)
      rows.append({"method": method, "give_up": give_up, "ms": round(ms, 2),
                   "ratio": round(ms / scan_ms, 2), "iterations": int(info.iterations),
                   "status": STATUS[int(info.status)], "fallback": bool(info.fallback),
                   "max_error": float(jnp.max(jnp.abs(hs - ref)))})
      print(rows[-1], flush=True)

  env = bench.environment_info(argv)
  settings = {"T": args.T, "system": "Lorenz-96, D=5, F=8, dt=0.01, RK4, float64",
              "repeats": args.repeats}
  lines = [f"# Giving up early: {settings['system']}, T={args.T}", ""] + bench._env_lines(env)
  lines += ["| method | give_up | ms | x lax.scan | iterations | status | max error |",
            "|---|---|---:|---:|---:|---|---:|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['give_up']} | {r['ms']} | {r['ratio']} | "
                 f"{r.get('iterations', '-')} | {r.get('status', '-')} | "
                 f"{r.get('max_error', 0):.1e} |")
  bench._write_json_markdown(args.out, "give_up", "give_up", rows, env, settings,
                             "\n".join(lines))

if __name__ == "__main__":
  main()
