"""ParallelRNN: a drop-in for flax.linen.RNN whose forward pass is a parallel solve."""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import FrozenDict
from flax.linen.recurrent import flip_sequences

from seqtrain.nn.cells import cell_functions
from seqtrain.solvers import canonical_method, resolve_method, solve


class ParallelRNN(nn.Module):
  """Applies ``cell`` over the time axis with ``seqtrain.solvers.solve``.

  Same call signature and parameter tree as ``flax.linen.RNN(cell)`` (the
  cell's parameters live under ``"cell"``), so checkpoints move between them.

  Attributes:
    cell: any ``flax.linen.RNNCellBase``.
    method: solver method (see ``seqtrain.solvers.METHODS``); "auto" (default)
      picks the fastest exact one for the backend and length
      (``seqtrain.solvers.resolve_method``).
    solver_options: keyword options for ``solve`` (tolerances, max_iter, ...).
    stats_collection: Flax collection that receives the solver diagnostics
      (iterations, residual, converged, fallback), one entry per call; made
      mutable by the caller, e.g. ``apply(..., mutable=["solver_stats"])``.
  """
  cell: nn.RNNCellBase
  method: str = "auto"
  solver_options: Mapping[str, Any] = FrozenDict()
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  stats_collection: str = "solver_stats"

  def __post_init__(self):
    # Plain dicts are accepted; a frozen copy keeps the module hashable (jit static).
    object.__setattr__(self, "solver_options", FrozenDict(self.solver_options))
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None):
    method = canonical_method(self.method)
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    if self.cell.num_feature_axes != 1:
      raise ValueError(f"ParallelRNN supports cells with one feature axis, got "
                       f"{type(self.cell).__name__} with {self.cell.num_feature_axes}")
    if inputs.ndim < 2:
      raise ValueError(f"inputs need a time and a feature axis, got shape {inputs.shape}")
    x = jnp.moveaxis(inputs, 0, -2) if time_major else inputs  # (*batch, T, F)
    batch_dims, t, feat = x.shape[:-2], x.shape[-2], x.shape[-1]
    method = resolve_method(method, t)
    if reverse:
      x = flip_sequences(x, seq_lengths, num_batch_dims=len(batch_dims), time_major=False)

    if initial_carry is None:
      key = jax.random.key(0) if init_key is None else init_key
      carry0 = self.cell.initialize_carry(key, batch_dims + (feat,))
    else:
      carry0 = initial_carry
    if self.is_initializing() and not self.cell.has_variable("params", "_"):
      # Create the cell's parameters exactly as nn.RNN does (one call of the cell).
      self.cell(carry0, x[..., 0, :])
    params = self.cell.variables.get("params", FrozenDict())

    fns, _ = cell_functions(self.cell)
    n = math.prod(batch_dims)
    flat = lambda a: a.reshape((n,) + a.shape[len(batch_dims):])
    xs_flat = flat(x)
    carry_flat = jax.tree_util.tree_map(flat, carry0)
    options = dict(self.solver_options)
    # Per-gate arrays for lax.scan, one stacked array for the chunked solvers.
    proj = fns.project(params, xs_flat, method == "sequential")
    if seq_lengths is None:
      # Every step valid: no mask to read and select with at each step.
      step, diag, inputs = fns.step, fns.diag, proj
    else:
      valid = jnp.arange(t)[None, :] < jnp.reshape(seq_lengths, (n, 1))
      inputs = (proj, valid)

      def step(p, h, inp):
        x_t, v = inp
        new = fns.step(p, h, x_t)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(v, a, b), new, h)

      def diag(p, h, inp):
        x_t, v = inp
        new, d = fns.diag(p, h, x_t)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(v, a, b), new, h)
        return new, jax.tree_util.tree_map(lambda a: jnp.where(v, a, jnp.ones_like(a)), d)

    if fns.diag is not None and "diag_jacobian" not in options:
      options["diag_jacobian"] = diag
    one = lambda h0, xp: solve(step, params, h0, xp, method, **options)
    carries, info = jax.vmap(one)(carry_flat, inputs)  # leaves (N, T, ...)
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
      prev = jax.tree_util.tree_map(
          lambda c0, c: jnp.concatenate([c0[:, None], c[:, :-1]], axis=1), carry_flat, carries)
      ys = jax.vmap(jax.vmap(lambda c, xt: cell_def.apply({"params": params}, c, xt)[1]))(
          prev, xs_flat)
      ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys)) if seq_lengths is not None else ys
    final = jax.tree_util.tree_map(lambda c: c[:, -1], carries)

    unflat = lambda a: a.reshape(batch_dims + a.shape[1:])
    ys = unflat(ys)
    final = jax.tree_util.tree_map(unflat, final)
    if reverse and keep_order:
      ys = flip_sequences(ys, seq_lengths, num_batch_dims=len(batch_dims), time_major=False)
    if time_major:
      ys = jnp.moveaxis(ys, -2, 0)
    return (final, ys) if return_carry else ys
