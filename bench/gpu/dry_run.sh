#!/usr/bin/env bash
# The GPU check run here, without a GPU: prepare.sh with two random models,
# then both visits of check.sh. Every CUDA run fails at once ("no CUDA
# device"), so this proves only the script itself: no bash error (an unset
# variable, a bad expansion, a missing file of its own), every step of the
# first visit reached in order, and the summary and archive written. A GPU
# visit is rare; a check that breaks on it wastes one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SEEDS=2 bash bench/gpu/prepare.sh > target/gpu-dry-prepare.log 2>&1 \
  || { tail -20 target/gpu-dry-prepare.log; exit 1; }
fail=0
for visit in first second; do
  out=target/gpu-dry-$visit
  rm -rf "$out"
  log=target/gpu-dry-$visit.log
  STEPS=$([ $visit = second ] && echo second || echo "") bash .gpu/check.sh "$out" > "$log" 2>&1 \
    || { echo "check.sh ($visit visit) exited $?"; fail=1; }
  # bash's own errors name the script and a line; the machine here has no
  # nvidia-smi, which the check only prints.
  if grep -a -E "check\.sh: line [0-9]+:" "$log" | grep -v "nvidia-smi: command not found"; then
    echo "bash errors in check.sh ($visit visit): $log"; fail=1
  fi
  for f in summary.txt check.log logs.tgz; do
    [ -s "$out/$f" ] || { echo "check.sh ($visit visit) wrote no $f"; fail=1; }
  done
done
# The first visit's steps, in their order.
expected="1. GPU tests|3. engine benchmark|4. PyTorch baseline|3. the kernel choices|1d. GPU tests|3b. FinalMLP|2. random models|5. per-kernel"
got=$(grep -a -o -E "^== \[[0-9]+s\] ($expected)" target/gpu-dry-first.log | sed -E 's/^== \[[0-9]+s\] //' | paste -sd'|')
[ "$got" = "$expected" ] || { echo "first visit's steps: got '$got', expected '$expected'"; fail=1; }
expected2="0b. first GPU model load|4c. PyTorch baseline under torch.compile|2b. random models|4b. parity with PyTorch"
got2=$(grep -a -o -E "^== \[[0-9]+s\] ($expected2)" target/gpu-dry-second.log | sed -E 's/^== \[[0-9]+s\] //' | paste -sd'|')
[ "$got2" = "$expected2" ] || { echo "second visit's steps: got '$got2', expected '$expected2'"; fail=1; }
# Each run of the first visit left its log (the tools this machine lacks,
# compute-sanitizer and ncu, aside).
listing=$(tar tzf target/gpu-dry-first/logs.tgz)
for f in gpu-tests.log gpu-tests-choices.log bench-f16.txt bench-f32.txt bench-f16-8threads.txt torch.txt \
    phases-{staging-wc,staging-cached,values-f32,values-f16,pack0,pack3,pack3-spin,pdl0,pdl}.txt \
    bench-f16-{flogit,f32kept,wgmma}.txt bench-f16-8threads-{flogit,f32kept,wgmma}.txt bench-bilinear-v{1,2}.txt \
    bench-example-fnorm{0,1}.txt torch-example.txt parity-runs.log; do
  grep -q "^logs/$f$" <<< "$listing" || { echo "the first visit ran nothing that wrote $f"; fail=1; }
done
[ $fail = 0 ] && echo "GPU check dry run: both visits ran every step to the summary"
exit $fail
