"""Model, optimizer, train state and the jitted train / eval steps.

The per-example work (the parallel-in-time recurrences) runs inside one
``jax.shard_map`` over the mesh: each device solves its own rows and the only
collectives over ``data`` are one ``psum`` of gradients and metrics per step, never
one per time step (plain auto-sharding of a scanned recurrence puts collectives
inside the time loop). On a mesh with a ``seq`` axis each device also holds one
block of the time axis: the solvers combine the blocks with their own
collectives (seqtrain.solvers.solve(seq_axis=...)), pooling sums over the axis,
and shard_map's varying-axes checks stay on, so the gradient of the
seq-replicated loss comes back summed over the blocks by the transposes
themselves. Parameters and optimizer state are replicated.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from seqtrain.models import SequenceClassifier
from seqtrain.parallel import mesh as mesh_lib
from seqtrain.train import config as config_lib

__all__ = ["TrainState", "TrainSetup", "StepFns", "build_model", "build_optimizer", "init_state",
           "build_train_state", "train_step", "make_train_step", "make_eval_step",
           "solver_options", "confusion_metrics"]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array          # raw uint32 key data: checkpoints hold plain arrays
  bad_steps: jax.Array    # consecutive skipped (non-finite) updates


def solver_options(config) -> dict:
  """The keyword options of the config's SolverSpec (``config.solver_spec``) that
  differ from the solver's defaults, ``method`` and ``seq_axis`` aside (the
  model passes those itself)."""
  opts = config_lib.solver_spec(config).options()
  opts.pop("seq_axis", None)
  return opts


def build_model(config, num_classes: int) -> SequenceClassifier:
  """The classifier of ``config``; sequence-parallel (seq_axis="seq") when the
  config's mesh has a ``seq`` axis. The parameter tree is the same either way."""
  m = config.model
  seq_axis = mesh_lib.SEQ if mesh_lib.SEQ in tuple(config.mesh.axes) else None
  return SequenceClassifier(num_classes=num_classes, width=m.width, depth=m.depth, cell=m.cell,
                            method=m.solver.method, solver_options=solver_options(config),
                            pooling=m.pooling, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                            stem_kernel=m.stem_kernel, series_norm=m.series_norm,
                            members=m.members, seq_axis=seq_axis, recompute=m.recompute)


def build_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  if t.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, max(t.warmup_steps, 0),
                                            max(t.steps, t.warmup_steps + 1), t.learning_rate * 0.01)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps),
                               optax.constant_schedule(t.learning_rate)], [t.warmup_steps]) \
        if t.warmup_steps else optax.constant_schedule(t.learning_rate)
  if t.optimizer == "adamw":
    # Decay weight matrices only: not biases, norms' scales or the recurrences'
    # per-unit parameters (decaying LRUCell's nu_log would shorten its memory).
    opt = optax.adamw(lr, weight_decay=t.weight_decay,
                      mask=lambda p: jax.tree_util.tree_map(lambda x: jnp.ndim(x) >= 2, p))
  elif t.optimizer == "adam":
    opt = optax.adam(lr)
  else:
    opt = optax.sgd(lr, momentum=0.9)
  chain = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  return optax.chain(*chain, opt), lr


def init_state(model, tx, config, example_shape, channels: int) -> TrainState:
  """Pure init (jit it with out_shardings so arrays are born where they live)."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, run_rng = jax.random.split(rng)
  x = jnp.zeros((1, example_shape, channels), jnp.float32)
  params = model.init(init_rng, x, jnp.full((1,), example_shape, jnp.int32))["params"]
  params = flax.core.meta.unbox(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(run_rng) if jnp.issubdtype(run_rng.dtype,
                                                                       jax.dtypes.prng_key)
                    else run_rng, bad_steps=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything a run builds from its config before touching data: shared by
  training, evaluation and the tests' checkpoint readers (``build_train_state``)."""
  model: SequenceClassifier
  tx: optax.GradientTransformation
  lr_schedule: Callable
  init: Callable[[], TrainState]   # pure: jit it with out_shardings=sharding
  abstract: TrainState             # shapes and dtypes (jax.ShapeDtypeStruct leaves)
  sharding: TrainState             # a NamedSharding per leaf (replicated)

  def fresh(self) -> TrainState:
    """A new state, born where it lives."""
    return jax.jit(self.init, out_shardings=self.sharding)()


def build_train_state(config, num_classes: int, channels: int, mesh) -> TrainSetup:
  """Model, optimizer and the abstract / sharded train state of ``config``."""
  model = build_model(config, num_classes)
  tx, lr_schedule = build_optimizer(config)
  init = lambda: init_state(model, tx, config, 8, channels)
  abstract = jax.eval_shape(init)
  sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract)
  return TrainSetup(model, tx, lr_schedule, init, abstract, sharding)


