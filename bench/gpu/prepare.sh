#!/usr/bin/env bash
# Prepares the GPU check on the development machine (which has no GPU): builds
# the release binary and the GPU test executable, packs 40 random models (the
# demo model is built on the GPU machine by check.sh), and copies everything
# with the check script into .gpu/.
# Then, on a session lent a GPU machine: one `run` with carry [".gpu"] of
#   bash .gpu/check.sh "$OUT"
# (see ../shared/GPU.md). The GPU machine has no Rust and no network.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)
seeds=${SEEDS:-40}

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --release
test_exe=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null \
  | .venv/bin/python -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$test_exe" ] || { echo "could not find the gpu test executable" >&2; exit 1; }

rm -rf .gpu
mkdir -p .gpu/bin .gpu/models .gpu/parity
cp target/release/mmoe .gpu/bin/mmoe
cp "$test_exe" .gpu/bin/gpu-tests
cp bench/gpu/check.sh bench/gpu/torch_baseline.py bench/gpu/compare_scores.py bench/gpu/mmoe_file.py .gpu/
# MODEL.md's example config (every expert type; its packed files are built there).
cp models/example.json .gpu/models/
# Parity with PyTorch on the GPU path (step 4b): the torch module and its test.
mkdir -p .gpu/torch_parity
cp tests/python/{test_torch_parity,mmoe_torch,gen_random_model,mmoe_ref}.py .gpu/torch_parity/

# The demo model (45 MiB) is built on the GPU machine by the binary itself,
# keeping .gpu under the 64 MiB a run can carry; debug info is stripped too.
strip --strip-debug .gpu/bin/mmoe .gpu/bin/gpu-tests
# The GPU machine's image lacks some libraries the CLI links (fontconfig and
# freetype, for the dataset plots): they travel along, in .gpu/lib, which
# check.sh puts on LD_LIBRARY_PATH. Only what ldd finds outside libc's own set.
mkdir -p .gpu/lib
ldd .gpu/bin/mmoe .gpu/bin/gpu-tests | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
  case $name in libc.so*|libm.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;; *) cp -L "$path" .gpu/lib/ ;; esac
done
for seed in $(seq 0 $((seeds - 1))); do
  dir=.gpu/parity/seed-$seed
  .venv/bin/python tests/python/gen_random_model.py --seed "$seed" --out "$dir" --big-request 600 > /dev/null
  ./target/release/mmoe pack --config "$dir/model.json" --weights "$dir/model.safetensors" --out "$dir/model.mmoe" 2> /dev/null
  rm "$dir/model.safetensors"
done
git rev-parse HEAD > .gpu/commit 2>/dev/null || true
du -sh .gpu
echo "ready: .gpu ($(ls .gpu/parity | wc -l) random models); run: bash .gpu/check.sh \"\$OUT\""
