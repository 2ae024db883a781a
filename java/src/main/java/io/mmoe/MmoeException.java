package io.mmoe;

/** An error from the engine: its {@link Status} and a message naming what is at fault. */
public class MmoeException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final Status status;

    /** Called from native code with the C status code. */
    public MmoeException(int code, String message) {
        super(message);
        this.status = Status.of(code);
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
