#!/usr/bin/env bash
# The GPU check, run on the GPU test machine from the repository root:
#   bash .gpu/check.sh "$OUT"
# Writes logs and JSON under $OUT as it goes and prints a short table last.
# The default run (the first visit) keeps to about 5 minutes: what does
# not start within BUDGET_S (240 s) is skipped, with a line saying so.
# Give `run` a timeout_s of about 400. `STEPS=second` is the second visit.
set -uo pipefail
# Only a few files come back from the machine: logs go to $1/logs, archived
# as $1/logs.tgz at the end, with the summary next to it.
root_out=${1:-${OUT:-gpu-out}}
mkdir -p "$root_out/logs"
root_out=$(cd "$root_out" && pwd)  # the check works from its own folder
out=$root_out/logs
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
export LD_LIBRARY_PATH=$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log() { echo "== [${SECONDS}s] $*" | tee -a "$out/check.log"; }
# STEPS (comma-separated) picks steps; the default is the first visit, in
# the order of what its results decide: tests (1: the GPU tests but the two
# that run every kernel choice), bench (3: end to end, where a call's time
# goes, the A/B of the host-side choices), torch (4: the baseline on the
# same weights), variants (3: the A/B of the kernel choices still off by
# default), tests-choices (1: those two tests, each choice's logits),
# bilinear (3b), parity (2: random
# models against the CPU), sanitizer (1b: memcheck and racecheck of the
# default path), ncu (5). STEPS=second is a second visit: what the first
# leaves out or its budget cuts, namely load (0b), sanitizer-extra (1b: the
# opt-in choices and every tile choice forced under racecheck and memcheck),
# parity-variants (2: each kernel choice's scores against the CPU),
# torch-parity (4b), torch-compile (4c: the baseline under torch.compile,
# fused), ncu-deep (5b).
steps=,${STEPS:-tests,bench,torch,variants,tests-choices,bilinear,parity,sanitizer,ncu},
[[ $steps == ,second, ]] && steps=,load,sanitizer-extra,parity-variants,torch-parity,torch-compile,ncu-deep,
# A step, or a part of one (a run, a variant, a tile choice, a precision, an
# ncu batch), that would start past BUDGET_S seconds (default 240) is
# skipped with a line saying so, so that the check ends within about 5
# minutes (a part started before the budget still runs to its own timeout,
# at most 150 s for the GPU tests and 100 s for the rest) and the run's
# time limit never kills it before its summary and archive: a killed check
# returns no logs.
budget=${BUDGET_S:-240}
in_budget() {
  (( SECONDS < budget )) && return 0
  echo "skipped $1: ${SECONDS}s, past the ${budget}s budget (BUDGET_S)" | tee -a "$out/check.log"
  return 1
}
want() { [[ $steps == *",$1,"* ]] && in_budget "$1"; }
# MODEL.md's example model (one expert of each type) packed at layout
# version $1 into models/example-v$1.mmoe, once per check.
example_model() {
  [ -f models/example-v$1.mmoe ] || timeout 60 ./bin/mmoe demo --config models/example.json --layout-version $1 \
    --candidates 8 --out models/example-v$1.mmoe > "$out/example-v$1-demo.txt" 2>&1
}
echo "steps: $steps" | tee -a "$out/check.log"

log "machine"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt" | head -20
{ ldconfig -p | grep -E "libcuda\.so|libnvrtc" ; nvcc --version 2>/dev/null | tail -1; } 2>&1 | tee "$out/cuda-libs.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" 2>&1 | tee -a "$out/check.log"
echo "commit $(cat commit 2>/dev/null)" | tee -a "$out/check.log"

log "0. demo model (built here by the binary: same deterministic weights as everywhere)"
timeout 60 ./bin/mmoe demo --candidates 300 --out models/demo.mmoe 2>&1 | tee "$out/demo.txt"
./bin/mmoe inspect models/demo.mmoe | head -5 | tee -a "$out/check.log"

# The driver loads the embedded cubin made for the GPU (sm_90a on an H100
# or H200) as it is; the PTX (5.4 MB, 33 kernels, MMOE_GPU_KERNELS=ptx) it
# JIT-compiles at the first load and caches on disk. Timed: a load with the
# cubin, then the PTX twice (its JIT, then the cache) in a fresh cache.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
export CUDA_CACHE_PATH=$PWD/jit-cache
rm -rf "$CUDA_CACHE_PATH"
if want load; then
log "0b. first GPU model load with the cubin, then with the PTX (the driver's JIT), then the PTX again (cached)"
for load in cubin ptx-first ptx-second; do
  start=$(date +%s%N)
  MMOE_GPU_KERNELS=$([ $load = cubin ] && echo auto || echo ptx) timeout 120 ./bin/mmoe score \
    --model parity/seed-0/model.mmoe --requests parity/seed-0/requests.jsonl \
    --out "$out/$load-load.jsonl" --device cuda > "$out/$load-load.log" 2>&1
  echo "$load load and score: exit $?, $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$out/check.log"
