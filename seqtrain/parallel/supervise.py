"""A thin parent process for one process of a multi-process job.

When a peer process dies, JAX's distributed runtime may stop the survivors from
C++: its coordination client polls the service, sees the error and aborts the
process (``LOG(FATAL)``: exit 134, a stack trace, no Python exception to catch,
and ``missed_heartbeat_callback`` is not usable from Python on jaxlib 0.10). Which
comes first, that abort or the collective's own error (which the trainer turns
into one line), is a race. So ``seqtrain train`` / ``eval`` in a multi-process job
run the real work in a child process (this module imports no JAX) and the parent:

* passes the child's output through, holding back the runtime's own log lines
  (absl ``W1207 12:00:00.000 123 file.cc:45] ...``, the ``[Gloo] Rank ...``
  connection lines, C++ stack traces): ``SEQTRAIN_DEBUG=1`` shows them all, and
  they are appended to ``<workdir>/runtime-process-<i>.log`` when the workdir exists;
* forwards SIGTERM / SIGINT / SIGHUP / SIGUSR1 to the child (its own process
  group: a launcher's group signal reaches the parent, which passes it on once);
* exits with the child's code; when the child was aborted by the runtime because
  a peer is gone, says so in one line naming the process and the intact
  checkpoint, and exits 2; after any other crash it prints the held-back lines.

The child dies with the parent (Linux parent-death signal), as the launchers'
processes do.
"""
from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence, TextIO

__all__ = ["needs_supervisor", "supervise", "runtime_line", "peer_lost_line"]

SUPERVISED_ENV = "SEQTRAIN_SUPERVISED"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
# absl / glog prefix of the C++ runtime: severity, MMDD, time, thread id, file.cc:line]
# (Python's absl logging has the same prefix with a .py file: those lines are shown)
_ABSL = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\.(cc|h|cpp|hpp):\d+\] ")
_STACK = re.compile(r"^\s*(\*\*\* |@\s+0x|\(stack trace|E\d{4}.*\] \*\*\*)")
_GLOO = re.compile(r"^\[Gloo\] Rank \d+ is connected to")
# After a held runtime line, the lines of its message (multi-line gRPC / barrier
# details) are held too, up to the next line that Python or seqtrain itself writes.
_PYTHON_LINE = re.compile(r"^(seqtrain|(DEBUG|INFO|WARNING|ERROR|CRITICAL):|"
                          r"Traceback \(most recent call last\)|Exception in thread|"
                          r"During handling of the above|\S+\.py:\d+: \w*Warning|"
                          r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\.py:\d+\] )")
# What the coordination client prints when it aborts because the job lost a task.
_PEER_LOST = ("Terminating process because the JAX distributed service detected fatal errors",
              "Polled an error from coordination service",
              "another task died")
_STATUS = re.compile(r"absl::Status: ([A-Z_]+): ([^.]*)")
# A Python traceback (of a background thread) that a lost peer causes: orbax's async
# checkpoint writer timing out at its barrier. Held like the runtime's lines.
_PEER_TRACEBACK = re.compile(r"^TimeoutError: Timed out while waiting for \S+ barrier")
_STEP = re.compile(r"^step\s+(\d+)/")   # the trainer's progress lines


def needs_supervisor(args, environ=os.environ) -> bool:
  """Whether this command runs as one process of a multi-process job (and is not
  already the supervised child)."""
  if environ.get(SUPERVISED_ENV) or getattr(args, "command", None) not in ("train", "eval"):
    return False
  n = getattr(args, "num_processes", None)
  if n is None:
    try:
      n = int(environ.get("SEQTRAIN_NUM_PROCESSES") or 0)
    except ValueError:
      n = 0   # the child reports the bad value in one line
  auto = (getattr(args, "distributed", None) or environ.get("SEQTRAIN_DISTRIBUTED")) == "auto"
  return n > 1 or auto


def runtime_line(line: str) -> bool:
  """A line of the C++ runtime's own logging (held back unless SEQTRAIN_DEBUG)."""
  return bool(_ABSL.match(line) or _STACK.match(line) or _GLOO.match(line))


def latest_checkpoint(workdir: str | None) -> int | None:
  """The newest finished checkpoint step under ``workdir/checkpoints`` (no JAX)."""
  if not workdir:
    return None
  steps = [int(p.name) for p in (Path(workdir) / "checkpoints").glob("*")
           if p.name.isdigit() and p.is_dir()]
  return max(steps) if steps else None


def resume_advice(checkpoint_step: int | None) -> str:
  """The end of every lost-peer line (the trainer's and this parent's): what is kept,
  what to do."""
  kept = (f"checkpoints up to step {checkpoint_step} are intact" if checkpoint_step is not None
          else "no checkpoint was written yet")
  return f"{kept}: restart every process with the same command to resume"


