"""BasicMotions (bundled): 6-channel smart-watch motion, length 100, 4 classes.

The README quick start. The solver is the default "auto" (lax.scan on CPU and
for short sequences, quasi-DEER from the platform's crossover length on).
Variants: ``:tiny`` (a 20-step smoke run), ``:deer``, ``:quasi_deer``,
``:sequential``, ... (the same model with a named solver).
"""
from seqtrain.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data.source = "archive"
  c.data.name = "BasicMotions"
  c.data.validation_fraction = 0.2
  c.model.width = 32
  c.model.depth = 2
  c.model.cell = "gru"
  c.train.batch_size = 16
  c.train.eval_batch_size = 40
  c.train.steps = 300
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 20
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  if arg == "tiny":
    c.train.steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  elif arg in ("deer", "quasi_deer", "elk", "quasi_elk", "sequential"):
    c.model.solver.method = arg
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: expected tiny or a solver method")
  return c
