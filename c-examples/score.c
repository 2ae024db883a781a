/* score.c: open a model, print what it expects, score one request, print the
 * scores. Generic: it builds a synthetic request from the model's own input
 * descriptions. Usage: score MODEL.mmoe [CANDIDATES] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmoe.h"

static int fail(const char *what, mmoe_status status) {
    char message[512];
    mmoe_last_error(message, sizeof message);
    fprintf(stderr, "%s failed: %s (%s)\n", what, mmoe_status_str(status), message);
    return 1;
}

/* A small deterministic generator, so the output is the same on every run. */
static unsigned long long lcg_state = 42;
static double lcg(void) {
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(lcg_state >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.mmoe [CANDIDATES]\n", argv[0]);
        return 2;
    }
    size_t candidates = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 5;
    printf("mmoe %s (ABI %u, header %d)\n", mmoe_version(), mmoe_abi_version(), MMOE_VERSION_NUMBER);
    if (mmoe_version_number() != MMOE_VERSION_NUMBER || mmoe_abi_version() != MMOE_ABI_VERSION) {
        fprintf(stderr, "library and header versions differ\n");
        return 1;
    }

    mmoe_open_options options = mmoe_open_options_default();
    mmoe_engine *engine = NULL;
    mmoe_status status = mmoe_engine_open(argv[1], &options, &engine);
    if (status != MMOE_STATUS_OK) return fail("mmoe_engine_open", status);

    char name[256];
    size_t tasks = 0, inputs = 0;
    uint64_t hash = 0;
    mmoe_engine_model_name(engine, name, sizeof name, NULL);
    mmoe_engine_num_tasks(engine, &tasks);
    mmoe_engine_num_inputs(engine, &inputs);
    mmoe_engine_content_hash(engine, &hash);
    printf("model %s (hash %016llx): %zu inputs, %zu tasks\n", name, (unsigned long long)hash, inputs, tasks);

    /* One feature per input, with its own arrays. */
    mmoe_feature *features = calloc(inputs, sizeof *features);
    float **dense = calloc(inputs, sizeof *dense);
    uint64_t **ids = calloc(inputs, sizeof *ids);
    uint32_t **offsets = calloc(inputs, sizeof *offsets);
    if (!features || !dense || !ids || !offsets) return 1;
    for (size_t i = 0; i < inputs; ++i) {
        mmoe_input_info info;
        mmoe_engine_input_info(engine, i, &info);
        mmoe_engine_input_name(engine, i, name, sizeof name, NULL);
        size_t rows = info.scope == MMOE_SCOPE_REQUEST ? 1 : candidates;
        printf("  input %-14s %s %-9s dim %zu\n", name, info.kind == MMOE_INPUT_DENSE ? "dense " : "sparse",
               info.scope == MMOE_SCOPE_REQUEST ? "request" : "candidate", info.dim);
        features[i].input = (uint32_t)i;
        if (info.kind == MMOE_INPUT_DENSE) {
            dense[i] = malloc(rows * info.dim * sizeof(float));
            for (size_t k = 0; k < rows * info.dim; ++k) dense[i][k] = (float)(2.0 * lcg() - 1.0);
            features[i].dense = dense[i];
            features[i].dense_len = rows * info.dim;
        } else {
            ids[i] = malloc(rows * 2 * sizeof(uint64_t));
            offsets[i] = malloc((rows + 1) * sizeof(uint32_t));
            offsets[i][0] = 0;
            for (size_t r = 0; r < rows; ++r) {
                ids[i][2 * r] = (uint64_t)(lcg() * 1000.0);
                ids[i][2 * r + 1] = (uint64_t)(lcg() * 1000000.0);
                offsets[i][r + 1] = (uint32_t)(2 * (r + 1));
            }
            features[i].ids = ids[i];
            features[i].ids_len = rows * 2;
            features[i].offsets = offsets[i];
            features[i].offsets_len = rows + 1;
        }
    }

    mmoe_session *session = NULL;
    status = mmoe_session_new(engine, &session);
    if (status != MMOE_STATUS_OK) return fail("mmoe_session_new", status);
    /* Before traffic: scratch (and on a GPU, the graphs) for requests of up
     * to this size (a server would pass its largest request). */
    status = mmoe_session_warm_up(session, candidates);
    if (status != MMOE_STATUS_OK) return fail("mmoe_session_warm_up", status);
    float *logits = malloc(candidates * tasks * sizeof(float));
    float *probabilities = malloc(candidates * tasks * sizeof(float));
    status = mmoe_session_score(session, candidates, features, inputs, logits, candidates * tasks, probabilities,
                                candidates * tasks);
    if (status != MMOE_STATUS_OK) return fail("mmoe_session_score", status);
    for (size_t t = 0; t < tasks; ++t) {
        mmoe_engine_task_name(engine, t, name, sizeof name, NULL);
        printf("%-12s", name);
        for (size_t c = 0; c < candidates && c < 8; ++c) printf(" %.5f", probabilities[c * tasks + t]);
        printf("\n");
    }

    /* A bad request: one value short. The status and message say which input. */
    for (size_t i = 0; i < inputs; ++i) {
        if (features[i].dense_len > 0) {
            features[i].dense_len -= 1;
            status = mmoe_session_score(session, candidates, features, inputs, logits, candidates * tasks, NULL, 0);
            char message[512];
            mmoe_last_error(message, sizeof message);
            printf("bad request -> %s: %s\n", mmoe_status_str(status), message);
            features[i].dense_len += 1;
            if (status != MMOE_STATUS_REQUEST) return 1;
            break;
        }
    }
    /* NULL handles are refused, not dereferenced. */
    if (mmoe_session_score(NULL, 1, NULL, 0, NULL, 0, NULL, 0) != MMOE_STATUS_ARGUMENT) return 1;
    if (mmoe_session_warm_up(NULL, 1) != MMOE_STATUS_ARGUMENT) return 1;
    if (mmoe_engine_open(NULL, NULL, &engine) != MMOE_STATUS_ARGUMENT) return 1;

    for (size_t i = 0; i < inputs; ++i) {
        free(dense[i]);
        free(ids[i]);
        free(offsets[i]);
    }
    free(dense);
    free(ids);
    free(offsets);
    free(features);
    free(logits);
    free(probabilities);
    mmoe_session_free(session);
    mmoe_engine_free(engine);
    mmoe_session_free(NULL);
    mmoe_engine_free(NULL);
    printf("ok\n");
    return 0;
}
