package io.mmoe;

import java.nio.ByteOrder;
import java.nio.FloatBuffer;

/**
 * Scratch for scoring on one thread at a time. Scores go to caller-provided
 * arrays or direct, native-order FloatBuffers ({@code candidates × tasks},
 * row-major); nothing is written unless scoring succeeds.
 */
public final class Session implements AutoCloseable {
    private final Handle handle;

    Session(long handle) {
        this.handle = new Handle(handle, Native::sessionFree, "session");
    }

    /** Scores into {@code logits} and/or {@code probabilities} (either may be null). */
    public void score(Request request, float[] logits, float[] probabilities) {
        scoreInto(request, logits, probabilities);
    }

    /** Scores into direct, native-order buffers (used in place, no copy; either may be null). */
    public void score(Request request, FloatBuffer logits, FloatBuffer probabilities) {
        scoreInto(request, Request.direct(logits, "logits"), Request.direct(probabilities, "probabilities"));
    }

    /** Convenience: scores and returns the logits. */
    public float[] logits(Request request, int tasks) {
        float[] out = new float[request.candidates() * tasks];
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
