package io.mmoe;

import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Tests of the Java API on the demo models (plain runner: no JUnit needed).
 * Usage: java -cp ... io.mmoe.EngineTest MODEL_A MODEL_B MMOE_BINARY
 */
public final class EngineTest {
    static String modelA, modelB, mmoeBinary, errorCases;

    /** A deterministic request for any model (the same one Rust scores). */
    static Request request(Engine engine, int n) {
        return Requests.of(engine, n, false);
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    /** The same request scored by `mmoe score` (the Rust path) and through JNI: equal to the bit. */
    public void parityWithTheRustPath() throws Exception {
        int n = 16;
        try (Engine engine = Engine.open(modelA); Session session = engine.newSession()) {
            StringBuilder dense = new StringBuilder(), sparse = new StringBuilder();
            for (InputInfo in : engine.inputs()) {
                int rows = in.requestScope ? 1 : n;
                StringBuilder json = new StringBuilder();
                for (int row = 0; row < rows; row++) {
                    StringBuilder values = new StringBuilder("[");
                    if (!in.sparse) {
                        for (int k = 0; k < in.dim; k++) {
                            int flat = row * in.dim + k;
                            values.append(k > 0 ? "," : "").append(Requests.value(in, flat));
                        }
                    } else {
                        values.append(Requests.id(in, row));
                    }
                    values.append("]");
                    json.append(row > 0 ? "," : "").append(values);
                }
                String value = in.sparse ? "[" + json + "]" : (in.requestScope ? json.toString() : "[" + json + "]");
                StringBuilder target = in.sparse ? sparse : dense;
                target.append(target.length() > 0 ? "," : "").append('"').append(in.name).append("\":").append(value);
            }
            java.nio.file.Path dir = java.nio.file.Files.createTempDirectory("mmoe-java");
            java.nio.file.Path requests = dir.resolve("r.jsonl"), scores = dir.resolve("s.jsonl");
            String answer;
            try {
                java.nio.file.Files.writeString(requests, "{\"n\":" + n + ",\"dense\":{" + dense + "},\"sparse\":{" + sparse + "}}\n");
                Process p = new ProcessBuilder(mmoeBinary, "score", "--model", modelA, "--requests", requests.toString(),
                        "--out", scores.toString()).inheritIO().start();
                check(p.waitFor() == 0, "mmoe score failed");
                answer = java.nio.file.Files.readString(scores);
            } finally {
                java.nio.file.Files.deleteIfExists(requests);
                java.nio.file.Files.deleteIfExists(scores);
                java.nio.file.Files.deleteIfExists(dir);
            }
            String logitsJson = answer.substring(answer.indexOf("\"logits\":") + 9, answer.indexOf(",\"probabilities\""));
            String[] numbers = logitsJson.replace("[", " ").replace("]", " ").replace(",", " ").trim().split("\\s+");
            float[] expected = new float[numbers.length];
            for (int i = 0; i < numbers.length; i++) {
                expected[i] = Float.parseFloat(numbers[i]);
            }
            float[] logits = session.logits(request(engine, n), engine.numTasks());
            check(Arrays.equals(logits, expected), "JNI scores equal `mmoe score`'s: " + Arrays.toString(logits) + " vs " + Arrays.toString(expected));
        }
    }

    public void modelInfo() {
        try (Engine engine = Engine.open(modelA)) {
            check(engine.modelName().equals("bench-mmoe"), engine.modelName());
            check(engine.taskNames().equals(List.of("click", "good_click", "save")), engine.taskNames().toString());
            check(engine.inputs().size() == 14 && engine.inputs().get(1).dim == 256, engine.inputs().toString());
            check(engine.inputIndex("ad_dense") == 1, "input index");
            check(engine.contentHash() != 0, "hash");
        }
    }

    public void directBuffersMatchArrays() {
        try (Engine engine = Engine.open(modelA); Session session = engine.newSession()) {
            int n = 8, tasks = engine.numTasks();
            float[] fromArrays = session.logits(request(engine, n), tasks);
            Request r = Requests.of(engine, n, true);
            FloatBuffer out = ByteBuffer.allocateDirect(4 * n * tasks).order(ByteOrder.nativeOrder()).asFloatBuffer();
            session.score(r, out, null);
            float[] fromBuffers = new float[n * tasks];
            out.get(fromBuffers);
            check(Arrays.equals(fromArrays, fromBuffers), "direct buffers score like arrays");
            // A heap buffer or a foreign byte order is refused, not copied silently.
            expect(Status.ARGUMENT, () -> new Request(1).dense(0, FloatBuffer.allocate(4)));
            expect(Status.ARGUMENT, () -> new Request(1).dense(0, ByteBuffer.allocateDirect(16).order(ByteOrder.BIG_ENDIAN).asFloatBuffer()));
        }
    }

    /**
     * One session's scratch (the shim's copies of arrays) reused across
     * sizes: growing, shrinking, growing again, and with probabilities too;
     * every call scores like direct buffers on a session of its own.
     */
    public void aSessionsScratchServesEverySize() {
        try (Engine engine = Engine.open(modelA); Session reused = engine.newSession()) {
            int tasks = engine.numTasks();
            for (int n : new int[] {3, 40, 1, 17, 40, 65}) {
                float[] logits = new float[n * tasks], probabilities = new float[n * tasks];
                reused.score(request(engine, n), logits, probabilities);
                FloatBuffer out = ByteBuffer.allocateDirect(4 * n * tasks).order(ByteOrder.nativeOrder()).asFloatBuffer();
                try (Session fresh = engine.newSession()) {
                    fresh.score(Requests.of(engine, n, true), out, null);
                }
                float[] expected = new float[n * tasks];
                out.get(expected);
                check(Arrays.equals(logits, expected), "reused scratch at " + n + " candidates: " + Arrays.toString(logits)
                        + " vs " + Arrays.toString(expected));
                for (int k = 0; k < logits.length; k++) {
                    float p = (float) (1.0 / (1.0 + Math.exp(-logits[k])));
                    check(Math.abs(probabilities[k] - p) < 1e-6f, "probability " + k + " at " + n + ": " + probabilities[k]);
                }
            }
        }
    }

    public void warmUpKeepsTheScores() {
        try (Engine engine = Engine.open(modelA); Session cold = engine.newSession()) {
            int n = 24, tasks = engine.numTasks();
            Session warm = engine.newSession();
            warm.warmUp(0);
            warm.warmUp(64);
            float[] onA = cold.logits(request(engine, n), tasks);
            check(Arrays.equals(onA, warm.logits(request(engine, n), tasks)), "a warmed-up session scores like a cold one");
            negativeIsRefused(() -> warm.warmUp(-1));
            negativeIsRefused(() -> engine.setWarmUp(-1));
            // A warmed reload: the session takes one prepared on model B.
            engine.setWarmUp(64);
            engine.reload(modelB);
            float[] onB = warm.logits(request(engine, n), tasks);
            try (Session fresh = engine.newSession()) {
                check(Arrays.equals(onB, fresh.logits(request(engine, n), tasks)), "after a warmed reload: model B's scores");
            }
            check(!Arrays.equals(onA, onB), "the reload changed the scores");
            warm.close();
            expect(Status.CLOSED, () -> warm.warmUp(8));
        }
    }

    static void negativeIsRefused(Runnable body) {
        try {
            body.run();
            throw new AssertionError("a negative candidate count was accepted");
        } catch (IllegalArgumentException expected) {
            check(expected.getMessage().contains("maxCandidates is negative"), expected.getMessage());
        }
    }

    public void errorsMapToStatuses() {
        expect(Status.IO, () -> Engine.open("/nonexistent/model.mmoe"));
        try (Engine engine = Engine.open(modelA); Session session = engine.newSession()) {
            int tasks = engine.numTasks();
            MmoeException e = expect(Status.REQUEST, () -> session.logits(new Request(2).dense(0, new float[63]), tasks));
            check(e.getMessage().contains("input `user_dense`: 63 values, expected 64"), e.getMessage());
            expect(Status.REQUEST, () -> engine.inputIndex("nope"));
            float[] wrong = new float[5];
            MmoeException w = expect(Status.ARGUMENT, () -> session.score(request(engine, 2), wrong, null));
            check(w.getMessage().contains("logits output holds 5 floats"), w.getMessage());
            check(Arrays.equals(wrong, new float[5]), "nothing written on error");
            expect(Status.IO, () -> engine.reload("/nonexistent/b.mmoe"));
        }
    }

    /** The error cases of tests/integration/error_cases.rs, replayed through Java. */
    public void errorCasesOfTheManifestGiveTheirStatus() throws Exception {
        check(errorCases != null, "no manifest given (4th argument)");
        int cases = 0;
        for (String line : java.nio.file.Files.readAllLines(java.nio.file.Paths.get(errorCases))) {
            if (line.startsWith("#") || line.isEmpty()) {
                continue;
            }
            String[] f = line.split("\t");
            Status want = Status.valueOf(f[0]);
            String path = f[1];
            Options options = new Options()
                    .device(f[2].equals("cuda") ? Options.Device.CUDA : Options.Device.CPU, 0)
                    .verifyChecksums(f[3].equals("1"));
            if (want == Status.OK) {
                Engine.open(path, options).close();
            } else {
                MmoeException e = expect(want, () -> Engine.open(path, options));
                String file = path.substring(path.lastIndexOf('/') + 1);
                check(e.getMessage().contains(file), f[4] + ": " + e.getMessage());
            }
            cases++;
        }
        check(cases >= 7, cases + " cases");
        System.out.println("  " + cases + " file cases of " + errorCases);
    }

    public void closeIsIdempotentAndLaterCallsFailCleanly() {
        Engine engine = Engine.open(modelA);
        Session session = engine.newSession();
        session.close();
        session.close();
        expect(Status.CLOSED, () -> session.logits(new Request(0), 3));
        engine.close();
        engine.close();
        expect(Status.CLOSED, engine::numTasks);
    }

    /**
     * Paths and messages beyond the BMP and the ASCII range: a model opened
     * and reloaded through a link named with them, and a missing file's
     * error naming it exactly (JNI's modified UTF-8 would garble both).
     */
    public void pathsAndMessagesAreUtf8() throws Exception {
        java.nio.file.Path dir = java.nio.file.Files.createTempDirectory("mmoe-java-");
        java.nio.file.Path link = dir.resolve("mod\u00e8le-\ud83d\ude80.mmoe");
        try {
            java.nio.file.Files.createSymbolicLink(link, java.nio.file.Paths.get(modelA).toAbsolutePath());
            try (Engine engine = Engine.open(link.toString())) {
                check(engine.modelName().equals("bench-mmoe"), "model name " + engine.modelName());
                engine.reload(link.toString());
                check(engine.generation() == 1, "reloaded through the link");
            }
            String missing = dir.resolve("\u00e9t\u00e9-\ud83d\udcc8.mmoe").toString();
            MmoeException e = expect(Status.IO, () -> Engine.open(missing));
            check(e.getMessage().contains(missing), "the message names the path exactly: " + e.getMessage());
            for (String bad : new String[] {"a\0b.mmoe", "m\ud800.mmoe"}) {
                try {
                    Engine.open(bad);
                    throw new AssertionError("the path " + bad + " was accepted");
                } catch (IllegalArgumentException expected) {
                    check(expected.getMessage().contains("path"), expected.getMessage());
                }
            }
        } finally {
            java.nio.file.Files.deleteIfExists(link);
            java.nio.file.Files.deleteIfExists(dir);
        }
    }

    /** CPU for a CPU open; AUTO gives CUDA or, without a GPU, the CPU with the reason. */
    public void theEngineTellsWhichDeviceServes() {
        try (Engine engine = Engine.open(modelA)) {
            check(engine.device() == Options.Device.CPU && engine.deviceNote().equals("cpu"),
                    engine.device() + " " + engine.deviceNote());
        }
        try (Engine engine = Engine.open(modelA, new Options().device(Options.Device.AUTO, 0))) {
            String note = engine.deviceNote();
            Options.Device want = note.startsWith("cuda:") ? Options.Device.CUDA : Options.Device.CPU;
            check(engine.device() == want, engine.device() + " with note " + note);
            check(want == Options.Device.CUDA || note.startsWith("cpu (auto: "), note);
            System.out.println("  AUTO here: " + note);
        }
    }

    /** The good model of the error-case manifest (a small model: 2 tasks, 4 inputs). */
    static String smallModel() throws Exception {
        check(errorCases != null, "no manifest given (4th argument)");
        for (String line : java.nio.file.Files.readAllLines(java.nio.file.Paths.get(errorCases))) {
            String[] f = line.split("\t");
            if (f[0].equals("OK")) {
                return f[1];
            }
        }
        throw new AssertionError("no OK model in " + errorCases);
    }

    static List<String> names(List<InputInfo> inputs) {
        List<String> names = new ArrayList<>();
        for (InputInfo input : inputs) {
            names.add(input.name + ":" + input.dim);
        }
        return names;
    }

    /**
     * Task names and inputs, read while another thread reloads between two
     * models of different shapes: each list is all of one model (before,
     * the names of one and the count of the other mixed, or an index past
     * the smaller model failed).
     */
    public void metadataIsOfOneModelWhileReloadsLand() throws Exception {
        String small = smallModel();
        List<List<String>> tasks = new ArrayList<>(), inputs = new ArrayList<>();
        for (String path : new String[] {modelA, small}) {
            try (Engine e = Engine.open(path)) {
                tasks.add(e.taskNames());
                inputs.add(names(e.inputs()));
            }
        }
        check(!tasks.get(0).equals(tasks.get(1)) && !inputs.get(0).equals(inputs.get(1)), "the two models differ");
        try (Engine engine = Engine.open(modelA)) {
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong reloads = new AtomicLong();
            List<Throwable> failures = new ArrayList<>();
            Thread reloader = new Thread(() -> {
                try {
                    for (int i = 0; !stop.get(); i++) {
                        engine.reload(i % 2 == 0 ? small : modelA);
                        reloads.incrementAndGet();
                    }
                } catch (RuntimeException e) {
                    synchronized (failures) {
                        failures.add(e);
                    }
                }
            });
            reloader.start();
            long reads = 0;
            try {
                while (reloads.get() < 100 && failures.isEmpty()) {
                    List<String> t = engine.taskNames();
                    check(tasks.contains(t), "task names of no one model: " + t);
                    List<String> in = names(engine.inputs());
                    check(inputs.contains(in), "inputs of no one model: " + in);
                    reads++;
                }
            } finally {
                stop.set(true);
                reloader.join();
            }
            check(failures.isEmpty(), "the reloader failed: " + failures);
            System.out.println("  " + reads + " reads of task names and inputs over " + reloads.get() + " reloads, each of one model");
        }
    }

    public void threadsScoreWhileReloading() throws Exception {
        try (Engine engine = Engine.open(modelA)) {
            int n = 16, tasks = engine.numTasks();
            float[] a, b;
            try (Session s = engine.newSession()) {
                a = s.logits(request(engine, n), tasks);
                engine.reload(modelB);
                b = s.logits(request(engine, n), tasks);
            }
            check(!Arrays.equals(a, b), "the two models differ");
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong calls = new AtomicLong(), bad = new AtomicLong();
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                Thread thread = new Thread(() -> {
                    try (Session s = engine.newSession()) {
                        Request r = request(engine, n);
                        while (!stop.get()) {
                            float[] out = s.logits(r, tasks);
                            calls.incrementAndGet();
                            if (!Arrays.equals(out, a) && !Arrays.equals(out, b)) {
                                bad.incrementAndGet();
                            }
                        }
                    } catch (RuntimeException e) {
                        bad.incrementAndGet();
                    }
                });
                thread.start();
                threads.add(thread);
            }
            for (int i = 0; i < 50; i++) {
                engine.reload(i % 2 == 0 ? modelA : modelB);
                Thread.sleep(2);
            }
            stop.set(true);
            for (Thread thread : threads) {
                thread.join();
            }
            check(bad.get() == 0, bad.get() + " bad calls of " + calls.get());
            check(calls.get() > 0 && engine.generation() == 51, "calls " + calls.get() + ", generation " + engine.generation());
            System.out.println("  4 threads, 50 reloads: " + calls.get() + " calls, 0 bad");
        }
    }

