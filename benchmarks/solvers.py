"""Layer benchmark over a grid of T, D, batch, cell and method (same flags as `seqtrain bench`).

    python benchmarks/solvers.py --T 10000,100000 --D 8,64 --batch 16 --grad --out DIR
    python benchmarks/solvers.py --smoke --out /tmp/bench      # tiny grid, any machine
    python benchmarks/solvers.py --check --out DIR             # correctness gate only

Writes solvers.json / solvers.md / solvers.png (check.json / check.md with --check).
The library is seqtrain.bench; this file only puts the repository on sys.path.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqtrain.bench import main_solvers  # noqa: E402

if __name__ == "__main__":
  sys.exit(main_solvers())
