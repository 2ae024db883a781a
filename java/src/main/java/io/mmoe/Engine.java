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
        long h = Native.engineOpen(Native.utf8(path, "path"), options.device.ordinal(), options.deviceOrdinal, options.mode.ordinal(),
                options.gpuFp32 ? 1 : 0, options.threads, options.verifyChecksums);
        return new Engine(h);
    }

    /** Opens and validates {@code path}, then swaps it in; on failure the old model keeps serving. */
    public void reload(String path) {
        handle.with(h -> {
            Native.engineReload(h, Native.utf8(path, "path"));
            return null;
        });
    }

    /**
     * Makes every later {@link #reload} warm up the new model for requests of
     * up to {@code maxCandidates} candidates (at most 65536) before it serves
     * (0, the default: no warm-up): the reloading thread prepares a session
     * for each open session and, after the swap, hands one to each session
     * that scored on the old model, when it is idle or its call in flight
     * ends (waiting up to 100 ms in all); a session still busy then takes
     * one at its first call on the new model. So no scoring thread pays for
     * the new model's first calls. A warm-up that fails fails the reload.
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
        return handle.with(h -> Native.string(Native.engineModelName(h)));
    }

    /**
     * Where the serving model scores: {@code CPU} or {@code CUDA}, never
     * {@code AUTO}. An engine opened with {@code AUTO} tells here which it
     * got, after each reload too (a reload whose GPU upload fails serves
     * from the CPU); {@link #deviceNote()} says why.
     */
    public Options.Device device() {
        // The C enum's values are the Java enum's ordinals (CPU 0, CUDA 1).
        return Options.Device.values()[handle.with(Native::engineDevice)];
    }

    /** Where the serving model scores, in words for a log: {@code cpu}, {@code cuda:0 (…)} or {@code cpu (auto: why)}. */
    public String deviceNote() {
        return handle.with(h -> Native.string(Native.engineDeviceNote(h)));
    }

    public int numTasks() {
        return handle.with(Native::engineNumTasks);
    }

    /** Every task name, in model order; all of one model even while reloads land. */
    public List<String> taskNames() {
        return oneModel(h -> {
            List<String> names = new ArrayList<>();
            for (int i = 0, n = Native.engineNumTasks(h); i < n; i++) {
                names.add(Native.string(Native.engineTaskName(h, i)));
            }
            return names;
        });
    }

    /** Every input, in model order; all of one model even while reloads land. */
    public List<InputInfo> inputs() {
        return oneModel(h -> {
            List<InputInfo> inputs = new ArrayList<>();
            for (int i = 0, n = Native.engineNumInputs(h); i < n; i++) {
                int[] info = Native.engineInputInfo(h, i);
                inputs.add(new InputInfo(i, Native.string(Native.engineInputName(h, i)), info[0] == 1, info[1] == 0, info[2]));
            }
            return inputs;
        });
    }

    /** The index of the input {@code name}; throws with the model's input names if unknown. */
    public int inputIndex(String name) {
        List<InputInfo> inputs = inputs();
        for (InputInfo input : inputs) {
            if (input.name.equals(name)) {
                return input.index;
            }
        }
        throw new MmoeException(Status.REQUEST, "unknown input `" + name + "`; the model has " + inputs);
    }

    /**
     * Runs {@code read} (several native calls, each answered by the engine's
     * model of the moment) again until no reload landed while it ran, so
     * that its result is all of one model: a reload bumps the generation in
     * the same step as it swaps the model. An error is rethrown unless a
     * reload explains it (an index past a smaller new model).
     */
    private <T> T oneModel(Handle.Call<T> read) {
        return handle.with(h -> {
            for (;;) {
                long before = Native.engineGeneration(h);
                try {
                    T value = read.apply(h);
                    if (Native.engineGeneration(h) == before) {
                        return value;
                    }
                } catch (MmoeException e) {
                    if (Native.engineGeneration(h) == before) {
                        throw e;
                    }
                }
            }
        });
    }

    public Session newSession() {
        return handle.with(h -> new Session(Native.sessionNew(h)));
    }

    @Override
    public void close() {
        handle.close();
    }
}
