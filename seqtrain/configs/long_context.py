"""One 4-million-step sequence split over 8 devices: sequence-parallel training.

    SEQTRAIN_CPU_DEVICES=8 seqtrain train --config configs/long_context.py --workdir runs/lc
    python launch/local.py -n 2 --cpu-devices 4 -- \
        seqtrain train --config configs/long_context.py --workdir runs/lc2

The motif task (configs/synthetic_long.py) at T = 2^22 = 4,194,304 steps, batch
1, on a (data, seq) = (1, 8) mesh: every device holds 2^19 steps of each
series and the solvers (quasi-DEER, the default across devices) combine the
blocks with collectives. ``get_config("LENGTH")`` sets T (a multiple of 8).
This config shows the memory and the mechanics (README "Long sequences across
devices"); a few steps are not enough to learn the task at this length.
"""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("seqtrain_config_synthetic_long",
                                               Path(__file__).with_name("synthetic_long.py"))
_synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_synthetic)


def get_config(arg=None):
  length = int(arg) if arg else 2 ** 22
  c = _synthetic.get_config(f"motif,{length}")
  c.mesh.axes = ("data", "seq")
  c.mesh.shape = (1, 8)
  c.model.width = 16
  c.model.depth = 2
  c.model.solver.method = "quasi_deer"
  c.model.recompute = True   # blocks recomputed in the backward pass: a fraction of the memory
  c.data.train_size = 64
  c.data.validation_size = 1
  c.data.test_size = 2
  c.train.batch_size = 1
  c.train.eval_batch_size = 1
  c.train.steps = 4
  c.train.warmup_steps = 0
  c.train.learning_rate = 1e-3
  c.train.log_every = 1
  c.train.eval_every = 4
  c.train.checkpoint_every = 4
  return c
