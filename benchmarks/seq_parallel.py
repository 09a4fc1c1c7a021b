"""One sequence over P devices: per-device compiled memory, iterations, error vs
lax.scan (seqtrain.bench_seq; same arguments as `seqtrain bench seq-parallel`)."""
import sys

from seqtrain.bench_seq import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
