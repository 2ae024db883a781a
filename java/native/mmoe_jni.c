/* mmoe_jni.c: the JNI shim between io.mmoe.Native and the C ABI (mmoe.h).
 * Every entry point turns a failed status into an io.mmoe.MmoeException
 * carrying the status code and mmoe_last_error's message. Handles are jlong
 * pointers owned by the Java objects (Engine, Session), which guarantee that
 * close never races a call. Direct buffers are used in place (no copy);
 * primitive arrays are pinned for the duration of the call. */
#include <jni.h>
#include <stdlib.h>
#include <string.h>

#include "mmoe.h"

static void throw_status(JNIEnv *env, mmoe_status status) {
    size_t needed = mmoe_last_error(NULL, 0);
    char *message = malloc(needed + 1);
    if (message) mmoe_last_error(message, needed + 1);
    jclass cls = (*env)->FindClass(env, "io/mmoe/MmoeException");
    if (!cls) return; /* NoClassDefFoundError is pending */
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;)V");
    jstring text = (*env)->NewStringUTF(env, message ? message : "out of memory");
    jthrowable error = (jthrowable)(*env)->NewObject(env, cls, ctor, (jint)status, text);
    if (error) (*env)->Throw(env, error);
    free(message);
}

static void throw_argument(JNIEnv *env, const char *message) {
    jclass cls = (*env)->FindClass(env, "io/mmoe/MmoeException");
    if (!cls) return;
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;)V");
    jstring text = (*env)->NewStringUTF(env, message);
    jthrowable error = (jthrowable)(*env)->NewObject(env, cls, ctor, (jint)MMOE_STATUS_ARGUMENT, text);
    if (error) (*env)->Throw(env, error);
}

/* Returns 1 on success; otherwise an exception is pending. */
static int check(JNIEnv *env, mmoe_status status) {
    if (status == MMOE_STATUS_OK) return 1;
    throw_status(env, status);
    return 0;
}

static mmoe_engine *engine_of(jlong handle) { return (mmoe_engine *)(intptr_t)handle; }
static mmoe_session *session_of(jlong handle) { return (mmoe_session *)(intptr_t)handle; }

