#!/usr/bin/env bash
# A/B of mmoe binaries or settings on a noisy machine: interleaved rounds;
# per batch the minimum p50 (interference only ever adds time) and the
# median p50 of the rounds.
#   bench/ab.sh BATCHES SPEC_A SPEC_B [...]   (MODEL, ITERS, ROUNDS, MODE from the environment)
# BATCHES: one batch size or a list (1,8,64). A SPEC is a binary, or a
# quoted line: VAR=VALUE words first (its environment), then the binary,
# then extra `mmoe bench` flags, e.g.
#   bench/ab.sh 2,8 "/tmp/mmoe-a --intra-threads 2" "MMOE_CPU_SPIN_US=100 /tmp/mmoe-b --intra-threads 2"
set -euo pipefail
batches=$1
shift
model=${MODEL:-target/demo-a.mmoe}
results=$(mktemp)
json=$(mktemp)
trap 'rm -f "$results" "$json"' EXIT
for _ in $(seq "${ROUNDS:-5}"); do
  for spec in "$@"; do
    read -r -a words <<<"$spec"
    envs=()
    while [[ ${words[0]} == *=* ]]; do
      envs+=("${words[0]}")
      words=("${words[@]:1}")
    done
    # The p50s from the JSON report, not the printed tables (flags such as
    # --phases or --staging print tables of their own).
    env "${envs[@]}" "${words[@]:0:1}" bench --model "$model" --batch "$batches" \
      --iters "${ITERS:-30}" --max-seconds 5 --mode "${MODE:-exact}" "${words[@]:1}" --json "$json" > /dev/null
    python3 -c 'import json, sys
for batch, r in json.load(open(sys.argv[1]))["results"].items():
    print(batch, r["p50_us"], sys.argv[2], sep="\t")' "$json" "$spec" >>"$results"
  done
done
python3 - "$results" "${ROUNDS:-5}" "$@" <<'EOF'
import collections, statistics, sys
path, rounds, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
p50s = collections.defaultdict(list)
for line in open(path):
    batch, p50, spec = line.rstrip("\n").split("\t")
    p50s[(spec, int(batch))].append(float(p50))
print(f"p50 µs over {rounds} interleaved rounds: min / median")
for i, spec in enumerate(specs):
    print(f"  {chr(65 + i)}: {spec}")
print("batch " + "".join(f"{chr(65 + i):>20}" for i in range(len(specs))))
for batch in sorted({b for _, b in p50s}):
    cells = [p50s.get((spec, batch)) for spec in specs]
    print(f"{batch:5} " + "".join(
        f"{min(c):>9.1f} / {statistics.median(c):>7.1f}" if c else f"{'-':>20}" for c in cells))
EOF
