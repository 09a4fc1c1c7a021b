"""Metric writers: TensorBoard event files, a JSONL file and the console.

Only process 0 writes (``MetricWriters(..., active=jax.process_index() == 0)``).
TensorBoard files come from tensorboardX (no TensorFlow); clu's own writers import
TensorFlow at module load and are not used.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

__all__ = ["DeferredMetrics", "MetricWriters", "Progress", "StepRate", "read_metrics"]


def _finite_or_str(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


# Records a run writes at its start step or when it finishes, so written again by a run
# that resumes at that step (the others at that step came from before the checkpoint).
_RESTART_KINDS = ("solver", "final_")


def _truncate_jsonl(path: Path, step: int) -> set:
  """Keeps the records of ``path`` up to ``step`` (a resumed run writes the later ones
  again), minus those a run rewrites at ``step``; returns the dropped (kind, step) keys
  at ``step``. A torn last line is dropped."""
  kept, dropped = [], set()
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    s, kind = r.get("step", 0), str(r.get("kind", ""))
    if s < step or (s == step and not kind.startswith(_RESTART_KINDS)):
      kept.append(line)
    elif s == step:
      dropped.add((kind, s))
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  tmp.replace(path)
  return dropped


class MetricWriters:
  """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

  ``resume_step``: the step a resumed run starts from. Records after it are removed
  from metrics.jsonl and TensorBoard (``purge_step``), so no step is written twice;
  final records of a finished run that is run again are replaced."""

  def __init__(self, workdir: str | Path, active: bool = True, tensorboard: bool = True,
               resume_step: int = 0):
    self.active = active
    self._tb = None
    self._jsonl: TextIO | None = None
    self._rewritten: set = set()
    if not active:
      return
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if resume_step and path.exists():
      self._rewritten = _truncate_jsonl(path, resume_step)
    self._jsonl = open(path, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=10,
                               purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, kind: str, scalars: Mapping[str, float]):
    if not self.active:
      return
    record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
    record.update({k: _finite_or_str(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None and (kind, int(step)) not in self._rewritten:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

  def write_info(self, step: int, kind: str, fields: Mapping[str, Any], text: str = ""):
    """A one-time record of non-scalar facts (strings, lists) in ``metrics.jsonl``;
    ``text`` also goes to TensorBoard's text tab as ``kind``."""
    if not self.active:
      return
    record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
    record.update(fields)
    self._jsonl.write(json.dumps(record, default=str) + "\n")
    if self._tb is not None and text:
      self._tb.add_text(kind, text, int(step))

  def flush(self):
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str | Path) -> list[dict]:
  """Records of ``metrics.jsonl``; a torn last line (killed writer) is skipped.

  A resumed run removes the records after its checkpoint before it writes
  (MetricWriters); should a (kind, step) pair still appear twice, the later wins.
  """
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records = {}
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    records[(r.get("kind"), r.get("step"))] = r
  return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepRate:
  """Recent steps/s: finished steps over the *active* time of the last ``window`` steps.

  ``tick(step)`` when step ``step`` has finished (its outputs fetched). The first tick
  only sets the origin: the first step of a run carries compilation and input
  pipeline warm-up. Time spent inside ``with paused():`` (validation, checkpoints,
  compiling a new batch shape) is not active time. Only the last ``window`` steps
  count, so the rate follows a step time that changes during training (e.g. solver
  iterations growing) instead of averaging since the start.
  """

  def __init__(self, window: int = 100, clock: Callable[[], float] = time.perf_counter):
    if window < 1:
      raise ValueError(f"window must be >= 1, got {window}")
    self.clock = clock
    self._samples: collections.deque = collections.deque(maxlen=window + 1)  # (step, active s)
    self._paused_total = 0.0
    self._pause_start: float | None = None

  def _active(self, now: float) -> float:
    return now - self._paused_total

  @contextlib.contextmanager
  def paused(self):
    """Time inside is excluded (nested uses count once)."""
    if self._pause_start is not None:
      yield
      return
    self._pause_start = self.clock()
    try:
      yield
    finally:
      self._paused_total += self.clock() - self._pause_start
      self._pause_start = None

  def tick(self, step: int):
    active = self._active(self.clock())
    if self._samples and step <= self._samples[-1][0]:
      self._samples.clear()   # steps went back (a restart): start a new origin
    self._samples.append((int(step), active))

  def rate(self) -> float:
    """Steps per active second over the window; nan before two ticks."""
    if len(self._samples) < 2:
      return float("nan")
    (s0, a0), (s1, a1) = self._samples[0], self._samples[-1]
    return (s1 - s0) / (a1 - a0) if a1 > a0 else float("nan")

  def eta(self, step: int, total: int) -> float:
    """Seconds of training left at the recent rate (validation / checkpoints not included)."""
    rate = self.rate()
    return (total - step) / rate if rate == rate and rate > 0 else float("nan")


class Progress:
  """One console line per logging step: recent steps/s, ETA, and the given metrics.

  The rate and ETA come from a :class:`StepRate` over the last ``window`` steps:
  call ``tick(step)`` after every finished step and run pauses (validation,
  checkpoints, compilation) inside ``with progress.paused():``.
  """

  def __init__(self, total_steps: int, active: bool = True,
               stream: TextIO | None = None, window: int = 100,
               clock: Callable[[], float] = time.perf_counter):
    self.total = total_steps
    self.active = active
    self.stream = stream
    self.steps = StepRate(window, clock)

  def tick(self, step: int):
    self.steps.tick(step)

  def paused(self):
    return self.steps.paused()

  def rate(self) -> float:
    return self.steps.rate()

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    rate = self.steps.rate()
    eta = self.steps.eta(step, self.total)
    width = len(str(self.total))
    shown = f"{rate:5.2f}" if math.isfinite(rate) else "    -"
    parts = [f"step {step:>{width}}/{self.total}", f"{shown} steps/s", f"ETA {_duration(eta)}"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
    return " | ".join(parts)

  def print(self, text: str):
    if self.active:
      print(text, file=self.stream or sys.stdout, flush=True)


class DeferredMetrics:
  """Per-step metrics left on the device until ``flush()``: the host never waits for
  the device between steps. ``flush`` brings them over in one ``fetch``, counts the
  last of their steps as finished now (one sample of ``progress``'s step rate: all of
  them finished by now, and giving each the same time would make the rate over the
  first window thousands of steps/s), then hands each (step, host metrics) to
  ``report`` in order."""

  def __init__(self, progress: Progress, report: Callable[[int, Any], None],
               fetch: Callable[[list], list]):
    self.progress, self.report, self.fetch = progress, report, fetch
    self._pending: list = []

  def append(self, step: int, metrics: Any):
    self._pending.append((step, metrics))

  def flush(self):
    if not self._pending:
      return
    pending, self._pending = self._pending, []
    fetched = self.fetch([m for _, m in pending])
    self.progress.tick(pending[-1][0])
    for (step, _), m in zip(pending, fetched):
      self.report(step, m)
