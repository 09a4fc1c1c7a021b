"""JapaneseVowels (bundled): 12 channels, variable length 7-29, 9 speakers.

Exercises variable-length batches: lengths and masks reach every layer, padded
steps freeze the recurrence. Variants: ``:bucketed`` pads each batch to the next of
a few boundaries (and groups similar lengths) instead of the longest series.
"""
from seqtrain.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data.source = "archive"
  c.data.name = "JapaneseVowels"
  c.data.validation_fraction = 0.15
  c.model.width = 32
  c.model.depth = 2
  c.model.pooling = "mean"
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.steps = 400
  c.train.learning_rate = 3e-3
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  if arg == "bucketed":
    c.data.bucket_boundaries = (12, 16, 20, 24)
    c.data.bucket_window = 4
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: expected bucketed")
  return c