def _flat_stats(mutable: dict) -> dict:
  """Solver statistics by layer; an ensemble's per-member values reduced like examples'."""
  flat = traverse_util.flatten_dict(mutable.get("solver_stats", {}), sep="/")
  out = {}
  for k, v in flat.items():
    v = v[0] if isinstance(v, tuple) else v
    k = k.removeprefix("members/")
    if jnp.ndim(v):
      v = jnp.sum(v) if is_summed_stat(k) else (jnp.all(v) if k.endswith("converged")
                                                 else jnp.max(v))
    out[k] = v
  return out


def is_summed_stat(key: str) -> bool:
  """Solver statistics that add up over examples (the others reduce by max)."""
  return key.endswith(("fallbacks", "resets"))


def _reduce(sums: dict, maxes: dict, axis: str):
  """psum of ``sums`` and pmax of ``maxes``, each packed into one buffer: two
  collectives per step whatever the number of parameters and layers (on CPU each
  collective is a separate gloo round trip)."""
  flat, unravel = ravel_pytree(jax.tree.map(lambda v: v.astype(jnp.float32), sums))
  out = unravel(jax.lax.psum(flat, axis))
  if maxes:
    flat, unravel = ravel_pytree(jax.tree.map(lambda v: v.astype(jnp.float32), maxes))
    out.update(unravel(jax.lax.pmax(flat, axis)))
  return out


def _split_stats(stats: dict):
  """Solver statistics -> (summed, maxed); ``converged`` travels as max of "not converged"."""
  sums = {k: v for k, v in stats.items() if is_summed_stat(k)}
  maxes = {k: (~v.astype(bool)) if k.endswith("converged") else v
           for k, v in stats.items() if not is_summed_stat(k)}
  return sums, maxes


def _fix_converged(metrics: dict) -> dict:
  return {k: (1.0 - v if k.endswith("converged") else v) for k, v in metrics.items()}


def augment(inputs, rng, scale: float, jitter: float, block: Any = None):
  """Training-time augmentation: each series times (1 + scale * N(0, 1)) per channel,
  plus jitter * N(0, 1) i.i.d. noise per step (after normalisation, so in units of the
  training data's standard deviation). Padded steps change too; the model masks them.
  ``block``: this device's index along the time axis (its own step noise, the
  series' scale shared)."""
  if not scale and not jitter:
    return inputs
  k_scale, k_jitter = jax.random.split(rng)
  if block is not None:
    k_jitter = jax.random.fold_in(k_jitter, block)
  b, _, c = inputs.shape
  out = inputs
  if scale:
    out = out * (1 + scale * jax.random.normal(k_scale, (b, 1, c), inputs.dtype))
  if jitter:
    out = out + jitter * jax.random.normal(k_jitter, inputs.shape, inputs.dtype)
  return out


@dataclasses.dataclass(frozen=True)
class StepFns:
  """What a train step closes over: the model, the optimizer and the mesh (static)."""
  model: Any
  tx: optax.GradientTransformation
  mesh: Any
  lr_schedule: Callable
  augment_scale: float = 0.0
  augment_jitter: float = 0.0


def shard_gradients(fns: StepFns, params, batch: dict, rng):
  """One device's rows (and, on a ``seq`` mesh, time block) -> (grads, metrics) summed
  over the mesh: runs inside ``jax.shard_map`` (``train_step``)."""
  seq = mesh_lib.seq_axis(fns.mesh)
  rng, aug_rng = jax.random.split(rng)
  # each data shard draws its own augmentation noise
  aug_rng = jax.random.fold_in(aug_rng, jax.lax.axis_index("data"))
  block = None
  # gradients w.r.t. data-varying parameters: this device's rows (summed over the
  # time blocks by the transposes on a seq mesh), reduced over data below
  params = jax.lax.pcast(params, "data", to="varying")
  if seq:
    # dropout masks differ between time blocks
    block = jax.lax.axis_index(seq)
    rng = jax.random.fold_in(rng, block)
  inputs = augment(batch["inputs"], aug_rng, fns.augment_scale, fns.augment_jitter, block)

  def loss_fn(p):
    logits, mutable = fns.model.apply({"params": p}, inputs, batch["lengths"], train=True,
                                      rngs={"dropout": rng}, mutable=["solver_stats"])
    logits = logits.astype(jnp.float32)
    if logits.ndim == 3:   # an ensemble: every member learns on its own loss
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["labels"][None]), axis=0)
      logits = jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0)  # mean probability
    else:
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return jnp.sum(ce * batch["mask"]), (logits, _flat_stats(mutable))

  (loss_sum, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * batch["mask"])
  stat_sums, stat_maxes = _split_stats(stats)
  totals = _reduce({"grads": grads, "loss": loss_sum, "correct": correct,
                    "count": jnp.sum(batch["mask"]), "stats": stat_sums}, stat_maxes, "data")
  count = totals["count"]
  grads = jax.tree.map(lambda g, g0: (g / count).astype(g0.dtype), totals["grads"], grads)
  metrics = {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count}
  metrics.update(_fix_converged({**totals["stats"], **{k: totals[k] for k in stat_maxes}}))
  return grads, metrics


