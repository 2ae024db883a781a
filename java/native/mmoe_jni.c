/* mmoe_jni.c: the JNI shim between io.mmoe.Native and the C ABI (mmoe.h).
 * Every entry point turns a failed status into an io.mmoe.MmoeException
 * carrying the status code and mmoe_last_error's message. Handles are jlong
 * pointers owned by the Java objects (Engine, Session), which guarantee that
 * close never races a call and that a session serves one call at a time.
 * Direct buffers are used in place (no copy); primitive arrays are copied in
 * (and outputs copied back on success), not pinned: a scoring call can take
 * milliseconds, too long to hold the collector off with a critical region.
 * The copies and a call's tables go to the session's scratch, which is
 * reused: a call allocates nothing once its sizes have been seen.
 * Text crosses as UTF-8 byte arrays both ways, not as jstring: JNI's
 * GetStringUTFChars and NewStringUTF speak modified UTF-8, which differs
 * from the library's UTF-8 for NUL and for characters beyond the BMP. */
#include <jni.h>
#include <stdlib.h>
#include <string.h>

#include "mmoe.h"

/* io.mmoe.MmoeException and its (int, byte[] UTF-8) constructor, resolved once in
 * JNI_OnLoad: a lookup that fails there fails the library's loading, not a
 * later call with a NULL method id. The class is held by a weak reference: a
 * strong (global) one would pin the class, so its class loader and this
 * library could never be unloaded (an application server redeploying the
 * application would leak both each time). The class lives as long as the
 * loader that loaded this library, which outlives every native call. */
static jclass exception_class;
static jmethodID exception_ctor;

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
    (void)reserved;
    JNIEnv *env = NULL;
    if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_8) != JNI_OK) return JNI_ERR;
    jclass local = (*env)->FindClass(env, "io/mmoe/MmoeException");
    if (!local) return JNI_ERR;
    exception_class = (jclass)(*env)->NewWeakGlobalRef(env, local);
    (*env)->DeleteLocalRef(env, local);
    if (!exception_class) return JNI_ERR;
    exception_ctor = (*env)->GetMethodID(env, exception_class, "<init>", "(I[B)V");
    if (!exception_ctor) return JNI_ERR;
    return JNI_VERSION_1_8;
}

JNIEXPORT void JNICALL JNI_OnUnload(JavaVM *vm, void *reserved) {
    (void)reserved;
    JNIEnv *env = NULL;
    if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_8) != JNI_OK || !exception_class) return;
    (*env)->DeleteWeakGlobalRef(env, (jweak)exception_class);
    exception_class = NULL;
}

/* `text` (UTF-8) as a new byte[]; NULL with OutOfMemoryError pending. */
static jbyteArray utf8_bytes(JNIEnv *env, const char *text, size_t len) {
    jbyteArray bytes = (*env)->NewByteArray(env, (jsize)len);
    if (bytes) (*env)->SetByteArrayRegion(env, bytes, 0, (jsize)len, (const jbyte *)text);
    return bytes;
}

static void throw_out_of_memory(JNIEnv *env, const char *what) {
    if ((*env)->ExceptionCheck(env)) return;
    jclass cls = (*env)->FindClass(env, "java/lang/OutOfMemoryError");
    if (cls) (*env)->ThrowNew(env, cls, what);
}

static void throw_exception(JNIEnv *env, jint status, const char *message) {
    if ((*env)->ExceptionCheck(env)) return; /* the first one stands */
    jclass cls = (jclass)(*env)->NewLocalRef(env, exception_class); /* a strong one for the call */
    if (!cls) {
        throw_out_of_memory(env, "io.mmoe.MmoeException is unloaded");
        return;
    }
    jbyteArray text = utf8_bytes(env, message, strlen(message));
    jthrowable error = text ? (jthrowable)(*env)->NewObject(env, cls, exception_ctor, status, text) : NULL;
    if (error) (*env)->Throw(env, error); /* else OutOfMemoryError is pending */
    (*env)->DeleteLocalRef(env, cls);
}

