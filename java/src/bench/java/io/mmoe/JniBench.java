package io.mmoe;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.LongBuffer;
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
    /** The same deterministic values as EngineTest's requests, as arrays or as direct buffers. */
    static Request request(Engine engine, int n, boolean direct, long[] bytes) {
        Request r = new Request(n);
        for (InputInfo in : engine.inputs()) {
            int rows = in.requestScope ? 1 : n;
            if (!in.sparse) {
                float[] v = new float[rows * in.dim];
                for (int k = 0; k < v.length; k++) {
                    v[k] = ((k * 37 + in.index * 11) % 101) / 50.0f - 1.0f;
                }
                bytes[0] += 4L * v.length;
                if (direct) {
                    FloatBuffer b = ByteBuffer.allocateDirect(4 * v.length).order(ByteOrder.nativeOrder()).asFloatBuffer();
                    b.put(v).flip();
                    r.dense(in.index, b);
                } else {
                    r.dense(in.index, v);
                }
            } else {
                long[] ids = new long[rows];
                int[] offsets = new int[rows + 1];
                for (int b = 0; b < rows; b++) {
                    ids[b] = b * 7919L + in.index * 104729L;
                    offsets[b + 1] = b + 1;
                }
                bytes[0] += 8L * ids.length + 4L * offsets.length;
                if (direct) {
                    LongBuffer i = ByteBuffer.allocateDirect(8 * ids.length).order(ByteOrder.nativeOrder()).asLongBuffer();
                    i.put(ids).flip();
                    IntBuffer o = ByteBuffer.allocateDirect(4 * offsets.length).order(ByteOrder.nativeOrder()).asIntBuffer();
                    o.put(offsets).flip();
                    r.sparse(in.index, i, o);
                } else {
                    r.sparse(in.index, ids, offsets);
                }
            }
        }
        return r;
    }

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
                long[] bytes = new long[1];
                Request arrays = request(engine, n, false, bytes);
                Request direct = request(engine, n, true, new long[1]);
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
                bytes[0] += 4L * n * tasks;  // the logits, copied back
                System.out.printf("%6d %14.2f %14.2f %14.2f %12d%n", n, bestArrays, bestDirect, bestArrays - bestDirect,
                        bytes[0]);
            }
        }
    }
}
