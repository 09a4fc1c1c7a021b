"""Your own data: .ts (UCR/UEA format) or .npz (X (N, T, C), y (N,)) files.

    seqtrain train --config configs/files.py --workdir runs/mine \
        --config.data.train_file=my_TRAIN.ts --config.data.test_file=my_TEST.ts

Without a validation file, 20% of every class of the training file is held out
(stratified, seeded). Without a test file, the final report is on validation.
"""
from seqtrain.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data.source = "files"
  c.data.name = ""
  c.data.train_file = ""       # required: set with --config.data.train_file=PATH
  c.data.test_file = ""
  c.data.validation_file = ""
  c.data.validation_fraction = 0.2
  c.train.batch_size = 16
  c.train.steps = 500
  if arg:
    raise ValueError(f"configs/files.py takes no variant, got {arg!r}")
  return c