done
fi
./bin/mmoe inspect models/demo.mmoe --device cuda 2>&1 | grep -i "device" | head -2 | tee -a "$out/check.log"

# The two GPU tests that run every kernel choice (each a model load and
# two calls per choice and case) come after the timings.
choice_tests=(gpu_equivalent_choices_give_identical_logits gpu_kernel_variants_match_cpu)
tests_rc=not-run
if want tests; then
log "1. GPU tests (CUDA backend vs CPU exact path; small and demo models), but the two of every kernel choice"
timeout 120 ./bin/gpu-tests --nocapture --test-threads 1 "${choice_tests[@]/#/--skip=}" 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
fi

if want bench; then
log "3. engine benchmark (end to end, host features in, host scores out)"
# MMOE_GPU_TUNE=log: the tile sizes timed for each GEMM launch, to stderr.
# f16 also times first calls (--first-call): the first of each size in the
# process (tile timing and capture), a new session's first call (capture),
# a warm_up for the batch (every bucket up to it) and the call after it.
# And --phases: where a call's time goes (host packing, launch, wait; the
# upload and the graph on the device, by CUDA events).
for precision in f16 f32; do
  in_budget "bench $precision" || break
  MMOE_GPU_TUNE=log timeout 60 ./bin/mmoe bench --model models/demo.mmoe --device cuda --precision $precision \
    --batch 1,64,256,1024,4096 --iters 300 --max-seconds $([ $precision = f16 ] && echo 3 || echo 1) \
    $([ $precision = f16 ] && echo --staging --first-call --phases) \
    --json "$out/bench-$precision.json" 2>&1 | tee "$out/bench-$precision.txt"
done
grep -h "GPU tiles" "$out/bench-f16.txt" | tee -a "$out/check.log"
in_budget "bench 8 threads" && timeout 40 ./bin/mmoe bench --model models/demo.mmoe --device cuda --precision f16 \
  --batch 256 --threads 8 --iters 300 --max-seconds 3 --json "$out/bench-f16-8threads.json" 2>&1 \
  | tee "$out/bench-f16-8threads.txt"
# The host-side choices, each pair one process after the other (--phases):
# write-combined against cached pinned staging (cached is the default
# since 2026-11-27, never timed on a GPU); candidate values uploaded as f32
# against fp16 (the default since 2026-11-28, never timed on a GPU: 625
# rather than 1,136 bytes a candidate of the benchmark model, ids as u32
# in both); the packing alone against 3 helper threads (2026-11-28, off by
# default), parked between calls (an idle server) and spinning 200 µs after
# each (these calls follow each other at once); programmatic dependent
# launch (off by default) against stream order, on the batches where the
# graph is a chain of short kernels. PHASES=all adds the upload's pieces
# (one copy after the packing, 1 MiB, 256 KiB), settled on 2026-11-27 for
# write-combined staging.
phase_runs=("staging-wc:MMOE_GPU_STAGING_WC=1" "staging-cached:MMOE_GPU_STAGING_WC=0"
  "values-f32:MMOE_GPU_HALF_VALUES=0" "values-f16:MMOE_GPU_HALF_VALUES=1"
  "pack0:MMOE_GPU_PACK_THREADS=0" "pack3:MMOE_GPU_PACK_THREADS=3"
  "pack3-spin:MMOE_GPU_PACK_THREADS=3 MMOE_GPU_PACK_SPIN_US=200" "pdl0:MMOE_GPU_PDL=0" "pdl:MMOE_GPU_PDL=1")
[ "${PHASES:-}" = all ] && phase_runs+=("upload1:MMOE_GPU_UPLOAD_CHUNK=0" "chunk1m:MMOE_GPU_UPLOAD_CHUNK=1024"
  "chunk256k:MMOE_GPU_UPLOAD_CHUNK=256")
