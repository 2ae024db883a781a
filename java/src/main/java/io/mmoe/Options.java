package io.mmoe;

/** How to open an engine. Defaults: CPU, exact compute, one thread per request. */
public final class Options {
    public enum Device { CPU, CUDA, AUTO }
    public enum Mode { EXACT, BF16 }

    Device device = Device.CPU;
    int deviceOrdinal = 0;
    Mode mode = Mode.EXACT;
    boolean gpuFp32 = false;
    int threads = 1;
    boolean verifyChecksums = false;

    public Options device(Device device, int ordinal) {
        this.device = device;
        this.deviceOrdinal = ordinal;
        return this;
    }

    public Options mode(Mode mode) {
        this.mode = mode;
        return this;
    }

    public Options gpuFp32(boolean fp32) {
        this.gpuFp32 = fp32;
        return this;
    }

    /** Threads each session splits a request's candidates over. */
    public Options threads(int threads) {
        this.threads = threads;
        return this;
    }

    public Options verifyChecksums(boolean verify) {
        this.verifyChecksums = verify;
        return this;
    }
}
