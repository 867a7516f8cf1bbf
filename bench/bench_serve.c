/* bench_serve.c - `tidal bench serve`: what the HTTP path costs. The same
 * engine generates the same requests twice: in-process (the built-in
 * backend's path) and behind `tidal serve` in a child process, driven by
 * the openai backend (rollout/remote.h) in the dialect asked for. Same model
 * (bench generate's Qwen2 shape, ~29 M parameters), same slots, same threads
 * for the engine on both sides, sampled at temperature 1 with the same
 * seeds, so both make the same tokens: B sequences of a P-token prompt and N
 * new tokens each, all queued at once; tokens/s = B x N / seconds from the
 * first submission to the last result, prefill included. As a guard against
 * comparing different work, every sequence's tokens must be the same on both
 * sides. The sides alternate over R rounds; each side's best round counts.
 * ratio = HTTP / in-process; overhead = 1 - ratio (the bound we hold it to: 10 %).
 */
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/spawn.h"
#include "base/threading.h"
#include "bench/bench.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "rollout/generator.h"
#include "rollout/remote.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench serve [--threads N] [--batch B] [--prompt-len P] [--new-tokens N] [--rounds R]\n"
               "                         [--dialect vllm|sglang] [--json]\n"
               "  The built-in engine in-process against the same engine behind `tidal serve` driven by the\n"
               "  openai backend (default dialect sglang): B sequences (default 32) of P prompt tokens\n"
               "  (default 32) and N new tokens (default 64), the same threads for the engine on both\n"
               "  sides (default: all cores), best of R rounds (default 3). ratio = HTTP / in-process.\n");
}

typedef struct side {
    double tps, seconds;
} side;

/* All B requests through g, timed; the tokens into ids[B][N] (checked
 * against `want` when it is not NULL). */
static tidal_status run_side(generator *g, const int32_t *prompts, int B, int P, int N, int32_t *ids,
                             const int32_t *want, side *out)
{
    uint64_t *req = calloc((size_t)B, sizeof *req);
    if (!req) return tidal_fail(TIDAL_ERR_NOMEM, "bench serve: out of memory");
    tidal_status st = TIDAL_OK;
    const double t0 = bench_now_s();
    for (int i = 0; i < B; i++) {
        engine_request rq = {.prompt = prompts + (size_t)i * P, .prompt_len = P, .max_new_tokens = N,
                             .sampling = {.temperature = 1.0f, .seed = 1000 + (uint64_t)i}};
        TRY_GOTO(generator_submit(g, &rq, &req[i]));
    }
    while (generator_busy(g)) TRY_GOTO(generator_step(g));
    out->seconds = bench_now_s() - t0;
    out->tps = (double)B * N / out->seconds;
    for (engine_result *r; (r = generator_next_result(g)); engine_result_free(r)) {
        int i = 0;
        while (i < B && req[i] != r->id) i++;
        if (i == B || r->n != N) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench serve: a result of %d tokens, not %d", r->n, N);
            engine_result_free(r);
            goto cleanup;
        }
        memcpy(ids + (size_t)i * N, r->ids, (size_t)N * sizeof *ids);
        if (want && memcmp(ids + (size_t)i * N, want + (size_t)i * N, (size_t)N * sizeof *ids) != 0) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench serve: sequence %d differs between the two sides", i);
            engine_result_free(r);
            goto cleanup;
        }
    }
cleanup:
    free(req);
    return st;
}

/* The first "http://" line of the server's output file, waited for. */
static tidal_status server_url(const char *log, pid_t pid, char *url, size_t cap)
{
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "http://", 7)) {
                line[strcspn(line, "\n")] = '\0';
                snprintf(url, cap, "%.255s", line);
                fclose(f);
                return TIDAL_OK;
            }
        if (f) fclose(f);
        int ws;
        if (waitpid(pid, &ws, WNOHANG) == pid) return tidal_fail(TIDAL_ERR_IO, "bench serve: tidal serve exited (%s)", log);
        usleep(100 * 1000);
    }
    return tidal_fail(TIDAL_ERR_TIMEOUT, "bench serve: tidal serve printed no URL in 60 s (%s)", log);
}

