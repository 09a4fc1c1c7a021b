"""The chaotic-system experiment (``run_stability``): Lorenz-96 and an expansive tanh RNN, float64."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from seqtrain.bench.common import (Log, PERSTEP_VARIANTS, _env_lines, _fmt, _fmt_ms, _say,
                                   _short_error, _write_json_markdown, solver_variant)


# --------------------------------------------------------------------------------------------
# Stability on chaotic / expansive systems
# --------------------------------------------------------------------------------------------

def lorenz96_step(dt: float = 0.01):
  """One RK4 step of Lorenz-96, dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F
  (cyclic), as a ``solve`` step ``(params, h, x) -> h_next`` with
  ``params = {"forcing": F}``; ``x`` is ignored."""
  import jax.numpy as jnp

  def vf(f, h):
    return (jnp.roll(h, -1) - jnp.roll(h, 2)) * jnp.roll(h, 1) - h + f

  def step(params, h, x):
    f = params["forcing"]
    k1 = vf(f, h)
    k2 = vf(f, h + 0.5 * dt * k1)
    k3 = vf(f, h + 0.5 * dt * k2)
    k4 = vf(f, h + dt * k3)
    return h + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

  return step


def lorenz96_problem(*, T: int, trials: int, D: int = 5, forcing: float = 8.0, dt: float = 0.01,
                     seed: int = 0, burn_in: int = 2000, spacing: int = 200):
  """Initial conditions on the attractor: from a seeded random state near the
  fixed point F, ``burn_in`` steps, then one state every ``spacing`` steps.
  Returns (step, params, h0s (trials, D), xs (trials, T, 1))."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  step = lorenz96_step(dt)
  params = {"forcing": jnp.asarray(forcing, jnp.float64)}
  h = forcing + 0.01 * jax.random.normal(jax.random.key(seed), (D,), jnp.float64)

  def advance(h, n):
    return lax.fori_loop(0, n, lambda _, z: step(params, z, None), h)

  h = advance(h, burn_in)
  h0s = []
  for _ in range(trials):
    h0s.append(h)
    h = advance(h, spacing)
  xs = jnp.zeros((trials, T, 1), jnp.float64)
  return step, params, jnp.stack(h0s), xs


def expansive_rnn_problem(*, T: int, trials: int, D: int = 4, scale: float = 2.5,
                          input_scale: float = 0.5, seed: int = 0):
  """h_t = tanh(W h_{t-1} + x_t), W = ``scale`` x a random orthogonal matrix
  (every singular value ``scale`` > 1: expansive), x_t ~ N(0, input_scale^2),
  h_0 ~ N(0, 0.25). Returns (step, params, h0s, xs)."""
  import jax
  import jax.numpy as jnp
  k_w, k_h, k_x = jax.random.split(jax.random.key(seed + 1), 3)
  q, r = jnp.linalg.qr(jax.random.normal(k_w, (D, D), jnp.float64))
  w = scale * q * jnp.sign(jnp.diagonal(r))

  def step(params, h, x):
    return jnp.tanh(params["w"] @ h + x)

  h0s = 0.5 * jax.random.normal(k_h, (trials, D), jnp.float64)
  xs = input_scale * jax.random.normal(k_x, (trials, T, D), jnp.float64)
  return step, {"w": w}, h0s, xs


STABILITY_SYSTEMS = ("lorenz96", "expansive_rnn")
STABILITY_METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")


def stability_variants(methods: Sequence[str] = STABILITY_METHODS,
                       fixed_lams: Sequence[float] = (1e-3, 1e-1),
                       fixed_step: str = "smoother") -> list[dict]:
  """The default setting of each method (chunk-start Newton for deer and
  quasi_deer, adaptive lambda for the damped ones), the papers' per-step Newton
  of deer / quasi_deer, then the fixed-lambda setting (``adaptive_lambda=False,
  lam_init=lam``) of each damped method."""
  out = []
  for m in methods:
    base, options = solver_variant(m)
    out.append({"name": m, "method": base, "options": options})
  for name, (base, options) in PERSTEP_VARIANTS.items():
    if base in methods and name not in methods:
      out.append({"name": name, "method": base, "options": dict(options)})
  for lam in fixed_lams:
    for m in methods:
      if m in ("elk", "quasi_elk"):
        out.append({"name": f"{m} fixed lam={lam:g}", "method": m,
                    "options": {"adaptive_lambda": False, "lam_init": float(lam),
                                "elk_step": fixed_step}})
  return out


def run_stability(*, T: int = 1000, trials: int = 10, systems: Sequence[str] = STABILITY_SYSTEMS,
                  variants: Sequence[dict] | None = None, max_iter: int | None = None,
                  repeats: int = 1, seed: int = 0, deadline_s: float | None = None,
                  log: Log = _say) -> list[dict]:
  """Iterations, wall-clock and max error against the sequential trajectory
  on Lorenz-96 (D=5, F=8, dt=0.01, RK4) and an expansive tanh RNN, float64.

  Every variant solves each trial from a zeros start with ``max_iter`` (default
  T), ``give_up=None`` and ``on_failure="return"`` (the solver's own iterate, no
  fallback; benchmarks/give_up.py measures the default's early exit), one
  compiled program per variant, timed per trial after a warm-up call. Enables
  x64 for the duration of the call. Rows (one per system and variant, plus the
  sequential reference): system, variant, method, options, iterations (per
  trial), converged (count), resets, wall_s (per trial median), max_error.
  """
  import jax

  previous = bool(jax.config.read("jax_enable_x64"))
  jax.config.update("jax_enable_x64", True)
  try:
    return _run_stability(T=T, trials=trials, systems=systems, variants=variants,
                          max_iter=max_iter, repeats=repeats, seed=seed, deadline_s=deadline_s,
                          log=log)
  finally:
    jax.config.update("jax_enable_x64", previous)