for v in "${phase_runs[@]}"; do
  in_budget "phases ${v%%:*}" || break
  env ${v#*:} timeout 30 ./bin/mmoe bench --model models/demo.mmoe --device cuda --precision f16 \
    --batch $([[ ${v%%:*} == pdl* ]] && echo 1,64,256,1024 || echo 1024,4096) \
    --iters 200 --max-seconds 1 --phases --json "$out/phases-${v%%:*}.json" > "$out/phases-${v%%:*}.txt" 2>&1
done
fi

if want torch; then
log "4. PyTorch baseline on the same weights (x0 in, scores out)"
timeout 90 python3 torch_baseline.py --model models/demo.mmoe --reference torch_parity --batch 1,64,256,1024,4096 --iters 300 --max-seconds 2 \
  --json "$out/torch.json" 2>&1 | tee "$out/torch.txt"
fi

if want torch-compile; then
log "4c. PyTorch baseline under torch.compile (mode reduce-overhead: fused kernels, CUDA graphs), fp16"
# The eager and hand-captured baselines run about 70 kernels a call; a user
# of PyTorch would compile it. One compilation per batch size, outside the
# timing; the table line gives its seconds and the gap to eager.
timeout 100 python3 torch_baseline.py --model models/demo.mmoe --compile --batch 1,256,1024 --iters 300 --max-seconds 1 \
  --json "$out/torch-compile.json" 2>&1 | tee "$out/torch-compile.txt"
echo "torch.compile baseline: exit ${PIPESTATUS[0]}" | tee -a "$out/check.log"
fi

all_variants=("fused:MMOE_GPU_FUSED_HEADS=1" "wide:MMOE_GPU_TILES=wide MMOE_GPU_TUNE=0" "f32x:MMOE_GPU_HALF_X=0"
  "stream1:MMOE_GPU_STREAMS=1" "untuned:MMOE_GPU_TUNE=0" "upload1:MMOE_GPU_UPLOAD_CHUNK=0" "wc:MMOE_GPU_STAGING_WC=1"
  "pdl:MMOE_GPU_PDL=1" "f32v:MMOE_GPU_HALF_VALUES=0" "f32kept:MMOE_GPU_HALF_ONLY=0" "fnorm:MMOE_GPU_FUSED_NORM=1"
  "flogit:MMOE_GPU_FUSED_LOGIT=1" "wgmma:MMOE_GPU_WGMMA=1 MMOE_GPU_TUNE=log"
  "277801c:MMOE_GPU_FUSED_HEADS=0 MMOE_GPU_HALF_X=0 MMOE_GPU_STREAMS=1 MMOE_GPU_TUNE=0 MMOE_GPU_UPLOAD_CHUNK=0 MMOE_GPU_STAGING_WC=1")
# VARIANTS (comma-separated names, or `all`): the kernel choices timed end
# to end (step 3) and compared with the CPU (parity-variants). By default
# the three whose kernels are new and whose answer the phases above do
# not give: each task's logit fused into its tower (off by default), the
# f32 copies kept beside the fp16 ones (dropped by default since
# 2026-11-28), and Hopper's warpgroup MMA among the tile choices (off by
# default; with the tuning's log: each GEMM's time at every choice). PDL, write-combined staging and f32 values are timed by the
# phases; the fused LayerNorm on the example model (3b). The others were
# timed twice on an H200 on 2026-11-27 and set the defaults (the GPU tests
# still check their scores); `277801c` is the path timed on 2026-11-26.
chosen=,${VARIANTS:-flogit,f32kept,wgmma},
variants=()
for v in "${all_variants[@]}"; do
  [[ $chosen == ,all, || $chosen == *",${v%%:*},"* ]] && variants+=("$v")
done
echo "variants: ${variants[*]%%:*}" | tee -a "$out/check.log"
if want variants; then
log "3. the kernel choices, end to end: ${variants[*]%%:*}"
for v in "${variants[@]}"; do
  name=${v%%:*}; vars=${v#*:}
  # The benchmark model has no LayerNorm: the fused one is timed in 3b.
  [ "$name" = fnorm ] && continue
  in_budget "variant $name" || break
  env $vars timeout 50 ./bin/mmoe bench --model models/demo.mmoe --device cuda --precision f16 \
    --batch 1,64,256,1024,4096 --iters 300 --max-seconds 1 --json "$out/bench-f16-$name.json" 2>&1 | tee "$out/bench-f16-$name.txt"
  in_budget "variant $name, 8 threads" || break
  env $vars timeout 30 ./bin/mmoe bench --model models/demo.mmoe --device cuda --precision f16 --batch 256 --threads 8 \
    --iters 200 --max-seconds 1 --json "$out/bench-f16-8threads-$name.json" > "$out/bench-f16-8threads-$name.txt" 2>&1
done
fi

choice_tests_rc=not-run
if want tests-choices; then
log "1d. GPU tests of every kernel choice: ${choice_tests[*]}"
timeout 150 ./bin/gpu-tests --nocapture --test-threads 1 --exact "${choice_tests[@]}" 2>&1 \
  | tee "$out/gpu-tests-choices.log"
choice_tests_rc=${PIPESTATUS[0]}
fi

if want bilinear; then
log "3b. FinalMLP's bilinear sum on MODEL.md's example model (one expert of each type), two layouts one after the other"
# Layout version 2 (the default since 2026-11-28, not yet timed on a GPU):
# the sum as a tensor-core Linear layer over the heads' outer products
# (outer_heads, then a grouped GEMM); version 1: the direct `bilinear`
# kernel, a thread per output, over the flat weight.
for v in 1 2; do
  in_budget "example model, layout version $v" || break
  example_model $v
  timeout 40 ./bin/mmoe bench --model models/example-v$v.mmoe --device cuda --precision f16 --batch 1,256,1024 \
    --iters 200 --max-seconds 1 --json "$out/bench-bilinear-v$v.json" > "$out/bench-bilinear-v$v.txt" 2>&1
  echo "example model, layout version $v: exit $?" | tee -a "$out/check.log"
done
# Its serial MaskNet's two LayerNorms as separate launches (the default)
# and fused into the GEMM epilogue (MMOE_GPU_FUSED_NORM=1, since
# 2026-11-28, not yet timed on a GPU), one after the other.
for v in 0 1; do
  in_budget "example model, MMOE_GPU_FUSED_NORM=$v" || break
  example_model 2
  MMOE_GPU_FUSED_NORM=$v timeout 40 ./bin/mmoe bench --model models/example-v2.mmoe --device cuda --precision f16 \
    --batch 1,256,1024 --iters 200 --max-seconds 1 --json "$out/bench-example-fnorm$v.json" > "$out/bench-example-fnorm$v.txt" 2>&1
  echo "example model, MMOE_GPU_FUSED_NORM=$v: exit $?" | tee -a "$out/check.log"
done
# PyTorch on the same model (every expert type; checked against the numpy
# reference first), fp32 and fp16, eager and with CUDA graphs.
if in_budget "example model, PyTorch"; then
  example_model 2
  timeout 90 python3 torch_baseline.py --model models/example-v2.mmoe --reference torch_parity --batch 1,256,1024 \
    --iters 200 --max-seconds 1 --json "$out/torch-example.json" > "$out/torch-example.txt" 2>&1
  echo "example model, PyTorch: exit $?; $(grep -m1 'numpy reference' "$out/torch-example.txt")" | tee -a "$out/check.log"
fi
fi

if want parity; then
log "2. random models: cuda f32 and f16 vs cpu"
f32_pairs=(); f16_pairs=(); failed_runs=0
for dir in parity/seed-*; do
  in_budget "parity from $dir on" || break
  m=$dir/model.mmoe; r=$dir/requests.jsonl
  timeout 20 ./bin/mmoe score --model "$m" --requests "$r" --out "$dir/cpu.jsonl" >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
  timeout 20 ./bin/mmoe score --model "$m" --requests "$r" --out "$dir/f32.jsonl" --device cuda --precision f32 >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
  timeout 20 ./bin/mmoe score --model "$m" --requests "$r" --out "$dir/f16.jsonl" --device cuda --precision f16 >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
  f32_pairs+=("$dir/cpu.jsonl" "$dir/f32.jsonl"); f16_pairs+=("$dir/cpu.jsonl" "$dir/f16.jsonl")
done
echo "failed score runs: $failed_runs" | tee -a "$out/check.log"
python3 compare_scores.py --bound 1e-3 --label "random cuda-f32 vs cpu" --json "$out/parity-f32.json" "${f32_pairs[@]}" 2>&1 | tee -a "$out/check.log"
python3 compare_scores.py --bound 2e-2 --label "random cuda-f16 vs cpu" --json "$out/parity-f16.json" "${f16_pairs[@]}" 2>&1 | tee -a "$out/check.log"
fi

if want parity-variants; then
# The kernel choices (src/gpu/launch_plan.rs, PlanOptions, `variants` above;
# VARIANTS=all for every one) besides the defaults (task heads as separate
# launches, fp16 GEMM inputs, graph branches on up to 4 streams, tile sizes
# timed per GEMM launch, upload in pieces), selected by environment (`wide`
# untuned: 128x128 tiles wherever a bucket has 512 rows or more): the first
# 12 random models with a request of 600 candidates (512-row bucket; the
# choices that change small buckets also their small requests), f16,
# against the CPU. PDL, f32 values and the fused LayerNorm are always
# among them here (off by default, or never compared on a GPU).
log "2b. random models: each kernel choice (f16) vs cpu: ${variants[*]%%:*} pdl f32v fnorm"
declare -A variant_pairs
parity_variants=("${variants[@]}")
for v in "pdl:MMOE_GPU_PDL=1" "f32v:MMOE_GPU_HALF_VALUES=0" "fnorm:MMOE_GPU_FUSED_NORM=1"; do
  [[ " ${parity_variants[*]%%:*} " == *" ${v%%:*} "* ]] || parity_variants+=("$v")
done
failed_runs=0
for dir in parity/seed-*; do
  m=$dir/model.mmoe; r=$dir/requests-600.jsonl
  [ -f "$r" ] || continue
  [ "${dir##*-}" -lt 12 ] || continue
  in_budget "choice parity from $dir on" || break
  timeout 20 ./bin/mmoe score --model "$m" --requests "$dir/requests.jsonl" --out "$dir/cpu.jsonl" >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
  timeout 20 ./bin/mmoe score --model "$m" --requests "$r" --out "$dir/cpu-600.jsonl" >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
  for v in "${parity_variants[@]}"; do
    name=${v%%:*}; vars=${v#*:}
    # One upload instead of pieces, or write-combined staging, changes no
    # kernel; nor do kept f32 buffers (f32kept) change a logit (the GPU
    # tests compare them bit for bit). f32 values (f32v) change the
    # features kernels' input: compared on the 600-candidate requests.
    [ "$name" = upload1 ] || [ "$name" = wc ] || [ "$name" = f32kept ] && continue
    # Wide tiles change only buckets of 512 rows and more. PDL changes
    # every launch; the small requests (32-row bucket) are where it should
    # matter. The fused LayerNorm and logits: both sizes (one band and several).
    for req in $([ "$name" = fused ] || [ "$name" = f32x ] || [ "$name" = pdl ] || [ "$name" = fnorm ] || [ "$name" = flogit ] && echo requests) requests-600; do
      base=$([ $req = requests ] && echo cpu || echo cpu-600)
      env $vars timeout 20 ./bin/mmoe score --model "$m" --requests "$dir/$req.jsonl" --out "$dir/$name-$req.jsonl" \
        --device cuda --precision f16 >> "$out/parity-runs.log" 2>&1 || failed_runs=$((failed_runs+1))
      variant_pairs[$name]+="$dir/$base.jsonl $dir/$name-$req.jsonl "
    done
  done
done
echo "failed score runs: $failed_runs" | tee -a "$out/check.log"
for v in "${parity_variants[@]}"; do
  name=${v%%:*}
  [ -n "${variant_pairs[$name]:-}" ] && python3 compare_scores.py --bound 2e-2 --label "random cuda-f16 $name vs cpu" \
    --json "$out/parity-f16-$name.json" ${variant_pairs[$name]} 2>&1 | tee -a "$out/check.log"
done
fi

# compute-sanitizer on one random model: $1 names the part (the log's
# name), $2 the tool, $3 the environment, then the `mmoe` arguments.
sanitize() {
  local name=$1 tool=$2 vars=$3
  shift 3
  in_budget "compute-sanitizer $name" || return 1
  local extra=()
  [ "$tool" = racecheck ] && extra=(--racecheck-report all)
  env $vars timeout 60 compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 ./bin/mmoe "$@" \
    > "$out/$name.log" 2>&1
  local rc=$?
  if [ "$tool" = racecheck ]; then
    echo "$name: exit $rc ($(grep -m1 -o 'RACECHECK SUMMARY.*' "$out/$name.log"))" | tee -a "$out/check.log"
  else
    echo "$name: exit $rc ($(grep -c 'Invalid' "$out/$name.log") invalid accesses)" | tee -a "$out/check.log"
  fi
}
seed0=(--model parity/seed-0/model.mmoe --device cuda)
if ! command -v compute-sanitizer >/dev/null; then
  [[ $steps == *",sanitizer"* ]] && echo "compute-sanitizer not found" | tee -a "$out/check.log"
else
if want sanitizer; then
log "1b. compute-sanitizer on the default path: memcheck (f16, f32), racecheck (f16; the plan's tiles: the tuning's runs are many)"
for precision in f16 f32; do
  sanitize "memcheck-$precision" memcheck "" score "${seed0[@]}" --requests parity/seed-0/requests.jsonl \
    --out "$out/sanitizer-$precision.jsonl" --precision $precision || break
done
sanitize racecheck racecheck "MMOE_GPU_TUNE=0" score "${seed0[@]}" --requests parity/seed-0/requests.jsonl \
  --out "$out/racecheck.jsonl" --precision f16
# The warpgroup-MMA tiles (opt-in, never run on a GPU), forced on every
# GEMM: memcheck at 600 candidates (partial tiles).
for choice in 15 16; do
  sanitize "memcheck-choice$choice" memcheck "MMOE_GPU_WGMMA=1 MMOE_GPU_TUNE=choice=$choice" score "${seed0[@]}" \
    --requests parity/seed-0/requests-600.jsonl --out "$out/memcheck-choice$choice.jsonl" --precision f16 || break
done
fi
if want sanitizer-extra; then
log "1c. compute-sanitizer on the opt-in choices (wide tiles at 600 candidates, PDL, the fused LayerNorm and logits), and every tile choice forced on every GEMM"
sanitize memcheck-wide memcheck "MMOE_GPU_TILES=wide MMOE_GPU_TUNE=0" score "${seed0[@]}" \
  --requests parity/seed-0/requests-600.jsonl --out "$out/sanitizer-wide.jsonl" --precision f16
sanitize memcheck-pdl memcheck "MMOE_GPU_PDL=1" score "${seed0[@]}" --requests parity/seed-0/requests.jsonl \
  --out "$out/sanitizer-pdl.jsonl" --precision f16
# MaskNet's LayerNorm fused into the GEMM epilogue: its band counters and
# statistics, on MODEL.md's example model (256-wide MaskNet blocks: several
# column tiles a band; the random models' blocks fit one tile), 1 and 600
# candidates; each task's logit fused into its tower's last hidden layer
# on the benchmark model's 128-wide towers. f16 and f32.
example_model 2
for precision in f16 f32; do
  sanitize "memcheck-fnorm-$precision" memcheck "MMOE_GPU_FUSED_NORM=1 MMOE_GPU_TUNE=0" bench \
    --model models/example-v2.mmoe --device cuda --precision $precision --batch 1,600 --iters 2 --max-seconds 1
  sanitize "memcheck-flogit-$precision" memcheck "MMOE_GPU_FUSED_LOGIT=1 MMOE_GPU_TUNE=0" bench \
    --model models/demo.mmoe --device cuda --precision $precision --batch 1,600 --iters 2 --max-seconds 1
done
# Every tile choice of the fp16 GEMMs forced on every GEMM (3: 128×64,
# sharing its pipeline with 64×128; 5, 6: 64-column K stages; 7, 8: 32×32;
# deep pipelines in dynamic shared memory: 9: 128×128 of 8 warps, 10: of
# 4 warps, 11: 128×64 with six stages; 12–14: 32×32, 32×64 and 64×64 with
# 16, 12 and 8 stages; 15, 16: the warpgroup MMA, 128×128 and 64×128,
# with MMOE_GPU_WGMMA=1), which only timing picks otherwise: racecheck,
# and memcheck at 600 candidates (partial tiles). The deep ones first: the
# tuning takes them by default, and they were never run on a GPU.
for choice in 9 10 11 12 13 14 15 16 3 5 6 7 8; do
  sanitize "racecheck-choice$choice" racecheck "MMOE_GPU_WGMMA=1 MMOE_GPU_TUNE=choice=$choice" score "${seed0[@]}" \
    --requests parity/seed-0/requests.jsonl --out "$out/racecheck-choice$choice.jsonl" --precision f16 || break
  sanitize "memcheck-choice$choice" memcheck "MMOE_GPU_WGMMA=1 MMOE_GPU_TUNE=choice=$choice" score "${seed0[@]}" \
    --requests parity/seed-0/requests-600.jsonl --out "$out/memcheck-choice$choice.jsonl" --precision f16 || break
done
fi
fi

if want torch-parity; then
log "4b. parity with PyTorch on the GPU path: a torch module of MODEL.md trained and exported, scored by CUDA (f32 and f16 compute), 8 random models"
for precision in f32 f16; do
  in_budget "torch parity $precision" || break
  bounds=$([ $precision = f32 ] && echo "--logit-rtol 1e-3 --prob-atol 1e-4" || echo "--logit-rtol 2e-2 --prob-atol 5e-3")
  # Failing seeds' files stay in the work dir: under $out, they come back.
  mkdir -p "$out/torch-parity-$precision"
  TMPDIR="$out/torch-parity-$precision" timeout 100 python3 torch_parity/test_torch_parity.py --mmoe ./bin/mmoe --seeds 8 \
    --score-args "--device cuda --precision $precision" $bounds > "$out/torch-parity-$precision.txt" 2>&1
  echo "torch parity, cuda $precision: exit $?; $(grep -E 'max \|dlogit\||passed' "$out/torch-parity-$precision.txt" | tr '\n' ' ')" \
    | tee -a "$out/check.log"
done
fi

# Nsight Compute at the GPU's own clocks (--clock-control none: the clocks
# the benchmark runs at, not base) over the fourth graph of the demo model
# at $2 candidates, kernel by kernel (speed of light, occupancy, warp
# stalls), with the tile choice $1 (MMOE_GPU_TUNE's value); the report in
# $out/ncu-$3.txt, a line per kernel in $out/ncu-summary-$3.txt.
ncu_graph() {
  local report="$out/ncu-$3.txt"
  MMOE_GPU_TUNE=$1 timeout 100 ncu --cache-control none --clock-control none --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats --launch-skip 30 --launch-count 10 ./bin/mmoe bench \
    --model models/demo.mmoe --device cuda --precision f16 --batch "$2" --iters 5 --max-seconds 1 > "$report" 2>&1
  awk '/^  [a-z_0-9]+ \(/ {sub(/, Context.*/, ""); printf "\n%s", $0}
       /Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per Thread|Warp Cycles Per Issued Instruction/ {
         gsub(/ +/, " "); printf " |%s", $0} END {print ""}' "$report" | tee "$out/ncu-summary-$3.txt"
}

if want ncu; then
log "5. per-kernel times (Nsight Compute at the GPU's own clocks, one graph of 1024 and one of 1 candidate, f16)"
# The default plan of the benchmark model is 10 kernels per graph (task heads
# as separate launches, the towers' last layers writing the logits;
# launch_plan.rs tests it): skip 3 graphs, profile the 4th, at 1024
# candidates and at one (the 32-row bucket, where the graph's time is
# latency). The plan's tiles (MMOE_GPU_TUNE=0): tuning's own launches would
# come first.
if command -v ncu >/dev/null; then
  for batch in 1024 1; do
    in_budget "ncu at $batch candidates" || break
    ncu_graph 0 $batch $batch
    echo "ncu, $batch candidates: $(grep -c Duration "$out/ncu-$batch.txt") kernels profiled, \
$(awk '/Duration/ {v = $NF; gsub(/,/, "", v); u = $(NF-1); if (u ~ /^ns/) v /= 1000; if (u ~ /^ms/) v *= 1000; s += v}
         END {printf "%.1f", s}' "$out/ncu-$batch.txt") µs in all" | tee -a "$out/check.log"
  done
else
  echo "ncu not found" | tee -a "$out/check.log"
fi
fi

if want ncu-deep && command -v ncu >/dev/null; then
log "5b. the deep-pipeline tiles under Nsight Compute: every GEMM forced to 128×128 of 4 warps (choice 10) and to the warpgroup MMA's 128×128 (choice 15) at 1024 candidates, to 32×32 with 16 stages (choice 12) at 1"
# The tuning log (bench-f16.txt) times every choice; this says why.
for spec in 1024:10 1024:15 1:12; do
  batch=${spec%:*} choice=${spec#*:}
  in_budget "ncu-deep at $batch candidates, choice $choice" || break
  MMOE_GPU_WGMMA=1 ncu_graph choice=$choice $batch $batch-choice$choice
done
fi

log "summary"
python3 - "$out" <<'PY' 2>&1 | tee "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
e16, e32, t = load("bench-f16.json"), load("bench-f32.json"), load("torch.json")
all_names = ["fused", "wide", "f32x", "stream1", "untuned", "upload1", "wc", "pdl", "f32v", "f32kept", "flogit", "wgmma",
             "277801c"]
parity_names = all_names + ["fnorm"]
# Columns only for the kernel choices this run timed.
names = [n for n in all_names if load(f"bench-f16-{n}.json")]
variants = [load(f"bench-f16-{n}.json") for n in names]
print(f"{'batch':>6} {'mmoe f16 p50':>13} " + " ".join(f"{'f16 ' + n:>15}" for n in names)
      + f" {'mmoe f32 p50':>13} {'torch16 eager':>14} {'torch16 graph':>14}")
for b in ["1", "64", "256", "1024", "4096"]:
    def get(report, key=None):
        try:
            r = report["results"] if key is None else report["results"][key]
            return f"{r[b]['p50_us']:.1f}"
        except Exception:
            return "-"
    print(f"{b:>6} {get(e16):>13} " + " ".join(f"{get(v):>15}" for v in variants)
          + f" {get(e32):>13} {get(t, 'fp16 eager'):>14} {get(t, 'fp16 graph'):>14}")
for name in ["parity-f32.json", "parity-f16.json"] + [f"parity-f16-{n}.json" for n in parity_names]:
    p = load(name)
    if p:
        print(f"{p['label']}: max {p['max']:.2e} (bound {p['bound']:g})")
if e16 and e16.get("staging"):
    print("host packing of a request on this CPU into plain memory, median µs (memcpy of as many bytes"
          " in one call; in 64 KiB copies; shared with helper threads parked / spinning): "
          + ", ".join(f"{b}: {r['pack_us']:.1f} ({r['memcpy_us']:.1f}; {r.get('memcpy_in_pieces_us', float('nan')):.1f};"
                      f" {r.get('helper_threads', 0)} helpers {r.get('pack_shared_parked_us', float('nan')):.1f}"
                      f" / {r.get('pack_shared_spinning_us', float('nan')):.1f})"
                      for b, r in e16["staging"].items()))
if e16 and e16.get("first_calls"):
    print("first calls, f16 (µs): batch: first of that size in the process / new session's first / warm_up / first after warm_up")
    for r in e16["first_calls"]:
        print(f"  {r['batch']}: {r['first_in_process_us']:.0f} / {r['cold_first_us']:.0f} / {r['warm_up_us']:.0f}"
              f" / {r['first_after_warm_up_us']:.1f}")
for label, report in [("", e16), (" one upload", load("phases-upload1.json")), (" 1 MiB pieces", load("phases-chunk1m.json")),
                      (" write-combined staging", load("phases-staging-wc.json")),
                      (" cached staging", load("phases-staging-cached.json")),
                      (" cached staging, 256 KiB pieces", load("phases-chunk256k.json")),
                      (" stream order (PDL's baseline)", load("phases-pdl0.json")),
                      (" programmatic dependent launch", load("phases-pdl.json")),
                      (" f32 candidate values", load("phases-values-f32.json")),
                      (" fp16 candidate values (the default)", load("phases-values-f16.json")),
                      (" packing alone (the default)", load("phases-pack0.json")),
                      (" packing with 3 parked helpers", load("phases-pack3.json")),
                      (" packing with 3 helpers spinning 200 µs", load("phases-pack3-spin.json"))]:
    if report and report.get("phases"):
        print(f"phases, f16{label} (µs, medians): batch: total = host pack / launch / wait; device: upload span, graph")
        for b, r in report["phases"].items():
            print(f"  {b}: {r['total_us']:.1f} = {r['pack_us']:.1f} / {r['launch_us']:.1f} / {r['wait_us']:.1f};"
                  f" device {r['device_upload_us']:.1f}, {r['device_graph_us']:.1f}")
bilinear = [load(f"bench-bilinear-v{v}.json") for v in (1, 2)]
torch_example = load("torch-example.json") or {"results": {}}
if all(bilinear):
    print("MODEL.md's example model, p50 µs: batch: mmoe f16 with the bilinear sum direct (layout 1) / as a Linear"
          " layer (layout 2); torch fp16 eager / graph")
    for b in ["1", "256", "1024"]:
        def torch_p50(variant):
            try:
                return f"{torch_example['results'][variant][b]['p50_us']:.1f}"
            except Exception:
                return "-"
        try:
            print(f"  {b}: {bilinear[0]['results'][b]['p50_us']:.1f} / {bilinear[1]['results'][b]['p50_us']:.1f};"
                  f" {torch_p50('fp16 eager')} / {torch_p50('fp16 graph')}")
        except Exception:
            pass
fnorm = [load(f"bench-example-fnorm{v}.json") for v in (0, 1)]
if all(fnorm):
    print("MODEL.md's example model, p50 µs: batch: MaskNet's LayerNorms as separate launches / fused into the GEMM epilogue")
    for b in ["1", "256", "1024"]:
        try:
            print(f"  {b}: {fnorm[0]['results'][b]['p50_us']:.1f} / {fnorm[1]['results'][b]['p50_us']:.1f}")
        except Exception:
            pass
for suffix in [""] + [f"-{n}" for n in names]:
    eight = load(f"bench-f16-8threads{suffix}.json")
    if eight:
        print(f"8 threads x 256 candidates (f16{suffix.replace('-', ' ')}): "
              f"{eight['results']['256']['candidates_per_s']:.0f} candidates/s")
PY
grep -h "^torch parity" "$out/check.log" | tee -a "$out/summary.txt"
echo "gpu tests exit status: $tests_rc; of every kernel choice: $choice_tests_rc" | tee -a "$out/summary.txt"
cp "$out/summary.txt" "$out/check.log" "$root_out/"
tar czf "$root_out/logs.tgz" -C "$root_out" logs && rm -rf "$out"