def apply_gradients(fns: StepFns, state: TrainState, grads, metrics: dict):
  """The optimizer update; a non-finite loss or gradient skips it (counted)."""
  grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state),
                            bad_steps=jnp.where(ok, 0, state.bad_steps + 1))
  metrics = dict(metrics, grad_norm=grad_norm, learning_rate=fns.lr_schedule(state.step),
                 skipped=(~ok).astype(jnp.int32), bad_steps=new_state.bad_steps)
  return new_state, metrics


def train_step(fns: StepFns, state: TrainState, batch: dict):
  """(state, batch) -> (state, metrics): gradients in one shard_map over the mesh,
  then the update on the replicated state. Jit it with ``fns`` bound
  (``make_train_step``); batch arrays sharded as ``mesh.batch_sharding``."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  grads, metrics = jax.shard_map(
      functools.partial(shard_gradients, fns), mesh=fns.mesh,
      in_specs=(P(), mesh_lib.batch_specs(fns.mesh, tuple(batch)), P()),
      out_specs=(P(), P()))(state.params, batch,
                                                       jax.random.key_data(rng))
  return apply_gradients(fns, state, grads, metrics)


def make_train_step(model, tx, mesh, lr_schedule: Callable, *, augment_scale: float = 0.0,
                    augment_jitter: float = 0.0) -> Callable:
  """``train_step`` with its static parts bound: (state, batch) -> (state, metrics).
  ``augment_scale`` / ``augment_jitter``: see :func:`augment`."""
  return functools.partial(train_step, StepFns(model, tx, mesh, lr_schedule, augment_scale,
                                               augment_jitter))


def make_eval_step(model, mesh, num_classes: int) -> Callable:
  """(params, batch) -> {loss_sum, count, confusion (K, K) [true, predicted], solver stats}."""


  def per_shard(params, batch):
    params = jax.lax.pcast(params, "data", to="varying")
    logits, mutable = model.apply({"params": params}, batch["inputs"], batch["lengths"],
                                  train=False, mutable=["solver_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["labels"])
    w = batch["mask"]
    pred = jnp.argmax(logits, -1)
    confusion = jnp.einsum("b,bi,bj->ij", w, jax.nn.one_hot(batch["labels"], num_classes),
                           jax.nn.one_hot(pred, num_classes))
    stat_sums, stat_maxes = _split_stats(_flat_stats(mutable))
    totals = _reduce({"loss_sum": jnp.sum(ce * w), "confusion": confusion, "stats": stat_sums},
                     stat_maxes, "data")
    out = {"loss_sum": totals["loss_sum"], "confusion": totals["confusion"]}
    out.update(_fix_converged({**totals["stats"], **{k: totals[k] for k in stat_maxes}}))
    return out

  def eval_step(params, batch):
    return jax.shard_map(per_shard, mesh=mesh,
                         in_specs=(P(), mesh_lib.batch_specs(mesh, tuple(batch))),
                         out_specs=P())(params, batch)

  return eval_step


def confusion_metrics(confusion: np.ndarray, class_names) -> dict:
  """Exact metrics from a (true, predicted) count matrix."""
  c = np.asarray(confusion, np.float64)
  total = c.sum()
  tp = np.diag(c)
  support = c.sum(1)
  predicted = c.sum(0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                 where=(precision + recall) > 0)
  present = support > 0
  return {
      "count": int(round(total)),
      "accuracy": float(tp.sum() / total) if total else float("nan"),
      "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
      "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
      "per_class": {str(name): {"precision": float(precision[i]), "recall": float(recall[i]),
                                "f1": float(f1[i]), "support": int(round(support[i]))}
                    for i, name in enumerate(class_names)},
      "confusion_matrix": np.rint(c).astype(int).tolist(),
      "class_names": [str(n) for n in class_names],
  }
