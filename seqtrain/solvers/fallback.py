"""Sequential fallback that overwrites only the failed sequences, in place.

The parallel solvers keep their trajectory in a (K, C, D) layout (time
t = c * K + k).  Where a sequence did not converge, ``sequential_fill`` runs
the exact lax-style recurrence and writes it into that same buffer, so the
fallback costs no extra trajectory-sized memory.

Under vmap a plain ``lax.cond`` becomes a select that would run the fallback
for every sequence (and a batched while_loop would copy the whole carry per
step).  A custom batching rule instead runs one loop for the whole batch, and
only when some sequence in the batch actually failed.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def broadcast_unbatched(axis_size: int, tree, flags):
  """In a custom_vmap rule: gives every leaf that is not batched a leading batch axis."""
  return jax.tree_util.tree_map(
      lambda v, b: v if b else jnp.broadcast_to(v, (axis_size,) + jnp.shape(v)), tree, flags)


def vmap_axes(flags):
  """In a custom_vmap rule: vmap in_axes (0 or None per leaf) from the batched flags."""
  return jax.tree_util.tree_map(lambda b: 0 if b else None, flags)


def _fill(step_b, ok, z, params, z0, xs, length: int, x_batched, reverse=False, offset=0,
          chunk_major=False):
  """ok (B,), z (B, K, C, D) (``chunk_major``: (B, C, K, D), and xs likewise),
  z0 (B, D); step_b maps (params, (B, D), x_t) -> (B, D).

  Time t sits at flat position p = offset + t = c * K + k; with ``reverse``
  the recurrence runs from t = length - 1 down.
  """
  k = z.shape[2] if chunk_major else z.shape[1]
  need = ~jnp.all(ok)
  okm = ok[:, None]

  def x_at(t, cc, kk):
    # chunk_major: xs share z's (C, K) layout (and padding), so the fallback
    # does not need the inputs a second time in time-major layout.
    idx = (cc, kk) if chunk_major else (t,)
    take = lambda a, b: a[(slice(None),) + idx] if b else a[idx]
    return jax.tree_util.tree_map(take, xs, x_batched)

  def body(i, carry):
    zprev, z = carry
    t = length - 1 - i if reverse else i
    kk, cc = (t + offset) % k, (t + offset) // k
    idx = (slice(None), cc, kk) if chunk_major else (slice(None), kk, cc)
    val = jnp.where(okm, z[idx], step_b(params, zprev, x_at(t, cc, kk)))
    return val, z.at[idx].set(val)

  # A real conditional on one scalar: when every sequence converged (the usual
  # case) nothing runs; a while_loop with `need` in its condition still copied
  # the trajectory into the loop (benchmarks/results/cpu-2core-2026-11-27/layout_choices.md).
  return lax.cond(need, lambda z: lax.fori_loop(0, length, body, (z0, z))[1], lambda z: z, z)


def sequential_fill(fz: Callable, ok, z, params, z0, xs, *, length: int, reverse: bool = False,
                    offset: int = 0, chunk_major: bool = False, custom_batching: bool = True):
  """Returns z with the sequential solution of z_t = fz(params, z_{t-1}, x_t)
  (``reverse``: z_t = fz(params, z_{t+1}, x_t)) written in where ``ok`` is
  False (z in (K, C, D) layout, or (C, K, D) with ``chunk_major``, the inputs
  then in the same layout; time t at flat position offset + t).
  ``custom_batching=False``: no batching rule (plain vmap of the loop), for
  uses inside other custom rules (implicit.py) where custom_vmap cannot go."""

  def plain(ok, z, params, z0, xs):
    x_flags = jax.tree_util.tree_map(lambda _: False, xs)
    step_b = jax.vmap(fz, in_axes=(None, 0, None))
    return _fill(step_b, ok[None], z[None], params, z0[None], xs, length, x_flags, reverse,
                 offset, chunk_major)[0]

  if not custom_batching:
    return plain(ok, z, params, z0, xs)
  fill = jax.custom_batching.custom_vmap(plain)

  @fill.def_vmap
  def _rule(axis_size, in_batched, ok, z, params, z0, xs):
    ok_b, z_b, p_b, z0_b, x_b = in_batched
    ok, z, z0 = broadcast_unbatched(axis_size, (ok, z, z0), (ok_b, z_b, z0_b))
    step_b = jax.vmap(fz, in_axes=(vmap_axes(p_b), 0, vmap_axes(x_b)), axis_size=axis_size)
    return _fill(step_b, ok, z, params, z0, xs, length, x_b, reverse, offset, chunk_major), True

  return fill(ok, z, params, z0, xs)
