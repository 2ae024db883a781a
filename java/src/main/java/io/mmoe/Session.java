package io.mmoe;

import java.nio.ByteOrder;
import java.nio.FloatBuffer;

/**
 * Scratch for scoring on one thread at a time: a call while another thread's
 * call on the same session is in flight throws {@link IllegalStateException}
 * (create one session per thread). Scores go to caller-provided arrays or
 * direct, native-order FloatBuffers ({@code candidates × tasks}, row-major);
 * nothing is written unless scoring succeeds. Java arrays are copied into
 * native memory the session keeps and reuses (it grows on the first request
 * of each larger size); direct buffers are used in place. A session dropped
 * without {@link #close()} is freed once the collector finds it.
 */
public final class Session implements AutoCloseable {
    private final Handle handle;

    Session(long handle) {
        this.handle = new Handle(handle, Native::sessionFree, "session", true);
    }

    /**
     * Prepares this session for requests of up to {@code maxCandidates}
     * candidates (at most 65536) on the engine's current model: scratch
     * memory on the CPU, and on a GPU the graph of every batch size up to
     * it. Call it before traffic so that the first requests do not pay for
     * it; 0 does nothing. For reloads, see {@link Engine#setWarmUp}.
     */
    public void warmUp(int maxCandidates) {
        if (maxCandidates < 0) {
            throw new IllegalArgumentException("maxCandidates is negative: " + maxCandidates);
        }
        handle.with(h -> {
            Native.sessionWarmUp(h, maxCandidates);
            return null;
        });
    }

    /** Scores into {@code logits} and/or {@code probabilities} (either may be null). */
    public void score(Request request, float[] logits, float[] probabilities) {
        scoreInto(request, logits, probabilities);
    }

    /** Scores into direct, native-order buffers (used in place, no copy; either may be null). */
    public void score(Request request, FloatBuffer logits, FloatBuffer probabilities) {
        for (FloatBuffer out : new FloatBuffer[] {logits, probabilities}) {
            if (out != null && out.isReadOnly()) {
                throw new IllegalArgumentException((out == logits ? "logits" : "probabilities") + ": buffer is read-only");
            }
        }
        scoreInto(request, Request.direct(logits, "logits"), Request.direct(probabilities, "probabilities"));
    }

    /** Convenience: scores and returns the logits. */
    public float[] logits(Request request, int tasks) {
        if (tasks < 0) {
            throw new IllegalArgumentException("tasks is negative: " + tasks);
        }
        float[] out = new float[Math.multiplyExact(request.candidates(), tasks)];
        scoreInto(request, out, null);
        return out;
    }

    private void scoreInto(Request request, Object logits, Object probabilities) {
        handle.with(h -> {
            Native.sessionScore(h, request.candidates(), request.inputs(), request.dense(), request.ids(),
                    request.offsets(), logits, probabilities);
            return null;
        });
    }

    @Override
    public void close() {
        handle.close();
    }

}
