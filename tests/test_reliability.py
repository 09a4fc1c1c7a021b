"""Faults: killed processes, damaged checkpoints, non-finite updates, strict solver mode."""
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from runs import ROOT, clean_env, final_params, read_log, run, train_cmd
from seqtrain import cli
from seqtrain.train.writers import read_metrics

STEPS = 15
ARGS = [f"--config.train.steps={STEPS}", "--config.train.eval_every=5",
        "--config.train.checkpoint_every=5", "--config.train.keep_checkpoints=5"]

# Fault injection for the child process: SIGKILL itself right after the checkpoint
# save of step KILL_AT_SAVE has started (orbax writes it in a background thread).
KILL_IN_SAVE = """
import os, signal, threading
from seqtrain.train import checkpoint as _ck
_save = _ck.Checkpoints.save
def _dying_save(self, step, *a, **k):
  out = _save(self, step, *a, **k)
  if step == int(os.environ["KILL_AT_SAVE"]) and (not a or a[-1] == "latest"):
    os.kill(os.getpid(), signal.SIGKILL)
  return out
_ck.Checkpoints.save = _dying_save
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("rel")
  assert run(train_cmd(root / "ref", *ARGS), root / "ref.log") == 0, read_log(root / "ref.log")
  return root, final_params(root / "ref")[1]


def _same(params, ref):
  for a, b in zip(params, ref):
    np.testing.assert_array_equal(a, b)


def test_sigkill_between_steps_and_inside_a_save(reference, tmp_path):
  root, ref = reference
  workdir = tmp_path / "w"
  # 1. SIGKILL between steps, after the checkpoint of step 5
  proc = subprocess.Popen(train_cmd(workdir, *ARGS), cwd=ROOT, env=clean_env(),
                          stdout=open(tmp_path / "1.log", "w"), stderr=subprocess.STDOUT)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not (
      (workdir / "checkpoints" / "5").is_dir() and '"step": 7,' in metrics.read_text()):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (workdir / "checkpoints" / "5").is_dir(), read_log(tmp_path / "1.log")
  # 2. restart; it dies inside the save of step 10
  code = run(train_cmd(workdir, *ARGS, wrapper=KILL_IN_SAVE), tmp_path / "2.log",
             KILL_AT_SAVE=10)
  assert code == -signal.SIGKILL, read_log(tmp_path / "2.log")
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert "10" not in names and any(not n.isdigit() for n in names), names  # an unfinished save
  assert "(step 5)" in read_log(tmp_path / "2.log")
  # 3. restart again: resumes from the last complete checkpoint and finishes
  assert run(train_cmd(workdir, *ARGS), tmp_path / "3.log") == 0, read_log(tmp_path / "3.log")
  log = read_log(tmp_path / "3.log")
  assert "(step 5)" in log or "(step 10)" in log, log
  leftovers = [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()]
  assert leftovers == [], leftovers
  _same(final_params(workdir)[1], ref)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_resumes_from_previous(reference, tmp_path, damage):
  root, ref = reference
  workdir = tmp_path / "w"
  shutil.copytree(root / "ref", workdir)
  newest = workdir / "checkpoints" / str(STEPS)
  files = sorted((p for p in (newest / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  victim = files[-1]
  if damage == "truncate":
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
  else:
    victim.unlink()
  assert run(train_cmd(workdir, *ARGS), tmp_path / "log") == 0, read_log(tmp_path / "log")
  log = read_log(tmp_path / "log")
  assert f"checkpoint of step {STEPS} at {newest} failed to load" in log, log
  assert f"(step {STEPS - 5})" in log
  # one line for the failure: no abandoned-read tracebacks or TensorStore spec dumps
  assert "Exception ignored" not in log and "Traceback" not in log, log
  assert "TensorStore details" not in log and "'driver'" not in log, log
  assert list((workdir / "corrupt_checkpoints").iterdir())  # kept aside, not deleted
  _same(final_params(workdir)[1], ref)


def test_no_loadable_checkpoint_refuses_to_start_over(reference, tmp_path, capsys):
  root, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(root / "ref", workdir)
  for step_dir in (workdir / "checkpoints").iterdir():
    for f in (step_dir / "state").rglob("*"):
      if f.is_file():
        f.write_bytes(b"")
  code = cli.main(["train", *train_cmd(workdir, *ARGS)[4:]])
  assert code == 2
  err = capsys.readouterr().err
  assert "refusing to start from scratch" in err
  assert (workdir / "corrupt_checkpoints").is_dir()
  # and it stays refused: the same command again does not start over from step 0
  assert cli.main(["train", *train_cmd(workdir, *ARGS)[4:]]) == 2
  err = capsys.readouterr().err
  assert "holds the ones that failed to load" in err and len(err.strip().splitlines()) == 1
  assert not list((workdir / "checkpoints").iterdir())


def test_damaged_checkpoint_at_eval_is_one_line(reference, tmp_path, capsys):
  root, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(root / "ref", workdir)
  for f in (workdir / "checkpoints").rglob("*"):
    if f.is_file() and "state" in f.parts:
      f.write_bytes(b"")
  assert cli.main(["eval", "--workdir", str(workdir), "--checkpoint", "latest"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "failed to load" in err, err
  assert str(workdir / "checkpoints") in err and "Traceback" not in err


TINY = ["model.width=8", "model.depth=1", "model.mlp_ratio=1", "train.batch_size=8",
        "train.eval_batch_size=40", "train.log_every=1", "train.warmup_steps=0"]


def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path, capsys):
  from seqtrain.train import config as config_lib
  from seqtrain.train.trainer import TrainingError, train_and_evaluate
  # an absurd learning rate: the first update is finite but huge, every later loss is not
  config = config_lib.load_config("configs/basic_motions.py", TINY + [
      "train.steps=30", "train.learning_rate=1e30", "train.max_bad_steps=3",
      "train.checkpoint_every=1", "train.eval_every=100", "train.grad_clip=0.0"])
  with pytest.raises(TrainingError, match=r"3 non-finite losses or gradients in a row") as err:
    train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert "update skipped (1 in a row)" in out and "update skipped (2 in a row)" in out
  assert "is intact" in str(err.value)
  skipped = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["skipped"]]
  assert skipped  # counted in the metrics too
  meta, params = final_params(tmp_path)
  assert all(np.isfinite(p).all() for p in params)  # skipped updates never reach the params


def test_strict_solver_mode_raises_clearly(tmp_path):
  from seqtrain.train import config as config_lib
  from seqtrain.train.trainer import TrainingError, train_and_evaluate
  config = config_lib.load_config("configs/basic_motions.py", TINY + [
      "train.steps=5", "model.solver.method=quasi_deer", "model.solver.on_failure=raise",
      "model.solver.max_iter=1"])
  with pytest.raises(TrainingError, match=r"strict solver mode .* quasi_deer did not converge"):
    train_and_evaluate(config, tmp_path)


def test_no_pickle_anywhere():
  sources = list((ROOT / "seqtrain").rglob("*.py"))
  assert sources
  for path in sources:
    text = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle)\b", text, re.M), path
    assert "allow_pickle=True" not in text, path


def test_full_disk_at_checkpoint_time_fails_clearly_and_keeps_earlier(tmp_path, capsys,
                                                                      monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step >= 10:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  argv = ["train", "--config", "configs/basic_motions.py"] + [f"--config.{o}" for o in TINY] + [
      "--config.train.steps=15", "--config.train.checkpoint_every=5",
      "--config.train.eval_every=100", "--workdir", str(tmp_path)]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "could not write the checkpoint of step 10" in err and "No space left" in err, err
  assert "earlier checkpoints are intact" in err
  meta, params = final_params(tmp_path)
  assert meta["step"] == 5 and all(np.isfinite(p).all() for p in params)


def test_abandoned_checkpoint_reads_print_nothing_and_the_reason_is_one_line(monkeypatch):
  """orbax abandons the other reads' coroutines when one array of a damaged checkpoint
  fails; their exceptions must not reach the console, and the reported reason is cut
  before TensorStore's spec dump."""
  import gc
  import types
  from seqtrain.train.checkpoint import _quiet_abandoned_reads, load_error_reason

  @types.coroutine
  def pending():
    yield

  async def read():
    try:
      await pending()
    finally:   # closing the abandoned coroutine raises: Python reports it as unraisable
      raise Exception("Encountered error while reading array index: ()")

  def abandon():
    coro = read()
    coro.send(None)   # suspended, then dropped

  seen = []   # what would reach the console ("Exception ignored in <coroutine ...>")
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
  abandon()
  gc.collect()
  assert len(seen) == 1 and "reading array index" in seen[0]
  with _quiet_abandoned_reads():
    abandon()
  gc.collect()
  assert len(seen) == 1, seen
  e = Exception("Encountered error while reading array index: (slice(0, 32, 1),). See full "
                "TensorStore details: <bound method spec of TensorStore({\n 'base': {\n")
  assert load_error_reason(e) == ("Encountered error while reading array index: "
                                  "(slice(0, 32, 1),).")
  assert load_error_reason(ValueError("")) == "ValueError"
