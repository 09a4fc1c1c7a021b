"""One sequence over P devices: per-device compiled memory, iterations, error vs
lax.scan (seqtrain.bench.seq_parallel; same arguments as `seqtrain bench seq-parallel`)."""
import sys

from seqtrain.bench.seq_parallel import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