JNIEXPORT jlong JNICALL Java_io_mmoe_Native_engineOpen(JNIEnv *env, jclass cls, jstring path, jint device,
                                                       jint ordinal, jint mode, jint precision, jint threads,
                                                       jboolean verify) {
    (void)cls;
    if (!path) {
        throw_argument(env, "path is null");
        return 0;
    }
    mmoe_open_options options = mmoe_open_options_default();
    options.device = (mmoe_device)device;
    options.device_ordinal = (uint32_t)ordinal;
    options.compute_mode = (mmoe_compute_mode)mode;
    options.gpu_precision = (mmoe_gpu_precision)precision;
    options.threads = (uint32_t)threads;
    options.verify_checksums = verify ? 1 : 0;
    const char *text = (*env)->GetStringUTFChars(env, path, NULL);
    if (!text) return 0;
    mmoe_engine *engine = NULL;
    mmoe_status status = mmoe_engine_open(text, &options, &engine);
    (*env)->ReleaseStringUTFChars(env, path, text);
    return check(env, status) ? (jlong)(intptr_t)engine : 0;
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_engineFree(JNIEnv *env, jclass cls, jlong engine) {
    (void)env, (void)cls;
    mmoe_engine_free(engine_of(engine));
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_engineReload(JNIEnv *env, jclass cls, jlong engine, jstring path) {
    (void)cls;
    if (!path) {
        throw_argument(env, "path is null");
        return;
    }
    const char *text = (*env)->GetStringUTFChars(env, path, NULL);
    if (!text) return;
    mmoe_status status = mmoe_engine_reload(engine_of(engine), text);
    (*env)->ReleaseStringUTFChars(env, path, text);
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

static jstring query_text(JNIEnv *env, jlong engine, jint index, text_query query) {
    size_t len = 0;
    if (!check(env, query(engine_of(engine), (size_t)index, NULL, 0, &len))) return NULL;
    char *buf = malloc(len + 1);
    if (!buf) return NULL;
    jstring result = NULL;
    if (check(env, query(engine_of(engine), (size_t)index, buf, len + 1, NULL))) result = (*env)->NewStringUTF(env, buf);
    free(buf);
    return result;
}

static mmoe_status model_name(const mmoe_engine *e, size_t i, char *buf, size_t len, size_t *out) {
    (void)i;
    return mmoe_engine_model_name(e, buf, len, out);
}

JNIEXPORT jstring JNICALL Java_io_mmoe_Native_engineModelName(JNIEnv *env, jclass cls, jlong engine) {
    (void)cls;
    return query_text(env, engine, 0, model_name);
}

JNIEXPORT jstring JNICALL Java_io_mmoe_Native_engineTaskName(JNIEnv *env, jclass cls, jlong engine, jint index) {
    (void)cls;
    return query_text(env, engine, index, mmoe_engine_task_name);
}

JNIEXPORT jstring JNICALL Java_io_mmoe_Native_engineInputName(JNIEnv *env, jclass cls, jlong engine, jint index) {
    (void)cls;
    return query_text(env, engine, index, mmoe_engine_input_name);
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
    mmoe_session *session = NULL;
    return check(env, mmoe_session_new(engine_of(engine), &session)) ? (jlong)(intptr_t)session : 0;
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionFree(JNIEnv *env, jclass cls, jlong session) {
    (void)env, (void)cls;
    mmoe_session_free(session_of(session));
}

JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionWarmUp(JNIEnv *env, jclass cls, jlong session,
                                                         jint max_candidates) {
    (void)cls;
    check(env, mmoe_session_warm_up(session_of(session), (size_t)max_candidates));
}

/* An array argument: a direct buffer (used in place) or a primitive array
 * (pinned until release). */
typedef struct {
    jobject object;
    void *data;
    size_t len;
    int pinned;
} view;

/* Pass 1 (JNI calls allowed): a direct buffer's address and element count,
 * or a primitive array's length. */
static void inspect_view(JNIEnv *env, jobject object, size_t element, view *v) {
    v->object = object;
    v->data = NULL;
    v->len = 0;
    v->pinned = 0;
    if (!object) return;
    void *address = (*env)->GetDirectBufferAddress(env, object);
    if (address) {
        v->data = address;
        v->len = (size_t)(*env)->GetDirectBufferCapacity(env, object); /* elements */
        (void)element;
    } else {
        v->len = (size_t)(*env)->GetArrayLength(env, (jarray)object);
        v->pinned = 1;
    }
}

/* Pass 2 (no other JNI calls until release): pin an array. */
static int pin_view(JNIEnv *env, view *v) {
    if (!v->pinned) return 1;
    v->data = (*env)->GetPrimitiveArrayCritical(env, (jarray)v->object, NULL);
    return v->data != NULL;
}

static void close_view(JNIEnv *env, view *v, int write_back) {
    if (v->pinned && v->data) (*env)->ReleasePrimitiveArrayCritical(env, (jarray)v->object, v->data, write_back ? 0 : JNI_ABORT);
}

/* inputs[i] names the model input of dense[i] (float[] / direct FloatBuffer)
 * or of ids[i] + offsets[i] (long[] / LongBuffer, int[] / IntBuffer). */
JNIEXPORT void JNICALL Java_io_mmoe_Native_sessionScore(JNIEnv *env, jclass cls, jlong session, jint candidates,
                                                        jintArray inputs, jobjectArray dense, jobjectArray ids,
                                                        jobjectArray offsets, jobject logits,
                                                        jobject probabilities) {
    (void)cls;
    if (!inputs || !dense || !ids || !offsets) {
        throw_argument(env, "feature arrays are null");
        return;
    }
    jsize count = (*env)->GetArrayLength(env, inputs);
    jint *input_index = malloc(sizeof(jint) * (size_t)(count > 0 ? count : 1));
    mmoe_feature *features = calloc((size_t)(count > 0 ? count : 1), sizeof *features);
    view *views = calloc((size_t)(3 * count + 2), sizeof *views);
    jobject *objects = calloc((size_t)(3 * count + 2), sizeof *objects);
    if (!input_index || !features || !views || !objects) {
        free(input_index), free(features), free(views), free(objects);
        throw_argument(env, "out of memory");
        return;
    }
    (*env)->GetIntArrayRegion(env, inputs, 0, count, input_index);
    /* Fetch every object first: no JNI calls are allowed while arrays are pinned. */
    for (jsize i = 0; i < count; ++i) {
        objects[3 * i] = (*env)->GetObjectArrayElement(env, dense, i);
        objects[3 * i + 1] = (*env)->GetObjectArrayElement(env, ids, i);
        objects[3 * i + 2] = (*env)->GetObjectArrayElement(env, offsets, i);
    }
    objects[3 * count] = logits;
    objects[3 * count + 1] = probabilities;
    /* Inspect everything first (JNI calls), then pin the arrays. */
    size_t sizes[3] = {sizeof(float), sizeof(uint64_t), sizeof(uint32_t)};
    for (jsize k = 0; k < 3 * count + 2; ++k) inspect_view(env, objects[k], k >= 3 * count ? sizeof(float) : sizes[k % 3], &views[k]);
    int ok = 1;
    for (jsize k = 0; k < 3 * count + 2 && ok; ++k) ok = pin_view(env, &views[k]);
    mmoe_status status = MMOE_STATUS_ARGUMENT;
    if (ok) {
        for (jsize i = 0; i < count; ++i) {
            features[i].input = (uint32_t)input_index[i];
            features[i].dense = views[3 * i].data;
            features[i].dense_len = views[3 * i].len;
            features[i].ids = views[3 * i + 1].data;
            features[i].ids_len = views[3 * i + 1].len;
            features[i].offsets = views[3 * i + 2].data;
            features[i].offsets_len = views[3 * i + 2].len;
        }
        view *out_logits = &views[3 * count], *out_probabilities = &views[3 * count + 1];
        status = mmoe_session_score(session_of(session), (size_t)candidates, features, (size_t)count,
                                    out_logits->data, out_logits->len, out_probabilities->data,
                                    out_probabilities->len);
    }
    for (jsize k = 3 * count + 2; k-- > 0;) close_view(env, &views[k], k >= 3 * count && status == MMOE_STATUS_OK);
    free(input_index), free(features), free(views), free(objects);
    if (!ok) {
        throw_argument(env, "could not access a feature array");
        return;
    }
    check(env, status);
}
