"""EigenWorms (UEA; 6 channels, length 17,984, 5 classes): the DEER/ELK papers' setup.

Needs the download first: ``seqtrain data download EigenWorms``.
Model: encoder 6->32, 5 x [LayerNorm -> GRU(32) -> residual -> LayerNorm -> MLP ->
residual], per-step logits averaged over time; Adam lr 3e-5, global-norm clip 1.0,
batch 4 (docs: method.md, "Training recipe"). The solver is the default "auto"
(quasi-DEER on GPU/TPU at this length, lax.scan on CPU where it is faster);
variants name one (``:quasi_deer``, ``:deer``, ``:sequential``, ...).
"""
from seqtrain.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.data.source = "archive"
  c.data.name = "EigenWorms"
  c.data.validation_fraction = 0.15
  c.model.width = 32
  c.model.depth = 5
  c.model.cell = "gru"
  c.model.mlp_ratio = 1
  c.model.pooling = "mean_logits"
  c.train.batch_size = 4
  c.train.eval_batch_size = 4
  c.train.steps = 20000
  c.train.optimizer = "adam"
  c.train.learning_rate = 3e-5
  c.train.weight_decay = 0.0
  c.train.schedule = "constant"
  c.train.warmup_steps = 0
  c.train.grad_clip = 1.0
  c.train.log_every = 20
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  if arg in ("deer", "quasi_deer", "elk", "quasi_elk", "sequential"):
    c.model.solver.method = arg
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: expected a solver method")
  return c
