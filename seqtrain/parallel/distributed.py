"""Multi-process initialisation (JAX's multi-controller runtime).

One process per host (or per local group of devices) runs the same
``seqtrain train`` command. How the processes find each other, first match wins:

1. explicit arguments: ``--coordinator HOST:PORT --num-processes N --process-id I``;
2. environment: ``SEQTRAIN_COORDINATOR``, ``SEQTRAIN_NUM_PROCESSES``,
   ``SEQTRAIN_PROCESS_ID`` (what ``launch/local.py`` and the Kubernetes manifest set);
3. ``--distributed auto`` (or ``SEQTRAIN_DISTRIBUTED=auto``): JAX's cluster
   auto-detection (SLURM, Cloud TPU, Kubernetes, MPI) through
   ``jax.distributed.initialize()`` with no arguments;
4. nothing: a single process, nothing to initialise.

``--cpu-devices K`` (``SEQTRAIN_CPU_DEVICES``) splits a CPU host into K devices,
for trying multi-device code on one machine. ``--distributed-timeout SECONDS``
(``SEQTRAIN_DISTRIBUTED_TIMEOUT``, default 300) bounds the wait for the
coordinator: a process other than 0 says that it waits for HOST:PORT, and gives
up with one line naming it if nothing listens there in time.
"""
from __future__ import annotations

import dataclasses
import os

__all__ = ["DistributedArgs", "initialize", "from_env"]


@dataclasses.dataclass
class DistributedArgs:
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  mode: str | None = None          # None | "auto"
  cpu_devices: int | None = None
  timeout_s: int | None = None     # None: SEQTRAIN_DISTRIBUTED_TIMEOUT or 300


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def from_env(args: DistributedArgs | None = None) -> DistributedArgs:
  """Fills unset fields from the SEQTRAIN_* environment variables."""
  args = dataclasses.replace(args) if args else DistributedArgs()
  args.coordinator = args.coordinator or os.environ.get("SEQTRAIN_COORDINATOR") or None
  if args.num_processes is None:
    args.num_processes = _env_int("SEQTRAIN_NUM_PROCESSES")
  if args.process_id is None:
    args.process_id = _env_int("SEQTRAIN_PROCESS_ID")
  args.mode = args.mode or os.environ.get("SEQTRAIN_DISTRIBUTED") or None
  if args.cpu_devices is None:
    args.cpu_devices = _env_int("SEQTRAIN_CPU_DEVICES")
  timeout = _env_int("SEQTRAIN_DISTRIBUTED_TIMEOUT")
  if args.timeout_s is None:
    args.timeout_s = 300 if timeout is None else timeout
  if args.timeout_s < 1:
    raise ValueError(f"--distributed-timeout / SEQTRAIN_DISTRIBUTED_TIMEOUT={args.timeout_s}: "
                     "must be >= 1 second")
  if args.cpu_devices is not None and args.cpu_devices < 1:
    raise ValueError(f"--cpu-devices / SEQTRAIN_CPU_DEVICES={args.cpu_devices}: must be >= 1")
  return args


def wait_for_coordinator(address: str, timeout_s: float, say=print) -> None:
  """Returns once something accepts TCP connections at HOST:PORT; raises ValueError
  (one line, naming the address) after ``timeout_s`` seconds. JAX's own wait ends
  in an abort with a C++ stack trace; this one ends in a message."""
  import socket
  import time
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator {address!r}: expected HOST:PORT")
  deadline = time.monotonic() + timeout_s
  said = False
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
    if time.monotonic() >= deadline:
      raise ValueError(f"coordinator {address} not reachable after {timeout_s:g} s ({reason}); "
                       "is process 0 running? (--distributed-timeout sets the wait)")
    if not said:
      say(f"waiting for coordinator {address} (up to {timeout_s:g} s)", flush=True)
      said = True
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def initialize(args: DistributedArgs | None = None) -> bool:
  """Initialises jax.distributed if asked to; returns whether it did. Call before any
  other JAX work."""
  import jax
  args = from_env(args)
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", int(args.cpu_devices))
  explicit = (args.coordinator, args.num_processes, args.process_id)
  if any(v is not None for v in explicit):
    missing = [name for name, v in zip(("coordinator", "num-processes", "process-id"), explicit)
               if v is None]
    if missing:
      raise ValueError(f"multi-process run needs --coordinator, --num-processes and "
                       f"--process-id (or SEQTRAIN_* variables); missing: {', '.join(missing)}")
    if not 0 <= args.process_id < args.num_processes:
      raise ValueError(f"process id {args.process_id} (--process-id or SEQTRAIN_PROCESS_ID) "
                       f"outside [0, {args.num_processes}) for {args.num_processes} processes")
    if args.num_processes == 1:
      return False
    if args.process_id != 0:
      wait_for_coordinator(args.coordinator, args.timeout_s)
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id,
                               initialization_timeout=args.timeout_s)
    return True
  if args.mode == "auto":
    jax.distributed.initialize()
    return True
  if args.mode not in (None, "", "none"):
    raise ValueError(f"--distributed {args.mode!r}: expected auto or none")
  return False
