#!/usr/bin/env bash
# What the Java binding costs per call (CPU backend, one thread): the
# engine's own `mmoe bench` (Rust, no JNI) on MODEL, then io.mmoe.JniBench
# on the same model and batch sizes, Java arrays (copied by the JNI shim)
# against direct buffers (used in place) in interleaved rounds. Needs
# java/build.sh to have run (target/java/mmoe.jar) and the release binary.
#   java/bench.sh MODEL [BATCHES] [ITERS] [ROUNDS]
set -euo pipefail
model=$(realpath "$1")
batches=${2:-1,16,256}
iters=${3:-200}
rounds=${4:-5}
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd .. && pwd)
out=$root/target/java
mkdir -p "$out/bench-classes"
javac -Xlint:all -Werror --release 17 -cp "$out/mmoe.jar:$out/test-classes" -d "$out/bench-classes" src/bench/java/io/mmoe/JniBench.java
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== the engine without JNI: mmoe bench --model $1 --batch $batches --threads 1 --iters $iters"
"$root/target/release/mmoe" bench --model "$model" --batch "$batches" --threads 1 --iters "$iters" --max-seconds 5
echo "== through JNI: java io.mmoe.JniBench (p50 per call)"
java -cp "$out/mmoe.jar:$out/test-classes:$out/bench-classes" io.mmoe.JniBench "$model" "$batches" "$iters" "$rounds"
