"""Per-step linearisations of a flat step function f(params, z, x) -> z_next.

A linearisation returns (f(z), A) where A is the Jacobian df/dz at z: its
diagonal (shape (D,)) for the quasi methods, the dense matrix (D, D) otherwise.
The diagonal is never taken from a dense Jacobian: it comes from an analytic
hook supplied by the cell, or from forward-mode JVPs against basis vectors,
evaluated a block of ``jvp_batch`` directions at a time.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.vma import like


def dense_linearization(fz: Callable):
  """(params, z, x) -> (f, J) with J = df/dz dense, from D JVPs."""
  def lin(params, z, x):
    fx, jvp = jax.linearize(lambda zz: fz(params, zz, x), z)
    eye = like(jnp.eye(z.shape[-1], dtype=z.dtype), z)
    return fx, jax.vmap(jvp, out_axes=1)(eye)
  return lin


def jvp_diag_linearization(fz: Callable, jvp_batch: int | None = None):
  """(params, z, x) -> (f, diag(df/dz)) from forward-mode JVPs.

  Directions are processed ``jvp_batch`` at a time (all at once when None), so
  at most a (jvp_batch, D) block of the Jacobian exists at any moment.
  """
  def lin(params, z, x):
    fx, jvp = jax.linearize(lambda zz: fz(params, zz, x), z)
    d = z.shape[-1]
    idx = jnp.arange(d)

    def one(i):
      e = like((idx == i).astype(z.dtype), z)
      return jvp(e)[i]

    if jvp_batch is None or jvp_batch >= d:
      diag = jax.vmap(one)(idx)
    else:
      diag = lax.map(one, idx, batch_size=jvp_batch)
    return fx, diag
  return lin


def flat_step(step: Callable, unravel: Callable):
  """Wraps a pytree step(params, h, x) into a flat one on vectors."""
  def fz(params, z, x):
    out = step(params, unravel(z), x)
    return _ravel_like(out, z)
  return fz


def flat_diag_hook(hook: Callable, unravel: Callable):
  """Wraps a pytree hook(params, h, x) -> (h_next, diag) into flat form."""
  def lin(params, z, x):
    out, diag = hook(params, unravel(z), x)
    return _ravel_like(out, z), _ravel_like(diag, z)
  return lin


def _ravel_like(tree, z):
  leaves = jax.tree_util.tree_leaves(tree)
  flat = jnp.concatenate([jnp.ravel(l) for l in leaves]) if len(leaves) > 1 else jnp.ravel(leaves[0])
  if flat.shape != z.shape:
    raise ValueError(
        f"step returned a state with {flat.size} elements, expected {z.size} "
        "(the new state must have the structure and shapes of the old one)")
  return flat.astype(z.dtype)
