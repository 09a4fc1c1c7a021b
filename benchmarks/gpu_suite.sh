#!/usr/bin/env bash
# One-command benchmark suite for a GPU host (about 5 minutes on an H100/H200).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR            # the full suite, on a GPU
#   bash benchmarks/gpu_suite.sh --smoke OUT_DIR    # tiny sizes, any machine (CPU too)
#   SEQTRAIN_BENCH_DRY_RUN=1 bash benchmarks/gpu_suite.sh OUT_DIR   # every step checks its
#                                                   # arguments and stops (tests/test_bench.py)
#
# Needs JAX (+CUDA), flax, optax and orbax importable (torch optional, for the
# cuDNN baseline); no package index: the repository goes on PYTHONPATH, nothing
# is installed. Steps, each writing under OUT_DIR:
#   nvidia-smi.txt  the GPU and driver
#   check/          correctness gate: every method vs sequential (forward + gradient)
#   solvers/        layer grid: batch 16, D in {8, 64}, T in {1e4, 1e5, 1e6}, GRU;
#                   sequential (lax.scan), quasi_deer, deer (chunk-start Newton, the
#                   default), quasi_deer_perstep (the papers' per-step Newton),
#                   quasi_elk, nn.RNN, cuDNN; forward at every T, forward+gradient
#                   up to T=1e5
#   chunks/K/       quasi_deer forward at T=1e5 with chunk length K in {16, 128}, next to
#                   the default (about 2 sqrt(T), capped at 32: tuned on CPU) in the grid
#   training/       steps/s of the 5-layer GRU-32 EigenWorms classifier, T=17,984, batch 4,
#                   each method with and without model.recompute (memory vs time)
#   auto/           method="auto" vs sequential and quasi_deer over T: where the parallel
#                   solver overtakes lax.scan (copy it into solvers.api.CROSSOVER)
#   seq_parallel/   one sequence split over P = 1, 2, 4, 8 of the host's GPUs (those
#                   present): per-device compiled memory at T = 2^20, iterations,
#                   error vs lax.scan and time at T = 16384 (one GPU: the P = 1 rows)
#   stability/      Lorenz-96 / expansive RNN (float64), if time is left
#   summary.md      everything in one page (also printed); suite.log: the whole output
# Per-row time limits, extrapolated skips (--max-call-s) and deadlines keep the
# total near 5 minutes; skipped rows are reported with their reason. A failing
# step does not stop the others; the exit status is 1 if any step failed.
set -euo pipefail

usage() {
  echo "usage: bash benchmarks/gpu_suite.sh [--smoke] OUT_DIR" >&2
}

SMOKE=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_suite.sh: unknown option $1" >&2; usage; exit 2 ;;
    *)
      if [[ -n "$OUT" ]]; then usage; exit 2; fi
      OUT="$1"; shift ;;
  esac
done
if [[ -z "$OUT" ]]; then usage; exit 2; fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# JAX preallocates this fraction of GPU memory; the rest is left to PyTorch (cuDNN rows).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/suite.log") 2>&1

FAILED=()
step() {  # step NAME COMMAND...: run, record failure, go on
  local name="$1"; shift
  local t0=$SECONDS
  echo
  echo "=== $name ($(date -u +%H:%M:%S), ${SECONDS}s into the suite)"
  if "$@"; then
    echo "=== $name done in $((SECONDS - t0))s"
  else
    echo "=== $name FAILED (exit $?) after $((SECONDS - t0))s"
    FAILED+=("$name")
  fi
}

echo "gpu_suite: repo $REPO -> $OUT (smoke=$SMOKE)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
else
  echo "nvidia-smi not found" > "$OUT/nvidia-smi.txt"
fi
"$PY" - <<'EOF' | tee "$OUT/devices.txt"
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
try:
  import torch
  print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as e:
  print("torch unavailable:", type(e).__name__)
EOF

