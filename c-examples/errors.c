/* Replays the error cases of tests/integration/error_cases.rs through the C interface:
 * each line of the manifest names a file, how to open it, and the status
 * mmoe_engine_open must return; every failure must leave a message naming
 * the file. Then the request-time statuses on a good model: REQUEST (an
 * input missing) and ARGUMENT (an output of the wrong length, a NULL array
 * with a length), with nothing written on failure.
 *   errors MANIFEST.tsv MODEL.mmoe */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmoe.h"

static const char *names[] = {"OK",      "IO",      "CONFIG",   "TENSOR", "FORMAT",
                              "CHECKSUM", "REQUEST", "ARGUMENT", "DEVICE", "INTERNAL"};

static int status_of(const char *name) {
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); ++i)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

static int failures = 0;

static void expect(const char *what, enum mmoe_status got, enum mmoe_status want) {
    char message[512];
    mmoe_last_error(message, sizeof message);
    if (got != want) {
        printf("FAIL  %s: %s, expected %s (%s)\n", what, names[got], names[want], message);
        failures++;
    } else {
        printf("ok    %-8s %s%s%s\n", names[got], what, got ? ": " : "", got ? message : "");
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MANIFEST.tsv MODEL.mmoe\n", argv[0]);
        return 2;
    }
    FILE *manifest = fopen(argv[1], "r");
    if (!manifest) {
        fprintf(stderr, "cannot read %s (run cargo test --test integration error_cases:: first)\n", argv[1]);
        return 2;
    }
    char line[4096];
    int cases = 0;
    while (fgets(line, sizeof line, manifest)) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = 0;
        char *status = strtok(line, "\t"), *path = strtok(NULL, "\t"), *device = strtok(NULL, "\t");
        char *verify = strtok(NULL, "\t"), *what = strtok(NULL, "\t");
        if (!status || !path || !device || !verify || !what || status_of(status) < 0) {
            fprintf(stderr, "bad manifest line: %s\n", line);
            return 2;
        }
        struct mmoe_open_options options = mmoe_open_options_default();
        if (strcmp(device, "cuda") == 0) options.device = MMOE_DEVICE_CUDA;
        options.verify_checksums = (uint32_t)atoi(verify);
        struct mmoe_engine *engine = NULL;
        enum mmoe_status got = mmoe_engine_open(path, &options, &engine);
        expect(what, got, (enum mmoe_status)status_of(status));
        if (got != MMOE_STATUS_OK) {
            char message[512];
            mmoe_last_error(message, sizeof message);
            const char *file = strrchr(path, '/');
            if (!strstr(message, file ? file + 1 : path)) {
                printf("FAIL  %s: the message does not name the file\n", what);
                failures++;
            }
            if (engine != NULL) {
                printf("FAIL  %s: a failed open wrote its output\n", what);
                failures++;
            }
        }
        mmoe_engine_free(engine);
        cases++;
    }
    fclose(manifest);

    struct mmoe_engine *engine = NULL;
    struct mmoe_session *session = NULL;
    if (mmoe_engine_open(argv[2], NULL, &engine) != MMOE_STATUS_OK ||
        mmoe_session_new(engine, &session) != MMOE_STATUS_OK) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        return 2;
    }
    size_t tasks = 0;
    mmoe_engine_num_tasks(engine, &tasks);
    /* Room for the longest length passed below (2 candidates, one more). */
    const size_t room = 2 * tasks + 1;
    float *logits = malloc(room * sizeof *logits);
    if (logits == NULL) return 2;
    for (size_t i = 0; i < room; ++i) logits[i] = -7.0f;
    /* No features at all: the first input is not set. */
    expect("a request with no features", mmoe_session_score(session, 2, NULL, 0, logits, 2 * tasks, NULL, 0),
           MMOE_STATUS_REQUEST);
    expect("logits of the wrong length", mmoe_session_score(session, 2, NULL, 0, logits, 2 * tasks + 1, NULL, 0),
           MMOE_STATUS_ARGUMENT);
    expect("warm-up of a NULL engine", mmoe_engine_set_warm_up(NULL, 8), MMOE_STATUS_ARGUMENT);
    expect("warm-up above the limit", mmoe_session_warm_up(session, 65537), MMOE_STATUS_ARGUMENT);
    expect("warm-up of a NULL session", mmoe_session_warm_up(NULL, 8), MMOE_STATUS_ARGUMENT);
    expect("features NULL with a length", mmoe_session_score(session, 2, NULL, 3, logits, 2 * tasks, NULL, 0),
           MMOE_STATUS_ARGUMENT);
    for (size_t i = 0; i < room; ++i) {
        if (logits[i] != -7.0f) {
            printf("FAIL  a failed call wrote logits[%zu]\n", i);
            failures++;
            break;
        }
    }
    free(logits);
    mmoe_session_free(session);
    mmoe_engine_free(engine);
    printf("%d file cases and 3 request cases through C: %d failed\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
