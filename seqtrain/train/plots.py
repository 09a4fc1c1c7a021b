"""PNG plots of a run: training curves, validation accuracy, solver iterations, confusion."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from seqtrain.train.writers import read_metrics

__all__ = ["plot_run", "plot_confusion"]


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_run(workdir: str | Path, out: str | Path | None = None) -> Path:
  """Loss / accuracy / validation / solver-iteration curves from ``metrics.jsonl``."""
  workdir = Path(workdir)
  records = read_metrics(workdir)
  train = [r for r in records if r["kind"] == "train"]
  val = [r for r in records if r["kind"] == "validation"]
  if not train:
    raise FileNotFoundError(f"{workdir / 'metrics.jsonl'}: no training metrics to plot (has the "
                            "run logged a step yet?)")
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps = [r["step"] for r in train]
  axes[0].plot(steps, [r["loss"] for r in train], label="train loss")
  if val:
    axes[0].plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation loss")
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_title("loss")
  axes[0].legend()
  axes[1].plot(steps, [r["accuracy"] for r in train], label="train (batch mean)")
  if val:
    axes[1].plot([r["step"] for r in val], [r["accuracy"] for r in val], "o-", label="validation")
  axes[1].set_ylim(-0.02, 1.02)
  axes[1].set_xlabel("step")
  axes[1].set_title("accuracy")
  axes[1].legend()
  layers = sorted({k for r in train for k in r if k.endswith("/iterations")})
  for k in layers:
    axes[2].plot(steps, [r.get(k, np.nan) for r in train], label=k.rsplit("/", 1)[0])
  axes[2].set_xlabel("step")
  axes[2].set_title("solver iterations (max over batch)")
  if layers:
    axes[2].legend()
  fig.tight_layout()
  out = Path(out) if out else workdir / "curves.png"
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   out: str | Path, title: str = "") -> Path:
  plt = _pyplot()
  c = np.asarray(confusion)
  k = len(class_names)
  # a floor on the size, and the title wrapped to the width: with two classes the
  # matrix alone would leave the title clipped
  width, height = max(4.0, 1.2 + 0.6 * k), max(3.6, 1.0 + 0.6 * k)
  title = textwrap.fill(title, width=max(20, int(width * 9)))
  fig, ax = plt.subplots(figsize=(width, height))
  ax.imshow(c, cmap="Blues")
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(int(c[i, j])), ha="center", va="center",
              color="white" if c[i, j] > c.max() / 2 else "black")
  fig.suptitle(title)   # centred on the figure: above the axes it overflows to the right
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return Path(out)