static void throw_status(JNIEnv *env, mmoe_status status) {
    size_t needed = mmoe_last_error(NULL, 0);
    char *message = malloc(needed + 1);
    if (!message) {
        throw_out_of_memory(env, "mmoe: no memory for an error message");
        return;
    }
    mmoe_last_error(message, needed + 1);
    throw_exception(env, (jint)status, message);
    free(message);
}

static void throw_argument(JNIEnv *env, const char *message) {
    throw_exception(env, (jint)MMOE_STATUS_ARGUMENT, message);
}

/* Returns 1 on success; otherwise an exception is pending. */
static int check(JNIEnv *env, mmoe_status status) {
    if (status == MMOE_STATUS_OK) return 1;
    throw_status(env, status);
    return 0;
}

/* A NUL-terminated copy of the UTF-8 bytes of `path` (free it); NULL with an
 * exception pending. */
static char *path_text(JNIEnv *env, jbyteArray path) {
    if (!path) {
        throw_argument(env, "path is null");
        return NULL;
    }
    jsize len = (*env)->GetArrayLength(env, path);
    char *text = malloc((size_t)len + 1);
    if (!text) {
        throw_out_of_memory(env, "mmoe: no memory for a path");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, path, 0, len, (jbyte *)text);
    text[len] = '\0';
    return text;
}

static mmoe_engine *engine_of(jlong handle) { return (mmoe_engine *)(intptr_t)handle; }

/* A session as Java holds it: the library's session and this shim's
 * scratch, one block that holds a call's feature tables and its copies of
 * Java arrays. It grows to the largest request seen and is then reused, so
 * that a call allocates nothing once a request of its size has been seen.
 * Java's Session guarantees one call at a time, as for the session itself. */
typedef struct {
    mmoe_session *session;
    unsigned char *scratch;
    size_t scratch_len;
} jni_session;

static jni_session *jni_session_of(jlong handle) { return (jni_session *)(intptr_t)handle; }
static mmoe_session *session_of(jlong handle) { return jni_session_of(handle)->session; }

/* At least `len` bytes of scratch (its old content is not kept); NULL with
 * OutOfMemoryError pending. */
static unsigned char *scratch_of(JNIEnv *env, jni_session *s, size_t len) {
    if (len > s->scratch_len) {
        free(s->scratch);
        s->scratch_len = 0;
        s->scratch = malloc(len);
        if (!s->scratch) {
            throw_out_of_memory(env, "mmoe: no memory to copy a request");
            return NULL;
        }
        s->scratch_len = len;
    }
    return s->scratch;
}

/* Pieces of the scratch start on 8-byte boundaries (jlong, pointers). */
static size_t aligned(size_t bytes) { return (bytes + 7) & ~(size_t)7; }

