#!/usr/bin/env bash
# A/B of two (or more) mmoe binaries on a noisy machine: interleaved rounds,
# the minimum p50 of each kept (interference only ever adds time).
#   bench/ab.sh BATCH BIN_A BIN_B [...]     (MODEL, ITERS, ROUNDS, MODE from the environment)
set -euo pipefail
batch=$1
shift
model=${MODEL:-target/demo-a.mmoe}
declare -A best
for _ in $(seq "${ROUNDS:-5}"); do
  for bin in "$@"; do
    p50=$("$bin" bench --model "$model" --batch "$batch" --iters "${ITERS:-30}" --max-seconds 5 \
      --mode "${MODE:-exact}" | tail -1 | awk '{print $4}')
    best[$bin]=$(python3 -c "print(min(${best[$bin]:-1e18}, $p50))")
  done
done
for bin in "$@"; do
  echo "$bin: batch $batch, min p50 ${best[$bin]} us over ${ROUNDS:-5} rounds"
done
