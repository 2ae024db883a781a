package io.mmoe;

import java.util.ArrayList;
import java.util.List;

/**
 * A model being served: thread-safe, reloadable while requests flow. Create
 * one {@link Session} per scoring thread. {@link #close()} is idempotent and
 * waits for calls in flight.
 */
public final class Engine implements AutoCloseable {
    private final Handle handle;

    private Engine(long handle) {
        this.handle = new Handle(handle, Native::engineFree, "engine", false);
    }

    public static Engine open(String path) {
        return open(path, new Options());
    }

    public static Engine open(String path, Options options) {
        long h = Native.engineOpen(path, options.device.ordinal(), options.deviceOrdinal, options.mode.ordinal(),
                options.gpuFp32 ? 1 : 0, options.threads, options.verifyChecksums);
        return new Engine(h);
    }

    /** Opens and validates {@code path}, then swaps it in; on failure the old model keeps serving. */
    public void reload(String path) {
        handle.with(h -> {
            Native.engineReload(h, path);
            return null;
        });
    }

    /**
     * Makes every later {@link #reload} warm up the new model for requests of
     * up to {@code maxCandidates} candidates (at most 65536) before it serves
     * (0, the default: no warm-up): the reloading thread prepares a session
     * for each open session and, after the swap, hands one to each session
     * that scored on the old model and is idle (a session busy then takes
     * one at its first call on the new model).
     */
    public void setWarmUp(int maxCandidates) {
        if (maxCandidates < 0) {
            throw new IllegalArgumentException("maxCandidates is negative: " + maxCandidates);
        }
        handle.with(h -> {
            Native.engineSetWarmUp(h, maxCandidates);
            return null;
        });
    }

    public long generation() {
        return handle.with(Native::engineGeneration);
    }

    public long contentHash() {
        return handle.with(Native::engineContentHash);
    }

    public String modelName() {
        return handle.with(Native::engineModelName);
    }

    public int numTasks() {
        return handle.with(Native::engineNumTasks);
    }

    public List<String> taskNames() {
        return handle.with(h -> {
            List<String> names = new ArrayList<>();
            for (int i = 0, n = Native.engineNumTasks(h); i < n; i++) {
                names.add(Native.engineTaskName(h, i));
            }
            return names;
        });
    }

    public List<InputInfo> inputs() {
        return handle.with(h -> {
            List<InputInfo> inputs = new ArrayList<>();
            for (int i = 0, n = Native.engineNumInputs(h); i < n; i++) {
                int[] info = Native.engineInputInfo(h, i);
                inputs.add(new InputInfo(i, Native.engineInputName(h, i), info[0] == 1, info[1] == 0, info[2]));
            }
            return inputs;
        });
    }

    /** The index of the input {@code name}; throws with the model's input names if unknown. */
    public int inputIndex(String name) {
        for (InputInfo input : inputs()) {
            if (input.name.equals(name)) {
                return input.index;
            }
        }
        throw new MmoeException(Status.REQUEST, "unknown input `" + name + "`; the model has " + inputs());
    }

    public Session newSession() {
        return handle.with(h -> new Session(Native.sessionNew(h)));
    }

    @Override
    public void close() {
        handle.close();
    }
}
