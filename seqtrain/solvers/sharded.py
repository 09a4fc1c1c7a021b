"""Sequence parallelism: one sequence's time axis split over a mesh axis.

Inside ``jax.shard_map`` with the inputs sharded along time over the axis
``axis`` (P devices), device p holds the contiguous block of steps
[p T/P, (p + 1) T/P).  The chunk-start Newton (newton.py, "shoot") then runs
its chunks locally; only three things cross devices:

* the state that precedes a block (``boundary``): one (D,) ``ppermute`` per
  pass, to measure the residual at the block's first chunk start;
* the Newton update of the chunk starts (``chunk_starts``): each device
  composes its chunks' affine maps into one map, the P maps are gathered
  (P x D x D for DEER, P x D for quasi-DEER), every device runs the short
  recurrence over them and applies the map to its own chunks;
* the stopping decision: maxima over the axis and the gathered per-chunk
  convergence flags (C_total booleans), so every device takes the same number
  of iterations and reports the same info.

"Causal order" is time order for a forward recurrence and reversed time for an
adjoint (``reverse=True``): the edge device (the one holding the known state)
is 0 forward and P - 1 in reverse.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from seqtrain.solvers.scan import _affine_combine, linear_scan_sequential, ops_for
from seqtrain.solvers.vma import like, tree_varying_axes, varying, varying_axes  # noqa: F401


def axis_size(axis: str) -> int:
  """Devices along ``axis``; a clear error outside a ``shard_map`` over it."""
  try:
    return int(lax.axis_size(axis))
  except NameError as e:
    raise ValueError(
        f"seq_axis={axis!r} is not a mesh axis in scope: call solve / ParallelRNN with "
        f"seq_axis inside jax.shard_map over a mesh with that axis, the time axis of the "
        f"inputs sharded over it") from e


def in_scope(axis: str) -> bool:
  """Whether ``axis`` is a mesh axis bound here (inside shard_map over it)."""
  try:
    lax.axis_size(axis)
  except NameError:
    return False
  return True


def causal_index(axis: str, reverse: bool):
  """This device's position in causal order (0: the edge device)."""
  p = lax.axis_index(axis)
  return axis_size(axis) - 1 - p if reverse else p


def is_edge(axis: str, reverse: bool):
  """Whether this device holds the block with the known boundary state."""
  return causal_index(axis, reverse) == 0


def is_last(axis: str, reverse: bool):
  """Whether this device holds the causally last block."""
  return causal_index(axis, reverse) == axis_size(axis) - 1


def _shift_pairs(n: int, reverse: bool):
  return [(i + 1, i) for i in range(n - 1)] if reverse else [(i, i + 1) for i in range(n - 1)]


def from_previous(x, axis: str, reverse: bool):
  """The causally previous device's ``x`` (zeros on the edge device)."""
  n = axis_size(axis)
  if n == 1:
    return jnp.zeros_like(x)
  return jax.tree_util.tree_map(lambda v: lax.ppermute(v, axis, _shift_pairs(n, reverse)), x)


def from_next(x, axis: str, reverse: bool):
  """The causally next device's ``x`` (zeros on the last device)."""
  return from_previous(x, axis, not reverse)


def boundary(edge_value, x, axis: str, reverse: bool):
  """``edge_value`` on the edge device, elsewhere the previous device's ``x``:
  the state that precedes this device's block."""
  prev = from_previous(x, axis, reverse)
  edge = is_edge(axis, reverse)
  return jax.tree_util.tree_map(lambda e, v: jnp.where(edge, e, v), edge_value, prev)


def all_max(x, axis):
  """The maximum over the axis or axes (identical, and typed invariant, on every
  device)."""
  axis = axis if isinstance(axis, str) else tuple(sorted(axis))
  if x.dtype == jnp.bool_:
    return lax.pmax(x.astype(jnp.int32), axis).astype(bool)
  return lax.pmax(x, axis)


def gather_causal(x, axis: str, reverse: bool):
  """(C,) per-device values -> (P * C,) for the whole sequence, in causal order."""
  g = lax.all_gather(x, axis)   # (P, C) in device order
  if reverse:
    g = g[::-1, ::-1]
  return g.reshape((-1,) + g.shape[2:])


def chunk_starts(a, b, h_first, *, kind: str, axis: str, reverse: bool):
  """New start of every local chunk under h'_c = a_{c-1} h'_{c-1} + b_{c-1}
  across the whole sequence (causal order), the edge block starting at ``h_first``.

  a: (C, D) or (C, D, D) chunk maps, b: (C, D), in local time order.
  Returns (C, D).
  """
  ops = ops_for(kind)
  if reverse:
    a, b = a[::-1], b[::-1]
  cum_a, cum_b = lax.associative_scan(_affine_combine(ops), (a, b))   # after chunk c, from 0
  dev_a = lax.all_gather(cum_a[-1], axis)
  dev_b = lax.all_gather(cum_b[-1], axis)
  if reverse:
    dev_a, dev_b = dev_a[::-1], dev_b[::-1]
  after = linear_scan_sequential(dev_a, dev_b, h_first, kind=kind)    # (P, D) causal order
  h_in = jnp.concatenate([h_first[None], after[:-1]])[causal_index(axis, reverse)]
  local = cum_b + ops.mv(cum_a, jnp.broadcast_to(h_in, cum_b.shape))
  starts = jnp.concatenate([h_in[None], local[:-1]])
  return starts[::-1] if reverse else starts


def chain(run_block: Callable, edge_start, init_out, axis: str, reverse: bool):
  """Runs a sequential recurrence across the devices: P rounds of
  ``out, end = run_block(start)``, each device's start then the previous
  device's end (the edge device's: ``edge_start``).  After round r the first
  r + 1 blocks (causal order) are exact; the cost is P blocks per device, the
  sequential recurrence's depth."""
  n = axis_size(axis)

  def body(_, carry):
    start, _ = carry
    out, end = run_block(start)
    return boundary(edge_start, end, axis, reverse), out

  start, init_out = varying((edge_start, init_out), tree_varying_axes(edge_start) | {axis})
  return lax.fori_loop(0, n, body, (start, init_out))[1]