if [[ $SMOKE -eq 1 ]]; then
  CHECK_ARGS=(--check --smoke)
  GRID_ARGS=(--smoke --cells gru --methods sequential,quasi_deer,deer,flax_rnn,cudnn --grad
             --time-limit 2 --max-call-s 5 --deadline-s 120)
  TRAIN_ARGS=(--smoke --methods sequential,quasi_deer --deadline-s 60)
  CHUNK_ARGS=(--T 256 --D 4 --batch 2 --methods sequential,quasi_deer --repeats 2)
  CHUNKS=(8 64)
  STAB_ARGS=(--smoke --systems lorenz96 --methods deer,quasi_elk --fixed-lams 1e-3)
  STAB_UNTIL=600
  AUTO_ARGS=(--T 64,128 --D 4 --batch 2 --repeats 2)
  SEQ_ARGS=(--P 1,2 --T 4096 --check-T 512 --batch 2 --D 4 --repeats 2)
else
  CHECK_ARGS=(--check)
  GRID_ARGS=(--T 10000,100000,1000000 --D 8,64 --batch 16 --cells gru
             --methods sequential,quasi_deer,deer,quasi_deer_perstep,quasi_elk,flax_rnn,cudnn
             --grad --grad-max-T 100000 --repeats 5 --time-limit 5 --max-call-s 4
             --deadline-s 130)
  CHUNK_ARGS=(--T 100000 --D 8,64 --batch 16 --methods sequential,quasi_deer --repeats 5
              --time-limit 3 --deadline-s 15)
  CHUNKS=(16 128)
  TRAIN_ARGS=(--T 17984 --batch 4 --depth 5 --width 32
              --methods sequential,quasi_deer,deer,quasi_elk --recompute both --steps 5
              --time-limit 15 --deadline-s 90)
  STAB_ARGS=(--T 1000 --trials 10 --fixed-lams 1e-3,1e-1)
  STAB_UNTIL=240   # run the stability benchmark only if the suite is this young (seconds)
  AUTO_ARGS=(--T 64,256,1024,4096,16384 --D 8,64 --batch 16 --repeats 5)
  SEQ_ARGS=(--P 1,2,4,8 --T 1048576 --check-T 16384 --batch 4 --D 32 --repeats 5)
fi

step "correctness check" "$PY" "$REPO/benchmarks/solvers.py" "${CHECK_ARGS[@]}" --out "$OUT/check"
step "layer grid" "$PY" "$REPO/benchmarks/solvers.py" "${GRID_ARGS[@]}" --out "$OUT/solvers"
step "training" "$PY" "$REPO/benchmarks/training.py" "${TRAIN_ARGS[@]}" --out "$OUT/training"
step "auto crossover" "$PY" "$REPO/benchmarks/auto_crossover.py" "${AUTO_ARGS[@]}" --out "$OUT/auto"
step "sequence parallel" "$PY" "$REPO/benchmarks/seq_parallel.py" "${SEQ_ARGS[@]}" \
  --out "$OUT/seq_parallel"
for K in "${CHUNKS[@]}"; do
  step "chunk $K" "$PY" "$REPO/benchmarks/solvers.py" "${CHUNK_ARGS[@]}" --chunk "$K" \
    --out "$OUT/chunks/$K"
done
if [[ $SECONDS -lt $STAB_UNTIL ]]; then
  LEFT=$(( (SMOKE == 1 ? 600 : 300) - SECONDS ))
  (( LEFT < 20 )) && LEFT=20
  step "stability" "$PY" "$REPO/benchmarks/stability.py" "${STAB_ARGS[@]}" --deadline-s "$LEFT" \
    --out "$OUT/stability"
else
  echo "=== stability skipped: ${SECONDS}s elapsed (run benchmarks/stability.py on its own)"
fi
step "summary" "$PY" "$REPO/benchmarks/report.py" "$OUT"

echo
echo "gpu_suite: ${SECONDS}s in all; results in $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "gpu_suite: FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "gpu_suite: all steps succeeded"
