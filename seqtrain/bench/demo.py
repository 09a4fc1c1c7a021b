"""``seqtrain demo``: every solver method on one random GRU recurrence, against lax.scan."""
from __future__ import annotations

import time


def run_demo(args) -> int:
  """Every method on one random GRU recurrence: iterations, error vs lax.scan, time."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from seqtrain.solvers import METHODS, solve

  if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.dtype(args.dtype)
  d, t, b = args.D, args.T, args.batch
  keys = jax.random.split(jax.random.PRNGKey(args.seed), 5)

  def orth(k):
    q, r = jnp.linalg.qr(jax.random.normal(k, (d, d), jnp.float32))
    return (q * jnp.sign(jnp.diagonal(r))).astype(dtype)

  params = dict(uz=orth(keys[0]), ur=orth(keys[1]), un=orth(keys[2]))
  xs = jax.random.normal(keys[3], (b, t, 3 * d), dtype) / np.sqrt(3)
  h0 = jnp.zeros((b, d), dtype)

  def gru(p, h, xp):
    xz, xr, xn = jnp.split(xp, 3, -1)
    z = jax.nn.sigmoid(xz + h @ p["uz"])
    r = jax.nn.sigmoid(xr + h @ p["ur"])
    n = jnp.tanh(xn + r * (h @ p["un"]))
    return (1 - z) * n + z * h

  print(f"GRU D={d} T={t} batch={b} {args.dtype} on {jax.devices()[0].platform}", flush=True)
  print(f"{'method':<12}{'iters':>7}{'max err':>11}{'time ms':>10}{'vs scan':>9}")
  ref = None
  base = None
  for method in METHODS:
    if method in ("elk",) and d * t > 200_000:
      print(f"{method:<12}   skipped (dense Kalman smoother at this size; use --T smaller)")
      continue
    fn = jax.jit(jax.vmap(lambda h, x: solve(gru, params, h, x, method, on_failure="return")))
    hs, info = fn(h0, xs)
    jax.block_until_ready(hs)
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(h0, xs)[0])
      times.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(times))
    if ref is None:
      ref, base = hs, ms
    err = float(jnp.max(jnp.abs(hs - ref)))
    print(f"{method:<12}{int(jnp.max(info.iterations)):>7}{err:>11.2e}{ms:>10.1f}{ms / base:>8.2f}x",
          flush=True)
  return 0
