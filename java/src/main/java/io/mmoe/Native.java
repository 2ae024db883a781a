package io.mmoe;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * The JNI entry points, and the loading of the native library: from the path
 * in the system property {@code mmoe.native.path}, else from the jar's
 * {@code /native/<os>-<arch>/libmmoe_jni.so}, else {@code System.loadLibrary("mmoe_jni")}.
 */
final class Native {
    private Native() {}

    static {
        load();
    }

    private static void load() {
        String path = System.getProperty("mmoe.native.path");
        if (path != null) {
            System.load(Path.of(path).toAbsolutePath().toString());
            return;
        }
        String os = System.getProperty("os.name").toLowerCase().startsWith("linux") ? "linux" : System.getProperty("os.name").toLowerCase();
        String arch = System.getProperty("os.arch").replace("amd64", "x86_64");
        String resource = "/native/" + os + "-" + arch + "/libmmoe_jni.so";
        try (InputStream in = Native.class.getResourceAsStream(resource)) {
            if (in != null) {
                Path file = Files.createTempFile("libmmoe_jni", ".so");
                try {
                    Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
                    System.load(file.toAbsolutePath().toString());
                } finally {
                    // Once loaded the library needs no file: nothing is left
                    // in the temp directory, even if the JVM is killed.
                    Files.deleteIfExists(file);
                }
                return;
            }
        } catch (IOException e) {
            throw new UnsatisfiedLinkError("cannot extract " + resource + ": " + e);
        }
        System.loadLibrary("mmoe_jni");
    }

    static native long engineOpen(String path, int device, int ordinal, int mode, int precision, int threads, boolean verify);
    static native void engineFree(long engine);
    static native void engineReload(long engine, String path);
    static native void engineSetWarmUp(long engine, int maxCandidates);
    static native long engineGeneration(long engine);
    static native long engineContentHash(long engine);
    static native int engineNumTasks(long engine);
    static native int engineNumInputs(long engine);
    static native String engineModelName(long engine);
    static native String engineTaskName(long engine, int index);
    static native String engineInputName(long engine, int index);
    static native int[] engineInputInfo(long engine, int index);
    static native long sessionNew(long engine);
    static native void sessionFree(long session);
    static native void sessionWarmUp(long session, int maxCandidates);
    static native void sessionScore(long session, int candidates, int[] inputs, Object[] dense, Object[] ids,
                                    Object[] offsets, Object logits, Object probabilities);
}
