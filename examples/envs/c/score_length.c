/* score_length.c - a custom tidal environment in C with libtidal_env.
 *
 * A single-turn reward: 1 when the completion is at most task["max_chars"]
 * characters long (Unicode code points of the UTF-8 text), else 0. A task
 * without a non-negative integer "max_chars" fails the request: the caller
 * gets an EnvResponse with `error` set, retries, then records an env error.
 *
 * Build (from the tidal source tree, after `make`, which builds
 * build/libtidal_env.so):
 *
 *   cc -O2 examples/envs/c/score_length.c -Ienvs/sdk -Lbuild -ltidal_env -ljansson \
 *      -Wl,-rpath,$PWD/build -o score_length
 *
 * (jansson - Debian's libjansson-dev - only parses the task here; the SDK
 * itself needs nothing from the caller.) Run:
 *
 *   ./score_length --bus nats://127.0.0.1:4222 [--name score_length] [--concurrency 4]
 *
 * It serves tidal.env.<name> until SIGINT or SIGTERM, then answers what it
 * had received and exits 0.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidal_env.h"

/* Code points in a UTF-8 string: the bytes that do not continue a sequence. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

/* tidal_env_score_fn: called on the library's threads, so it keeps no state. */
static int score(void *user, const char *task_json, const char *completion, double *reward)
{
    (void)user;
    json_error_t jerr;
    json_t *task = json_loads(task_json, 0, &jerr);
    json_t *max = task ? json_object_get(task, "max_chars") : NULL;
    if (!json_is_integer(max) || json_integer_value(max) < 0) {
        json_decref(task);
        tidal_env_score_error("task_json.max_chars: missing, or not a non-negative integer");
        return 1; /* the request fails, saying why */
    }
    *reward = utf8_chars(completion) <= (size_t)json_integer_value(max) ? 1.0 : 0.0;
    json_decref(task);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: score_length [--bus URL] [--name NAME] [--concurrency N]\n"
               "  --bus URL          NATS URL(s), comma separated (default: $TIDAL_BUS, else nats://127.0.0.1:4222)\n"
               "  --name NAME        serve tidal.env.NAME (default: score_length)\n"
               "  --concurrency N    handler threads (default: 4)\n");
}

int main(int argc, char **argv)
{
    tidal_env_options o = {.url = getenv("TIDAL_BUS"), .name = "score_length"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--bus")) o.url = argv[++i];
        else if (!strcmp(a, "--name")) o.name = argv[++i];
        else if (!strcmp(a, "--concurrency")) o.concurrency = atoi(argv[++i]);
        else {
            usage(stderr);
            return 2;
        }
    }
    fprintf(stderr, "score_length: serving tidal.env.%s on %s until SIGINT or SIGTERM\n", o.name,
            o.url ? o.url : "nats://127.0.0.1:4222");
    if (tidal_env_run_score(&o, score, NULL, 0) != 0) {
        fprintf(stderr, "score_length: %s\n", tidal_env_last_error());
        return 1;
    }
    return 0;
}
