"""ParallelRNN: a drop-in for flax.linen.RNN whose forward pass is a parallel solve."""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import FrozenDict
from flax.core.scope import in_filter
from flax.linen.recurrent import flip_sequences

from seqtrain.nn.cells import cell_functions
from seqtrain.solvers import canonical_method, resolve_method, sharded, solve

# Methods that materialise dense (D, D) Jacobians of the flat per-example state.
DENSE_METHODS = ("deer", "elk")
# Largest flat per-example state size D for which they are allowed by default:
# at D = 4096 one float32 Jacobian is 64 MiB, and they keep one per step.
MAX_DENSE_STATE = 4096


class ParallelRNN(nn.Module):
  """Applies ``cell`` over the time axis with ``seqtrain.solvers.solve``.

  A drop-in for ``flax.linen.RNN(cell)``: every constructor attribute of
  ``nn.RNN`` (same order, so positional arguments carry over, and same
  defaults) and every ``__call__`` argument is accepted, and the parameter tree
  is the same (the cell's parameters live under ``"cell"``), so checkpoints
  move between them.  Guarantees, up to the solver tolerance (exact for
  ``method="sequential"``):

  * Outputs and carries equal ``nn.RNN``'s at every position, for built-in
    cells (analytic step, ``seqtrain.nn.cells``) and any other
    ``RNNCellBase`` alike.  With ``seq_lengths`` that includes the padded
    positions t >= length: as in ``nn.RNN`` the recurrence keeps running over
    the padding (outputs there are NOT zeroed and the carry is not frozen) and
    the returned carry is the one after the last valid step (index
    ``length - 1``; like ``nn.RNN``, a length of 0 selects the last step).
    With ``reverse`` the padding stays at the end (``flip_sequences``).
  * Cells with several feature axes (``cell.num_feature_axes > 1``, e.g.
    ``nn.ConvLSTMCell`` over images, inputs ``(*batch, time, H, W, C)``): the
    solver sees each example's carry as one flat vector of size D.  The
    sequential and the quasi methods work for any D (generic cells take the
    quasi methods' diagonal from D forward-mode JVPs per step); "deer" and
    "elk" build dense D x D Jacobians per step and raise a ValueError, before
    anything is computed, when D > ``max_dense_state`` (default
    ``MAX_DENSE_STATE`` = 4096).

  Attributes:
    cell: any ``flax.linen.RNNCellBase``.
    time_major, return_carry, reverse, keep_order: as in ``nn.RNN`` (and
      overridable per call the same way).
    unroll: as in ``nn.RNN``: scan iterations unrolled per loop iteration.
      Used when the method that runs is "sequential" (lax.scan); the parallel
      methods have no sequential loop over time and ignore it.
    variable_axes, variable_broadcast, variable_carry, split_rngs: accepted
      for ``nn.RNN`` compatibility with its defaults only: the cell's
      parameters are broadcast over time, and the cell runs without other
      variable collections and without per-step PRNG keys.  Any other value
      (per-step variables, carried collections, split keys) raises a
      ValueError.
    method: solver method (see ``seqtrain.solvers.METHODS``); "auto" (default)
      picks the fastest exact one for the backend and length
      (``seqtrain.solvers.resolve_method``).
    solver_options: keyword options for ``solve`` (tolerances, max_iter, ...).
    stats_collection: Flax collection that receives the solver diagnostics
      (iterations, residual, converged, fallback), one entry per call; made
      mutable by the caller, e.g. ``apply(..., mutable=["solver_stats"])``.
    max_dense_state: largest flat per-example state size D for which "deer" /
      "elk" (dense D x D Jacobians) are allowed.
    seq_axis: sequence parallelism: inside ``jax.shard_map`` with the time
      axis of the inputs sharded over this mesh axis, each device passes its
      block of steps and gets its block of outputs; the returned carry is the
      one after the whole sequence (equal on every device).  Methods
      "sequential", "deer", "quasi_deer" (``solve(seq_axis=...)``); no
      ``seq_lengths`` or ``reverse`` (padding and flipping would cross
      devices).  The parameter tree is unchanged (``init`` may run outside
      shard_map).
  """
  cell: nn.RNNCellBase
  # nn.RNN's attributes, in its order and with its defaults.
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: int = 1
  variable_axes: Mapping[Any, Any] = FrozenDict()
  variable_broadcast: Any = "params"
  variable_carry: Any = False
  split_rngs: Mapping[Any, bool] = FrozenDict({"params": False})
  # ParallelRNN's own.
  method: str = "auto"
  solver_options: Mapping[str, Any] = FrozenDict()
  stats_collection: str = "solver_stats"
  max_dense_state: int = MAX_DENSE_STATE
  seq_axis: str | None = None

  def __post_init__(self):
    # Plain dicts are accepted; a frozen copy keeps the module hashable (jit static).
    object.__setattr__(self, "solver_options", FrozenDict(self.solver_options))
    object.__setattr__(self, "variable_axes", FrozenDict(self.variable_axes))
    object.__setattr__(self, "split_rngs", FrozenDict(self.split_rngs))
    super().__post_init__()

  def _check_scan_options(self):
    if self.variable_axes:
      raise ValueError(f"ParallelRNN supports no per-step variable collections "
                       f"(variable_axes={dict(self.variable_axes)}); use nn.RNN")
    if not in_filter(self.variable_broadcast, "params"):
      raise ValueError(f"ParallelRNN broadcasts the cell's params over time; "
                       f"variable_broadcast={self.variable_broadcast!r} does not")
    if in_filter(self.variable_carry, "params"):
      raise ValueError(f"ParallelRNN cannot carry params through time "
                       f"(variable_carry={self.variable_carry!r})")
    split = [k for k, v in self.split_rngs.items() if v]
    if split:
      raise ValueError(f"ParallelRNN runs the cell without per-step PRNG keys; "
                       f"split_rngs requests split keys for {split}")

  @nn.compact
  def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None):
    method = canonical_method(self.method)
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    self._check_scan_options()
    options = dict(self.solver_options)
    nfa = self.cell.num_feature_axes
    if inputs.ndim < nfa + 1:
      raise ValueError(f"inputs need a time axis and {nfa} feature axes "
                       f"({type(self.cell).__name__}), got shape {inputs.shape}")
    nb = inputs.ndim - nfa - 1  # batch axes
    # (*batch, T, *features), as nn.RNN lays out its non-time-major inputs.
    x = jnp.moveaxis(inputs, 0, nb) if time_major else inputs
    batch_dims, t = x.shape[:nb], x.shape[nb]
    axis = self.seq_axis
    if axis is not None and self.is_initializing() and not sharded.in_scope(axis):
      axis = None   # init outside shard_map: the same parameters
    if axis is not None:
      if seq_lengths is not None or reverse:
        raise ValueError(
            f"ParallelRNN(seq_axis={axis!r}) takes whole sequences in time order: "
            f"seq_lengths and reverse are not supported across devices")
      options["seq_axis"] = axis
    devices = 1 if axis is None else sharded.axis_size(axis)
    method = resolve_method(method, t * devices, devices=devices)
    unroll = 1 if self.unroll is False else self.unroll

    if initial_carry is None:
      key = jax.random.key(0) if init_key is None else init_key
      carry0 = self.cell.initialize_carry(key, batch_dims + x.shape[nb + 1:])
    else:
      carry0 = initial_carry
    n = math.prod(batch_dims)
    size = sum(math.prod(jnp.shape(c)[nb:]) for c in jax.tree_util.tree_leaves(carry0))
    if method in DENSE_METHODS and size > self.max_dense_state:
      raise ValueError(
          f"{method} needs a dense D x D Jacobian; state size {size} (the flattened carry "
          f"of {type(self.cell).__name__} per example) is above max_dense_state="
          f"{self.max_dense_state}: use quasi_{method} or sequential (or raise "
          f"max_dense_state)")

    if reverse:
      x = flip_sequences(x, seq_lengths, num_batch_dims=nb, time_major=False)
    if self.is_initializing():
      # Create the cell's parameters exactly as nn.RNN does (one call of the cell).
      self.cell(carry0, jnp.take(x, 0, axis=nb))
    params = self.cell.variables.get("params", FrozenDict())

    fns, _ = cell_functions(self.cell)
    flat = lambda a: a.reshape((n,) + a.shape[nb:])
    xs_flat = flat(x)  # (N, T, *features)
    carry_flat = jax.tree_util.tree_map(flat, carry0)
    # The recurrence runs over every step, padding included, as in nn.RNN: the
    # outputs at padded positions are nn.RNN's, and seq_lengths only selects the
    # returned carry (no per-step mask).
    # Per-gate arrays for lax.scan, one stacked array for the chunked solvers.
    proj = fns.project(params, xs_flat, method == "sequential")
    if fns.diag is not None and "diag_jacobian" not in options:
      options["diag_jacobian"] = fns.diag
    if unroll is True or unroll != 1:
      options["unroll"] = unroll   # lax.scan's; the parallel methods ignore it
    one = lambda h0, xp: solve(fns.step, params, h0, xp, method, **options)
    carries, info = jax.vmap(one)(carry_flat, proj)  # leaves (N, T, ...)
    if not self.is_initializing():  # init's variables hold parameters only
      self.sow(self.stats_collection, "iterations", jnp.max(info.iterations))
      self.sow(self.stats_collection, "residual", jnp.max(info.residual))
      self.sow(self.stats_collection, "fallbacks", jnp.sum(info.fallback.astype(jnp.int32)))
      self.sow(self.stats_collection, "converged", jnp.all(info.converged))
      self.sow(self.stats_collection, "resets", jnp.sum(info.resets.astype(jnp.int32)))

    if fns.output is not None:
      ys = fns.output(carries)
    else:
      cell_def = self.cell.clone(parent=None)
      first = carry_flat
      if axis is not None:   # the state before this device's block
        first = sharded.boundary(carry_flat, jax.tree_util.tree_map(lambda c: c[:, -1], carries),
                                 axis, reverse=False)
      prev = jax.tree_util.tree_map(
          lambda c0, c: jnp.concatenate([c0[:, None], c[:, :-1]], axis=1), first, carries)
      ys = jax.vmap(jax.vmap(lambda c, xt: cell_def.apply({"params": params}, c, xt)[1]))(
          prev, xs_flat)
    if axis is not None:   # the last device's last carry, on every device
      last_dev = sharded.is_last(axis, reverse=False)
      final = jax.tree_util.tree_map(
          lambda c: jax.lax.psum(jnp.where(last_dev, c[:, -1], jnp.zeros_like(c[:, -1])), axis),
          carries)
    elif seq_lengths is None:
      final = jax.tree_util.tree_map(lambda c: c[:, -1], carries)
    else:
      # nn.RNN's _select_last_carry: the carry after step length - 1.
      last = jnp.reshape(seq_lengths, (n,)) - 1
      final = jax.tree_util.tree_map(lambda c: c[jnp.arange(n), last], carries)

    unflat = lambda a: a.reshape(batch_dims + a.shape[1:])
    ys = jax.tree_util.tree_map(unflat, ys)  # (*batch, T, ...)
    final = jax.tree_util.tree_map(unflat, final)
    if reverse and keep_order:
      ys = jax.tree_util.tree_map(
          lambda y: flip_sequences(y, seq_lengths, num_batch_dims=nb, time_major=False), ys)
    if time_major:
      ys = jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, nb, 0), ys)
    return (final, ys) if return_carry else ys
