"""Sequence classifiers built from ParallelRNN layers.

``SequenceClassifier``: [series norm ->] [causal Conv stem, GELU ->] encoder
Dense -> ``depth`` residual blocks of [LayerNorm -> RNN -> residual ->
LayerNorm -> MLP -> residual] -> pooled head (the first block reads the
encoder's output without the first LayerNorm); ``members`` > 1 makes it an
ensemble.
Poolings over the valid steps: "mean", "max", "mean_max" (both, side by
side: a stationary property and a short event anywhere), "last".
With ``pooling="mean_logits"`` it is the papers' EigenWorms model (per-step
logits averaged over valid time steps; docs/method.md, "Training recipe").
Parameters are plain arrays (replicated by the training loop: a model of a few
ten thousand parameters gains nothing from sharding them; the long axis that
needs splitting is time, ``seq_axis``).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.core import FrozenDict

from seqtrain.nn import DiagGRUCell, DiagLSTMCell, LRUCell, ParallelRNN
from seqtrain.solvers import schedule, sharded

CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "simple": nn.SimpleCell,
         "diag_gru": DiagGRUCell, "diag_lstm": DiagLSTMCell, "lru": LRUCell}
POOLINGS = ("mean", "max", "mean_max", "last", "mean_logits")


def _dense(features, name=None, use_bias=True):
  return nn.Dense(features, name=name, use_bias=use_bias)


def _time_sum(a, axis):
  """Sum over the time axis (-2), over the whole sequence when it is sharded
  over the mesh axis ``axis``."""
  out = jnp.sum(a, axis=-2)
  return out if axis is None else jax.lax.psum(out, axis)


def masked_mean(x, mask, axis=None):
  """Mean over the time axis (-2) of x where mask (..., T) is True (``axis``:
  time sharded over that mesh axis)."""
  m = mask[..., None].astype(x.dtype)
  return _time_sum(x * m, axis) / jnp.maximum(_time_sum(m, axis), 1.0)


def series_norm(x, mask, eps: float = 1e-8, axis=None):
  """Per-series standardisation that keeps the scale: each channel of each series
  z-normalised over its valid steps, next to that series' mean and log standard
  deviation (broadcast over time): (B, T, C) -> (B, T, 3C). Series whose levels
  differ by orders of magnitude all reach the network with visible shapes, and
  their levels still tell them apart. Padded steps are 0."""
  m = mask[..., None].astype(x.dtype)
  total = lambda a: _time_sum(a, axis)[..., None, :]
  n = jnp.maximum(total(m), 1.0)
  mu = total(x * m) / n
  var = total(jnp.square(x - mu) * m) / n
  z = (x - mu) * jax.lax.rsqrt(var + eps) * m
  stats = jnp.concatenate([mu, 0.5 * jnp.log(var + eps)], -1)
  return jnp.concatenate([z, jnp.broadcast_to(stats, x.shape[:-1] + stats.shape[-1:]) * m], -1)


def masked_max(x, mask, axis=None):
  """Max over the time axis (-2) of x where mask (..., T) is True (0 where no
  step is valid; ``axis``: time sharded over that mesh axis)."""
  m = mask[..., None]
  out = jnp.max(jnp.where(m, x, -jnp.inf), axis=-2)
  if axis is not None:
    # lax.pmax has no derivative: the device holding the maximum (the first
    # on ties) contributes its value, the others zero, and a psum adds them.
    maxima = jax.lax.all_gather(jax.lax.stop_gradient(out), axis)
    owner = jnp.argmax(maxima, axis=0) == jax.lax.axis_index(axis)
    out = jax.lax.psum(jnp.where(owner, out, 0.0), axis)
  return jnp.where(_time_sum(m.astype(x.dtype), axis) > 0, out, 0.0)


class _SolverOptionsFrozen:
  """Accept plain dicts for ``solver_options``; a frozen copy keeps the module
  hashable (usable as a jit static argument)."""

  def __post_init__(self):
    object.__setattr__(self, "solver_options", FrozenDict(self.solver_options))
    super().__post_init__()


class ResidualBlock(_SolverOptionsFrozen, nn.Module):
  width: int
  cell: str = "gru"
  method: str = "auto"
  solver_options: Mapping[str, Any] = FrozenDict()
  mlp_ratio: int = 1
  dropout: float = 0.0
  norm_input: bool = True
  seq_axis: str | None = None

  @nn.compact
  def __call__(self, x, lengths, train: bool = False, dropout_rng=None):
    """``dropout_rng``: the key of this block's dropout masks (default: drawn from
    the "dropout" stream), so that a recomputation draws the same masks."""
    if self.cell not in CELLS:
      raise ValueError(f"unknown cell {self.cell!r}; valid cells: {', '.join(CELLS)}")
    y = nn.LayerNorm(name="norm_rnn")(x) if self.norm_input else x
    # Only the outputs are used, and they do not depend on the lengths (the
    # recurrence runs over padding, as nn.RNN's); across devices none are passed.
    y = ParallelRNN(CELLS[self.cell](self.width), method=self.method,
                    solver_options=self.solver_options, seq_axis=self.seq_axis,
                    name="rnn")(y, seq_lengths=None if self.seq_axis else lengths)
    if y.shape[-1] != self.width:   # e.g. LRUCell's [Re h, Im h]
      y = _dense(self.width, "rnn_out")(y)
    keys = (None, None)
    if train and self.dropout > 0:
      keys = jax.random.split(self.make_rng("dropout") if dropout_rng is None else dropout_rng)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y, rng=keys[0])
    y = nn.LayerNorm(name="norm_mlp")(x)
    y = nn.gelu(_dense(self.width * self.mlp_ratio, "mlp_in")(y))
    y = _dense(self.width, "mlp_out")(y)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y, rng=keys[1])


def _float0_like(a):
  return np.zeros(np.shape(a), jax.dtypes.float0)


def recomputed(block: ResidualBlock, x, lengths, train: bool):
  """``block(x, lengths, train)`` that keeps only its input for the backward pass
  and recomputes the rest there (activation checkpointing), started only once
  the block's output cotangent exists (``solvers.schedule.after``): XLA then
  holds one block's intermediates at a time, not every block's
  (benchmarks/results/cpu-2core-2026-12-07/train_memory.md). Costs one more
  forward pass of the block, its solve included."""
  definition = block.clone(parent=None)

  def run(params, x, lengths, key):
    return definition.apply({"params": params}, x, lengths, train, key,
                            mutable=["solver_stats"])[0]

  def key_of(mdl):
    return mdl.make_rng("dropout") if train and block.dropout > 0 else None

  def fn(mdl, x, lengths):
    return mdl(x, lengths, train, key_of(mdl))

  def fwd(mdl, x, lengths):
    key = key_of(mdl)
    return mdl(x, lengths, train, key), (mdl.variables["params"], x, lengths, key)

  def bwd(res, g):
    params, x, lengths, key = schedule.after(res, g)
    _, vjp = jax.vjp(lambda p, x_: run(p, x_, lengths, key), params, x)
    dparams, dx = vjp(g)
    return {"params": dparams}, dx, _float0_like(lengths)

  return nn.custom_vjp(fn, fwd, bwd)(block, x, lengths)


class SequenceClassifier(_SolverOptionsFrozen, nn.Module):
  """Inputs (B, T, F) (+ lengths (B,)) -> logits (B, num_classes).

  ``method``: the solver of every recurrent layer; "auto" (default) picks the
  fastest exact one for the backend and the padded length T at trace time
  (``seqtrain.solvers.resolve_method``). ``members`` > 1: an ensemble of that many
  independently initialised copies in one vmapped program (see ``_ensemble``).
  ``series_norm``: inputs pass through
  :func:`series_norm` first. ``stem_kernel`` > 1: a causal
  convolution over that many steps (``width`` filters, GELU) before the
  encoder, so that the first recurrence reads local shapes, not single samples.
  ``seq_axis``: sequence parallelism; inside ``jax.shard_map`` with the time
  axis of ``x`` sharded over this mesh axis (``lengths`` count whole series),
  the same parameters give the same logits (ParallelRNN(seq_axis), the stem's
  causal window reads the previous device's last steps, statistics and pooling
  reduce over the axis).
  ``recompute``: each block keeps only its input for the backward pass and is
  recomputed there (:func:`recomputed`): about 1x a layer's output per further
  layer instead of about 20x, for one more forward pass of each block; the same
  results.
  """
  num_classes: int
  width: int = 32
  depth: int = 2
  cell: str = "gru"
  method: str = "auto"
  solver_options: Mapping[str, Any] = FrozenDict()
  pooling: str = "mean"
  mlp_ratio: int = 1
  dropout: float = 0.0
  stem_kernel: int = 1
  series_norm: bool = False
  members: int = 1
  seq_axis: str | None = None
  recompute: bool = False

  @nn.compact
  def __call__(self, x, lengths=None, *, train: bool = False):
    if self.members > 1:
      return self._ensemble(x, lengths, train)
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; valid: {', '.join(POOLINGS)}")
    b, t = x.shape[0], x.shape[1]
    axis = self.seq_axis
    if axis is not None and self.is_initializing() and not sharded.in_scope(axis):
      axis = None   # init outside shard_map: the same parameters
    steps = jnp.arange(t)
    if axis is not None:   # this device's block of the time axis
      steps = steps + jax.lax.axis_index(axis) * t
      total_t = t * jax.lax.axis_size(axis)
    else:
      total_t = t
    if lengths is None:
      lengths = jnp.full((b,), total_t, jnp.int32)
    mask = steps[None, :] < lengths[:, None]
    if self.series_norm:
      x = series_norm(x, mask, axis=axis)
    if self.stem_kernel > 1:
      # Causal: a step's stem output reads that step and earlier ones only, so
      # padding after a series' end changes none of its valid steps.  Across
      # devices the window reads the previous block's last steps (zeros before
      # the first, as the causal padding).
      padding = "CAUSAL"
      if axis is not None:
        halo = sharded.from_previous(x[:, t - (self.stem_kernel - 1):], axis, reverse=False)
        x, padding = jnp.concatenate([halo, x], axis=1), "VALID"
      h = nn.Conv(self.width, (self.stem_kernel,), padding=padding, name="stem")(x)
      h = _dense(self.width, "encoder")(nn.gelu(h))
    else:
      h = _dense(self.width, "encoder")(x)
    for i in range(self.depth):
      # The first block reads the encoder's output as it is: a LayerNorm over
      # features of a projection of few channels keeps little more than their
      # signs (one channel: exactly the sign), and the recurrence needs amplitudes.
      block = ResidualBlock(self.width, self.cell, self.method, self.solver_options,
                            self.mlp_ratio, self.dropout, norm_input=i > 0, seq_axis=axis,
                            name=f"block_{i}")
      if self.recompute and not self.is_initializing():
        h = recomputed(block, h, lengths, train)
      else:
        h = block(h, lengths, train)
    head = _dense(self.num_classes, "head")
    if self.pooling == "mean_logits":
      return masked_mean(head(h), mask, axis)
    if self.pooling == "mean":
      return head(masked_mean(h, mask, axis))
    if self.pooling == "max":
      return head(masked_max(h, mask, axis))
    if self.pooling == "mean_max":
      return head(jnp.concatenate([masked_mean(h, mask, axis), masked_max(h, mask, axis)], -1))
    at_last = (steps[None, :] == jnp.maximum(lengths - 1, 0)[:, None])[..., None]
    return head(_time_sum(jnp.where(at_last, h, 0.0), axis))

  def _ensemble(self, x, lengths, train):
    """``members`` independent copies (own initialisations and dropout) in one vmapped
    program. Training: (members, B, classes) logits, each member its own loss; otherwise
    the log of the members' mean probability (B, classes), the ensemble's prediction."""
    fields = {f: getattr(self, f) for f in ("num_classes", "width", "depth", "cell", "method",
                                            "solver_options", "pooling", "mlp_ratio",
                                            "dropout", "stem_kernel", "series_norm",
                                            "seq_axis", "recompute")}
    # nn.vmap drops keyword arguments: ``train`` travels as a field of the member
    members = nn.vmap(_Member, variable_axes={"params": 0, "solver_stats": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=(None, None),
                      axis_size=self.members)
    logits = members(**fields, training=train, name="members")(x, lengths)
    if train:
      return logits
    return jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0) - jnp.log(self.members)


class _Member(SequenceClassifier):
  """One member of an ensemble: ``train`` as a field (nn.vmap passes no keywords)."""
  training: bool = False

  def __call__(self, x, lengths=None):
    return super().__call__(x, lengths, train=self.training)
