"""Training-step memory per layer, with and without model.recompute
(seqtrain.bench.memory; compiles only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqtrain.bench.memory import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
