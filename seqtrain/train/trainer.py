"""train_and_evaluate(config, workdir): the training job, read top to bottom.

Phases: workdir and config -> mesh -> input pipeline -> model and optimizer ->
state born sharded (or restored) -> compiled steps -> loop with periodic
logging / validation / checkpoints -> final test evaluation.

Running again on the same workdir resumes from the newest checkpoint: parameters,
optimizer state, rng and the data iterator position, so the resumed run produces
the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqtrain.parallel import mesh as mesh_lib
from seqtrain.parallel.supervise import resume_advice
from seqtrain.train import config as config_lib
from seqtrain.train import input_pipeline as data_lib
from seqtrain.train import steps as steps_lib
from seqtrain.train.checkpoint import Checkpoints, abstract_like
from seqtrain.train.metrics import EvalMetrics, TrainWindow, eval_batch_metrics
from seqtrain.train.writers import DeferredMetrics, MetricWriters, Progress

__all__ = ["train_and_evaluate", "TrainingError", "evaluate_split", "ResumeError", "solver_plan"]

log = logging.getLogger("seqtrain")


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. non-finite updates); checkpoints written so far are intact."""


class PeerLostError(TrainingError):
  """Another process of a multi-process run died or cut its connection: this one
  cannot go on either (every step is collective). The CLI reports it in one line and
  ends the process without JAX's distributed shutdown, which waits for the dead peer
  and then aborts."""


# What the collectives (Gloo on CPU) and the coordination service say when a peer is gone.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Gloo", "heartbeat",
              "coordination service", "Socket closed", "Broken pipe")


def peer_lost_message(error: BaseException, step: int, checkpoint_step) -> str | None:
  """One line for a runtime error that says a peer process is gone, else None."""
  import jax
  text = str(error)
  if jax.process_count() < 2 or not any(p.lower() in text.lower() for p in _PEER_LOST):
    return None
  detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
  if len(detail) > 160:
    detail = detail[:157] + "..."
  return (f"process {jax.process_index()} lost contact with another process near step {step} "
          f"({detail}); {resume_advice(checkpoint_step)}")


class ResumeError(RuntimeError):
  """The workdir holds a run that this config cannot resume."""


