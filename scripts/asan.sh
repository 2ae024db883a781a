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
cargo +nightly test --release --target x86_64-unknown-linux-gnu --tests 2>&1 | tee target/asan/tests.log | grep -E "^test result|FAILED|ERROR: AddressSanitizer" || true
cargo +nightly test --release --target x86_64-unknown-linux-gnu --test corruption_sweep -- --ignored --nocapture \
  2>&1 | tee target/asan/sweep.log | tail -25
! grep -q "ERROR: AddressSanitizer\|LeakSanitizer" target/asan/*.log
! grep -q "^test result: FAILED" target/asan/tests.log
echo "asan: clean"