def peer_lost_line(command: str, process: str, held: Sequence[str], workdir: str | None,
                   last_step: int | None = None) -> str:
  status = next((m for line in held for m in [_STATUS.search(line)] if m), None)
  reason = f"{status.group(1)}: {status.group(2).strip()}" if status else "a peer process died"
  near = f" after step {last_step}" if last_step is not None else ""
  return (f"seqtrain {command}: error: {process} lost contact with another process{near}: the "
          f"JAX distributed runtime stopped it ({reason}); "
          f"{resume_advice(latest_checkpoint(workdir))} (SEQTRAIN_DEBUG=1 shows the runtime's log)")


def _keep(held: Sequence[str], workdir: str | None, process: str):
  """Appends the held-back runtime lines to ``<workdir>/runtime-<process>.log`` when the
  workdir exists (a run that failed before making it leaves nothing behind)."""
  if not held or not workdir or not Path(workdir).is_dir():
    return
  name = "runtime-" + process.replace(" ", "-") + ".log"
  try:
    with open(Path(workdir) / name, "a") as f:
      f.writelines(held)
  except OSError:   # a full or read-only disk: the lines are not worth an error
    pass


def _parent_death_signal():
  """preexec_fn: the child gets SIGKILL when the parent dies (Linux; no-op elsewhere)."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
  except (OSError, AttributeError):   # pragma: no cover  (not Linux)
    pass
  os.setpgid(0, 0)


def _pump(src, dst: TextIO, show_all: bool, held: collections.deque, seen_fatal: list,
          last_step: list):
  holding = False   # the previous line was held: its continuation lines are held too
  block: list[str] = []   # a Python traceback being read: shown or held once it ends

  def emit(lines):
    dst.write("".join(lines))
    dst.flush()

  for line in iter(src.readline, ""):
    if any(p in line for p in _PEER_LOST):
      seen_fatal.append(line)
    step = _STEP.match(line)
    if step:
      last_step[:] = [int(step.group(1))]
    if not show_all and (block or line.startswith("Traceback (most recent call last)")):
      block.append(line)
      if line.startswith(("Traceback", " ")) or len(block) == 1:
        continue
      (held.extend if _PEER_TRACEBACK.match(line) else emit)(block)
      block = []
      continue
    if show_all:
      emit([line])
      continue
    if _ABSL.match(line):
      holding = True      # an absl message: its next lines may continue it
    elif holding and _PYTHON_LINE.match(line):
      holding = False
    if holding or runtime_line(line):
      held.append(line)
      continue
    emit([line])
  if block:
    emit(block)
  src.close()


def supervise(argv: Sequence[str], command: str, workdir: str | None, process: str,
              stdout: TextIO | None = None, stderr: TextIO | None = None,
              child_command: Sequence[str] | None = None) -> int:
  """Runs ``python -m seqtrain.cli ARGV`` (or ``child_command``) as the child; returns
  the exit code to use."""
  stdout = stdout or sys.stdout
  stderr = stderr or sys.stderr
  show_all = bool(os.environ.get("SEQTRAIN_DEBUG"))
  env = dict(os.environ, **{SUPERVISED_ENV: "1", "PYTHONUNBUFFERED": "1"})
  cmd = list(child_command or [sys.executable, "-m", "seqtrain.cli", *argv])
  child = subprocess.Popen(cmd, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           bufsize=1, errors="replace", preexec_fn=_parent_death_signal)
  held: collections.deque = collections.deque(maxlen=200)
  seen_fatal: list = []
  last_step: list = []
  pumps = [threading.Thread(target=_pump, args=(s, d, show_all, held, seen_fatal, last_step),
                            daemon=True)
           for s, d in ((child.stdout, stdout), (child.stderr, stderr))]
  for t in pumps:
    t.start()

  def forward(signum, frame):
    try:
      child.send_signal(signum)
    except ProcessLookupError:   # pragma: no cover  (already gone)
      pass

  previous = {s: signal.signal(s, forward) for s in _FORWARDED}
  try:
    code = child.wait()   # retried by Python across the forwarded signals (PEP 475)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    for t in pumps:
      t.join(timeout=5)
  _keep(held, workdir, process)
  if code == 0 or code == 2 or show_all:
    return 128 - code if code < 0 else code
  if seen_fatal and code in (-signal.SIGABRT, 128 + signal.SIGABRT):
    print(peer_lost_line(command, process, list(held) + seen_fatal, workdir,
                         last_step[0] if last_step else None), file=stderr, flush=True)
    return 2
  if held:   # a crash: show what the runtime said
    stderr.write("".join(held))
    stderr.flush()
  return 128 - code if code < 0 else code
