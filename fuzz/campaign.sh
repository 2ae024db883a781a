#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 1800), one worker,
# on its corpus (and dictionary where it has one), logging to logs/<target>.log.
# The last line of each log is libFuzzer's summary ("Done N runs in T s").
# A short smoke run for CI: SMOKE=1 SECONDS_PER_TARGET=10 bash fuzz/campaign.sh
# (new inputs then go to a temporary folder, not into the committed corpora).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${SECONDS_PER_TARGET:-1800}
targets=${TARGETS:-"packed_file packed_file_fixup config request_jsonl c_abi_request"}
mkdir -p logs
cargo +nightly fuzz build 2>&1 | tail -3
status=0
scratch=""
trap 'if [ -n "$scratch" ]; then rm -rf "$scratch"; fi' EXIT
for t in $targets; do
  dict=""
  case $t in
    packed_file|packed_file_fixup) dict="-dict=packed_file.dict" ;;
    config|request_jsonl) dict="-dict=json.dict" ;;
  esac
  mkdir -p "corpus/$t"
  corpora="corpus/$t"
  # A smoke run writes what it finds to a scratch corpus, removed afterwards,
  # so that CI neither grows the checked-in corpus nor leaves files in /tmp.
  if [ -n "${SMOKE:-}" ]; then scratch=$(mktemp -d); corpora="$scratch corpus/$t"; fi
  if cargo +nightly fuzz run "$t" $corpora -- -max_total_time="$seconds" -rss_limit_mb=4096 \
      -print_final_stats=1 $dict > "logs/$t.log" 2>&1; then
    echo "$t: $(grep -E '^Done|DONE' "logs/$t.log" | tail -1)"
  else
    echo "$t: FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t)"; status=1
  fi
  if [ -n "$scratch" ]; then rm -rf "$scratch"; scratch=""; fi
done
exit $status
