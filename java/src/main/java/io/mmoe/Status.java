package io.mmoe;

/** The C ABI's status codes (mmoe.h, mmoe_status); values never change. */
public enum Status {
    OK(0), IO(1), CONFIG(2), TENSOR(3), FORMAT(4), CHECKSUM(5), REQUEST(6), ARGUMENT(7), DEVICE(8), INTERNAL(9), CLOSED(-1);

    public final int code;

    Status(int code) {
        this.code = code;
    }

    static Status of(int code) {
        for (Status s : values()) {
            if (s.code == code) {
                return s;
            }
        }
        return INTERNAL;
    }
}