    /**
     * One session used by two threads at once is refused (the native session
     * is one thread's scratch), never a crash; calls that do not overlap
     * score correctly.
     */
    public void aSessionSharedByTwoThreadsIsRefused() throws Exception {
        try (Engine engine = Engine.open(modelA); Session shared = engine.newSession()) {
            int n = 256, tasks = engine.numTasks();
            Request big = request(engine, n);
            float[] want = shared.logits(big, tasks);
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong wrong = new AtomicLong();
            List<Throwable> unexpected = java.util.Collections.synchronizedList(new ArrayList<>());
            Thread other = new Thread(() -> {
                while (!stop.get()) {
                    try {
                        if (!Arrays.equals(shared.logits(big, tasks), want)) {
                            wrong.incrementAndGet();
                        }
                    } catch (IllegalStateException busy) {
                        // the main thread's call was in flight
                    } catch (Throwable e) {
                        unexpected.add(e);
                    }
                }
            });
            other.start();
            long refused = 0, scored = 0, deadline = System.nanoTime() + 5_000_000_000L;
            try {
                while ((refused == 0 || scored == 0) && System.nanoTime() < deadline) {
                    try {
                        check(Arrays.equals(shared.logits(big, tasks), want), "scores of a call that did not overlap");
                        scored++;
                    } catch (IllegalStateException busy) {
                        check(busy.getMessage().contains("session is in use by another thread"), busy.getMessage());
                        refused++;
                    }
                }
            } finally {
                // A failed check must not leave the other thread spinning
                // through the tests that follow.
                stop.set(true);
                other.join();
            }
            check(unexpected.isEmpty(), "unexpected: " + unexpected);
            check(wrong.get() == 0, wrong.get() + " wrong scores");
            check(refused > 0, "no overlapping call was refused in 5 s (" + scored + " scored)");
            System.out.println("  " + refused + " overlapping calls refused, " + scored + " scored");
        }
    }

