/*
 * bench: a standalone C99 latency/throughput benchmark of any mmoe model.
 *
 *   bench MODEL.mmoe [--batch 1,16,256] [--threads N] [--iters N]
 *         [--seconds S] [--mode exact|bf16] [--device cpu|cuda|auto]
 *
 * N threads, each with its own session and its own synthetic request
 * (built from the model's input info: dense values from an LCG in [-1, 1),
 * sparse bags of 1-3 ids), score in a loop after a few warm-up calls. Per
 * batch size every thread runs until it has made --iters timed calls or
 * --seconds have passed, whichever comes first (neither given: 2 seconds).
 * Each call is timed with clock_gettime(CLOCK_MONOTONIC); the report gives
 * calls, candidates/s over all threads, and p50/p99/p999 latency in us.
 *
 * Build: gcc -std=c99 -Wall -Wextra -Werror -pedantic -D_POSIX_C_SOURCE=200809L
 *        -Iinclude c-examples/bench.c target/release/libmmoe.a -lpthread -ldl -lm
 */

#include "mmoe.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WARMUP_CALLS 5
#define MAX_CANDIDATES 1000000
#define MAX_THREADS 1024

/* ------------------------------------------------------------ errors -- */

/* This thread's last mmoe error message (malloc'd; NULL when out of memory). */
static char *last_error_copy(void) {
    size_t len = mmoe_last_error(NULL, 0);
    char *msg = malloc(len + 1);
    if (msg != NULL) {
        mmoe_last_error(msg, len + 1);
        msg[len] = '\0';
    }
    return msg;
}

/* Prints `what` failed with the status and message; returns 0 on failure, 1 on success. */
static int ok(mmoe_status status, const char *what) {
    char *msg;
    if (status == MMOE_STATUS_OK) {
        return 1;
    }
    msg = last_error_copy();
    fprintf(stderr, "bench: %s failed: status %d (%s): %s\n", what, (int)status,
            mmoe_status_str(status), msg != NULL ? msg : "(out of memory for the message)");
    free(msg);
    return 0;
}

/* Text from an engine getter of the form f(engine, [index,] buf, len, out_len). */
typedef mmoe_status (*text_getter)(const mmoe_engine *, size_t, char *, size_t, size_t *);

static mmoe_status get_model_name(const mmoe_engine *e, size_t i, char *b, size_t n, size_t *o) {
    (void)i;
    return mmoe_engine_model_name(e, b, n, o);
}

/* Returns a malloc'd copy of the text, or NULL (error already printed). */
static char *get_text(const mmoe_engine *engine, text_getter get, size_t index, const char *what) {
    size_t len = 0, now = 0;
    char *buf = NULL;
    if (!ok(get(engine, index, NULL, 0, &len), what)) {
        return NULL;
    }
    for (;;) {
        char *grown = realloc(buf, len + 1);
        if (grown == NULL) {
            fprintf(stderr, "bench: out of memory\n");
            free(buf);
            return NULL;
        }
        buf = grown;
        if (!ok(get(engine, index, buf, len + 1, &now), what)) {
            free(buf);
            return NULL;
        }
        if (now <= len) {
            return buf; /* a concurrent reload may change the text: retry if it grew */
        }
        len = now;
    }
}

/* -------------------------------------------------- synthetic request -- */

/* A 64-bit LCG (Knuth's MMIX constants): 31 random bits per step. */
static uint32_t lcg_next(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*state >> 33);
}

/* Uniform in [-1, 1). */
static float lcg_uniform(uint64_t *state) {
    return (float)(lcg_next(state) / 1073741824.0 - 1.0);
}

typedef struct {
    size_t num_inputs;
    mmoe_feature *features; /* points into the arrays below */
    float **dense;
    uint64_t **ids;
    uint32_t **offsets;
} synth_request;

static void synth_free(synth_request *r) {
    size_t i;
    if (r->dense != NULL || r->ids != NULL || r->offsets != NULL) {
        for (i = 0; i < r->num_inputs; i++) {
            if (r->dense != NULL) free(r->dense[i]);
            if (r->ids != NULL) free(r->ids[i]);
            if (r->offsets != NULL) free(r->offsets[i]);
        }
    }
    free(r->features);
    free(r->dense);
    free(r->ids);
    free(r->offsets);
    memset(r, 0, sizeof *r);
}

