package io.mmoe;

/** How to open an engine. Defaults: CPU, exact compute, one thread per request. */
public final class Options {
    public enum Device { CPU, CUDA, AUTO }
    /** BF16: AVX512-BF16 dot products where the CPU has them and they are faster than fp32 FMAs, else exact. */
    public enum Mode { EXACT, BF16 }

    Device device = Device.CPU;
    int deviceOrdinal = 0;
    Mode mode = Mode.EXACT;
    boolean gpuFp32 = false;
    int threads = 1;
    boolean verifyChecksums = false;

    public Options device(Device device, int ordinal) {
        if (ordinal < 0) {
            throw new IllegalArgumentException("device ordinal is negative: " + ordinal);
        }
        this.device = java.util.Objects.requireNonNull(device, "device");
        this.deviceOrdinal = ordinal;
        return this;
    }

    public Options mode(Mode mode) {
        this.mode = java.util.Objects.requireNonNull(mode, "mode");
        return this;
    }

    public Options gpuFp32(boolean fp32) {
        this.gpuFp32 = fp32;
        return this;
    }

    /** The most threads a session splits a request over. */
    public static final int MAX_THREADS = 256;

    /** Threads each session splits a request's candidates over (1 to {@link #MAX_THREADS}). */
    public Options threads(int threads) {
        if (threads < 1 || threads > MAX_THREADS) {
            throw new IllegalArgumentException("threads must be 1 to " + MAX_THREADS + ", got " + threads);
        }
        this.threads = threads;
        return this;
    }

    public Options verifyChecksums(boolean verify) {
        this.verifyChecksums = verify;
        return this;
    }
}
