"""Training benchmark: steps/s of the 5-layer GRU-32 EigenWorms classifier per method.

    python benchmarks/training.py --out DIR                    # T=17,984, batch 4, 5 steps
    python benchmarks/training.py --T 2048 --steps 3 --methods sequential,quasi_deer
    python benchmarks/training.py --smoke --out /tmp/bench

Writes training.json / training.md (library: seqtrain.bench.run_training).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqtrain.bench import main_training  # noqa: E402

if __name__ == "__main__":
  sys.exit(main_training())
