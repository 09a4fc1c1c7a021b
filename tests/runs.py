"""Helpers for tests that run `seqtrain train` in subprocesses and read their checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--config", "configs/basic_motions.py", "--config.model.width=8",
         "--config.model.depth=1", "--config.model.mlp_ratio=1", "--config.train.batch_size=8",
         "--config.train.eval_batch_size=8", "--config.train.log_every=1",
         "--config.train.warmup_steps=0", "--config.train.learning_rate=0.01"]


def train_cmd(workdir, *args, wrapper=None):
  """`seqtrain train` as a subprocess command; ``wrapper``: Python code run first (fault
  injection), then the CLI."""
  if wrapper is None:
    return [sys.executable, "-m", "seqtrain.cli", "train", *SMALL, *args, "--workdir", str(workdir)]
  code = wrapper + "\nimport sys\nfrom seqtrain import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
  return [sys.executable, "-c", code, "train", *SMALL, *args, "--workdir", str(workdir)]


def clean_env(**extra):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  for k in [k for k in env if k.startswith("SEQTRAIN_")]:
    del env[k]
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run(cmd, log, timeout=240, **env):
  with open(log, "w") as f:
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(**env), stdout=f,
                          stderr=subprocess.STDOUT, timeout=timeout).returncode


def read_log(path):
  return Path(path).read_text() if Path(path).exists() else "<no log>"


def final_params(workdir, channels=6, classes=4, step=None):
  """(meta, params leaves) of the newest (or given) checkpoint of a workdir, on one device."""
  from seqtrain.train import config as config_lib
  from seqtrain.train import steps as steps_lib
  from seqtrain.train.checkpoint import Checkpoints, abstract_like
  workdir = Path(workdir)
  config = config_lib.config_from_json((workdir / "config.json").read_text())
  from seqtrain.parallel.mesh import make_mesh
  one_device = make_mesh(("data",), (1,), devices=jax.devices()[:1])
  setup = steps_lib.build_train_state(config, classes, channels, one_device)
  ckpts = Checkpoints(workdir, async_save=False)
  try:
    state, meta = ckpts.restore(abstract_like(setup.abstract, setup.sharding), "latest", step)
  finally:
    ckpts.close()
  return meta, jax.tree.leaves(jax.device_get(state.params))
