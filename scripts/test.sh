#!/usr/bin/env bash
# The one test command: installs what the tests need (a local Python venv with
# numpy for the independent reference), then runs every check and test.
# Usage: scripts/test.sh            (from anywhere; CI calls exactly this)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "python venv (tests/python/requirements.txt)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

step "CUDA kernels compile with NVRTC 13.0 (PyPI wheels) and the checked-in PTX is fresh"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements-cuda.txt
.venv/bin/python scripts/build_kernels.py --check

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings

step "rust tests"
cargo build --release
cargo test --release

step "the checked-in C header is the one build.rs generates"
if ! git diff --quiet -- include/mmoe.h; then
  git --no-pager diff --stat -- include/mmoe.h
  echo "include/mmoe.h is stale: commit the regenerated header" >&2
  exit 1
fi

step "demo"
cargo run --release --quiet -- demo --candidates 64 --out target/demo-a.mmoe
./target/release/mmoe demo --candidates 4 --seed 8 --out target/demo-b.mmoe > /dev/null

step "C and C++ examples: static and shared library, hot-reload stress, then under ASan+UBSan"
make -C c-examples --no-print-directory check
make -C c-examples --no-print-directory asan

step "parity: mmoe pack + score (reference and cpu backends) against the numpy reference on 200 random models"
.venv/bin/python tests/python/test_parity.py --mmoe target/release/mmoe --seeds 200 --backends reference,cpu
