"""The parent process of one process of a multi-process job (seqtrain/parallel/supervise.py):
what it passes through, what it holds back, the one line when the runtime aborts the
child because a peer is gone, signal forwarding. Children are small Python scripts."""
import io
import os
import signal
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

from seqtrain.parallel import supervise as sv

ABSL_W = "W1207 07:23:05.490057   20200 preemption_sync_manager.cc:147] SIGTERM caught at step 12\n"
FATAL = ("F1207 07:23:05.490126   20200 client.h:80] Terminating process because the JAX "
         "distributed service detected fatal errors. This most likely indicates that another "
         "task died; absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. "
         "Either the leader task died\n")


def _child(tmp_path, body):
  script = tmp_path / "child.py"
  script.write_text("import os, signal, sys, time\n" + textwrap.dedent(body))
  return [sys.executable, str(script)]


def _run(tmp_path, body, workdir=None, **kw):
  out, err = io.StringIO(), io.StringIO()
  code = sv.supervise([], "train", workdir, "process 1", stdout=out, stderr=err,
                      child_command=_child(tmp_path, body), **kw)
  return code, out.getvalue(), err.getvalue()


def test_needs_supervisor_only_for_multi_process_train_and_eval():
  args = lambda **kw: SimpleNamespace(**{"command": "train", "num_processes": None,
                                         "distributed": None, **kw})
  assert sv.needs_supervisor(args(num_processes=2), {})
  assert not sv.needs_supervisor(args(num_processes=1), {})
  assert not sv.needs_supervisor(args(), {})
  assert sv.needs_supervisor(args(), {"SEQTRAIN_NUM_PROCESSES": "4"})
  assert sv.needs_supervisor(args(distributed="auto"), {})
  assert not sv.needs_supervisor(args(command="plot", num_processes=2), {})
  assert not sv.needs_supervisor(args(num_processes=2), {sv.SUPERVISED_ENV: "1"})
  assert not sv.needs_supervisor(args(), {"SEQTRAIN_NUM_PROCESSES": "two"})


def test_output_passes_through_and_runtime_lines_are_held(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  code, out, err = _run(tmp_path, workdir=str(workdir), body=f"""
      print("step 1/10 | loss 0.5")
      print("[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1")
      sys.stderr.write({ABSL_W!r})
      sys.stderr.write("Additional GRPC error information from remote target coordination_service:\\n")
      sys.stderr.write("W1207 07:23:06.000000   20200 trainer.py:88] a Python warning, shown\\n")
      sys.stderr.write("seqtrain train: warning shown\\n")
      sys.stderr.write({ABSL_W!r})
      sys.stderr.write("WARNING:seqtrain.train.trainer:a logging record, shown\\n")
      print("done")
  """)
  assert code == 0
  assert out == "step 1/10 | loss 0.5\ndone\n"
  assert err == ("W1207 07:23:06.000000   20200 trainer.py:88] a Python warning, shown\n"
                 "seqtrain train: warning shown\n"
                 "WARNING:seqtrain.train.trainer:a logging record, shown\n")
  kept = (workdir / "runtime-process-1.log").read_text()   # held lines are kept in the workdir
  assert kept.count("SIGTERM caught") == 2 and "[Gloo] Rank 0" in kept
  assert "Additional GRPC error information" in kept and "shown" not in kept


def test_runtime_abort_after_a_lost_peer_is_one_line(tmp_path):
  workdir = tmp_path / "w"
  for step in ("100", "200", "200.orbax-checkpoint-tmp-1"):
    (workdir / "checkpoints" / step).mkdir(parents=True)
  (workdir / "checkpoints" / "300").mkdir()   # newest
  code, out, err = _run(tmp_path, f"""
      print("step 350/1000")
      sys.stderr.write("Traceback (most recent call last):\\n  File 'x.py', line 1, in f\\n")
      sys.stderr.write("TimeoutError: Timed out while waiting for async_commit_complete barrier.\\n")
      sys.stderr.write({FATAL!r})
      sys.stderr.write("*** Check failure stack trace: ***\\n    @     0x7ff4935040ee  xla::X()\\n")
      sys.stderr.flush()
      os.abort()
  """, workdir=str(workdir))
  assert code == 2 and out == "step 350/1000\n"
  (line,) = err.splitlines()
  assert line.startswith("seqtrain train: error: process 1 lost contact with another process "
                         "after step 350: ")
  assert "(UNAVAILABLE: Failed to send RPC to coordination service)" in line
  assert "checkpoints up to step 300 are intact" in line
  assert "restart every process with the same command" in line


def test_other_crashes_show_what_was_held(tmp_path):
  code, _, err = _run(tmp_path, f"""
      sys.stderr.write({ABSL_W!r})
      sys.stderr.write("Traceback (most recent call last):\\n  File 'x.py', line 1\\nKeyError: 'a bug'\\n")
      sys.exit(1)
  """)
  assert code == 1
  assert "KeyError: 'a bug'" in err and "SIGTERM caught" in err   # nothing hidden


def test_debug_shows_everything(tmp_path, monkeypatch):
  monkeypatch.setenv("SEQTRAIN_DEBUG", "1")
  code, _, err = _run(tmp_path, f"""
      sys.stderr.write({ABSL_W!r})
      sys.stderr.write({FATAL!r})
      sys.stderr.flush()
      os.abort()
  """)
  assert code == 128 + signal.SIGABRT and "client.h:80" in err and "lost contact" not in err


def test_signals_are_forwarded_to_the_child(tmp_path):
  ready = tmp_path / "ready"

  def send_sigterm_when_ready():
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)   # to the supervisor: it forwards to the child

  threading.Thread(target=send_sigterm_when_ready, daemon=True).start()
  code, out, _ = _run(tmp_path, f"""
      def stop(signum, frame):
        print("saving a checkpoint and stopping", flush=True)
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      open({str(ready)!r}, "w").close()
      time.sleep(60)
      sys.exit(3)
  """)
  assert code == 0 and out == "saving a checkpoint and stopping\n"
