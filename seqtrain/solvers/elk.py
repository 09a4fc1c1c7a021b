"""ELK and quasi-ELK: Levenberg-Marquardt on the residual, each step an exact
parallel Kalman smoother (docs/method.md, "ELK").

lambda adapts by the standard gain-ratio rule on the merit 0.5 * |r|^2
(Nielsen's update): a step that lowers the merit is accepted and lambda shrinks
by up to 10x; a step that does not is rejected and lambda grows geometrically.
No hand-swept lambda is needed; ``adaptive=False`` reproduces the paper's
fixed-lambda setting (every step accepted), ``smooth=False`` its filter-only step.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.scan import kalman_smoother_mean, ops_for


class ElkStats(NamedTuple):
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  resets: jax.Array
  lam: jax.Array


def elk_solve(lin: Callable, params, z0, xs, zinit, *, kind: str, atol: float, rtol: float,
              max_iter: int, lam_init: float = 1e-3, lam_min: float = 1e-9,
              lam_max: float = 1e9, adaptive: bool = True, smooth: bool = True):
  """Damped (quasi-)Newton solve of h_t = f(h_{t-1}, x_t).  Returns (Z (T, D), ElkStats)."""
  ops = ops_for(kind)
  dtype = z0.dtype
  lin_t = jax.vmap(lin, in_axes=(None, 0, 0))
  atol = jnp.asarray(atol, dtype)
  rtol = jnp.asarray(rtol, dtype)

  def evaluate(z):
    zprev = jnp.concatenate([z0[None], z[:-1]])
    fx, a = lin_t(params, zprev, xs)
    r = z - fx
    merit = 0.5 * jnp.sum(r * r)
    merit = jnp.where(jnp.isfinite(merit), merit, jnp.inf)
    ratio = jnp.max(jnp.abs(r) / (atol + rtol * jnp.abs(z)))
    return fx, a, zprev, merit, ratio, jnp.max(jnp.abs(r))

  def cond(state):
    it, ratio = state[0], state[7]
    return (~(ratio <= 1.0)) & (it < max_iter)

  def body(state):
    it, z, fx, a, zprev, merit, absr, ratio, lam, nu, resets = state
    u = fx - ops.mv(a, zprev)
    cand = kalman_smoother_mean(a, u, z, z0, lam, kind=kind, smooth=smooth)
    finite = jnp.all(jnp.isfinite(cand))
    cand = jnp.where(finite, cand, z)
    c_fx, c_a, c_zprev, c_merit, c_ratio, c_absr = evaluate(cand)
    # Predicted merit from the linear model the step minimised.
    lin_r = cand - ops.mv(a, c_zprev) - u
    predicted = merit - 0.5 * jnp.sum(lin_r * lin_r)
    rho = (merit - c_merit) / jnp.maximum(predicted, jnp.finfo(dtype).tiny)
    accept = finite & (c_merit < merit) if adaptive else finite
    if adaptive:
      shrink = jnp.maximum(0.1, 1.0 - (2.0 * rho - 1.0) ** 3)
      lam_new = jnp.where(accept, lam * shrink, lam * nu)
      nu = jnp.where(accept, jnp.asarray(2.0, dtype), 2.0 * nu)
      lam = jnp.clip(lam_new, lam_min, lam_max)
    pick = lambda new, old: jnp.where(accept, new, old)
    return (it + 1, pick(cand, z), pick(c_fx, fx), pick(c_a, a), pick(c_zprev, zprev),
            pick(c_merit, merit), pick(c_absr, absr), pick(c_ratio, ratio), lam, nu,
            resets + (~finite).astype(jnp.int32))

  z = zinit.astype(dtype)
  fx, a, zprev, merit, ratio, absr = evaluate(z)
  state = (jnp.int32(0), z, fx, a, zprev, merit, absr, ratio, jnp.asarray(lam_init, dtype),
           jnp.asarray(2.0, dtype), jnp.int32(0))
  out = lax.while_loop(cond, body, state)
  it, z, absr, ratio, lam, resets = out[0], out[1], out[6], out[7], out[8], out[10]
  return z, ElkStats(it, absr, ratio <= 1.0, resets, lam)
