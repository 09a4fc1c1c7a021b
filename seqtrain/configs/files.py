"""Your own data: .ts (UCR/UEA format) or .npz (X (N, T, C), y (N,)) files.

    seqtrain train --config configs/files.py --workdir runs/mine \
        --config.data.train_file=my_TRAIN.ts --config.data.test_file=my_TEST.ts

The default recipe for real data (README "Results on real data"; the same for
every dataset, nothing set per dataset; `seqtrain bench datasets` runs it):

* inputs: global per-channel standardisation, then per series: each channel
  z-normalised over its own steps next to that series' level and log scale
  (``model.series_norm``), so series whose amplitudes differ by orders of
  magnitude all show their shapes and still differ by their levels;
* a causal convolution of 16 steps (``model.stem_kernel``) before two GRU-32
  blocks, mean and max pooling side by side;
* an ensemble of 4 independently initialised members trained in one vmapped
  step (``model.members``), predicting by their mean probability: on datasets of
  a few dozen series a single model's test accuracy swings by several points
  with the seed, the ensemble's much less;
* 500 steps of AdamW (warmup, cosine), the last weights as the run's model
  (``train.select=last``): no best-of-N pick on a validation split of a few
  examples.

Without a validation file, 20% of every class of the training file is held out
(stratified, seeded) for monitoring. Without a test file, the final report is on
validation.
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
  c.model.series_norm = True
  c.model.stem_kernel = 16
  c.model.pooling = "mean_max"
  c.model.members = 4
  c.train.batch_size = 16
  c.train.steps = 500
  c.train.select = "last"
  if arg:
    raise ValueError(f"configs/files.py takes no variant, got {arg!r}")
  return c
