"""A long synthetic task: find which of 4 short motifs is hidden anywhere in a
noisy sequence (memory across the whole sequence), streamed from a seed.

``get_config("LENGTH")`` sets the sequence length (default 4096); e.g.
``configs/synthetic_long.py:100000``. ``:spectral`` / ``:spectral,LENGTH`` switch to
the spectral task (which of 4 frequencies is hidden in noise).
"""
from seqtrain.train.config import base_config


def get_config(arg=None):
  c = base_config()
  task, length = "motif", 4096
  for part in (arg or "").split(","):
    if part.isdigit():
      length = int(part)
    elif part in ("motif", "spectral", "order"):
      task = part
    elif part:
      raise ValueError(f"unknown variant {part!r}: expected a length or motif/spectral/order")
  c.data.source = "synthetic"
  c.data.name = task
  c.data.length = length
  c.data.num_classes = 2 if task == "order" else 4
  c.data.train_size = 2048
  c.data.validation_size = 256
  c.data.test_size = 256
  c.data.normalize = False      # the generators emit unit-variance noise already
  c.model.width = 32
  c.model.depth = 2
  c.model.cell = "diag_gru"     # diagonal recurrence: quasi-DEER is exact Newton
  c.model.pooling = "mean"
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.steps = 2000
  c.train.learning_rate = 2e-3
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  return c
