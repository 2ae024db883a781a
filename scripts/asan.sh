#!/usr/bin/env bash
# The Rust test suite under AddressSanitizer (nightly, -Zsanitizer=address),
# then the demo-model corruption sweep under it. Logs to target/asan/*.log.
# Slow (an instrumented build of everything): not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR=target/asan
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
mkdir -p target/asan
# --tests: the library, binaries and integration tests (doctests are not
# instrumented by RUSTFLAGS and add nothing here).
status=0
cargo +nightly test --release --target x86_64-unknown-linux-gnu --tests > target/asan/tests.log 2>&1 || status=1
grep -E "^test result|FAILED|ERROR: AddressSanitizer|^error" target/asan/tests.log || true
cargo +nightly test --release --target x86_64-unknown-linux-gnu --test integration corruption_sweep:: -- --ignored --nocapture \
  > target/asan/sweep.log 2>&1 || status=1
tail -25 target/asan/sweep.log
[ $status -eq 0 ] || { echo "asan: a test or build failed (target/asan/*.log)"; exit 1; }
! grep -q "ERROR: AddressSanitizer\|LeakSanitizer" target/asan/*.log
! grep -q "^test result: FAILED" target/asan/tests.log
echo "asan: clean"
