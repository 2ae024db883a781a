package io.mmoe;

/** An error from the engine: its {@link Status} and a message naming what is at fault. */
public class MmoeException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final Status status;

    public MmoeException(int code, String message) {
        super(message);
        this.status = Status.of(code);
    }

    /**
     * Called from native code with the C status code and the message as the
     * library wrote it, UTF-8 (JNI's own strings are modified UTF-8, which
     * differs for characters beyond the BMP and for NUL).
     */
    MmoeException(int code, byte[] utf8Message) {
        this(code, Native.string(utf8Message));
    }

    public MmoeException(Status status, String message) {
        super(message);
        this.status = status;
    }

    public Status status() {
        return status;
    }

    @Override
    public String toString() {
        return "MmoeException[" + status + "]: " + getMessage();
    }
}
