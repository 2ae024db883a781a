#!/usr/bin/env bash
# Builds the Java binding with the JDK's own tools (no Maven): the JNI shim
# against the static library, the classes, and mmoe.jar with the native
# library inside (/native/linux-x86_64/libmmoe_jni.so); then runs the tests.
# Needs target/release/libmmoe.a (cargo build --release) and a JDK 17.
#   java/build.sh [MODEL_A MODEL_B]
set -euo pipefail
# Model paths are taken relative to where the script is called from.
model_args=()
for arg in "$@"; do model_args+=("$(realpath "$arg")"); done
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd .. && pwd)
java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
out=$root/target/java
rm -rf "$out" && mkdir -p "$out/classes" "$out/test-classes" "$out/bench-classes" "$out/native/linux-x86_64"

cc -std=c99 -O2 -g -Wall -Wextra -Werror -fPIC -shared \
  -I"$java_home/include" -I"$java_home/include/linux" -I"$root/include" \
  native/mmoe_jni.c "$root/target/release/libmmoe.a" -lpthread -ldl -lm \
  -Wl,--exclude-libs,ALL -o "$out/native/linux-x86_64/libmmoe_jni.so"
javac -Xlint:all -Werror --release 17 -d "$out/classes" $(find src/main/java -name '*.java')
cp -r "$out/native" "$out/classes/"
jar --create --file "$out/mmoe.jar" -C "$out/classes" .
javac -Xlint:all -Werror --release 17 -cp "$out/mmoe.jar" -d "$out/test-classes" $(find src/test/java -name '*.java')
# The binding's benchmark (java/bench.sh runs it): compiled here so it keeps building.
javac -Xlint:all -Werror --release 17 -cp "$out/mmoe.jar:$out/test-classes" -d "$out/bench-classes" $(find src/bench/java -name '*.java')
echo "built $out/mmoe.jar ($(du -h "$out/mmoe.jar" | cut -f1))"

model_a=${model_args[0]:-$root/target/demo-a.mmoe}
model_b=${model_args[1]:-$root/target/demo-b.mmoe}
# The library loads from the jar's resource (no mmoe.native.path given).
# The error cases come from `cargo test --test integration error_cases::`. -Xcheck:jni
# makes the JVM check every JNI call of the shim; a warning fails the run.
java -Xcheck:jni -cp "$out/mmoe.jar:$out/test-classes" io.mmoe.EngineTest "$model_a" "$model_b" "$root/target/release/mmoe" \
  "$root/target/tmp/error-cases/manifest.tsv" 2>&1 | tee "$out/test.log"
if grep -q "in native method" "$out/test.log"; then
  echo "-Xcheck:jni found a misuse of JNI (above)" >&2
  exit 1
fi

# The same tests again with the shim built under AddressSanitizer (loaded
# through mmoe.native.path, ASan preloaded into the JVM): the shim's own
# memory (the session's scratch, the copies of arrays) checked on every
# call. The JVM handles SIGSEGV itself, so ASan leaves it alone; leaks are
# not checked (the JVM's own allocations would drown them).
asan_lib=$(cc -print-file-name=libasan.so)
cc -std=c99 -O1 -g -fsanitize=address -fno-omit-frame-pointer -Wall -Wextra -Werror -fPIC -shared \
  -I"$java_home/include" -I"$java_home/include/linux" -I"$root/include" \
  native/mmoe_jni.c "$root/target/release/libmmoe.a" -lpthread -ldl -lm \
  -Wl,--exclude-libs,ALL -o "$out/libmmoe_jni_asan.so"
ASAN_OPTIONS=detect_leaks=0,handle_segv=0,allow_user_segv_handler=1,abort_on_error=1 LD_PRELOAD="$asan_lib" \
  java -Dmmoe.native.path="$out/libmmoe_jni_asan.so" -cp "$out/mmoe.jar:$out/test-classes" io.mmoe.EngineTest \
  "$model_a" "$model_b" "$root/target/release/mmoe" "$root/target/tmp/error-cases/manifest.tsv" > "$out/test-asan.log" 2>&1 ||
  { cat "$out/test-asan.log" >&2; echo "the Java tests failed with the shim under AddressSanitizer" >&2; exit 1; }
echo "under AddressSanitizer: $(tail -1 "$out/test-asan.log")"