def _run_stability(*, T, trials, systems, variants, max_iter, repeats, seed, deadline_s, log):
  import jax
  import jax.numpy as jnp

  from seqtrain.solvers import solve
  variants = list(stability_variants() if variants is None else variants)
  max_iter = T if max_iter is None else int(max_iter)
  start = time.perf_counter()
  rows: list[dict] = []
  for system in systems:
    if system == "lorenz96":
      step, params, h0s, xs = lorenz96_problem(T=T, trials=trials, seed=seed)
    elif system == "expansive_rnn":
      step, params, h0s, xs = expansive_rnn_problem(T=T, trials=trials, seed=seed)
    else:
      raise ValueError(f"unknown system {system!r}; valid: {', '.join(STABILITY_SYSTEMS)}")

    def program(method, options):
      def f(p, h0, x):
        # give_up=None: this benchmark measures the solvers' own convergence.
        return solve(step, p, h0, x, method, max_iter=max_iter, on_failure="return",
                     give_up=None, **options)
      return jax.jit(f)

    def run(method, options):
      t0 = time.perf_counter()
      compiled = program(method, options).lower(params, h0s[0], xs[0]).compile()
      compile_s = time.perf_counter() - t0
      jax.block_until_ready(compiled(params, h0s[0], xs[0]))  # warm-up
      outs, walls = [], []
      for i in range(trials):
        h0, x = h0s[i], xs[i]
        times = []
        for _ in range(max(1, repeats)):
          t0 = time.perf_counter()
          out = jax.block_until_ready(compiled(params, h0, x))
          times.append(time.perf_counter() - t0)
        outs.append(out)
        walls.append(float(np.median(times)))
      return compile_s, outs, walls

    _, ref_outs, ref_walls = run("sequential", {})
    refs = [o[0] for o in ref_outs]
    seq_wall = float(np.median(ref_walls))
    base = {"system": system, "T": T, "D": int(h0s.shape[-1]), "trials": trials,
            "dtype": str(h0s.dtype), "max_iter": max_iter}
    rows.append(dict(base, variant="sequential", method="sequential", options={}, status="ok",
                     reason=None, wall_s=ref_walls, wall_median_s=seq_wall, ratio=1.0,
                     max_error=0.0, iterations=[0] * trials, converged=trials))
    log(_stability_line(rows[-1]))
    for v in variants:
      row = dict(base, variant=v["name"], method=v["method"], options=dict(v["options"]),
                 status="ok", reason=None)
      if deadline_s is not None and time.perf_counter() - start > deadline_s:
        row.update(status="skipped", reason=f"deadline (--deadline-s {deadline_s:g}) reached")
        rows.append(row)
        log(_stability_line(row))
        continue
      try:
        compile_s, outs, walls = run(v["method"], v["options"])
        errs = [float(jnp.max(jnp.abs(o[0] - r))) for o, r in zip(outs, refs)]
        infos = [o[1] for o in outs]
        row.update(
            compile_s=compile_s, wall_s=walls, wall_median_s=float(np.median(walls)),
            ratio=float(np.median(walls)) / seq_wall,
            iterations=[int(i.iterations) for i in infos],
            converged=int(sum(bool(i.converged) for i in infos)),
            resets=int(sum(int(i.resets) for i in infos)),
            residual=[float(i.residual) for i in infos],
            errors=[e if math.isfinite(e) else None for e in errs],
            max_error=float(max(errs)) if all(map(math.isfinite, errs)) else None,
            final_lam=[float(i.lam) for i in infos])
        row["iterations_median"] = float(np.median(row["iterations"]))
        row["iterations_max"] = int(max(row["iterations"]))
      except Exception as e:
        row.update(status="failed", reason=_short_error(e))
      rows.append(row)
      log(_stability_line(row))
  return rows


def _stability_line(r: dict) -> str:
  head = f"stability {r['system']:<13} {r['variant']:<28}"
  if r["status"] != "ok":
    return f"{head} {r['status']}: {r['reason']}"
  its = r["iterations"]
  return (f"{head} it med={np.median(its):<6g} max={max(its):<5d} conv={r['converged']}/"
          f"{r['trials']} err={_fmt(r.get('max_error'), '.1e'):<8} "
          f"wall={_fmt_ms(r['wall_median_s'])} ms (x{r['ratio']:.2f})")


def stability_markdown(rows: list[dict], env: dict | None = None) -> str:
  lines = ["# Stability benchmark", ""] + _env_lines(env)
  lines += ["Zeros start, max_iter = T, on_failure='return' (the solver's own iterate); error = "
            "max |h - h_sequential| over trials, steps and dimensions; wall = median over "
            "trials of one solve.", "",
            "| system | T | variant | iters median | iters max | converged | resets | max error "
            "| wall ms | ratio | status |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
    its = r.get("iterations")
    lines.append(
        f"| {r['system']} | {r['T']} | {r['variant']} | "
        f"{_fmt(float(np.median(its)) if its else None, 'g')} | "
        f"{_fmt(max(its) if its else None, 'd')} | "
        f"{r['converged'] if r.get('converged') is not None else '-'}/{r['trials']} | "
        f"{_fmt(r.get('resets'), 'd')} | {_fmt(r.get('max_error'), '.1e')} | "
        f"{_fmt_ms(r.get('wall_median_s'))} | {_fmt(r.get('ratio'), '.2f')} | {status} |")
  return "\n".join(lines)


def write_stability_report(rows: list[dict], env: dict, out_dir: str | Path,
                           settings: dict | None = None) -> dict:
  return _write_json_markdown(out_dir, "stability", "stability", rows, env, settings,
                              stability_markdown(rows, env))
