"""Stability benchmark: Lorenz-96 and an expansive tanh RNN, float64.

Iterations, wall-clock and max error against the sequential trajectory for deer,
quasi_deer, elk and quasi_elk (adaptive lambda) next to fixed-lambda ELK settings.

    python benchmarks/stability.py --out DIR                   # T=1000, 10 trials
    python benchmarks/stability.py --fixed-lams 1e-4,1e-2 --fixed-step filter
    python benchmarks/stability.py --smoke --out /tmp/bench

Writes stability.json / stability.md (library: seqtrain.bench.run_stability).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqtrain.bench import main_stability  # noqa: E402

if __name__ == "__main__":
  sys.exit(main_stability())
