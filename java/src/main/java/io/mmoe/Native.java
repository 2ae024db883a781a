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

    static native long engineOpen(byte[] path, int device, int ordinal, int mode, int precision, int threads, boolean verify);
    static native void engineFree(long engine);
    static native void engineReload(long engine, byte[] path);
    static native void engineSetWarmUp(long engine, int maxCandidates);
    static native long engineGeneration(long engine);
    static native long engineContentHash(long engine);
    static native int engineNumTasks(long engine);
    static native int engineNumInputs(long engine);
    static native byte[] engineModelName(long engine);
    static native int engineDevice(long engine);
    static native byte[] engineDeviceNote(long engine);
    static native byte[] engineTaskName(long engine, int index);
    static native byte[] engineInputName(long engine, int index);
    static native int[] engineInputInfo(long engine, int index);
    static native long sessionNew(long engine);
    static native void sessionFree(long session);
    static native void sessionWarmUp(long session, int maxCandidates);
    static native void sessionScore(long session, int candidates, int[] inputs, Object[] dense, Object[] ids,
                                    Object[] offsets, Object logits, Object probabilities);

    /**
     * {@code text} as UTF-8 for the C API (null stays null: the native side
     * reports it). JNI's {@code GetStringUTFChars} would give modified
     * UTF-8, which the library refuses for characters beyond the BMP.
     */
    static byte[] utf8(String text, String what) {
        if (text == null) {
            return null;
        }
        if (text.indexOf('\0') >= 0) {
            throw new IllegalArgumentException(what + " contains a NUL character: " + text.replace("\0", "\\0"));
        }
        // An encoder that refuses an unpaired surrogate: getBytes would
        // write '?' for it, and so name another file.
        try {
            java.nio.ByteBuffer bytes = java.nio.charset.StandardCharsets.UTF_8.newEncoder()
                    .onMalformedInput(java.nio.charset.CodingErrorAction.REPORT)
                    .onUnmappableCharacter(java.nio.charset.CodingErrorAction.REPORT)
                    .encode(java.nio.CharBuffer.wrap(text));
            byte[] out = new byte[bytes.remaining()];
            bytes.get(out);
            return out;
        } catch (java.nio.charset.CharacterCodingException e) {
            throw new IllegalArgumentException(what + " is not valid Unicode (an unpaired surrogate): " + e.getMessage());
        }
    }

    /** A name from the C API, which writes UTF-8. */
    static String string(byte[] utf8) {
        return new String(utf8, java.nio.charset.StandardCharsets.UTF_8);
    }
}
