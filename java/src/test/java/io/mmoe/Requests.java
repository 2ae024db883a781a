package io.mmoe;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** Deterministic requests for any model (the same values Rust's parity test scores), shared by the tests and the benchmark. */
final class Requests {
    private Requests() {}

    static float value(InputInfo in, int k) {
        return ((k * 37 + in.index * 11) % 101) / 50.0f - 1.0f;
    }

    static long id(InputInfo in, int bag) {
        return bag * 7919L + in.index * 104729L;
    }

    /** Every input of `engine` for `n` candidates, one id per bag; as Java arrays, or as direct native-order buffers. */
    static Request of(Engine engine, int n, boolean direct) {
        Request r = new Request(n);
        for (InputInfo in : engine.inputs()) {
            int rows = in.requestScope ? 1 : n;
            if (!in.sparse) {
                float[] v = new float[rows * in.dim];
                for (int k = 0; k < v.length; k++) {
                    v[k] = value(in, k);
                }
                if (direct) {
                    r.dense(in.index, buffer(4 * v.length).asFloatBuffer().put(v).flip());
                } else {
                    r.dense(in.index, v);
                }
            } else {
                long[] ids = new long[rows];
                int[] offsets = new int[rows + 1];
                for (int b = 0; b < rows; b++) {
                    ids[b] = id(in, b);
                    offsets[b + 1] = b + 1;
                }
                if (direct) {
                    r.sparse(in.index, buffer(8 * ids.length).asLongBuffer().put(ids).flip(),
                            buffer(4 * offsets.length).asIntBuffer().put(offsets).flip());
                } else {
                    r.sparse(in.index, ids, offsets);
                }
            }
        }
        return r;
    }

    /** The bytes of the arrays `of(engine, n, false)` holds. */
    static long bytes(Engine engine, int n) {
        long total = 0;
        for (InputInfo in : engine.inputs()) {
            int rows = in.requestScope ? 1 : n;
            total += in.sparse ? 8L * rows + 4L * (rows + 1) : 4L * rows * in.dim;
        }
        return total;
    }

    static ByteBuffer buffer(int bytes) {
        return ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder());
    }
}
