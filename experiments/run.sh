#!/usr/bin/env bash
# Regenerates every experiment of experiments/RESULTS.md from scratch:
# synthetic logs, every model trained, packed, evaluated with bootstrap
# intervals, and the report. Knobs (environment): ROWS (1000000), SEED (1),
# RELATEDNESS (0.7), OUT (experiments/out: data and models, not committed),
# RESULTS (experiments/results: eval JSON, text and PNG, committed),
# REPORT (experiments/RESULTS.md: where the tables go), EXPERIMENTS (which
# to run, default "1 2 2s 3 4"; the report needs all of them in RESULTS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
SEED=${SEED:-1}
RELATEDNESS=${RELATEDNESS:-0.7}
OUT=${OUT:-experiments/out}
RESULTS=${RESULTS:-experiments/results}
REPORT=${REPORT:-experiments/RESULTS.md}
EXPERIMENTS=${EXPERIMENTS:-1 2 2s 3 4}
want() { [[ " $EXPERIMENTS " == *" $1 "* ]]; }
CONFIGS=experiments/configs
MMOE=target/release/mmoe
TRAIN=target/release/mmoe-train

# Built one at a time: together, cargo would unify their features and rebuild both.
cargo build --release --bin mmoe
cargo build --release -p mmoe-train
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import pyarrow, PIL" 2>/dev/null; then
  python3 -m venv .venv && .venv/bin/pip install -q numpy pyarrow pillow
fi
PY=.venv/bin/python
mkdir -p "$OUT" "$RESULTS"
START=$(date +%s)

# Data: 66 days (day 65 only evaluates the last incremental model); every
# experiment config has the same inputs and tasks, so one table serves all.
$MMOE synth --config $CONFIGS/mmoe.json --rows "$ROWS" --days 66 --seed "$SEED" \
  --relatedness "$RELATEDNESS" --out "$OUT/logs.parquet" 2>&1 | tee "$OUT/synth.log"
$PY experiments/split_days.py "$OUT/logs.parquet" "$OUT/eval-60-65.parquet" 60 65
for d in 61 62 63 64 65; do
  $PY experiments/split_days.py "$OUT/logs.parquet" "$OUT/day-$d.parquet" "$d" $((d + 1))
done

# train NAME ARGS...: trains on $DATA (default the logs) into $OUT/NAME,
# packs $OUT/NAME.mmoe (fp16).
train() {
  local name=$1
  shift
  $TRAIN --data "${DATA:-$OUT/logs.parquet}" --out "$OUT/$name" --seed "$SEED" --quiet \
    --pack "$OUT/$name.mmoe" "$@" 2>&1 | tee "$OUT/$name.log"
}
# compare LABEL DATA A.mmoe B.mmoe [eval args]: B against A, with a
# request-level bootstrap interval; JSON, text and PNG in $RESULTS.
compare() {
  local label=$1 data=$2 a=$3 b=$4
  shift 4
  $MMOE eval --model "$a" --model "$b" --data "$data" --bootstrap 300 --seed "$SEED" \
    --json "$RESULTS/$label.json" --plot "$RESULTS/$label.png" "$@" > "$RESULTS/$label.txt"
  echo "compared $label"
}

# 1. Shared-bottom DCNv2, deeper DCNv2s, MMoE; light vs MLP gates.
#    One epoch each (a second one overfits the id embeddings).
EVAL="$OUT/eval-60-65.parquet"
TEACHER="$OUT/mmoe-large.mmoe"
if want 1; then
for model in dcn-shared dcn-deep dcn-deeper mmoe mmoe-large mmoe-mlp-gates; do
  train "$model" --config "$CONFIGS/$model.json" --days 0..60 --eval-days 60..65 --epochs 1
done
for b in dcn-deep dcn-deeper mmoe mmoe-large; do
  compare "1-dcn-shared-vs-$b" "$EVAL" "$OUT/dcn-shared.mmoe" "$OUT/$b.mmoe"
done
compare "1-light-vs-mlp-gates" "$EVAL" "$OUT/mmoe.mmoe" "$OUT/mmoe-mlp-gates.mmoe"
fi

