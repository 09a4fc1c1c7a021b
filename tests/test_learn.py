"""Learning is part of correctness: the shipped long-memory recipe learns a
long synthetic task, and a model trained short evaluates long.

The learnability test trains configs/synthetic_long.py (the recipe as shipped:
only the task length, the data sizes and the step budget are reduced) on the
motif task at T = 512, and must reach >= 0.9 test accuracy (its oracle is
1.0): a change to a cell, its initialisation, the pooling or the optimiser
that breaks long-memory learning fails here.
"""
import json

import pytest

from seqtrain import cli
from seqtrain.train import config as config_lib
from seqtrain.train.evaluate import evaluate_workdir
from seqtrain.train.trainer import train_and_evaluate

LEARN = ["train.steps=150", "train.warmup_steps=15", "train.eval_every=150",
         "train.checkpoint_every=150", "train.log_every=50", "data.train_size=2400",
         "data.validation_size=64", "data.test_size=128"]


@pytest.fixture(scope="module")
def motif_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("motif")
  config = config_lib.load_config("configs/synthetic_long.py:motif,512", LEARN)
  return workdir, train_and_evaluate(config, workdir)


def test_recipe_learns_a_long_memory_task(motif_run):
  _, result = motif_run
  assert result["test"]["accuracy"] >= 0.9, result["test"]


def test_eval_at_another_length(motif_run, capsys):
  """Train short, infer long: the same task regenerated at 4x the length, run
  by the parallel solver (one Newton iteration per layer: the LRU is linear),
  with the oracle's accuracy on the same series and the program's memory."""
  workdir, _ = motif_run
  m = evaluate_workdir(workdir, length=2048, size=32, method="quasi_deer", batch_size=16)
  out = capsys.readouterr().out
  assert m["count"] == 32 and m["length"] == 2048
  assert m["oracle_accuracy"] == 1.0
  assert m["accuracy"] >= 0.85
  assert "solver: quasi_deer (cpu, T=2048)" in out
  assert "block_0/rnn 1, block_1/rnn 1" in out
  assert m["memory"]["batch_shape"] == [16, 2048, 1] and m["memory"]["temp_bytes"] > 0
  report = json.loads((workdir / "eval" / "test-length2048-latest.json").read_text())
  assert report["accuracy"] == m["accuracy"] and report["solver"]["block_0/rnn/converged"] == 1


def test_eval_length_errors(motif_run, tmp_path, capsys):
  workdir, _ = motif_run
  archive = tmp_path / "archive_run"
  archive.mkdir()
  (archive / "config.json").write_text(config_lib.config_to_json(config_lib.base_config()))
  assert cli.main(["eval", "--workdir", str(archive), "--length", "1000"]) == 2
  err = capsys.readouterr().err
  assert "--length 1000" in err and "archive data (BasicMotions)" in err
  assert cli.main(["eval", "--workdir", str(workdir), "--length", "0"]) == 2
  assert "--length 0: must be >= 1" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--size", "5"]) == 2
  assert "--size applies with --length" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--length", "600", "--data",
                   "BasicMotions"]) == 2
  assert "cannot be combined" in capsys.readouterr().err
