/* stress.c: THREADS threads score the same request continuously while the
 * main thread reloads the engine between two model files RELOADS times.
 * Every call must succeed and return exactly the scores of one of the two
 * models. After each reload the main thread waits (at most 5 s) until the
 * workers have made THREADS more calls, so that both models serve calls
 * whatever the scheduler does (valgrind runs one thread at a time). Every
 * eighth reload is warmed up (mmoe_engine_set_warm_up): the main thread
 * prepares a session per worker, which the workers take over.
 * Run under ASan/LeakSanitizer (make asan) and valgrind (make valgrind).
 * Usage: stress A.mmoe B.mmoe [THREADS] [RELOADS] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mmoe.h"

enum { CANDIDATES = 16 };

/* Calls completed by all workers (GCC/Clang atomic builtins: the examples are C99). */
static long progress;

typedef struct {
    mmoe_engine *engine;
    const mmoe_feature *features;
    size_t inputs, tasks;
    const float *expect_a, *expect_b;
    int *stop; /* read and written with __atomic builtins */
    long calls, failures, mismatches, saw_a, saw_b;
} worker;

static void *run(void *arg) {
    worker *w = arg;
    mmoe_session *session = NULL;
    if (mmoe_session_new(w->engine, &session) != MMOE_STATUS_OK) {
        w->failures++;
        return NULL;
    }
    float *logits = malloc(CANDIDATES * w->tasks * sizeof(float));
    size_t bytes = CANDIDATES * w->tasks * sizeof(float);
    while (!__atomic_load_n(w->stop, __ATOMIC_ACQUIRE)) {
        mmoe_status status = mmoe_session_score(session, CANDIDATES, w->features, w->inputs, logits,
                                                CANDIDATES * w->tasks, NULL, 0);
        w->calls++;
        __atomic_fetch_add(&progress, 1, __ATOMIC_RELAXED);
        if (status != MMOE_STATUS_OK) {
            w->failures++;
        } else if (memcmp(logits, w->expect_a, bytes) == 0) {
            w->saw_a++;
        } else if (memcmp(logits, w->expect_b, bytes) == 0) {
            w->saw_b++;
        } else {
            w->mismatches++;
        }
    }
    free(logits);
    mmoe_session_free(session);
    return NULL;
}

