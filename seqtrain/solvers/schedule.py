"""Ordering hints for XLA's scheduler, in the data flow (pure JAX).

A backward rule that reads saved values (a layer's inputs, its states) and an
incoming cotangent has two parts: what needs only the saved values (the
linearisations of the adjoint, a recomputed forward pass) and what needs the
cotangent. XLA may run the first part of every layer as soon as the forward
pass ends, and then holds all of their outputs at once: the training step's
peak memory grows by that much per layer. ``lax.optimization_barrier`` does
not stop it on XLA:CPU (the barrier is expanded before scheduling), so
:func:`after` ties the saved values to the cotangent through the data itself
(``v - 0``, with a zero computed from the cotangent).
Measured effect: benchmarks/results/cpu-2core-2026-12-07/train_memory.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from seqtrain.solvers import vma

__all__ = ["after"]


def _zero_from(anchor):
  """A scalar 0 that XLA can only compute once ``anchor`` exists (0 for any
  finite, infinite or NaN first element: no value of the anchor leaks in);
  None when the anchor holds no number (nothing to wait for)."""
  leaves = [l for l in jax.tree_util.tree_leaves(anchor) if jnp.size(l)]
  if not leaves:
    return None
  return 0 * jnp.abs(jnp.nan_to_num(jnp.real(jnp.ravel(leaves[0])[0])))   # always +0


def after(tree, anchor, *, vary: bool = False):
  """``tree`` unchanged, but every floating leaf computed from ``anchor`` (a
  data dependency): nothing derived from those leaves can be scheduled before
  the anchor exists.

  Inside ``jax.shard_map``: a leaf that does not vary over the mesh axes the
  anchor varies over is returned as it is (its type, and its cotangent's, stay
  the same), or with ``vary`` (for fresh values such as a solver's zero start)
  made varying and tied."""
  zero = _zero_from(anchor)
  if zero is None:
    return tree
  axes = vma.varying_axes(zero)

  def tie(leaf):
    if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)):
      return leaf
    if not axes <= vma.varying_axes(leaf):
      if not vary:
        return leaf
      leaf = vma.varying(leaf, axes)
    return leaf - zero.astype(leaf.dtype)   # v - (+0) is v bit for bit (-0, NaN, inf too)

  return jax.tree_util.tree_map(tie, tree)