int bench_serve_main(int argc, char **argv)
{
    int threads = 0, B = 32, P = 32, N = 64, R = 3, as_json = 0;
    const char *dialect = "sglang";
    static const struct option opts[] = {{"threads", required_argument, 0, 't'}, {"batch", required_argument, 0, 'b'},
                                         {"prompt-len", required_argument, 0, 'p'},
                                         {"new-tokens", required_argument, 0, 'n'},
                                         {"rounds", required_argument, 0, 'r'}, {"dialect", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'J'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 't': threads = atoi(optarg); break;
        case 'b': B = atoi(optarg); break;
        case 'p': P = atoi(optarg); break;
        case 'n': N = atoi(optarg); break;
        case 'r': R = atoi(optarg); break;
        case 'd': dialect = optarg; break;
        case 'J': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    remote_dialect rd;
    if (optind < argc || B < 1 || B > 256 || P < 1 || P > 4096 || N < 1 || N > 4096 || R < 1 || R > 20 ||
        threads < 0 || remote_dialect_parse(dialect, &rd) != TIDAL_OK) {
        usage(stderr);
        return 2;
    }
    if (threads == 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    /* both sides wait as tidal's processes do (passive, unless the user chose): the server inherits
     * it; comparing a spinning in-process engine with a passive server measured the policy, not HTTP */
    threading_policy tp;
    threading_settle(threads, &tp);
    cpu_set_threads(threads);
    model *m = NULL;
    engine *e = NULL;
    remote *rm = NULL;
    pid_t server = -1;
    char dir[256] = "";
    int32_t *prompts = malloc((size_t)B * P * sizeof *prompts);
    int32_t *local_ids = malloc((size_t)B * N * sizeof *local_ids), *http_ids = malloc((size_t)B * N * sizeof *http_ids);
    side best_local = {0}, best_http = {0};
    tidal_status st = TIDAL_OK;
    if (!prompts || !local_ids || !http_ids) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench serve: out of memory");
        goto cleanup;
    }
    TRY_GOTO(bench_model(&m));
    const model_config cfg = *model_cfg(m);
    bench_token_ids(prompts, (size_t)(B * P), cfg.vocab_size);
    TRY_GOTO(bench_temp_dir("bench serve", "tidal-bench-serve", dir, sizeof dir));
    char path[512], log[512], url[300], slots[16], nthreads[16], maxlen[16];
    snprintf(path, sizeof path, "%s/model", dir);
    TRY_GOTO(model_save(m, path, ST_F32));
    snprintf(log, sizeof log, "%s/serve.out", dir);
    snprintf(slots, sizeof slots, "%d", B);
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    snprintf(maxlen, sizeof maxlen, "%d", P + N + 1);
    char *sargv[] = {"tidal", "serve", "--model", path, "--port", "0", "--slots", slots, "--threads", nthreads,
                     "--max-len", maxlen, NULL};
    TRY_GOTO(spawn_self(log, sargv, threads, &server));
    TRY_GOTO(server_url(log, server, url, sizeof url));
    remote_opts ro = {.dialect = rd, .endpoints = url, .vocab = cfg.vocab_size, .retries = 0, .in_flight = B};
    TRY_GOTO(remote_create(&ro, &rm));
    TRY_GOTO(remote_check(rm));
    engine_options eo = {.slots = B, .max_len = P + N + 1};
    TRY_GOTO(engine_create(m, 0, &eo, &e));
    generator local = generator_of_engine(e), http = remote_generator(rm);
    fprintf(stderr, "bench serve: warm-up...\n");
    side s;
    TRY_GOTO(run_side(&local, prompts, B, P, N, local_ids, NULL, &s));
    TRY_GOTO(run_side(&http, prompts, B, P, N, http_ids, local_ids, &s));
    for (int k = 0; k < R; k++) { /* alternating, so both see the same phases of a noisy machine */
        side a, b;
        TRY_GOTO(run_side(&local, prompts, B, P, N, local_ids, NULL, &a));
        TRY_GOTO(run_side(&http, prompts, B, P, N, http_ids, local_ids, &b));
        if (a.tps > best_local.tps) best_local = a;
        if (b.tps > best_http.tps) best_http = b;
        fprintf(stderr, "round %d/%d: in-process %8.1f tokens/s, over HTTP (%s) %8.1f tokens/s\n", k + 1, R, a.tps,
                dialect, b.tps);
    }
    const double ratio = best_http.tps / best_local.tps;
    if (!as_json)
        printf("bench serve: %d sequences x (%d prompt + %d new tokens), %d threads (%s), sampled, tokens identical\n"
               "  in-process engine:              %8.1f tokens/s\n"
               "  tidal serve over HTTP (%-6s): %8.1f tokens/s\n"
               "  ratio %.3f (overhead %.1f %%)\n",
               B, P, N, threads, tp.wait, best_local.tps, dialect, best_http.tps, ratio, 100.0 * (1.0 - ratio));
    json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f}", "bench", "serve", "dialect",
                          dialect, "threads", threads, "wait", tp.wait, "batch", B, "prompt_len", P, "new_tokens", N, "rounds", R,
                          "in_process_tokens_per_s", best_local.tps, "http_tokens_per_s", best_http.tps, "ratio", ratio);
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench serve: %s\n", tidal_errmsg());
    if (server > 0) {
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
    }
    remote_free(rm);
    engine_free(e);
    model_free(m);
    bench_remove_dir("tidal bench serve", dir);
    free(prompts), free(local_ids), free(http_ids);
    return st == TIDAL_OK ? 0 : 1;
}
