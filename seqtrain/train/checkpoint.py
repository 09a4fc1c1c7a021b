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

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "abstract_like"]

log = logging.getLogger(__name__)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStruct targets with the given shardings (a matching tree)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpoints:
  def __init__(self, workdir: str | Path, keep: int = 2, async_save: bool = True):
    workdir = Path(workdir).absolute()
    self.dirs = {"latest": workdir / "checkpoints", "best": workdir / "best"}

    def manager(path, max_to_keep):
      options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save)
      return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))

    self.managers = {"latest": manager(self.dirs["latest"], keep),
                     "best": manager(self.dirs["best"], 1)}

  def steps(self, which: str = "latest") -> list[int]:
    return list(self.managers[which].all_steps())

  def latest_step(self, which: str = "latest") -> int | None:
    return self.managers[which].latest_step()

  def save(self, step: int, state: Any, meta: dict, which: str = "latest", force: bool = False):
    mngr = self.managers[which]
    if step in mngr.all_steps():
      return False
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=force)

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
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def read_meta(self, which: str = "latest", step: int | None = None) -> dict | None:
    mngr = self.managers[which]
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self):
    for m in self.managers.values():
      m.wait_until_finished()

  def close(self):
    for m in self.managers.values():
      m.wait_until_finished()
      m.close()
