#!/usr/bin/env python3
"""Run N processes of one command on this machine, as one multi-process job.

    python launch/local.py -n 2 --cpu-devices 2 -- \
        seqtrain train --config configs/basic_motions.py --workdir runs/bm2

Every process gets the same command and, in its environment,
SEQTRAIN_COORDINATOR=localhost:<free port>, SEQTRAIN_NUM_PROCESSES=N,
SEQTRAIN_PROCESS_ID=i (and SEQTRAIN_CPU_DEVICES=K with --cpu-devices K), which is
how ``seqtrain train`` finds the others (seqtrain/parallel/distributed.py).

* Output of process i goes to <log-dir>/process_<i>.log (appended); process 0's is
  also printed here, each line prefixed with "[0] ".
* The launcher waits for all processes. If one exits non-zero, the others get
  SIGTERM, then SIGKILL after --grace seconds, and the launcher exits with that
  process's code (128+signal for one killed by a signal).
* SIGINT / SIGTERM sent to the launcher are forwarded to every process (so a
  preemption notice makes them checkpoint and exit), and the launcher waits for
  them; a second signal kills them. Exit code: 0 if they all exited 0.
* --timeout S: after S seconds everything is stopped (SIGTERM, then SIGKILL) and
  the launcher exits 124.
* Each process runs in its own process group (the launcher, not the terminal,
  delivers signals) and dies with the launcher (Linux parent-death signal); no
  process outlives the launcher.

Standard library only; importable as ``launch_local(...)``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["launch_local", "free_port", "main"]

TIMEOUT_EXIT = 124
DEFAULT_GRACE_S = 30.0
_POLL_S = 0.05


def free_port() -> int:
  """A TCP port that is free on every interface right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def _exit_code(returncode: int) -> int:
  """Popen's -N (killed by signal N) -> the shell's 128+N."""
  return 128 - returncode if returncode < 0 else returncode


def _prctl():
  """libc's prctl, looked up in the launcher (not between fork and exec); None off Linux."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    import ctypes
    return ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None


def _die_with_parent(parent_pid: int):
  """preexec_fn: ask Linux to SIGKILL the child when the launcher dies."""
  prctl = _prctl()
  PR_SET_PDEATHSIG = 1

  def preexec():
    if prctl is not None:
      prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
      if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)
  return preexec


def _signal_group(proc: subprocess.Popen, sig: int):
  if proc.poll() is not None:
    return
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    try:
      proc.send_signal(sig)
    except ProcessLookupError:
      pass


# Connection chatter of the CPU collectives library (one line per communicator,
# printed by its C++ code): kept in the process logs, not echoed to the console.
_CONSOLE_NOISE = ("[Gloo] Rank ",)


def _pump(stream, log_file, prefix: str):
  """Copies process 0's output to its log and to the console, line by line."""
  with stream:
    for raw in iter(stream.readline, b""):
      log_file.write(raw)
      log_file.flush()
      text = raw.decode("utf-8", errors="replace")
      if text.startswith(_CONSOLE_NOISE):
        continue
      out = sys.stdout
      try:
        out.write(prefix + text if text.endswith("\n") else prefix + text + "\n")
        out.flush()
      except (OSError, ValueError):  # console gone: keep logging
        pass