/* Builds a request of `candidates` candidates for every input; 0 when out of memory. */
static int synth_build(synth_request *r, const mmoe_input_info *info, size_t num_inputs,
                       size_t candidates, uint64_t seed) {
    uint64_t state = seed;
    size_t i, row, k;
    memset(r, 0, sizeof *r);
    r->num_inputs = num_inputs;
    r->features = calloc(num_inputs ? num_inputs : 1, sizeof *r->features);
    r->dense = calloc(num_inputs ? num_inputs : 1, sizeof *r->dense);
    r->ids = calloc(num_inputs ? num_inputs : 1, sizeof *r->ids);
    r->offsets = calloc(num_inputs ? num_inputs : 1, sizeof *r->offsets);
    if (r->features == NULL || r->dense == NULL || r->ids == NULL || r->offsets == NULL) {
        goto oom;
    }
    for (i = 0; i < num_inputs; i++) {
        size_t rows = info[i].scope == MMOE_SCOPE_REQUEST ? 1 : candidates;
        mmoe_feature *f = &r->features[i];
        f->input = (uint32_t)i;
        if (info[i].kind == MMOE_INPUT_DENSE) {
            size_t n;
            if (info[i].dim != 0 && rows > SIZE_MAX / sizeof(float) / info[i].dim) {
                goto oom;
            }
            n = rows * info[i].dim;
            r->dense[i] = malloc(n ? n * sizeof(float) : 1);
            if (r->dense[i] == NULL) goto oom;
            for (k = 0; k < n; k++) r->dense[i][k] = lcg_uniform(&state);
            f->dense = r->dense[i];
            f->dense_len = n;
        } else {
            size_t used = 0;
            r->ids[i] = malloc(rows * 3 * sizeof(uint64_t) + 1); /* at most 3 ids per bag */
            r->offsets[i] = malloc((rows + 1) * sizeof(uint32_t));
            if (r->ids[i] == NULL || r->offsets[i] == NULL) goto oom;
            r->offsets[i][0] = 0;
            for (row = 0; row < rows; row++) {
                uint32_t n = 1 + lcg_next(&state) % 3;
                for (k = 0; k < n; k++) r->ids[i][used++] = lcg_next(&state);
                r->offsets[i][row + 1] = (uint32_t)used;
            }
            f->ids = r->ids[i];
            f->ids_len = used;
            f->offsets = r->offsets[i];
            f->offsets_len = rows + 1;
        }
    }
    return 1;
oom:
    synth_free(r);
    return 0;
}

/* ------------------------------------------------------------ workers -- */

/* The start gate: workers warm up, report ready, and wait for `go`. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    size_t ready;             /* workers done warming up */
    int go;                   /* set by main once every started worker is ready */
    int cancel;               /* set with go when not every thread could start */
    int warmup_failed;        /* some worker's warm-up call failed */
    unsigned long long iters; /* 0: no limit */
    double seconds;           /* <= 0: no limit */
} shared_state;

typedef struct {
    shared_state *shared;
    mmoe_session *session;
    size_t candidates;
    synth_request request;
    float *logits;
    size_t logits_len;
    uint64_t *lat_ns;
    size_t lat_len, lat_cap;
    struct timespec start, end;
    int failed;
    mmoe_status status; /* of the failed mmoe call (OK: the failure was not mmoe's) */
    char *error;        /* its message (malloc'd), or NULL */
} worker;

static uint64_t ns_of(const struct timespec *t) {
    return (uint64_t)t->tv_sec * 1000000000ULL + (uint64_t)t->tv_nsec;
}

static mmoe_status score_once(worker *w) {
    return mmoe_session_score(w->session, w->candidates, w->request.features,
                              w->request.num_inputs, w->logits, w->logits_len, NULL, 0);
}

