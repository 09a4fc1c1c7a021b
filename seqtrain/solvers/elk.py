"""ELK and quasi-ELK: Levenberg-Marquardt on the residual, each step an exact
parallel Kalman smoother (docs/method.md, "ELK").

lambda adapts by the standard gain-ratio rule on the merit 0.5 * |r|^2
(Nielsen's update): a step that lowers the merit is accepted and lambda shrinks
by up to 10x; a step that does not is rejected and lambda grows geometrically.
Up to the first unconverged time step the undamped Newton step is taken (a
causal safeguard, see ``elk_solve``), and a step that lengthens the converged
prefix is accepted too, so like DEER the solve ends within T iterations.
No hand-swept lambda is needed; ``adaptive=False`` reproduces the paper's
fixed-lambda setting (every step accepted), ``smooth=False`` its filter-only step.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.scan import kalman_smoother_mean, linear_scan, ops_for
from seqtrain.solvers.spec import DEFAULT_GIVE_UP
from seqtrain.solvers.stopping import (CONVERGED, clip_magnitude,
                                       projected_too_long, real_dtype, status_code)
from seqtrain.solvers.vma import like


class ElkStats(NamedTuple):
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  resets: jax.Array
  lam: jax.Array
  status: jax.Array   # stopping.STATUS code


def elk_solve(lin: Callable, params, z0, xs, zinit, *, kind: str, atol: float, rtol: float,
              max_iter: int | None = None, lam_init: float = 1e-3, lam_min: float = 1e-9,
              lam_max: float = 1e9, adaptive: bool = True, smooth: bool = True,
              clip: float = 1e8, give_up: float | None = DEFAULT_GIVE_UP):
  """Damped (quasi-)Newton solve of h_t = f(h_{t-1}, x_t).  Returns (Z (T, D), ElkStats).

  max_iter None: the causal bound T.  give_up, status: see stopping.py (the
  exact prefix here is the number of leading converged steps).
  """
  ops = ops_for(kind)
  t = zinit.shape[0]
  if max_iter is None:
    max_iter = t
  dtype = z0.dtype
  rdtype = real_dtype(dtype)   # residuals, merit and damping are real
  lin_t = jax.vmap(lin, in_axes=(None, 0, 0))
  atol = jnp.asarray(atol, rdtype)
  rtol = jnp.asarray(rtol, rdtype)

  def evaluate(z):
    zprev = jnp.concatenate([z0[None], z[:-1]])
    fx, a = lin_t(params, zprev, xs)
    r = z - fx
    merit = 0.5 * jnp.sum(jnp.abs(r) ** 2)
    merit = jnp.where(jnp.isfinite(merit), merit, jnp.inf)
    ratio_t = jnp.max(jnp.abs(r) / (atol + rtol * jnp.abs(z)), axis=-1)
    ok_t = ratio_t <= 1.0
    prefix = jnp.where(jnp.all(ok_t), ok_t.shape[0], jnp.argmin(ok_t))
    # The first unconverged step starts from an exact state: a non-finite
    # residual there is the true recurrence's (stopping.py).
    nonfinite = ~jnp.all(ok_t) & ~jnp.all(jnp.isfinite(r[jnp.minimum(prefix, t - 1)]))
    # The projection's residual: where the true values are non-finite the
    # iteration cannot converge anyway (the prefix decides there).
    ratio_fin = jnp.max(jnp.where(jnp.isfinite(ratio_t), ratio_t, 0))
    return (fx, a, zprev, merit, jnp.max(ratio_t), jnp.max(jnp.abs(r)), prefix,
            (nonfinite, ratio_fin))

  def stops(it, ratio, ratio1, prefix, nonfinite):
    nonfinite, ratio_fin = nonfinite
    converged = ratio <= 1.0
    gave_up = projected_too_long(it, ratio_fin, ratio1, prefix + 1, t, give_up) & ~converged
    return status_code(converged, nonfinite, gave_up), (converged | nonfinite | gave_up |
                                                         (it >= max_iter))

  def cond(state):
    it, ratio, ratio1, prefix, nonfinite = state[0], state[7], state[12], state[8], state[13]
    return ~stops(it, ratio, ratio1, prefix, nonfinite)[1]

  def body(state):
    it, z, fx, a, zprev, merit, absr, ratio, prefix, lam, nu, resets, ratio1, nonfinite = state
    u = fx - ops.mv(a, zprev)
    cand = kalman_smoother_mean(a, u, z, z0, lam, kind=kind, smooth=smooth)
    # Causal safeguard: up to the first unconverged step the undamped Newton
    # step is exact-prefix-extending (causality), so take it there.  The
    # converged prefix then grows every iteration and, as for DEER, the solve
    # ends within T iterations, while the damped step keeps the rest finite.
    newton = linear_scan(a, u, z0, kind=kind)
    cand = jnp.where((jnp.arange(z.shape[0]) <= prefix)[:, None], newton, cand)
    # Past the converged prefix the (nearly) undamped step of a chaotic system can
    # grow without bound; clipped like DEER's iterate, it stays finite, so a step
    # that lengthens the prefix can always be accepted and the T bound holds.
    cand = clip_magnitude(cand, clip)
    # Non-finite components keep their old value (elementwise, as in DEER), so a
    # non-finite true value downstream does not block progress before it.
    finite_el = jnp.isfinite(cand)
    finite = jnp.all(finite_el)
    cand = jnp.where(finite_el, cand, z)
    c_fx, c_a, c_zprev, c_merit, c_ratio, c_absr, c_prefix, c_nonfinite = evaluate(cand)
    # Predicted merit from the linear model the step minimised.
    lin_r = cand - ops.mv(a, c_zprev) - u
    predicted = merit - 0.5 * jnp.sum(jnp.abs(lin_r) ** 2)
    rho = (merit - c_merit) / jnp.maximum(predicted, jnp.finfo(rdtype).tiny)
    accept = ((c_merit < merit) | (c_prefix > prefix)) if adaptive else jnp.bool_(True)
    if adaptive:
      shrink = jnp.maximum(0.1, 1.0 - (2.0 * rho - 1.0) ** 3)
      improved = c_merit < merit
      # A prefix-only acceptance (merit not lower) leaves lambda as it is.
      lam_new = jnp.where(improved, lam * shrink, jnp.where(accept, lam, lam * nu))
      nu = jnp.where(improved, jnp.asarray(2.0, rdtype), jnp.where(accept, nu, 2.0 * nu))
      lam = jnp.clip(lam_new, lam_min, lam_max)
    pick = lambda new, old: jnp.where(accept, new, old)
    ratio = pick(c_ratio, ratio)
    return (it + 1, pick(cand, z), pick(c_fx, fx), pick(c_a, a), pick(c_zprev, zprev),
            pick(c_merit, merit), pick(c_absr, absr), ratio, pick(c_prefix, prefix), lam, nu,
            resets + (~finite).astype(jnp.int32),
            jnp.where(it + 1 == 1, pick(c_nonfinite[1], nonfinite[1]), ratio1),
            jax.tree_util.tree_map(pick, c_nonfinite, nonfinite))

  z = zinit.astype(dtype)
  fx, a, zprev, merit, ratio, absr, prefix, nonfinite = evaluate(z)
  state = (jnp.int32(0), z, fx, a, zprev, merit, absr, ratio, prefix,
           jnp.asarray(lam_init, rdtype), jnp.asarray(2.0, rdtype), jnp.int32(0), nonfinite[1],
           nonfinite)
  # Loop carries start device-varying (inside shard_map) where the values they take are.
  state = like(state, (params, z0, xs))
  out = lax.while_loop(cond, body, state)
  it, z, absr, ratio, prefix, lam, resets, ratio1, nonfinite = (
      out[0], out[1], out[6], out[7], out[8], out[9], out[11], out[12], out[13])
  status, _ = stops(it, ratio, ratio1, prefix, nonfinite)
  return z, ElkStats(it, absr, status == CONVERGED, resets, lam, status)