def launch_local(argv_cmd: list[str], num_processes: int, *, cpu_devices: int | None = None,
                 log_dir: Path | str = Path("launch-logs"), timeout: float | None = None,
                 env: dict | None = None, grace: float = DEFAULT_GRACE_S,
                 echo: bool = True) -> int:
  """Runs ``num_processes`` copies of ``argv_cmd``; returns the launcher's exit code.

  0: all exited 0. A process's exit code: the first process that failed (the others
  were stopped). 124: ``timeout`` seconds passed (all stopped). 128+N: processes
  killed by signal N after the launcher forwarded one to them.
  ``env``: extra environment variables for every process (over os.environ).
  ``grace``: seconds between SIGTERM and SIGKILL when stopping processes.
  ``echo``: print process 0's output to stdout, prefixed "[0] ".
  """
  argv_cmd = [str(a) for a in argv_cmd]
  if not argv_cmd:
    raise ValueError("no command to run")
  if int(num_processes) < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if cpu_devices is not None and int(cpu_devices) < 1:
    raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
  if timeout is not None and timeout <= 0:
    raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
  num_processes = int(num_processes)
  log_dir = Path(log_dir)
  log_dir.mkdir(parents=True, exist_ok=True)

  coordinator = f"localhost:{free_port()}"
  base_env = dict(os.environ)
  base_env.update({str(k): str(v) for k, v in (env or {}).items()})
  base_env.update(SEQTRAIN_COORDINATOR=coordinator, SEQTRAIN_NUM_PROCESSES=str(num_processes))
  base_env.pop("SEQTRAIN_DISTRIBUTED", None)  # the explicit variables decide here
  if cpu_devices is not None:
    base_env["SEQTRAIN_CPU_DEVICES"] = str(int(cpu_devices))
  base_env.setdefault("PYTHONUNBUFFERED", "1")  # so "[0]" lines come as they are printed

  procs: list[subprocess.Popen] = []
  logs = []
  pumps: list[threading.Thread] = []
  received: list[int] = []       # signals the launcher got, in order
  stop_at: list[float] = []      # when SIGKILL follows the SIGTERM we sent

  def stop_all(sig=signal.SIGTERM):
    for p in procs:
      _signal_group(p, sig)

  def on_signal(signum, frame):
    received.append(signum)
    if len(received) == 1:
      stop_all(signum)
    else:  # asked twice: do not wait any more
      stop_all(signal.SIGKILL)

  old_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGINT, signal.SIGTERM):
      old_handlers[s] = signal.signal(s, on_signal)

  preexec = _die_with_parent(os.getpid())  # before any thread of ours starts
  started = time.monotonic()
  result: int | None = None
  try:
    header = (f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} launch/local.py: {num_processes} "
              f"processes, coordinator {coordinator}: {shlex.join(argv_cmd)}\n").encode()
    for i in range(num_processes):
      if received:
        break
      log_file = open(log_dir / f"process_{i}.log", "ab")
      logs.append(log_file)
      log_file.write(header)
      log_file.flush()
      child_env = dict(base_env, SEQTRAIN_PROCESS_ID=str(i))
      to_console = echo and i == 0
      try:
        p = subprocess.Popen(argv_cmd, env=child_env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if to_console else log_file,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=preexec)
      except OSError as e:
        print(f"launch/local.py: cannot start {argv_cmd[0]!r}: {e}", file=sys.stderr)
        stop_all(signal.SIGKILL)
        result = 127 if isinstance(e, FileNotFoundError) else 126
        return result
      procs.append(p)
      if to_console:
        t = threading.Thread(target=_pump, args=(p.stdout, log_file, f"[{i}] "), daemon=True)
        t.start()
        pumps.append(t)
    if received:  # a signal came while starting: make sure every process got it
      stop_all(received[0])

    failed: int | None = None  # exit code of the first process that failed
    timed_out = False
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      now = time.monotonic()
      if failed is None and not timed_out:
        for i, c in enumerate(codes):
          if c not in (None, 0):
            failed = _exit_code(c)
            if not received:
              print(f"launch/local.py: process {i} exited with {failed}; stopping the others "
                    f"(log: {log_dir / f'process_{i}.log'})", file=sys.stderr)
              stop_all(signal.SIGTERM)
              stop_at.append(now + grace)
            break
      if (timeout is not None and not timed_out and failed is None
          and now - started >= timeout):
        timed_out = True
        print(f"launch/local.py: timeout after {timeout:g} s; stopping all processes",
              file=sys.stderr)
        stop_all(signal.SIGTERM)
        stop_at.append(now + grace)
      if stop_at and now >= stop_at[0]:
        stop_all(signal.SIGKILL)
      time.sleep(_POLL_S)

    if timed_out:
      result = TIMEOUT_EXIT
    elif failed is not None:
      result = failed
    else:
      result = next((_exit_code(c) for c in codes if c != 0), 0)
    return result
  finally:
    for p in procs:  # nothing outlives the launcher, whatever happened above
      if p.poll() is None:
        _signal_group(p, signal.SIGKILL)
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        pass
    for t in pumps:
      t.join(timeout=5)
    for f in logs:
      f.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
      prog="launch/local.py",
      usage="%(prog)s -n N [--cpu-devices K] [--log-dir DIR] [--timeout S] [--grace S] "
            "-- COMMAND [ARG ...]",
      description="Run N processes of COMMAND on this machine as one multi-process seqtrain "
                  "job (SEQTRAIN_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID set per process).",
      epilog="example: %(prog)s -n 2 --cpu-devices 2 -- seqtrain train "
             "--config configs/basic_motions.py --workdir runs/bm2")
  parser.add_argument("-n", "--num-processes", type=int, required=True, metavar="N",
                      help="number of processes (>= 1)")
  parser.add_argument("--cpu-devices", type=int, default=None, metavar="K",
                      help="set SEQTRAIN_CPU_DEVICES=K: each process splits the CPU into K devices")
  parser.add_argument("--log-dir", type=Path, default=Path("launch-logs"), metavar="DIR",
                      help="where process_<i>.log go (default: ./launch-logs)")
  parser.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="stop everything after S seconds and exit 124")
  parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S",
                      help=f"seconds from SIGTERM to SIGKILL when stopping (default {DEFAULT_GRACE_S:g})")
  parser.add_argument("--quiet", action="store_true", help="do not print process 0's output")
  if "--" not in argv:
    parser.print_usage(sys.stderr)
    parser.exit(2, f"{parser.prog}: error: put the command after '--', e.g. "
                   f"{parser.prog} -n 2 -- seqtrain train --config CONFIG --workdir DIR\n")
  split = argv.index("--")
  args = parser.parse_args(argv[:split])
  command = argv[split + 1:]
  if not command:
    parser.error("no command after '--'")
  if args.num_processes < 1:
    parser.error(f"-n must be >= 1, got {args.num_processes}")
  if args.cpu_devices is not None and args.cpu_devices < 1:
    parser.error(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
  if args.timeout is not None and args.timeout <= 0:
    parser.error(f"--timeout must be > 0 seconds, got {args.timeout:g}")
  if args.grace < 0:
    parser.error(f"--grace must be >= 0 seconds, got {args.grace:g}")
  try:
    return launch_local(command, args.num_processes, cpu_devices=args.cpu_devices,
                        log_dir=args.log_dir, timeout=args.timeout, grace=args.grace,
                        echo=not args.quiet)
  except OSError as e:  # e.g. the log directory cannot be created
    parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
  sys.exit(main())