static int fail(const char *what) {
    char message[512];
    mmoe_last_error(message, sizeof message);
    fprintf(stderr, "%s failed: %s\n", what, message);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s A.mmoe B.mmoe [THREADS] [RELOADS]\n", argv[0]);
        return 2;
    }
    int threads = argc > 3 ? atoi(argv[3]) : 4;
    int reloads = argc > 4 ? atoi(argv[4]) : 100;
    if (threads < 1 || threads > 64) threads = 4;
    mmoe_engine *engine = NULL;
    if (mmoe_engine_open(argv[1], NULL, &engine) != MMOE_STATUS_OK) return fail("open A");
    size_t inputs = 0, tasks = 0;
    mmoe_engine_num_inputs(engine, &inputs);
    mmoe_engine_num_tasks(engine, &tasks);

    /* A deterministic request for the model's inputs. */
    mmoe_feature *features = calloc(inputs, sizeof *features);
    void **owned = calloc(2 * inputs, sizeof *owned);
    for (size_t i = 0; i < inputs; ++i) {
        mmoe_input_info info;
        mmoe_engine_input_info(engine, i, &info);
        size_t rows = info.scope == MMOE_SCOPE_REQUEST ? 1 : CANDIDATES;
        features[i].input = (uint32_t)i;
        if (info.kind == MMOE_INPUT_DENSE) {
            float *v = malloc(rows * info.dim * sizeof(float));
            for (size_t k = 0; k < rows * info.dim; ++k) v[k] = (float)((k * 37 + i * 11) % 101) / 50.0f - 1.0f;
            features[i].dense = v;
            features[i].dense_len = rows * info.dim;
            owned[2 * i] = v;
        } else {
            uint64_t *ids = malloc(rows * sizeof(uint64_t));
            uint32_t *offsets = malloc((rows + 1) * sizeof(uint32_t));
            offsets[0] = 0;
            for (size_t r = 0; r < rows; ++r) {
                ids[r] = (uint64_t)(r * 7919 + i * 104729);
                offsets[r + 1] = (uint32_t)(r + 1);
            }
            features[i].ids = ids;
            features[i].ids_len = rows;
            features[i].offsets = offsets;
            features[i].offsets_len = rows + 1;
            owned[2 * i] = ids;
            owned[2 * i + 1] = offsets;
        }
    }

    /* The expected scores of each model, from a fresh session. */
    float *expect[2];
    for (int m = 0; m < 2; ++m) {
        expect[m] = malloc(CANDIDATES * tasks * sizeof(float));
        if (mmoe_engine_reload(engine, argv[1 + m]) != MMOE_STATUS_OK) return fail("reload");
        mmoe_session *session = NULL;
        mmoe_session_new(engine, &session);
        if (mmoe_session_score(session, CANDIDATES, features, inputs, expect[m], CANDIDATES * tasks, NULL, 0) !=
            MMOE_STATUS_OK)
            return fail("score");
        mmoe_session_free(session);
    }
    if (memcmp(expect[0], expect[1], CANDIDATES * tasks * sizeof(float)) == 0) {
        fprintf(stderr, "the two models score identically; pick two different models\n");
        return 1;
    }

    int stop = 0;
    worker *workers = calloc((size_t)threads, sizeof *workers);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    for (int t = 0; t < threads; ++t) {
        workers[t] = (worker){engine, features, inputs, tasks, expect[0], expect[1], &stop, 0, 0, 0, 0, 0};
        pthread_create(&ids[t], NULL, run, &workers[t]);
    }
    int failed_reloads = 0;
    struct timespec pause = {0, 2000000}; /* 2 ms */
    struct timespec tick = {0, 1000000};  /* 1 ms */
    for (int r = 0; r < reloads; ++r) {
        if (mmoe_engine_set_warm_up(engine, r % 8 == 7 ? CANDIDATES : 0) != MMOE_STATUS_OK) return fail("warm-up");
        if (mmoe_engine_reload(engine, argv[1 + (r % 2)]) != MMOE_STATUS_OK) failed_reloads++;
        long target = __atomic_load_n(&progress, __ATOMIC_RELAXED) + threads;
        for (int waited = 0; __atomic_load_n(&progress, __ATOMIC_RELAXED) < target && waited < 5000; ++waited) nanosleep(&tick, NULL);
    }
    /* A reload to a missing file fails and leaves the engine serving. */
    int refused = mmoe_engine_reload(engine, "/nonexistent/model.mmoe") == MMOE_STATUS_IO;
    nanosleep(&pause, NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    long calls = 0, failures = 0, mismatches = 0, saw_a = 0, saw_b = 0;
    for (int t = 0; t < threads; ++t) {
        pthread_join(ids[t], NULL);
        calls += workers[t].calls;
        failures += workers[t].failures;
        mismatches += workers[t].mismatches;
        saw_a += workers[t].saw_a;
        saw_b += workers[t].saw_b;
    }
    uint64_t generation = 0;
    mmoe_engine_generation(engine, &generation);
    printf("threads %d, reloads %d (generation %llu, failed %d, bad path refused: %s)\n", threads, reloads,
           (unsigned long long)generation, failed_reloads, refused ? "yes" : "no");
    printf("calls %ld: failed %ld, model A %ld, model B %ld, neither %ld\n", calls, failures, saw_a, saw_b, mismatches);

    for (size_t i = 0; i < 2 * inputs; ++i) free(owned[i]);
    free(owned);
    free(features);
    free(expect[0]);
    free(expect[1]);
    free(workers);
    free(ids);
    mmoe_engine_free(engine);
    int ok = failures == 0 && mismatches == 0 && failed_reloads == 0 && refused && saw_a > 0 && saw_b > 0;
    printf("%s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
