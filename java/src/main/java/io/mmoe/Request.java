package io.mmoe;

import java.nio.Buffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.LongBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * The features of one request, by input index ({@link Engine#inputIndex}).
 * Dense: {@code dim} floats (request scope) or {@code candidates × dim}
 * (candidate scope), NaN for a missing value. Sparse: CSR {@code ids} and
 * {@code offsets}, one bag per candidate or one for request scope. Arrays and
 * buffers are referenced, not copied, until scoring returns; direct buffers
 * must be in native byte order. At each call the native shim copies arrays
 * into native memory (and the scores back), while it reads and writes
 * direct buffers in place: about 1 µs a call, the copies lost in the noise
 * of CPU scoring (bench/RESULTS.md); on the GPU backend, whose calls take
 * a few hundred microseconds, prefer direct buffers for large requests
 * (1.16 MB a call at 1,024 candidates of the benchmark model).
 */
public final class Request {
    private final int candidates;
    private final List<Integer> inputs = new ArrayList<>();
    private final List<Object> dense = new ArrayList<>();
    private final List<Object> ids = new ArrayList<>();
    private final List<Object> offsets = new ArrayList<>();

    public Request(int candidates) {
        if (candidates < 0) {
            throw new MmoeException(Status.ARGUMENT, "candidates must not be negative");
        }
        this.candidates = candidates;
    }

    public int candidates() {
        return candidates;
    }

    public Request dense(int input, float[] values) {
        return add(input, values, null, null);
    }

    public Request dense(int input, FloatBuffer values) {
        return add(input, direct(values, "dense values"), null, null);
    }

    public Request sparse(int input, long[] ids, int[] offsets) {
        return add(input, null, ids, offsets);
    }

    public Request sparse(int input, LongBuffer ids, IntBuffer offsets) {
        return add(input, null, direct(ids, "ids"), direct(offsets, "offsets"));
    }

    private Request add(int input, Object d, Object i, Object o) {
        if (input < 0) {
            throw new IllegalArgumentException("input index is negative: " + input);
        }
        inputs.add(input);
        dense.add(d);
        ids.add(i);
        offsets.add(o);
        return this;
    }

    /** A direct buffer from its position to its limit; checked for native order. */
    static Buffer direct(Buffer buffer, String what) {
        if (buffer == null) {
            return null;
        }
        if (!buffer.isDirect()) {
            throw new MmoeException(Status.ARGUMENT, what + ": buffer is not direct (use an array, or allocateDirect)");
        }
        ByteOrder order = buffer instanceof FloatBuffer ? ((FloatBuffer) buffer).order()
                : buffer instanceof LongBuffer ? ((LongBuffer) buffer).order() : ((IntBuffer) buffer).order();
        if (order != ByteOrder.nativeOrder()) {
            throw new MmoeException(Status.ARGUMENT, what + ": buffer is not in native byte order");
        }
        return buffer.slice();
    }

    int[] inputs() {
        int[] out = new int[inputs.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = inputs.get(i);
        }
        return out;
    }

    Object[] dense() {
        return dense.toArray();
    }

    Object[] ids() {
        return ids.toArray();
    }

    Object[] offsets() {
        return offsets.toArray();
    }
}
