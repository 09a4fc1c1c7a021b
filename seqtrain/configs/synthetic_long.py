"""Long synthetic tasks, streamed from a seed, with the long-memory recipe.

Tasks: ``motif`` (which of 4 short motifs is hidden anywhere in noise),
``spectral`` (which of 4 frequencies is hidden in noise), ``order`` (which of
two motifs comes first). ``get_config("TASK,LENGTH")`` sets the task and the
sequence length (default motif, 4096): ``configs/synthetic_long.py:spectral``,
``configs/synthetic_long.py:order,1024``. Nothing else changes with the task.

The recipe (README "Long sequences"; ablation in benchmarks/results/): LRU
layers (complex diagonal recurrences, memories log-uniform in [4, 4096] steps,
phases in [0, pi]), mean and max pooling side by side, AdamW 5e-3 with warmup,
global-norm clipping and weight decay on matrices only, and a fresh stream of
training series (2^15, more than the run reads). Train short, infer long:
``seqtrain eval --workdir W --length 65536`` regenerates the task at another length.
"""
from seqtrain.train.config import base_config

TASKS = ("motif", "spectral", "order")


def get_config(arg=None):
  c = base_config()
  task, length = "motif", 4096
  for part in (arg or "").split(","):
    if part.isdigit():
      length = int(part)
    elif part in TASKS:
      task = part
    elif part:
      raise ValueError(f"unknown variant {part!r}: expected a length or one of {', '.join(TASKS)}")
  c.data.source = "synthetic"
  c.data.name = task
  c.data.length = length
  c.data.num_classes = 2 if task == "order" else 4
  c.data.train_size = 32768
  c.data.validation_size = 256
  c.data.test_size = 256
  c.data.normalize = False      # the generators emit unit-variance noise already
  # Training series of every length from T/8 to T (validation and test at T): the
  # short ones carry the same rule with less to remember, which is where learning
  # starts; batches of similar lengths are padded to T/4, T/2 or T.
  # (at least 64 steps: the order task holds two 32-step motifs)
  c.data.train_min_length = min(length, max(64, length // 8))
  c.data.bucket_boundaries = tuple(sorted({max(1, length // 4), max(1, length // 2), length}))
  c.data.bucket_window = 8
  c.model.width = 32
  c.model.depth = 2
  c.model.cell = "lru"
  c.model.stem_kernel = 32      # a causal convolution over 32 steps reads local shapes
  c.model.pooling = "mean_max"
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.steps = 3200
  c.train.learning_rate = 5e-3
  c.train.warmup_steps = 100
  c.train.log_every = 100
  c.train.eval_every = 800
  c.train.checkpoint_every = 800
  return c
