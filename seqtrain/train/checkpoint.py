"""Orbax checkpoints of the train state, the data iterator position and the run's metadata.

``<workdir>/checkpoints`` keeps the latest ``keep`` steps, ``<workdir>/best`` the one
step with the best validation accuracy. Each step holds two items:

* ``state``: the TrainState (step, params, optimizer state, rng) as global arrays,
  restored onto whatever mesh the resuming run has (``jax.ShapeDtypeStruct`` targets
  carry the new shardings);
* ``meta``: JSON with the data iterator state, validation metrics and the config.

The iterator state is one integer (batches consumed; see seqtrain.data.pipeline),
identical on every process, so it lives in the JSON rather than in grain's
per-process files: a checkpoint written by N processes restores in M.
Saves are asynchronous; a step directory becomes visible only when complete, so a
process killed during a save leaves the previous checkpoints intact.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "CheckpointError", "abstract_like"]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """Checkpoints exist but cannot be used, or cannot be written."""


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStruct targets with the given shardings (a matching tree)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpoints:
  def __init__(self, workdir: str | Path, keep: int = 2, async_save: bool = True):
    workdir = Path(workdir).absolute()
    self.dirs = {"latest": workdir / "checkpoints", "best": workdir / "best"}

    self.workdir = workdir

    def manager(path, max_to_keep, name):
      # cleanup_tmp_directories: a save interrupted by a crash leaves an unfinished
      # temporary directory; it is never listed as a step and is removed here.
      options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True,
                                             # two managers may save the same step: their
                                             # multi-process barriers need distinct names
                                             multiprocessing_options=ocp.options.MultiprocessingOptions(
                                                 barrier_sync_key_prefix=name))
      return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))

    self.managers = {"latest": manager(self.dirs["latest"], keep, "latest"),
                     "best": manager(self.dirs["best"], 1, "best")}

  def latest_step(self, which: str = "latest") -> int | None:
    return self.managers[which].latest_step()

  def save(self, step: int, state: Any, meta: dict, which: str = "latest", force: bool = False):
    mngr = self.managers[which]
    if step in mngr.all_steps():
      return False
    try:
      return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=force)
    except OSError as e:
      raise CheckpointError(f"could not write the checkpoint of step {step} to {self.dirs[which]}: "
                            f"{e.strerror or e} (earlier checkpoints are intact)") from e

  def wait_checked(self):
    """Waits for async saves; a failed background write becomes a CheckpointError."""
    try:
      self.wait()
    except OSError as e:
      raise CheckpointError(f"could not finish writing a checkpoint in {self.workdir}: "
                            f"{e.strerror or e} (earlier checkpoints are intact)") from e

  def restore(self, abstract_state: Any, which: str = "latest", step: int | None = None):
    """(state, meta) of ``step`` (default: the newest) of ``which``."""
    mngr = self.managers[which]
    if step is None:
      step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.dirs[which]}")
    if step not in mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.dirs[which]} (steps: "
                              f"{sorted(mngr.all_steps())})")
    with _quiet_abandoned_reads():
      out = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_newest_valid(self, abstract_state: Any, say: Callable[[str], None] = print):
    """(state, meta) of the newest checkpoint that loads, or None if there is none.

    A checkpoint that fails to load (truncated or missing files) is reported with its
    step and path and moved to ``<workdir>/corrupt_checkpoints/`` (kept, not deleted);
    the previous one is tried next. If checkpoints exist but none loads, this raises
    instead of letting the run start from scratch.
    """
    mngr = self.managers["latest"]
    steps = sorted(mngr.all_steps(), reverse=True)
    for step in steps:
      try:
        return self.restore(abstract_state, "latest", step)
      except Exception as e:  # orbax raises many types for damaged files
        path = self.dirs["latest"] / str(step)
        reason = load_error_reason(e)
        say(f"checkpoint of step {step} at {path} failed to load ({type(e).__name__}: {reason}); "
            f"moving it to {self.workdir / 'corrupt_checkpoints'} and trying the previous one")
        self._quarantine(step)
    corrupt = self.workdir / "corrupt_checkpoints"
    if steps:
      raise CheckpointError(f"none of the checkpoints in {self.dirs['latest']} (steps {steps}) "
                            f"loads (moved to {corrupt}); refusing to start from scratch over "
                            "them. Move the workdir away to start a new run.")
    if corrupt.is_dir() and any(corrupt.iterdir()):
      # A run whose every checkpoint failed before stays refused until the user acts:
      # starting again would train from step 0 over the old run's metrics and best/.
      raise CheckpointError(f"{self.workdir}: no loadable checkpoint, and {corrupt} holds the "
                            "ones that failed to load; refusing to start from scratch over the "
                            "old run. Move the workdir away to start a new run (or move "
                            f"{corrupt.name}/ out of it to start over in place).")
    return None

  def _quarantine(self, step: int):
    src = self.dirs["latest"] / str(step)
    if jax.process_index() == 0 and src.exists():
      dst_dir = self.workdir / "corrupt_checkpoints"
      dst_dir.mkdir(exist_ok=True)
      src.rename(dst_dir / f"{step}-{int(time.time())}")
    _sync(f"seqtrain_quarantine_{step}")
    self.managers["latest"].reload()

  def wait(self):
    for m in self.managers.values():
      m.wait_until_finished()

  def close(self):
    for m in self.managers.values():
      m.wait_until_finished()
      m.close()


def load_error_reason(e: BaseException) -> str:
  """One short line for a checkpoint that failed to load (orbax / TensorStore
  errors append a many-line spec dump: cut at it)."""
  text = str(e).strip()
  if not text:
    return type(e).__name__
  text = text.splitlines()[0].split(" See full TensorStore details")[0]
  return text[:200]


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """A damaged checkpoint fails one array read, and orbax abandons the other reads'
  coroutines; Python then prints each one's exception ("Exception ignored in ...",
  a traceback and a TensorStore spec dump: hundreds of lines) when they are
  collected. The failure itself is raised and reported in one line; these copies of
  it are dropped."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, Exception) and "coroutine" in repr(unraisable.object):
      return
    previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    gc.collect()   # collect the abandoned coroutines while the hook is in place
    sys.unraisablehook = previous
