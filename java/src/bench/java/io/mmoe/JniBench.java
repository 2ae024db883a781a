package io.mmoe;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.Arrays;

/**
 * What the Java binding costs per call: the same requests scored through
 * JNI from Java arrays (which the shim copies into native memory, and the
 * scores back) and from direct buffers (used in place), in interleaved
 * rounds, one thread, on the CPU backend. Prints a line per batch size:
 * the best round's p50 of each, their difference (the copies), and the
 * bytes the arrays carry per call. java/bench.sh runs it beside the
 * engine's own `mmoe bench` (no JNI) on the same model.
 * Usage: java -cp ... io.mmoe.JniBench MODEL BATCHES ITERS ROUNDS
 */
public final class JniBench {
    /** p50 of `iters` timed calls, in µs. */
    static double p50(Runnable call, int iters) {
        long[] ns = new long[iters];
        for (int i = 0; i < iters; i++) {
            long start = System.nanoTime();
            call.run();
            ns[i] = System.nanoTime() - start;
        }
        Arrays.sort(ns);
        return ns[iters / 2] / 1000.0;
    }

    public static void main(String[] args) {
        if (args.length != 4) {
            System.err.println("usage: JniBench MODEL BATCHES(1,16,...) ITERS ROUNDS");
            System.exit(2);
        }
        String model = args[0];
        int iters = Integer.parseInt(args[2]), rounds = Integer.parseInt(args[3]);
        try (Engine engine = Engine.open(model); Session session = engine.newSession()) {
            int tasks = engine.numTasks();
            System.out.printf("model %s (%s), %d iterations per round, best of %d interleaved rounds, one thread, %s%n",
                    model, engine.deviceNote(), iters, rounds, System.getProperty("java.vm.name") + " "
                            + System.getProperty("java.version"));
            System.out.printf("%6s %14s %14s %14s %12s%n", "batch", "arrays p50 µs", "direct p50 µs", "arrays-direct",
                    "array bytes");
            for (String b : args[1].split(",")) {
                int n = Integer.parseInt(b.trim());
                // The tests' deterministic requests (java/src/test), as arrays and as buffers.
                Request arrays = Requests.of(engine, n, false);
                Request direct = Requests.of(engine, n, true);
                float[] logits = new float[n * tasks];
                FloatBuffer out = ByteBuffer.allocateDirect(4 * n * tasks).order(ByteOrder.nativeOrder()).asFloatBuffer();
                Runnable viaArrays = () -> session.score(arrays, logits, null);
                Runnable viaDirect = () -> session.score(direct, out, null);
                // Warm up both (JIT, the session's scratch), and check they agree.
                for (int i = 0; i < Math.max(10, iters / 10); i++) {
                    viaArrays.run();
                    viaDirect.run();
                }
                float[] fromDirect = new float[n * tasks];
                out.get(0, fromDirect);
                if (!Arrays.equals(logits, fromDirect)) {
                    throw new AssertionError("arrays and direct buffers give different logits at batch " + n);
                }
                double bestArrays = Double.MAX_VALUE, bestDirect = Double.MAX_VALUE;
                for (int round = 0; round < rounds; round++) {
                    bestArrays = Math.min(bestArrays, p50(viaArrays, iters));
                    bestDirect = Math.min(bestDirect, p50(viaDirect, iters));
                }
                long bytes = Requests.bytes(engine, n) + 4L * n * tasks;  // and the logits, copied back
                System.out.printf("%6d %14.2f %14.2f %14.2f %12d%n", n, bestArrays, bestDirect, bestArrays - bestDirect,
                        bytes);
            }
        }
    }
}
