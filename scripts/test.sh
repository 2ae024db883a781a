#!/usr/bin/env bash
# The one test command: installs what the tests need (a local Python venv with
# numpy for the independent reference), then runs every check and test.
# Usage: scripts/test.sh            (from anywhere; CI calls exactly this)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step with the seconds since the start, to see where CI's time goes.
step() { printf '\n== [%d s] %s\n' "$SECONDS" "$*"; }

step "system tools (Debian packages when missing)"
missing=()
for tool in cc c++ make pkg-config readelf javac jar java valgrind; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
# The CLI's plots (plotters) use fontconfig and a font.
pkg-config --exists fontconfig 2> /dev/null || missing+=(fontconfig)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing packages for: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq build-essential pkg-config binutils openjdk-17-jdk-headless \
    valgrind libfontconfig1-dev fonts-dejavu-core > /dev/null
fi

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
cargo clippy --release --all-targets -p mmoe -p mmoe-test-support -- -D warnings
cargo check --no-default-features --all-targets   # builds without the `cuda` feature too

step "rust tests"
cargo build --release
cargo test --release -p mmoe -p mmoe-test-support

step "the GPU path on the host: kernels/mmoe.cu compiled for the CPU (gpu-emu/) against the CPU exact path"
cargo clippy --release --all-targets -p mmoe-gpu-emu -- -D warnings
cargo test --release -p mmoe-gpu-emu

step "the GPU check's script, run here without a GPU (prepare.sh, then both visits of check.sh: no bash error, every step reached)"
bash bench/gpu/dry_run.sh

step "the checked-in C header is the one build.rs generates"
if ! git diff --quiet -- include/mmoe.h; then
  git --no-pager diff --stat -- include/mmoe.h
  echo "include/mmoe.h is stale: commit the regenerated header" >&2
  exit 1
fi

step "demo"
cargo run --release --quiet -- demo --candidates 64 --out target/demo-a.mmoe
./target/release/mmoe demo --candidates 4 --seed 8 --out target/demo-b.mmoe > /dev/null

step "C and C++ examples: static and shared library, hot-reload stress, then under ASan+UBSan and valgrind"
make -C c-examples --no-print-directory check
make -C c-examples --no-print-directory asan
make -C c-examples --no-print-directory valgrind 2>&1 | grep -E "^valgrind|ERROR SUMMARY|in use at exit"

step "soak, 30 s: 8 threads scoring while the engine reloads every second (sometimes a corrupt file)"
cargo build --release --quiet --example soak
./target/release/examples/soak --model-a target/demo-a.mmoe --model-b target/demo-b.mmoe \
  --threads 8 --seconds 30 --report-every 10 --max-candidates 256

step "Java: JNI shim, classes and jar with the JDK's tools, then the Java tests"
java/build.sh target/demo-a.mmoe target/demo-b.mmoe

step "install: headers, libraries with soname links, pkg-config; an example built from the install"
rm -rf target/install
scripts/install.sh "$PWD/target/install" > /dev/null
PKG_CONFIG_PATH="$PWD/target/install/lib/pkgconfig" cc -std=c99 -Wall -Werror c-examples/score.c \
  $(PKG_CONFIG_PATH="$PWD/target/install/lib/pkgconfig" pkg-config --cflags --libs mmoe) -o target/score-installed
LD_LIBRARY_PATH="$PWD/target/install/lib" ./target/score-installed target/demo-a.mmoe 2 | tail -1
readelf -d target/install/lib/libmmoe.so | grep -q 'SONAME.*libmmoe.so.1' || { echo "soname is not libmmoe.so.1" >&2; exit 1; }

step "fuzz smoke: every fuzz target for 10 s on its corpus (nightly toolchain, cargo-fuzz)"
command -v cargo-fuzz > /dev/null || cargo install --locked --quiet cargo-fuzz
SMOKE=1 SECONDS_PER_TARGET=10 bash fuzz/campaign.sh

step "parity: mmoe pack + score (reference, cpu and cpu bf16 mode) against the numpy reference on 200 random models"
.venv/bin/python tests/python/test_parity.py --mmoe target/release/mmoe --seeds 200 --backends reference,cpu,cpu-bf16

step "parity with PyTorch: a torch module of MODEL.md trained a few steps, its state_dict exported, packed and scored, on 200 random models"
# Debian's torch (CPU, about 190 MB), for Debian's Python: PyPI has only the
# CUDA build of torch, gigabytes with its libraries.
if ! /usr/bin/python3 -c "import torch" 2> /dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-torch > /dev/null
fi
/usr/bin/python3 tests/python/test_torch_parity.py --mmoe target/release/mmoe --seeds 200

step "parity: the GPU path on the host (gpu-emu: f32, f32 with fused task heads and LayerNorm, f16 (cp.async over fp16 inputs), f16 with 128×128 tiles, fused LayerNorm and fused logits) against the numpy reference on 200 random models; f16 against PyTorch on 200 more"
cargo build --release -p mmoe-gpu-emu --bin mmoe-gpu-emu
.venv/bin/python tests/python/test_parity.py --mmoe target/release/mmoe --emu target/release/mmoe-gpu-emu --seeds 200 \
  --backends emu-f32,emu-f32-fused-fnorm,emu-f16,emu-f16-wide-fnorm-flogit
/usr/bin/python3 tests/python/test_torch_parity.py --mmoe target/release/mmoe --scorer target/release/mmoe-gpu-emu \
  --score-args "--precision f16" --logit-rtol 2e-2 --prob-atol 5e-3 --seeds 200   # and against PyTorch, fp16 compute

step "datasets: mmoe eval's metrics against numpy, on synthetic logs scored by two models"
.venv/bin/python tests/python/test_metrics.py --mmoe target/release/mmoe --model-a target/demo-a.mmoe --model-b target/demo-b.mmoe

step "trainer (mmoe-train): lints, loss gradients, parity with the engine, distillation; then train → pack → score → eval end to end"
# Without thin LTO: it doubled the trainer's build (candle and gemm; a fresh
# `cargo test --release -p mmoe-train --no-run` here took 5:37 with it, 3:04
# without, 2026-11-28), and the trainer is not what a server links. The
# engine's own tests above keep the release profile as shipped.
export CARGO_PROFILE_RELEASE_LTO=false
cargo clippy --release -p mmoe-train --all-targets -- -D warnings
cargo test --release -p mmoe-train
bash scripts/train_e2e.sh
