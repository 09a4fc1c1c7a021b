"""DEER and quasi-DEER: Newton iterations with a chunked, memory-lean scan.

The trajectory h_{1:T} is stored as an array Z of shape (K, C, D): time
t = c * K + k lives at Z[k, c].  One Newton iteration is

1. a lax.scan over the K positions of a chunk, vectorised over all C chunks:
   evaluate the step and its Jacobian at the previous iterate, measure the
   residual, and accumulate each chunk's local affine map (S, P): the local
   solution from a zero start and the product of the A_t;
2. a small associative scan over the C chunk maps for the true chunk starts H_c;
3. a fix-up: Z_new[k, c] = S[k, c] + P[k, c] H_c ("store" mode, one step
   evaluation per iteration) or a second pass that re-evaluates the step at the
   old iterate and runs the affine recurrence from H_c ("recompute" mode, two
   evaluations per iteration, no (K, C) buffers of A at all).

Nothing of size T is ever held per associative-scan level, which is where the
published implementation's 18x-output scratch memory came from.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.scan import linear_scan, ops_for


class NewtonStats(NamedTuple):
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  resets: jax.Array


def default_chunk(t: int) -> int:
  """About sqrt(T) positions per chunk, capped, balanced to minimise padding."""
  k = max(1, min(128, int(math.ceil(math.sqrt(t)))))
  c = -(-t // k)
  return -(-t // c)


def gather_time(xs, idx):
  return jax.tree_util.tree_map(lambda a: a[idx], xs)


def to_chunks(z, k: int, c: int):
  """(T, D) -> (K, C, D), padding the tail by repeating the last state."""
  t = z.shape[0]
  pad = k * c - t
  if pad:
    z = jnp.concatenate([z, jnp.broadcast_to(z[-1:], (pad,) + z.shape[1:])])
  return jnp.swapaxes(z.reshape((c, k) + z.shape[1:]), 0, 1)


def from_chunks(zc, t: int):
  k, c = zc.shape[:2]
  return jnp.swapaxes(zc, 0, 1).reshape((k * c,) + zc.shape[2:])[:t]


def newton_solve(lin: Callable, params, z0, xs, zinit, *, length: int, kind: str,
                 atol: float, rtol: float, max_iter: int, chunk: int | None = None,
                 mode: str = "store", clip: float = 1e8):
  """Runs (quasi-)Newton on the residual h_t - f(h_{t-1}, x_t).

  Args:
    lin: (params, z (D,), x) -> (f(z, x), A) with A diagonal (D,) or dense (D, D).
    z0: (D,) initial state.  xs: pytree with leading axis ``length``.
    zinit: (T, D) starting trajectory.
    kind: "diag" (quasi-DEER) or "dense" (DEER).
    mode: "store" or "recompute" (see module docstring).

  Returns:
    (Z (T, D), NewtonStats).
  """
  if mode not in ("store", "recompute"):
    raise ValueError(f"mode must be 'store' or 'recompute', got {mode!r}")
  ops = ops_for(kind)
  t = length
  k = chunk or default_chunk(t)
  if k < 1:
    raise ValueError(f"chunk must be >= 1, got {k}")
  k = min(k, t)
  c = -(-t // k)
  dtype = z0.dtype
  lin_c = jax.vmap(lin, in_axes=(None, 0, 0))
  cidx = jnp.arange(c) * k
  atol = jnp.asarray(atol, dtype)
  rtol = jnp.asarray(rtol, dtype)

  def x_at(kk):
    return gather_time(xs, jnp.minimum(cidx + kk, t - 1))

  def starts_of(z):
    return jnp.concatenate([z0[None], z[k - 1, :-1]], axis=0)

  def linearise(z):
    """Residual of z, and the chunk-local affine maps of the Newton step."""
    def body(carry, inp):
      zprev, s, p = carry
      kk, zk = inp
      fx, a = lin_c(params, zprev, x_at(kk))
      valid = (cidx + kk < t)[:, None]
      r = jnp.abs(zk - fx)
      ratio = jnp.max(jnp.where(valid, r / (atol + rtol * jnp.abs(zk)), 0))
      absr = jnp.max(jnp.where(valid, r, 0))
      s = ops.mv(a, s - zprev) + fx
      p = ops.mm(a, p)
      ys = (s, p) if mode == "store" else ()
      return (zk, s, p), (ys, ratio, absr)

    zeros = jnp.zeros((c,) + z0.shape, dtype)
    init = (starts_of(z), zeros, ops.eye(zeros))
    (_, s_last, p_last), (ys, ratio, absr) = lax.scan(body, init, (jnp.arange(k), z))
    return ys, s_last, p_last, jnp.max(ratio), jnp.max(absr)

  def chunk_starts(s_last, p_last):
    if c == 1:
      return z0[None]
    h = linear_scan(p_last[:-1], s_last[:-1], z0, kind="diag" if kind == "diag" else "dense")
    return jnp.concatenate([z0[None], h], axis=0)

  def update(z, ys, s_last, p_last):
    h = chunk_starts(s_last, p_last)
    if mode == "store":
      s, p = ys
      return s + ops.mv(p, h[None])

    def body(carry, inp):
      zprev_old, znew_prev = carry
      kk, zk_old = inp
      fx, a = lin_c(params, zprev_old, x_at(kk))
      znew = fx + ops.mv(a, znew_prev - zprev_old)
      return (zk_old, znew), znew

    _, znew = lax.scan(body, (starts_of(z), h), (jnp.arange(k), z))
    return znew

  def cond(state):
    it, _, _, _, _, ratio, _, _ = state
    return (~(ratio <= 1.0)) & (it < max_iter)

  def body(state):
    it, z, ys, s_last, p_last, _, _, resets = state
    znew = update(z, ys, s_last, p_last)
    bad = ~jnp.isfinite(znew)
    # Non-finite iterates fall back to the previous iterate; huge ones are clipped.
    znew = jnp.where(bad, z, jnp.clip(znew, -clip, clip))
    resets = resets + jnp.any(bad).astype(jnp.int32)
    ys, s_last, p_last, ratio, absr = linearise(znew)
    return it + 1, znew, ys, s_last, p_last, ratio, absr, resets

  z = to_chunks(zinit.astype(dtype), k, c)
  ys, s_last, p_last, ratio, absr = linearise(z)
  state = (jnp.int32(0), z, ys, s_last, p_last, ratio, absr, jnp.int32(0))
  it, z, _, _, _, ratio, absr, resets = lax.while_loop(cond, body, state)
  return from_chunks(z, t), NewtonStats(it, absr, ratio <= 1.0, resets)
