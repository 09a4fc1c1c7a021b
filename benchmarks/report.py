"""Summarise a benchmark output folder: prints and writes DIR/summary.md.

    python benchmarks/report.py DIR [--plot]

Reads every check/solvers/training/stability JSON under DIR (environment info,
JSON/markdown/PNG writers live in seqtrain.bench); --plot redraws the PNGs from
the JSON (e.g. on a machine with matplotlib, after a run on one without).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqtrain.bench import main_report  # noqa: E402

if __name__ == "__main__":
  sys.exit(main_report())
