"""Metric writers: TensorBoard event files, a JSONL file and the console.

Only process 0 writes (``MetricWriters(..., active=jax.process_index() == 0)``).
TensorBoard files come from tensorboardX (no TensorFlow); clu's own writers import
TensorFlow at module load and are not used.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping, TextIO

__all__ = ["MetricWriters", "Progress", "read_metrics"]


def _finite_or_str(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


class MetricWriters:
  """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``."""

  def __init__(self, workdir: str | Path, active: bool = True, tensorboard: bool = True):
    self.active = active
    self._tb = None
    self._jsonl: TextIO | None = None
    if not active:
      return
    workdir = Path(workdir)
    self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=10)

  def write(self, step: int, kind: str, scalars: Mapping[str, float]):
    if not self.active:
      return
    record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
    record.update({k: _finite_or_str(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

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

  A resumed run re-logs the steps after its checkpoint: the later record of a
  (kind, step) pair wins.
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


class Progress:
  """One console line per logging step: steps/s, ETA, and the given metrics."""

  def __init__(self, total_steps: int, start_step: int = 0, active: bool = True,
               stream: TextIO | None = None):
    self.total = total_steps
    self.active = active
    self.stream = stream
    self._t0 = time.perf_counter()
    self._s0 = start_step

  def reset_clock(self, step: int):
    """Starts the steps/s clock after compilation."""
    self._t0 = time.perf_counter()
    self._s0 = step

  def rate(self, step: int) -> float:
    dt = time.perf_counter() - self._t0
    return (step - self._s0) / dt if dt > 0 and step > self._s0 else float("nan")

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    width = len(str(self.total))
    parts = [f"step {step:>{width}}/{self.total}", f"{rate:5.2f} steps/s", f"ETA {_duration(eta)}"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
    return " | ".join(parts)

  def print(self, text: str):
    if self.active:
      print(text, file=self.stream or sys.stdout, flush=True)