/* Records the first failure: `text`, or else this thread's mmoe_last_error. */
static void fail(worker *w, mmoe_status status, const char *text) {
    w->failed = 1;
    w->status = status;
    if (text == NULL) {
        w->error = last_error_copy();
    } else {
        size_t n = strlen(text);
        w->error = malloc(n + 1);
        if (w->error != NULL) memcpy(w->error, text, n + 1);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    shared_state *sh = w->shared;
    mmoe_status s = MMOE_STATUS_OK;
    uint64_t deadline = 0, now;
    struct timespec t0, t1;
    int i, stop;

    for (i = 0; i < WARMUP_CALLS; i++) {
        s = score_once(w);
        if (s != MMOE_STATUS_OK) {
            fail(w, s, NULL);
            break;
        }
    }
    pthread_mutex_lock(&sh->lock);
    if (w->failed) sh->warmup_failed = 1;
    sh->ready++;
    pthread_cond_broadcast(&sh->changed);
    while (!sh->go) pthread_cond_wait(&sh->changed, &sh->lock);
    stop = sh->cancel || sh->warmup_failed;
    pthread_mutex_unlock(&sh->lock);

    clock_gettime(CLOCK_MONOTONIC, &w->start);
    w->end = w->start;
    if (stop) {
        return NULL;
    }
    if (sh->seconds > 0) {
        deadline = ns_of(&w->start) + (uint64_t)(sh->seconds * 1e9);
    }
    now = ns_of(&w->start);
    while ((sh->iters == 0 || w->lat_len < sh->iters) && (deadline == 0 || now < deadline)) {
        if (w->lat_len == w->lat_cap) {
            size_t cap = w->lat_cap ? w->lat_cap * 2 : 4096;
            uint64_t *grown = realloc(w->lat_ns, cap * sizeof *grown);
            if (grown == NULL) {
                fail(w, MMOE_STATUS_OK, "out of memory for latency samples");
                break;
            }
            w->lat_ns = grown;
            w->lat_cap = cap;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        s = score_once(w);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (s != MMOE_STATUS_OK) {
            fail(w, s, NULL);
            break;
        }
        now = ns_of(&t1);
        w->lat_ns[w->lat_len++] = now - ns_of(&t0);
    }
    clock_gettime(CLOCK_MONOTONIC, &w->end);
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted `v` (n > 0), `per_mille` in 1..1000. */
static double percentile_us(const uint64_t *v, size_t n, size_t per_mille) {
    size_t rank = (n * per_mille + 999) / 1000;
    if (rank == 0) rank = 1;
    return (double)v[rank - 1] / 1000.0;
}

/* ------------------------------------------------------------ options -- */

static void usage(FILE *to, const char *argv0) {
    fprintf(to,
            "usage: %s MODEL.mmoe [--batch 1,16,256] [--threads N] [--iters N] [--seconds S]\n"
            "       [--mode exact|bf16] [--device cpu|cuda|auto]\n"
            "Per batch size each thread makes --iters timed calls or runs --seconds,\n"
            "whichever comes first (default: --seconds 2), after %d warm-up calls.\n",
            argv0, WARMUP_CALLS);
}

static int parse_ull(const char *text, unsigned long long max, unsigned long long *out) {
    char *end = NULL;
    unsigned long long v;
    if (text == NULL || *text < '0' || *text > '9') return 0;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v > max) return 0;
    *out = v;
    return 1;
}

/* Parses "1,16,256" into a malloc'd array; 0 on a malformed list. */
static int parse_batches(const char *text, size_t **out, size_t *count) {
    size_t n = 1, i = 0;
    const char *p;
    char buf[32];
    for (p = text; *p; p++) n += *p == ',';
    *out = malloc(n * sizeof **out);
    if (*out == NULL) return 0;
    p = text;
    while (i < n) {
        size_t len = strcspn(p, ",");
        unsigned long long v;
        if (len == 0 || len >= sizeof buf) break;
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (!parse_ull(buf, MAX_CANDIDATES, &v) || v == 0) break;
        (*out)[i++] = (size_t)v;
        p += len + (p[len] == ',');
    }
    if (i != n) {
        free(*out);
        *out = NULL;
        return 0;
    }
    *count = n;
    return 1;
}

/* --------------------------------------------------------------- main -- */

int main(int argc, char **argv) {
    const char *model_path = NULL;
    const char *batch_text = "1,16,256", *mode_text = "exact", *device_text = "cpu";
    unsigned long long threads = 1, iters = 0;
    double seconds = 0;
    int seconds_given = 0, rc = 1, a;
    size_t *batches = NULL, num_batches = 0, num_tasks = 0, num_inputs = 0, b, t, i;
    mmoe_open_options options = mmoe_open_options_default();
    mmoe_engine *engine = NULL;
    mmoe_input_info *info = NULL;
    worker *workers = NULL;
    pthread_t *tids = NULL;
    uint64_t *all = NULL, hash = 0;
    char *model_name = NULL;
    shared_state shared;
    int sync_ready = 0;

    memset(&shared, 0, sizeof shared);

    for (a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        const char *eq = strchr(arg, '=');
        char name[32];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout, argv[0]);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (model_path != NULL) {
                fprintf(stderr, "bench: unexpected argument `%s`\n", arg);
                usage(stderr, argv[0]);
                return 2;
            }
            model_path = arg;
            continue;
        }
        if (eq != NULL && (size_t)(eq - arg) < sizeof name) { /* --opt=value */
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = '\0';
            val = eq + 1;
        } else {
            if (strlen(arg) >= sizeof name || a + 1 >= argc) {
                fprintf(stderr, "bench: `%s` needs a value\n", arg);
                usage(stderr, argv[0]);
                return 2;
            }
            strcpy(name, arg);
            val = argv[++a];
        }
        if (strcmp(name, "--batch") == 0) {
            batch_text = val;
        } else if (strcmp(name, "--threads") == 0) {
            if (!parse_ull(val, MAX_THREADS, &threads) || threads == 0) {
                fprintf(stderr, "bench: --threads must be in 1..%d, got `%s`\n", MAX_THREADS, val);
                return 2;
            }
        } else if (strcmp(name, "--iters") == 0) {
            if (!parse_ull(val, 1000000000ULL, &iters) || iters == 0) {
                fprintf(stderr, "bench: --iters must be in 1..1000000000, got `%s`\n", val);
                return 2;
            }
        } else if (strcmp(name, "--seconds") == 0) {
            char *end = NULL;
            errno = 0;
            seconds = strtod(val, &end);
            if (errno != 0 || end == val || *end != '\0' || !(seconds > 0 && seconds <= 86400)) {
                fprintf(stderr, "bench: --seconds must be in (0, 86400], got `%s`\n", val);
                return 2;
            }
            seconds_given = 1;
        } else if (strcmp(name, "--mode") == 0) {
            mode_text = val;
        } else if (strcmp(name, "--device") == 0) {
            device_text = val;
        } else {
            fprintf(stderr, "bench: unknown option `%s`\n", name);
            usage(stderr, argv[0]);
            return 2;
        }
    }
    if (model_path == NULL) {
        usage(stderr, argv[0]);
        return 2;
    }
    if (strcmp(mode_text, "exact") == 0) {
        options.compute_mode = MMOE_COMPUTE_EXACT;
    } else if (strcmp(mode_text, "bf16") == 0) {
        options.compute_mode = MMOE_COMPUTE_BF16;
    } else {
        fprintf(stderr, "bench: --mode must be exact or bf16, got `%s`\n", mode_text);
        return 2;
    }
    if (strcmp(device_text, "cpu") == 0) {
        options.device = MMOE_DEVICE_CPU;
    } else if (strcmp(device_text, "cuda") == 0) {
        options.device = MMOE_DEVICE_CUDA;
    } else if (strcmp(device_text, "auto") == 0) {
        options.device = MMOE_DEVICE_AUTO;
    } else {
        fprintf(stderr, "bench: --device must be cpu, cuda or auto, got `%s`\n", device_text);
        return 2;
    }
    if (!parse_batches(batch_text, &batches, &num_batches)) {
        fprintf(stderr, "bench: --batch must be a comma-separated list of sizes in 1..%d, got `%s`\n",
                MAX_CANDIDATES, batch_text);
        return 2;
    }
    if (!seconds_given && iters == 0) {
        seconds = 2.0;
    }
    shared.iters = iters;
    shared.seconds = seconds_given || iters == 0 ? seconds : 0;

    if (mmoe_abi_version() != MMOE_ABI_VERSION) {
        fprintf(stderr, "bench: library ABI %u, header ABI %u\n", (unsigned)mmoe_abi_version(),
                (unsigned)MMOE_ABI_VERSION);
        goto done;
    }

    /* The engine and what the synthetic requests need to know. */
    if (!ok(mmoe_engine_open(model_path, &options, &engine), "mmoe_engine_open")) goto done;
    if (!ok(mmoe_engine_num_tasks(engine, &num_tasks), "mmoe_engine_num_tasks")) goto done;
    if (!ok(mmoe_engine_num_inputs(engine, &num_inputs), "mmoe_engine_num_inputs")) goto done;
    if (!ok(mmoe_engine_content_hash(engine, &hash), "mmoe_engine_content_hash")) goto done;
    model_name = get_text(engine, get_model_name, 0, "mmoe_engine_model_name");
    if (model_name == NULL) goto done;
    info = calloc(num_inputs ? num_inputs : 1, sizeof *info);
    if (info == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        goto done;
    }
    for (i = 0; i < num_inputs; i++) {
        if (!ok(mmoe_engine_input_info(engine, i, &info[i]), "mmoe_engine_input_info")) goto done;
    }

    printf("mmoe bench: library %s (version %u, ABI %u; header %d.%d.%d, ABI %d)\n", mmoe_version(),
           (unsigned)mmoe_version_number(), (unsigned)mmoe_abi_version(), MMOE_VERSION_MAJOR,
           MMOE_VERSION_MINOR, MMOE_VERSION_PATCH, MMOE_ABI_VERSION);
    printf("model      %s: `%s`, %zu tasks (", model_path, model_name, num_tasks);
    for (i = 0; i < num_tasks; i++) {
        char *task = get_text(engine, mmoe_engine_task_name, i, "mmoe_engine_task_name");
        if (task == NULL) goto done;
        printf("%s%s", i ? ", " : "", task);
        free(task);
    }
    printf("), %zu inputs, content hash %016llx\n", num_inputs, (unsigned long long)hash);
    printf("settings   device %s, mode %s, %llu thread(s), %d warm-up calls, ", device_text,
           mode_text, threads, WARMUP_CALLS);
    if (iters != 0) printf("%llu calls", iters);
    if (iters != 0 && seconds_given) printf(" or ");
    if (shared.seconds > 0) printf("%.3g s", shared.seconds);
    printf(" per thread and batch\n");
    printf("%8s %10s %14s %10s %10s %10s\n", "batch", "calls", "candidates/s", "p50_us", "p99_us",
           "p999_us");
    fflush(stdout);

    if ((a = pthread_mutex_init(&shared.lock, NULL)) != 0) {
        fprintf(stderr, "bench: pthread_mutex_init: %s\n", strerror(a));
        goto done;
    }
    if ((a = pthread_cond_init(&shared.changed, NULL)) != 0) {
        fprintf(stderr, "bench: pthread_cond_init: %s\n", strerror(a));
        pthread_mutex_destroy(&shared.lock);
        goto done;
    }
    sync_ready = 1;

    workers = calloc((size_t)threads, sizeof *workers);
    tids = calloc((size_t)threads, sizeof *tids);
    if (workers == NULL || tids == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        goto done;
    }
    for (t = 0; t < threads; t++) {
        workers[t].shared = &shared;
        if (!ok(mmoe_session_new(engine, &workers[t].session), "mmoe_session_new")) goto done;
    }

    for (b = 0; b < num_batches; b++) {
        size_t n = batches[b], calls = 0, at = 0, started = 0;
        uint64_t first_start = 0, last_end = 0;
        int failed = 0, err = 0;
        double wall;

        if (num_tasks != 0 && n > SIZE_MAX / sizeof(float) / num_tasks) {
            fprintf(stderr, "bench: batch %zu is too large\n", n);
            goto done;
        }
        for (t = 0; t < threads; t++) {
            worker *w = &workers[t];
            float *logits;
            w->candidates = n;
            w->lat_len = 0;
            w->failed = 0;
            w->status = MMOE_STATUS_OK;
            free(w->error);
            w->error = NULL;
            synth_free(&w->request);
            if (!synth_build(&w->request, info, num_inputs, n, 42 + 7919 * (uint64_t)t)) {
                fprintf(stderr, "bench: out of memory building a request of %zu candidates\n", n);
                goto done;
            }
            w->logits_len = n * num_tasks;
            logits = realloc(w->logits, w->logits_len ? w->logits_len * sizeof(float) : 1);
            if (logits == NULL) {
                fprintf(stderr, "bench: out of memory\n");
                goto done;
            }
            w->logits = logits;
        }

        shared.ready = 0;
        shared.go = 0;
        shared.cancel = 0;
        shared.warmup_failed = 0;
        for (t = 0; t < threads; t++) {
            err = pthread_create(&tids[t], NULL, worker_main, &workers[t]);
            if (err != 0) break;
            started++;
        }
        /* Release the workers together once all have warmed up (or stop them). */
        pthread_mutex_lock(&shared.lock);
        while (shared.ready < started) pthread_cond_wait(&shared.changed, &shared.lock);
        shared.go = 1;
        shared.cancel = started < threads;
        pthread_cond_broadcast(&shared.changed);
        pthread_mutex_unlock(&shared.lock);
        for (t = 0; t < started; t++) pthread_join(tids[t], NULL);
        if (started < threads) {
            fprintf(stderr, "bench: pthread_create: %s\n", strerror(err));
            goto done;
        }

        for (t = 0; t < threads; t++) {
            worker *w = &workers[t];
            if (w->failed) {
                if (w->status != MMOE_STATUS_OK) {
                    fprintf(stderr, "bench: thread %zu, batch %zu: mmoe_session_score failed: status %d (%s): %s\n",
                            t, n, (int)w->status, mmoe_status_str(w->status),
                            w->error != NULL ? w->error : "(out of memory for the message)");
                } else {
                    fprintf(stderr, "bench: thread %zu, batch %zu: %s\n", t, n,
                            w->error != NULL ? w->error : "out of memory");
                }
                failed = 1;
            }
            calls += w->lat_len;
            if (t == 0 || ns_of(&w->start) < first_start) first_start = ns_of(&w->start);
            if (t == 0 || ns_of(&w->end) > last_end) last_end = ns_of(&w->end);
        }
        if (failed) goto done;
        if (calls == 0) {
            printf("%8zu %10s\n", n, "no calls");
            continue;
        }

        all = malloc(calls * sizeof *all);
        if (all == NULL) {
            fprintf(stderr, "bench: out of memory\n");
            goto done;
        }
        for (t = 0; t < threads; t++) {
            memcpy(all + at, workers[t].lat_ns, workers[t].lat_len * sizeof *all);
            at += workers[t].lat_len;
        }
        qsort(all, calls, sizeof *all, cmp_u64);
        wall = (double)(last_end - first_start) / 1e9;
        printf("%8zu %10zu %14.0f %10.1f %10.1f %10.1f\n", n, calls,
               wall > 0 ? (double)calls * (double)n / wall : 0.0, percentile_us(all, calls, 500),
               percentile_us(all, calls, 990), percentile_us(all, calls, 999));
        fflush(stdout);
        free(all);
        all = NULL;
    }
    rc = 0;

done:
    if (sync_ready) {
        pthread_cond_destroy(&shared.changed);
        pthread_mutex_destroy(&shared.lock);
    }
    if (workers != NULL) {
        for (t = 0; t < threads; t++) {
            mmoe_session_free(workers[t].session);
            synth_free(&workers[t].request);
            free(workers[t].logits);
            free(workers[t].lat_ns);
            free(workers[t].error);
        }
    }
    free(workers);
    free(tids);
    free(all);
    free(info);
    free(model_name);
    free(batches);
    mmoe_engine_free(engine);
    return rc;
}