    static void refusedWith(String message, Body body) {
        try {
            body.run();
        } catch (IllegalArgumentException e) {
            check(e.getMessage().contains(message), e.getMessage());
            return;
        } catch (Exception e) {
            throw new AssertionError("expected IllegalArgumentException (" + message + "), got " + e);
        }
        throw new AssertionError("expected IllegalArgumentException (" + message + "), nothing was thrown");
    }

    /** Arguments a careless caller can pass: refused with a message, never a crash. */
    public void badArgumentsAreRefused() {
        refusedWith("threads must be 1 to 256, got -1", () -> new Options().threads(-1));
        refusedWith("threads must be 1 to 256, got 257", () -> new Options().threads(257));
        refusedWith("device ordinal is negative", () -> new Options().device(Options.Device.CUDA, -1));
        refusedWith("input index is negative: -1", () -> new Request(1).dense(-1, new float[4]));
        try (Engine engine = Engine.open(modelA); Session session = engine.newSession()) {
            int n = 2, tasks = engine.numTasks();
            refusedWith("logits: buffer is read-only", () -> session.score(request(engine, n),
                    ByteBuffer.allocateDirect(4 * n * tasks).order(ByteOrder.nativeOrder()).asFloatBuffer().asReadOnlyBuffer(), null));
            refusedWith("tasks is negative", () -> session.logits(request(engine, n), -1));
            MmoeException e = expect(Status.REQUEST, () -> session.logits(request(engine, n).dense(1000, new float[1]), tasks));
            check(e.getMessage().contains("input is 1000, but model `bench-mmoe` has"), e.getMessage());
            FloatBuffer out = ByteBuffer.allocateDirect(4 * n * tasks).order(ByteOrder.nativeOrder()).asFloatBuffer();
            e = expect(Status.ARGUMENT, () -> session.score(request(engine, n), out, out));
            check(e.getMessage().contains("logits and probabilities overlap"), e.getMessage());
            // An empty output is one of the wrong length (only null means
            // "not wanted"): refused, never a call that writes nothing.
            String expected = "expected " + n + " candidates × " + tasks + " tasks";
            e = expect(Status.ARGUMENT, () -> session.score(request(engine, n), new float[0], null));
            check(e.getMessage().contains("logits output holds 0 floats, " + expected), e.getMessage());
            e = expect(Status.ARGUMENT, () -> session.logits(request(engine, n), 0));
            check(e.getMessage().contains("logits output holds 0 floats"), e.getMessage());
            FloatBuffer empty = ByteBuffer.allocateDirect(0).order(ByteOrder.nativeOrder()).asFloatBuffer();
            e = expect(Status.ARGUMENT, () -> session.score(request(engine, n), null, empty));
            check(e.getMessage().contains("probabilities output holds 0 floats, " + expected), e.getMessage());
            // With no candidates, empty outputs are the right length.
            session.score(request(engine, 0), new float[0], new float[0]);
            // The same array for both outputs: two copies, allowed; the
            // probabilities are copied back last.
            float[] both = new float[n * tasks], probabilities = new float[n * tasks];
            session.score(request(engine, n), both, both);
            session.score(request(engine, n), null, probabilities);
            check(Arrays.equals(both, probabilities), "one array for both outputs holds the probabilities");
        }
    }

    interface Body {
        void run() throws Exception;
    }

    static MmoeException expect(Status status, Body body) {
        try {
            body.run();
        } catch (MmoeException e) {
            check(e.status() == status, "expected " + status + ", got " + e);
            return e;
        } catch (Exception e) {
            throw new AssertionError("expected MmoeException " + status + ", got " + e);
        }
        throw new AssertionError("expected MmoeException " + status + ", nothing was thrown");
    }

    public static void main(String[] args) throws Exception {
        modelA = args[0];
        modelB = args[1];
        mmoeBinary = args[2];
        errorCases = args.length > 3 ? args[3] : null;
        int passed = 0, failed = 0;
        EngineTest test = new EngineTest();
        for (Method m : EngineTest.class.getDeclaredMethods()) {
            if (!Modifier.isPublic(m.getModifiers()) || Modifier.isStatic(m.getModifiers()) || m.getParameterCount() != 0) {
                continue;
            }
            try {
                m.invoke(test);
                passed++;
                System.out.println("ok    " + m.getName());
            } catch (java.lang.reflect.InvocationTargetException e) {
                failed++;
                System.out.println("FAIL  " + m.getName() + ": " + e.getCause());
            }
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
