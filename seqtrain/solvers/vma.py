"""Varying-axes types inside ``jax.shard_map`` (its ``check_vma`` typing): which mesh
axes a value varies over, and casts to make constants vary like the values they meet.
Outside shard_map every value is invariant and the casts do nothing."""
from __future__ import annotations

import jax
from jax import lax

__all__ = ["varying_axes", "tree_varying_axes", "varying", "like"]


def varying_axes(x) -> frozenset:
  """The mesh axes over which ``x`` is typed device-varying (empty outside shard_map)."""
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)
  if vma is None:
    vma = getattr(getattr(aval, "manual_axis_type", None), "varying", frozenset())
  return frozenset(vma)


def varying(tree, axes):
  """Every leaf made device-varying over ``axes`` (a name or several; replicated
  leaves are ``pcast``, and their cotangents are then summed over the axes by
  the transpose)."""
  axes = frozenset((axes,) if isinstance(axes, str) else axes)

  def cast(v):
    missing = tuple(sorted(axes - varying_axes(v)))
    return lax.pcast(v, missing, to="varying") if missing else v

  return jax.tree_util.tree_map(cast, tree)


def tree_varying_axes(tree) -> frozenset:
  """The union of the leaves' varying axes (e.g. ``data`` for a batch shard)."""
  return frozenset().union(*(varying_axes(v) for v in jax.tree_util.tree_leaves(tree)))


def like(tree, ref):
  """``tree`` cast to vary over every axis some leaf of ``ref`` varies over: values
  built from constants (basis vectors, identity elements, loop-carry starts) given
  the type of the values they meet or take."""
  return varying(tree, tree_varying_axes(ref))