JNIEXPORT jlong JNICALL Java_io_mmoe_Native_engineOpen(JNIEnv *env, jclass cls, jbyteArray path, jint device,
                                                       jint ordinal, jint mode, jint precision, jint threads,
                                                       jboolean verify) {
    (void)cls;
    mmoe_open_options options = mmoe_open_options_default();
    options.device = (mmoe_device)device;
    options.device_ordinal = (uint32_t)ordinal;
    options.compute_mode = (mmoe_compute_mode)mode;
    options.gpu_precision = (mmoe_gpu_precision)precision;
    options.threads = (uint32_t)threads;
    options.verify_checksums = verify ? 1 : 0;
    char *text = path_text(env, path);
    if (!text) return 0;
    mmoe_engine *engine = NULL;
    mmoe_status status = mmoe_engine_open(text, &options, &engine);
    free(text);
    return check(env, status) ? (jlong)(intptr_t)engine : 0;
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_engineFree(JNIEnv *env, jclass cls, jlong engine) {
    (void)env, (void)cls;
    mmoe_engine_free(engine_of(engine));
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_engineReload(JNIEnv *env, jclass cls, jlong engine, jbyteArray path) {
    (void)cls;
    char *text = path_text(env, path);
    if (!text) return;
    mmoe_status status = mmoe_engine_reload(engine_of(engine), text);
    free(text);
    check(env, status);
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_engineSetWarmUp(JNIEnv *env, jclass cls, jlong engine,
                                                           jint max_candidates) {
    (void)cls;
    check(env, mmoe_engine_set_warm_up(engine_of(engine), (size_t)max_candidates));
}

JNIEXPORT jlong JNICALL Java_io_mmoe_Native_engineGeneration(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    uint64_t value = 0;
    check(env, mmoe_engine_generation(engine_of(engine), &value));
    return (jlong)value;
}

JNIEXPORT jlong JNICALL Java_io_mmoe_Native_engineContentHash(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    uint64_t value = 0;
    check(env, mmoe_engine_content_hash(engine_of(engine), &value));
    return (jlong)value;
}

JNIEXPORT jint JNICALL Java_io_mmoe_Native_engineNumTasks(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    size_t value = 0;
    check(env, mmoe_engine_num_tasks(engine_of(engine), &value));
    return (jint)value;
}

JNIEXPORT jint JNICALL Java_io_mmoe_Native_engineNumInputs(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    size_t value = 0;
    check(env, mmoe_engine_num_inputs(engine_of(engine), &value));
    return (jint)value;
}

typedef mmoe_status (*text_query)(const mmoe_engine *, size_t, char *, size_t, size_t *);

/* The UTF-8 bytes of a name. A reload between the two calls may change the
 * text (a device note of another length): the second call's full length
 * says whether the buffer held all of it, else read again. */
static jbyteArray query_text(JNIEnv *env, jlong engine, jint index, text_query query) {
    size_t len = 0;
    if (!check(env, query(engine_of(engine), (size_t)index, NULL, 0, &len))) return NULL;
    for (;;) {
        char *buf = malloc(len + 1);
        if (!buf) {
            throw_out_of_memory(env, "mmoe: no memory for a name");
            return NULL;
        }
        size_t now = 0;
        if (!check(env, query(engine_of(engine), (size_t)index, buf, len + 1, &now))) {
            free(buf);
            return NULL;
        }
        if (now <= len) {
            jbyteArray result = utf8_bytes(env, buf, now);
            free(buf);
            return result;
        }
        free(buf);
        len = now;
    }
}

static mmoe_status model_name(const mmoe_engine *e, size_t i, char *buf, size_t len, size_t *out) {
    (void)i;
    return mmoe_engine_model_name(e, buf, len, out);
}

JNIEXPORT jbyteArray JNICALL Java_io_mmoe_Native_engineModelName(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    return query_text(env, engine, 0, model_name);
}

JNIEXPORT jbyteArray JNICALL Java_io_mmoe_Native_engineTaskName(JNIEnv *env, jclass cls, jlong engine, jint index) {
    (void)cls;
    return query_text(env, engine, index, mmoe_engine_task_name);
}

JNIEXPORT jbyteArray JNICALL Java_io_mmoe_Native_engineInputName(JNIEnv *env, jclass cls, jlong engine, jint index) {
    (void)cls;
    return query_text(env, engine, index, mmoe_engine_input_name);
}

static mmoe_status device_note(const mmoe_engine *e, size_t i, char *buf, size_t len, size_t *out) {
    (void)i;
    return mmoe_engine_device_note(e, buf, len, out);
}

JNIEXPORT jbyteArray JNICALL Java_io_mmoe_Native_engineDeviceNote(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    return query_text(env, engine, 0, device_note);
}

/* The C enum's value: MMOE_DEVICE_CPU or MMOE_DEVICE_CUDA. */
JNIEXPORT jint JNICALL Java_io_mmoe_Native_engineDevice(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    mmoe_device device = MMOE_DEVICE_CPU;
    check(env, mmoe_engine_device(engine_of(engine), &device, NULL));
    return (jint)device;
}

/* {kind, scope, dim} */
JNIEXPORT jintArray JNICALL Java_io_mmoe_Native_engineInputInfo(JNIEnv *env, jclass cls, jlong engine, jint index) {
    (void)cls;
    mmoe_input_info info;
    if (!check(env, mmoe_engine_input_info(engine_of(engine), (size_t)index, &info))) return NULL;
    jint values[3] = {(jint)info.kind, (jint)info.scope, (jint)info.dim};
    jintArray result = (*env)->NewIntArray(env, 3);
    if (result) (*env)->SetIntArrayRegion(env, result, 0, 3, values);
    return result;
}

JNIEXPORT jlong JNICALL Java_io_mmoe_Native_sessionNew(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    jni_session *s = calloc(1, sizeof *s);
    if (!s) {
        throw_out_of_memory(env, "mmoe: no memory for a session");
        return 0;
    }
    if (!check(env, mmoe_session_new(engine_of(engine), &s->session))) {
        free(s);
        return 0;
    }
    return (jlong)(intptr_t)s;
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionFree(JNIEnv *env, jclass cls, jlong session) {
    (void)env, (void)cls;
    jni_session *s = jni_session_of(session);
    if (!s) return;
    mmoe_session_free(s->session);
    free(s->scratch);
    free(s);
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionWarmUp(JNIEnv *env, jclass cls, jlong session,
                                                         jint max_candidates) {
    (void)cls;
    check(env, mmoe_session_warm_up(session_of(session), (size_t)max_candidates));
}

/* An array argument: a direct buffer (used in place) or a primitive array
 * (copied into the session's scratch; an output is copied back on success). */
typedef enum { FLOATS, LONGS, INTS } element_type;

typedef struct {
    jobject object;
    void *data;
    size_t len;
    int copied; /* data is a copy in the scratch, not a direct buffer's */
} view;

static size_t element_size(element_type type) {
    return type == FLOATS ? sizeof(jfloat) : type == LONGS ? sizeof(jlong) : sizeof(jint);
}

/* The part of the scratch that copies go to: `capacity` bytes at `base`, of
 * which a call's copies ask for `used` (more than fit: the scratch grows and
 * the call opens its views again). */
typedef struct {
    unsigned char *base;
    size_t capacity, used;
} arena;

/* Fills `v` for `object` (NULL: an empty view); an input array is copied in
 * when it fits in `copies` (else its bytes are only counted and `v->data`
 * is NULL). Returns 0 with an exception pending on failure. */
/* Where a zero-length output points: never NULL, which the C ABI reads as
 * "not wanted", so the library checks an empty output's length like any
 * other (an empty float[] for 8 candidates is an error, not a silent no-op).
 * Nothing is ever written to it. */
static uint64_t empty_output_word;

static int open_view(JNIEnv *env, jobject object, element_type type, int input, arena *copies, view *v) {
    v->object = object;
    v->data = NULL;
    v->len = 0;
    v->copied = 0;
    if (!object) return 1;
    /* -1 for anything but a direct buffer. A direct buffer's address may be
     * NULL (a zero-length buffer over MemorySegment.NULL, say): it is still a
     * buffer, never to be read as a Java array. */
    jlong capacity = (*env)->GetDirectBufferCapacity(env, object); /* elements */
    if (capacity >= 0) {
        void *address = (*env)->GetDirectBufferAddress(env, object);
        if (!address && capacity > 0) {
            throw_argument(env, "a direct buffer has no address");
            return 0;
        }
        v->data = address ? address : (input ? NULL : (void *)&empty_output_word);
        v->len = (size_t)capacity;
        return 1;
    }
    jsize len = (*env)->GetArrayLength(env, (jarray)object);
    if ((*env)->ExceptionCheck(env)) return 0;
    v->len = (size_t)len;
    if (len == 0) {
        if (!input) v->data = &empty_output_word;
        return 1;
    }
    size_t bytes = aligned(v->len * element_size(type));
    size_t at = copies->used;
    copies->used += bytes;
    if (copies->used > copies->capacity) return 1;
    v->data = copies->base + at;
    v->copied = 1;
    if (input) {
        if (type == FLOATS) (*env)->GetFloatArrayRegion(env, (jfloatArray)object, 0, len, v->data);
        else if (type == LONGS) (*env)->GetLongArrayRegion(env, (jlongArray)object, 0, len, v->data);
        else (*env)->GetIntArrayRegion(env, (jintArray)object, 0, len, v->data);
    }
    return !(*env)->ExceptionCheck(env);
}

/* Copies an output array back (its data stays in the scratch). */
static void close_view(JNIEnv *env, view *v) {
    if (v->copied) (*env)->SetFloatArrayRegion(env, (jfloatArray)v->object, 0, (jsize)v->len, v->data);
}

/* inputs[i] names the model input of dense[i] (float[] / direct FloatBuffer)
 * or of ids[i] + offsets[i] (long[] / LongBuffer, int[] / IntBuffer). The
 * tables and copies go to the session's scratch; a request whose copies do
 * not fit grows it and is read again (once per larger size). */
JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionScore(JNIEnv *env, jclass cls, jlong session, jint candidates,
                                                        jintArray inputs, jobjectArray dense, jobjectArray ids,
                                                        jobjectArray offsets, jobject logits,
                                                        jobject probabilities) {
    (void)cls;
    if (!inputs || !dense || !ids || !offsets) {
        throw_argument(env, "feature arrays are null");
        return;
    }
    if (candidates < 0) {
        throw_argument(env, "candidates is negative");
        return;
    }
    jni_session *s = jni_session_of(session);
    jsize count = (*env)->GetArrayLength(env, inputs);
    static const element_type types[3] = {FLOATS, LONGS, INTS};
    jobjectArray columns[3] = {dense, ids, offsets};
    size_t views_len = 3 * (size_t)count + 2;
    size_t features_at = aligned(sizeof(jint) * (size_t)count);
    size_t views_at = features_at + aligned(sizeof(mmoe_feature) * (size_t)count);
    size_t tables = views_at + aligned(sizeof(view) * views_len);
    size_t wanted = tables;
    jint *input_index;
    mmoe_feature *features;
    view *views;
    for (int attempt = 0;; ++attempt) {
        unsigned char *scratch = scratch_of(env, s, wanted);
        if (!scratch) return;
        input_index = (jint *)scratch;
        features = (mmoe_feature *)(scratch + features_at);
        views = (view *)(scratch + views_at);
        arena copies = {scratch + tables, s->scratch_len - tables, 0};
        (*env)->GetIntArrayRegion(env, inputs, 0, count, input_index);
        int ok = !(*env)->ExceptionCheck(env);
        size_t opened = 0;
        for (jsize i = 0; i < count && ok; ++i) {
            for (int c = 0; c < 3 && ok; ++c) {
                jobject object = (*env)->GetObjectArrayElement(env, columns[c], i);
                ok = !(*env)->ExceptionCheck(env) && open_view(env, object, types[c], 1, &copies, &views[opened]);
                ++opened;
                /* A copy made, or a direct buffer's address taken: the local
                 * reference is not needed (a buffer outlives the call in Java). */
                if (object) (*env)->DeleteLocalRef(env, object);
            }
        }
        if (ok) ok = open_view(env, logits, FLOATS, 0, &copies, &views[opened++]);
        if (ok) ok = open_view(env, probabilities, FLOATS, 0, &copies, &views[opened++]);
        if (!ok) return;
        if (copies.used <= copies.capacity) break;
        if (attempt > 0) {
            /* Sized by the first attempt: only another thread swapping the
             * request's arrays during the call gets here. */
            throw_argument(env, "the request's arrays changed during the call");
            return;
        }
        wanted = tables + copies.used;
    }
    for (jsize i = 0; i < count; ++i) {
        features[i].input = (uint32_t)input_index[i];
        features[i].dense = views[3 * i].data;
        features[i].dense_len = views[3 * i].len;
        features[i].ids = views[3 * i + 1].data;
        features[i].ids_len = views[3 * i + 1].len;
        features[i].offsets = views[3 * i + 2].data;
        features[i].offsets_len = views[3 * i + 2].len;
    }
    view *out_logits = &views[3 * (size_t)count], *out_probabilities = &views[3 * (size_t)count + 1];
    mmoe_status status =
        mmoe_session_score(s->session, (size_t)candidates, features, (size_t)count, out_logits->data,
                           out_logits->len, out_probabilities->data, out_probabilities->len);
    if (!check(env, status)) return;
    close_view(env, out_logits);
    close_view(env, out_probabilities);
}