class _Preemption:
  """SIGTERM -> stop at the same step on every process.

  Multi-process: JAX's preemption sync manager (started by jax.distributed) catches
  SIGTERM on any host and picks one step at which ``reached_preemption_sync_point``
  turns true everywhere. Single process: a SIGTERM handler sets a flag.
  """

  def __init__(self):
    self.flag = False
    self._old = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    self.flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.flag

  def close(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None


def is_time(step: int, every: int, total: int) -> bool:
  """Periodic action at ``step`` (1-based count of finished steps); the last step always."""
  return step == total or (every > 0 and step % every == 0)


def _check_resume(workdir: Path, config, allow_changes: bool) -> str:
  """Refuses to resume a run whose checkpoints belong to another model or dataset.

  Reads only; returns the config JSON that the caller writes once the run has
  started (so a run that fails on bad input leaves no config behind).
  """
  path = workdir / "config.json"
  text = config_lib.config_to_json(config)
  has_checkpoints = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
  if path.exists() and has_checkpoints:
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ResumeError(f"{path}: unreadable ({e}); move it away to start a new run") from None
    new = json.loads(text)
    shape_diff = config_lib.config_diff(old, new, config_lib.SHAPE_FIELDS)
    if shape_diff and not allow_changes:
      raise ResumeError(f"{workdir} holds a run with another model or dataset; refusing to "
                        f"resume it with this config:\n  " + "\n  ".join(shape_diff) +
                        "\nUse a new --workdir (or --allow-config-change to fine-tune from it).")
    other = config_lib.config_diff(old, new)
    if other:
      log.warning("config differs from the one in %s: %s", path, "; ".join(other))
      if jax.process_index() == 0:
        config_lib.write_json_atomic(workdir / f"config.{int(time.time())}.previous.json",
                                     json.dumps(old, indent=2, sort_keys=True))
  return text


def evaluate_split(eval_fn, params, source, bundle, config, mesh, shard) -> dict:
  """Exact metrics over every example of ``source`` (padding rows masked), accumulated
  with clu.metrics."""
  total: EvalMetrics | None = None
  stats: dict[str, float] = {}
  for batch in data_lib.eval_batches(source, bundle, config, shard):
    out = jax.device_get(eval_fn(params, mesh_lib.host_to_global(batch, mesh)))
    batch_metrics = eval_batch_metrics(out)
    total = batch_metrics if total is None else total.merge(batch_metrics)
    for k, v in out.items():
      if k not in ("confusion", "loss_sum"):
        stats[k] = stats.get(k, 0.0) + float(v) if steps_lib.is_summed_stat(k) \
            else max(stats.get(k, 0.0), float(v))
  values = total.compute()
  metrics = steps_lib.confusion_metrics(values["confusion"], bundle.class_names)
  metrics["loss"] = float(values["loss"])
  metrics["solver"] = stats
  return metrics


def _lengths_text(lengths) -> str:
  lengths = sorted(lengths)
  if len(lengths) <= 6:
    return ",".join(str(t) for t in lengths)
  return f"{lengths[0]}..{lengths[-1]} ({len(lengths)} lengths)"


def solver_plan(method: str, lengths, backend: str | None = None,
                seq_devices: int = 1) -> tuple[dict, str]:
  """The method that runs at each padded length, and the console line saying so, e.g.
  ``solver: auto -> sequential (cpu, T=100)`` ("auto" resolves at trace time from
  the backend, T and the devices one sequence is split over:
  ``seqtrain.solvers.resolve_method``)."""
  from seqtrain.solvers import resolve_method
  backend = (backend or jax.default_backend()).lower()
  by_length = {int(t): resolve_method(method, int(t), backend, seq_devices) for t in lengths}
  groups: dict[str, list[int]] = {}
  for t, name in sorted(by_length.items()):
    groups.setdefault(name, []).append(t)
  head = "" if groups.keys() == {method} else f"{method} -> "
  body = ", ".join(f"{name} ({backend}, T={_lengths_text(ts)})" for name, ts in groups.items())
  return by_length, f"solver: {head}{body}"


def _solver_summary(metrics: dict) -> dict:
  iters = [float(v) for k, v in metrics.items() if k.endswith("/iterations")]
  fallbacks = [float(v) for k, v in metrics.items() if k.endswith("/fallbacks")]
  resets = [float(v) for k, v in metrics.items() if k.endswith("/resets")]
  out = {}
  if iters:
    out["solver_iters"] = max(iters)
  if fallbacks:
    out["fallbacks"] = sum(fallbacks)
  if resets and sum(resets):
    out["resets"] = sum(resets)
  return out


def train_and_evaluate(config, workdir: str | os.PathLike, *, allow_config_change: bool = False,
                       stop_after: int | None = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics.

  ``stop_after``: leave the loop after this many steps of this invocation (tests use
  it to simulate an interruption; the schedule still spans ``config.train.steps``).
  A run that fails before writing anything (bad data, say) leaves no empty workdir
  behind where there was none.
  """
  fresh = not Path(workdir).exists()
  try:
    return _train_and_evaluate(config, workdir, allow_config_change=allow_config_change,
                               stop_after=stop_after)
  except BaseException:
    if fresh and jax.process_index() == 0:
      try:
        Path(workdir).rmdir()   # only if still empty
      except OSError:
        pass
    raise


def _train_and_evaluate(config, workdir: str | os.PathLike, *, allow_config_change: bool,
                        stop_after: int | None) -> dict:
  # --- workdir, config, logging -------------------------------------------------------------
  workdir = Path(workdir).absolute()
  primary = jax.process_index() == 0
  if workdir.exists() and not workdir.is_dir():
    raise ResumeError(f"workdir {workdir} exists and is not a directory")
  workdir.mkdir(parents=True, exist_ok=True)
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f"workdir {workdir} is not writable")
  config_text = _check_resume(workdir, config, allow_config_change)
  # steps/s and ETA over the last few log intervals of active time (see writers.StepRate)
  progress = Progress(config.train.steps, active=primary,
                      window=max(5 * config.train.log_every, 10))
  say = progress.print

  # --- mesh ---------------------------------------------------------------------------------
  mesh = mesh_lib.make_mesh(config.mesh.axes, config.mesh.shape)
  shard = mesh_lib.data_shard(mesh)
  n_data = mesh_lib.data_axis_size(mesh)
  for field in ("batch_size", "eval_batch_size"):
    size = config.train[field]
    if size % n_data:
      raise config_lib.ConfigError(f"config field train.{field}={size}: must be a multiple of "
                                   f"the {n_data} devices of the mesh's data axis")
  say(f"seqtrain: {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}; workdir {workdir}")

  # --- input pipeline -----------------------------------------------------------------------
  bundle = data_lib.build_data(config, workdir)
  say(f"data: {bundle.description}")
  # Without a held-out validation split the periodic evaluation reads the test split: it is
  # shown for monitoring only and never picks a checkpoint (config.validate refuses select=best).
  held_out = bundle.validation is not None and bundle.validation is not bundle.test
  if not held_out:
    say("no validation split (data.validation_fraction=0, no validation file): the test split "
        "is evaluated every train.eval_every steps for monitoring only, no checkpoint is "
        "selected on it, and the run's model is the last weights")
  if config.train.batch_size > len(bundle.train):
    say(f"warning: train.batch_size={config.train.batch_size} exceeds the {len(bundle.train)} "
        f"training series: every batch holds each series about "
        f"{config.train.batch_size / len(bundle.train):.1f} times")
  if primary:
    config_lib.write_json_atomic(workdir / "data.json", json.dumps(bundle.info(), indent=2))

  # --- model, optimizer, state --------------------------------------------------------------
  setup = steps_lib.build_train_state(config, len(bundle.class_names), bundle.num_channels, mesh)
  model, tx, lr_schedule = setup.model, setup.tx, setup.lr_schedule
  abstract, state_sharding = setup.abstract, setup.sharding
  replicated = mesh_lib.replicated(mesh)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  seq_devices = mesh_lib.seq_axis_size(mesh)
  solver_by_length, solver_line = solver_plan(config.model.solver.method,
                                              data_lib.train_pad_lengths(bundle, config),
                                              seq_devices=seq_devices)
  solver_ran = "/".join(dict.fromkeys(solver_by_length.values()))
  say(f"model: {config.model.depth} x {config.model.cell.upper()}-{config.model.width}, "
      f"{n_params:,} parameters, solver {solver_ran}")
  say(solver_line)

  checkpoints = Checkpoints(workdir, keep=config.train.keep_checkpoints)
  best_accuracy, best_loss = -1.0, float("inf")
  data_state = None
  restored = checkpoints.restore_newest_valid(abstract_like(abstract, state_sharding), say)
  if restored is not None:
    state, meta = restored
    latest = int(meta["step"])
    data_state = meta.get("data_state")
    best_accuracy = float(meta.get("best_accuracy", -1.0))
    best_loss = float(meta.get("best_loss", float("inf")))
    say(f"resumed from {checkpoints.dirs['latest'] / str(latest)} (step {latest})")
  else:
    state = setup.fresh()
  start_step = int(jax.device_get(state.step))

  # --- compiled steps -----------------------------------------------------------------------
  train_step = jax.jit(steps_lib.make_train_step(model, tx, mesh, lr_schedule,
                                                 augment_scale=config.train.augment_scale,
                                                 augment_jitter=config.train.augment_jitter),
                       in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  eval_fn = jax.jit(steps_lib.make_eval_step(model, mesh, len(bundle.class_names)),
                    in_shardings=(state_sharding.params, mesh_lib.batch_sharding(mesh)),
                    out_shardings=replicated)
  compiled: dict[Any, Any] = {}

  def run_step(state, batch):
    key = tuple((k, v.shape) for k, v in batch.items())
    if key not in compiled:
      length = int(batch["inputs"].shape[1])
      if length not in solver_by_length:  # not foreseen by train_pad_lengths: say what runs
        extra, line = solver_plan(config.model.solver.method, [length], seq_devices=seq_devices)
        solver_by_length.update(extra)
        say(line)
      t0 = time.perf_counter()
      with progress.paused():
        compiled[key] = train_step.lower(state, batch).compile()
      if len(compiled) == 1:
        mem = compiled[key].memory_analysis()
        detail = ""
        if mem is not None:
          detail = (f", temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments "
                    f"{mem.argument_size_in_bytes / 2**20:.1f} MiB")
        say(f"compiled train step for batch {batch['inputs'].shape} in "
            f"{time.perf_counter() - t0:.1f} s{detail}")
    return compiled[key](state, batch)

  # --- loop ---------------------------------------------------------------------------------
  if primary:
    config_lib.write_json_atomic(workdir / "config.json", config_text)
  writers = MetricWriters(workdir, active=primary, resume_step=start_step)
  solver_info = {"method": config.model.solver.method, "resolved": solver_ran,
                 "backend": jax.default_backend(),
                 "by_length": {str(t): m for t, m in sorted(solver_by_length.items())}}
  writers.write_info(start_step, "solver", solver_info, text=solver_line)
  train_iter = data_lib.train_iterator(bundle, config, shard)
  if data_state is not None:
    train_iter.set_state(data_state)
  total = config.train.steps
  history = collections.deque(maxlen=config.train.log_every)  # host metrics of recent steps
  window_metrics = [None]  # clu TrainWindow since the last log line
  last_eval: dict = {}
  steps_run = 0

  history_step = [start_step]   # the step of history[-1]

  def report(step, host_metrics):
    m = {k: float(v) for k, v in host_metrics.items()}
    history.append(m)
    history_step[0] = step
    if m["skipped"]:
      log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step,
                  int(m["bad_steps"]))
      say(f"step {step}: non-finite loss or gradient; update skipped ({int(m['bad_steps'])} "
          "in a row)")
    step_metrics = TrainWindow.single_from_model_output(loss=np.float64(m["loss"]),
                                                        accuracy=np.float64(m["accuracy"]))
    window_metrics[0] = step_metrics if window_metrics[0] is None else \
        window_metrics[0].merge(step_metrics)
    if is_time(step, config.train.log_every, total):
      window = list(history)
      mean = {k: float(v) for k, v in window_metrics[0].compute().items()}
      window_metrics[0] = None
      rate = progress.rate()
      writers.write(step, "train", {**mean, "grad_norm": m["grad_norm"],
                                    "learning_rate": m["learning_rate"],
                                    **({"steps_per_second": rate} if rate == rate else {}),
                                    "skipped": sum(h["skipped"] for h in window),
                                    **{k: v for k, v in m.items() if "/" in k}})
      say(progress.line(step, {"loss": mean["loss"], "acc": mean["accuracy"],
                               **_solver_summary(m), "lr": m["learning_rate"]}))

  # The steps since the last fetch: their metrics come to the host in one transfer on
  # log, evaluation and checkpoint steps only.
  pending = DeferredMetrics(progress, report, jax.device_get)

  def checkpoint(step, which="latest"):
    meta = {"step": step, "data_state": train_iter.get_state(), "best_accuracy": best_accuracy,
            "best_loss": best_loss,
            "validation": {k: last_eval.get(k) for k in ("accuracy", "loss", "balanced_accuracy")},
            "config": json.loads(config_lib.config_to_json(config))}
    checkpoints.save(step, state, meta, which)

  step = start_step
  if step >= total:
    say(f"already trained: step {step} of {total}")
  t_loop = time.perf_counter()
  preemption = _Preemption()
  preempted = False
  progress.tick(step)   # the rate's origin (compilation, inside run_step, is paused)
  try:
    while step < total and (stop_after is None or steps_run < stop_after):
      batch = mesh_lib.host_to_global(next(train_iter), mesh)
      state, metrics = run_step(state, batch)
      step += 1
      steps_run += 1
      pending.append(step, metrics)
      if any(is_time(step, every, total) for every in (config.train.log_every,
                                                      config.train.eval_every,
                                                      config.train.checkpoint_every)):
        pending.flush()   # the steps' own time counts as training; evaluation and saving do not
      if history and history[-1]["bad_steps"] >= config.train.max_bad_steps:
        raise TrainingError(
            f"{int(history[-1]['bad_steps'])} non-finite losses or gradients in a row (updates "
            f"skipped) up to step {history_step[0]}; stopping (train.max_bad_steps="
            f"{config.train.max_bad_steps}). The last good checkpoint (step "
            f"{checkpoints.latest_step()}) in {checkpoints.dirs['latest']} is intact; try a lower "
            "train.learning_rate or check the data.")
      if is_time(step, config.train.eval_every, total):
        with progress.paused():   # not training time: kept out of steps/s and the ETA
          last_eval = evaluate_split(eval_fn, state.params, bundle.validation, bundle, config,
                                     mesh, shard)
        # best = highest validation accuracy, ties broken by lower validation loss
        improved = held_out and ((last_eval["accuracy"], -last_eval["loss"]) >
                                 (best_accuracy, -best_loss))
        if improved:
          best_accuracy, best_loss = last_eval["accuracy"], last_eval["loss"]
        kind = "validation" if held_out else "test_monitor"
        writers.write(step, kind, {"accuracy": last_eval["accuracy"], "loss": last_eval["loss"],
                                   "balanced_accuracy": last_eval["balanced_accuracy"],
                                   **({"best_accuracy": best_accuracy} if held_out else {})})
        say(f"{'validation' if held_out else 'test (monitoring only)'} at step {step}: accuracy "
            f"{last_eval['accuracy']:.4f}"
            + (f" (best {best_accuracy:.4f})" if held_out else "")
            + f", loss {last_eval['loss']:.4f}, {last_eval['count']} examples")
        if improved:
          with progress.paused():
            checkpoint(step, "best")
      if is_time(step, config.train.checkpoint_every, total):
        with progress.paused():
          checkpoint(step)
      if preemption.reached(step):
        pending.flush()
        say(f"termination signal: saving a checkpoint at step {step} and stopping")
        checkpoint(step)
        preempted = True
        break
    pending.flush()
  except jax.errors.JaxRuntimeError as e:
    lost = peer_lost_message(e, step, checkpoints.latest_step())
    if lost is not None:
      raise PeerLostError(lost) from None
    if "SolverError" not in str(e):
      raise
    message = str(e)[str(e).index("SolverError"):].splitlines()[0]
    raise TrainingError(f"strict solver mode (model.solver.on_failure=raise) near step {step}: "
                        f"{message}. Checkpoints up to step {checkpoints.latest_step()} are "
                        "intact; the default on_failure=sequential falls back to lax.scan "
                        "instead.") from None
  finally:
    preemption.close()
    try:
      checkpoints.wait()
    finally:
      writers.flush()
  loop_time = time.perf_counter() - t_loop

  # --- final evaluation ---------------------------------------------------------------------
  result = {"step": step, "best_validation_accuracy": best_accuracy,
            "train_seconds": loop_time, "preempted": preempted,
            "steps_per_second": steps_run / loop_time if loop_time > 0 else float("nan"),
            "recent_steps_per_second": progress.rate(), "solver": solver_info}
  if step >= total:
    checkpoint(step)
    checkpoints.wait_checked()
    # The run's model (train.select): the last weights, or the best validation checkpoint;
    # `seqtrain eval` defaults to the same one.
    params, model_from = state.params, {"checkpoint": "latest", "step": step}
    if config.train.select == "best":
      best_step = checkpoints.latest_step("best")
      if best_step is None:
        say("train.select=best but no validation ran: the run's model is the last weights")
      else:
        best_state, _ = checkpoints.restore(abstract_like(abstract, state_sharding), "best")
        params, model_from = best_state.params, {"checkpoint": "best", "step": best_step}
    result["model"] = model_from
    for split in ("validation", "test"):
      source = bundle.validation if split == "validation" else bundle.test
      if source is None or (split == "validation" and not held_out):
        continue
      m = evaluate_split(eval_fn, params, source, bundle, config, mesh, shard)
      if split == "test" and primary:
        m["baselines"] = data_lib.baseline_report(bundle, source, split)
      result[split] = m
      writers.write(step, f"final_{split}", {"accuracy": m["accuracy"], "loss": m["loss"],
                                             "balanced_accuracy": m["balanced_accuracy"]})
      say(f"final {split} ({model_from['checkpoint']} checkpoint, step {model_from['step']}): "
          f"accuracy {m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, "
          f"loss {m['loss']:.4f} ({m['count']} examples)")
      if m.get("baselines"):
        from seqtrain.baselines import describe
        say(f"baselines on the same {split} examples: {describe(m['baselines'])}")
    if primary:
      config_lib.write_json_atomic(workdir / "final_metrics.json",
                                   json.dumps(result, indent=2, default=float))
      final = result.get("test") or result.get("validation")
      if final is not None:
        from seqtrain.train.evaluate import report_markdown
        final = dict(final, step=model_from["step"], checkpoint=model_from["checkpoint"])
        config_lib.write_json_atomic(workdir / "results.md", report_markdown(
            final, f"{workdir.name}: final {'test' if 'test' in result else 'validation'}"))
  writers.close()
  checkpoints.close()
  result["state"] = state
  return result