# 2. Retention: the teacher (mmoe-large above) saw days 0..60; students
#    (the mmoe architecture) see only 30..60.
# retention PREFIX TEACHER FULL EVAL: three students against a model that kept all the data.
retention() {
  local p=$1 teacher=$2 full=$3 eval=$4
  train "${p}student-none" --config $CONFIGS/mmoe.json --days 30..60 --eval-days 60..65 --epochs 1
  train "${p}student-pointwise" --config $CONFIGS/mmoe.json --days 30..60 --eval-days 60..65 --epochs 1 \
    --teacher "$teacher" --distill pointwise-bce
  train "${p}student-pairwise" --config $CONFIGS/mmoe.json --days 30..60 --eval-days 60..65 --epochs 1 \
    --teacher "$teacher" --distill pairwise
  train "${p}student-pairwise-0.1" --config $CONFIGS/mmoe.json --days 30..60 --eval-days 60..65 --epochs 1 \
    --teacher "$teacher" --distill pairwise --lambda 0.1
  local r="${p:+2s}"
  r="${r:-2}"
  compare "$r-full-vs-none" "$eval" "$full" "$OUT/${p}student-none.mmoe"
  compare "$r-none-vs-pointwise" "$eval" "$OUT/${p}student-none.mmoe" "$OUT/${p}student-pointwise.mmoe"
  compare "$r-none-vs-pairwise" "$eval" "$OUT/${p}student-none.mmoe" "$OUT/${p}student-pairwise.mmoe"
  compare "$r-full-vs-pairwise" "$eval" "$full" "$OUT/${p}student-pairwise.mmoe"
  compare "$r-full-vs-pointwise" "$eval" "$full" "$OUT/${p}student-pointwise.mmoe"
  compare "$r-none-vs-pairwise-0.1" "$eval" "$OUT/${p}student-none.mmoe" "$OUT/${p}student-pairwise-0.1.mmoe"
  compare "$r-teacher-vs-full" "$eval" "$teacher" "$full"
}
if want 2; then
  retention "" "$TEACHER" "$OUT/mmoe.mmoe" "$EVAL"
fi

# 2s. The same in a stationary world (--drift 0: the user × ad interaction
#     never changes), where old days are as useful as recent ones.
if want 2s; then
  $MMOE synth --config $CONFIGS/mmoe.json --rows "$ROWS" --days 66 --seed "$SEED" --drift 0 \
    --relatedness "$RELATEDNESS" --out "$OUT/stationary.parquet" 2>&1 | tee "$OUT/synth-stationary.log"
  $PY experiments/split_days.py "$OUT/stationary.parquet" "$OUT/stationary-eval-60-65.parquet" 60 65
  DATA="$OUT/stationary.parquet" train stationary-mmoe-large --config $CONFIGS/mmoe-large.json \
    --days 0..60 --eval-days 60..65 --epochs 1
  DATA="$OUT/stationary.parquet" train stationary-mmoe --config $CONFIGS/mmoe.json \
    --days 0..60 --eval-days 60..65 --epochs 1
  DATA="$OUT/stationary.parquet" retention stationary- "$OUT/stationary-mmoe-large.mmoe" \
    "$OUT/stationary-mmoe.mmoe" "$OUT/stationary-eval-60-65.parquet"
fi

# 3. Incremental: continue the pairwise-distilled student one day at a
#    time on 60..65, without and with distillation; each day's model is
#    evaluated on the next day.
if want 3; then
train inc-plain --init "$OUT/student-pairwise" --stage incremental --days 60..65
train inc-distill --init "$OUT/student-pairwise" --stage incremental --days 60..65 \
  --teacher "$TEACHER" --distill pairwise --distill-incremental
for d in 60 61 62 63 64; do
  for run in inc-plain inc-distill; do
    $MMOE pack --config "$OUT/$run/config.json" --weights "$OUT/$run/day-$d/model.safetensors" \
      --out "$OUT/$run-day-$d.mmoe" 2>/dev/null
  done
  next="$OUT/day-$((d + 1)).parquet"
  compare "3-day-$d-frozen-vs-plain" "$next" "$OUT/student-pairwise.mmoe" "$OUT/inc-plain-day-$d.mmoe"
  compare "3-day-$d-plain-vs-distill" "$next" "$OUT/inc-plain-day-$d.mmoe" "$OUT/inc-distill-day-$d.mmoe"
done
fi

# 4. Precision: the teacher packed f32 against fp16, in exact and bf16 CPU modes.
if want 4; then
$MMOE pack --config "$OUT/mmoe-large/config.json" --weights "$OUT/mmoe-large/model.safetensors" \
  --dtype f32 --out "$OUT/mmoe-large-f32.mmoe" 2>/dev/null
compare 4-f32-vs-f16-exact "$EVAL" "$OUT/mmoe-large-f32.mmoe" "$OUT/mmoe-large.mmoe" --mode exact
compare 4-f32-vs-f16-bf16 "$EVAL" "$OUT/mmoe-large-f32.mmoe" "$OUT/mmoe-large.mmoe" --mode bf16
fi

for run in "$OUT"/*/metrics.json; do cp "$run" "$RESULTS/train-$(basename "$(dirname "$run")").json"; done
$PY experiments/report.py --results "$RESULTS" --synth-log "$OUT/synth.log" \
  --rows "$ROWS" --seed "$SEED" --relatedness "$RELATEDNESS" --seconds $(( $(date +%s) - START )) --out "$REPORT"
echo "experiments done in $(( $(date +%s) - START )) s"

