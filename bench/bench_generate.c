/* bench_generate.c - `tidal bench generate`: greedy decode tokens/s of the
 * built-in engine (rollout/engine) at batch 1 and batch B (default 32)
 * against a PyTorch KV-cache decode loop (Debian's python3-torch, float32,
 * inference mode) on the same Qwen2-shaped model, the same prompts and the
 * same thread count, in the same run.
 *
 * tidal writes the model (a Hugging Face directory) and the prompts to a temp
 * dir; the peer (bench/peers/generate_peer.py, embedded at build time) loads
 * both. Both prefill the prompts in one call (untimed), then decode
 * NEW_TOKENS - 1 steps, each returning the chosen token and its
 * log-probability; decode tokens/s = B x (NEW_TOKENS - 1) / seconds. As a
 * guard against comparing different work, the first steps' tokens must agree
 * (up to fp32 argmax near-ties: at the first disagreement both must report
 * the same top log-probability). ratio = tidal / PyTorch at batch B.
 *
 * The peer runs under each environment of bench_peer_envs (OpenMP wait
 * policy; OpenBLAS's AVX-512 kernels where it does not pick them itself) and
 * its best figure per batch size counts: on a 2-core VM its default once gave
 * 281 tokens/s at batch 32 against 1,445 passive - comparing against the
 * crippled default would have flattered tidal fourfold.
 *
 * --device cuda: the GPU engine (rollout/engine_cuda.h) on a Qwen2.5-0.5B-
 * shaped model with random weights, greedy, decode tokens/s at batch 1, 64
 * and 256 (prompts of P tokens prefilled in one untimed step, N - 1 timed
 * decode steps), each against its bandwidth floor: a decode step reads every
 * weight once and each sequence's cache so far, so it takes at least
 * (weight bytes + KV bytes) / the device's copy bandwidth (measured here,
 * engine_cuda_copy_bandwidth); floor tokens/s = B / that time, averaged
 * over the timed steps. Refused cleanly (exit 1, the reason) without a GPU.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "generate_peer_py.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "rollout/engine.h"
#include "rollout/engine_cuda.h"

#define CHECK_STEPS 8                  /* tokens per sequence compared with the peer */

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench generate [--threads N] [--batch B] [--prompt-len P] [--new-tokens N] [--json]\n"
               "  Greedy decode tokens/s of the built-in engine at batch 1 and batch B (default 32)\n"
               "  against a PyTorch float32 KV-cache decode loop, on a Qwen2-shaped model of ~29 M\n"
               "  parameters with the same threads (default: all cores); prompts of P tokens\n"
               "  (default 32), N new tokens each (default 64; the N - 1 steps after the prefill are\n"
               "  timed). ratio = tidal / PyTorch at batch B.\n"
               "       tidal bench generate --device cuda [--dtype f32|bf16] [--prompt-len P] [--new-tokens N] [--json]\n"
               "  The GPU engine on a Qwen2.5-0.5B-shaped model (random weights, greedy): decode\n"
               "  tokens/s at batch 1, 64 and 256 against the bandwidth floor ((weight + KV bytes)\n"
               "  / the measured device copy bandwidth). Refused without a GPU.\n");
}

/* Qwen2.5-0.5B's shape (its config.json), as bench train's. */
static const model_config qwen05b_gen = {.type = MODEL_QWEN2, .vocab_size = 151936, .hidden_size = 896,
                                         .num_layers = 24, .num_heads = 14, .num_kv_heads = 2, .head_dim = 64,
                                         .intermediate_size = 4864, .max_position_embeddings = 32768,
                                         .rope_theta = 1e6, .rms_norm_eps = 1e-6, .tie_word_embeddings = true,
                                         .qkv_bias = true, .o_bias = false, .bos_token_id = -1, .eos_token_id = -1};

/* --device cuda (see the top comment). */
static int bench_generate_cuda(int P, int N, int as_json, const char *dtype)
{
    engine_device d;
    tidal_status st = engine_device_resolve("cuda", &d, NULL, 0);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal bench generate: --device cuda: %s\n", tidal_errmsg());
        return 1;
    }
    const bool bf16 = !strcmp(dtype, "bf16");
    static const int batches[] = {1, 64, 256};
    enum { NB = 3 };
    double tps[NB] = {0}, floor_tps[NB] = {0}, secs[NB] = {0};
    model *m = NULL;
    engine *e = NULL;
    int32_t *prompts = malloc((size_t)256 * P * sizeof *prompts);
    char name[256] = "";
    double bw = 0.0;
    size_t n_params = 0;
    if (!prompts) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench generate: out of memory");
        goto cleanup;
    }
    TRY_GOTO(engine_cuda_copy_bandwidth((size_t)1 << 30, &bw, name, sizeof name));
    TRY_GOTO(model_create(&qwen05b_gen, &m));
    model_init_random(m, 1234, 0.02f, true);
    model_params(m, &n_params);
    bench_token_ids(prompts, (size_t)256 * P, qwen05b_gen.vocab_size);
    const size_t el = bf16 ? 2 : 4;
    const double weight_bytes = (double)n_params * (double)el;
    const double kv_token_bytes = 2.0 * qwen05b_gen.num_layers * qwen05b_gen.num_kv_heads * qwen05b_gen.head_dim * (double)el;
    for (int bi = 0; bi < NB; bi++) {
        const int B = batches[bi];
        const engine_options o = {.slots = B, .max_len = P + N, .max_step_tokens = B * P};
        const engine_cuda_options co = {.bf16 = bf16};
        TRY_GOTO(engine_cuda_create(m, 0, &o, &co, &e));
        for (int i = 0; i < B; i++) {
            const engine_request rq = {.prompt = prompts + (size_t)i * P, .prompt_len = P, .max_new_tokens = N};
            TRY_GOTO(engine_submit(e, &rq, NULL));
        }
        TRY_GOTO(engine_step(e)); /* every prefill, untimed */
        if (engine_num_running(e) != B) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench generate: %d of %d sequences admitted in the prefill",
                            engine_num_running(e), B);
            goto cleanup;
        }
        const double t0 = bench_now_s();
        int steps = 0;
        while (engine_busy(e)) {
            TRY_GOTO(engine_step(e));
            steps++;
        }
        secs[bi] = bench_now_s() - t0;
        tps[bi] = (double)B * (N - 1) / secs[bi];
        /* the floor: step s (s = 1 .. N-1) reads the weights and B caches of P + s positions */
        double floor_s = 0.0;
        for (int s = 1; s < N; s++) floor_s += (weight_bytes + (double)B * (P + s) * kv_token_bytes) / bw;
        floor_tps[bi] = (double)B * (N - 1) / floor_s;
        for (engine_result *r; (r = engine_next_result(e)); engine_result_free(r))
            if (r->n != N) {
                st = tidal_fail(TIDAL_ERR_INVALID, "bench generate: a sequence made %d tokens, not %d", r->n, N);
                engine_result_free(r);
                goto cleanup;
            }
        engine_free(e);
        e = NULL;
        fprintf(stderr, "batch %3d: %9.1f tokens/s (%d steps in %.3f s), floor %9.1f tokens/s (%.0f%%)\n", B,
                tps[bi], steps, secs[bi], floor_tps[bi], 100.0 * tps[bi] / floor_tps[bi]);
    }
    if (!as_json) {
        printf("bench generate --device cuda: %s, %s, %zu parameters (Qwen2.5-0.5B shape, random), prompts of %d, "
               "%d new tokens (greedy); copy bandwidth %.0f GB/s\n",
               name, bf16 ? "bf16" : "f32", n_params, P, N, bw / 1e9);
        for (int bi = 0; bi < NB; bi++)
            printf("  batch %3d: %9.1f tokens/s, bandwidth floor %9.1f tokens/s (%.1f%% of it)\n", batches[bi],
                   tps[bi], floor_tps[bi], 100.0 * tps[bi] / floor_tps[bi]);
    } else {
        json_t *o = json_object(), *rows = json_array();
        json_object_set_new(o, "bench", json_string("generate"));
        json_object_set_new(o, "device", json_string("cuda"));
        json_object_set_new(o, "gpu", json_string(name));
        json_object_set_new(o, "dtype", json_string(bf16 ? "bf16" : "f32"));
        json_object_set_new(o, "model", json_string("Qwen2.5-0.5B shape, random weights"));
        json_object_set_new(o, "params", json_integer((json_int_t)n_params));
        json_object_set_new(o, "prompt_len", json_integer(P));
        json_object_set_new(o, "new_tokens", json_integer(N));
        json_object_set_new(o, "copy_bandwidth_bytes_per_s", json_real(bw));
        for (int bi = 0; bi < NB; bi++)
            json_array_append_new(rows, json_pack("{s:i, s:f, s:f, s:f, s:f}", "batch", batches[bi], "tokens_per_s",
                                                  tps[bi], "seconds", secs[bi], "floor_tokens_per_s", floor_tps[bi],
                                                  "fraction_of_floor", tps[bi] / floor_tps[bi]));
        json_object_set_new(o, "decode", rows);
        bench_print_json(o);
    }
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench generate: --device cuda: %s\n", tidal_errmsg());
    engine_free(e);
    model_free(m);
    free(prompts);
    return st == TIDAL_OK ? 0 : 1;
}

/* What one side measured at one batch size. */
typedef struct side {
    double tps, seconds;
    int32_t tok[64][CHECK_STEPS];
    float lp[64][CHECK_STEPS];
} side;

/* Generate N tokens greedily for prompts[0 .. B-1] (each P long) with the engine. */
static tidal_status run_tidal(model *m, const int32_t *prompts, int B, int P, int N, side *out)
{
    engine *e = NULL;
    engine_options o = {.slots = B, .max_len = P + N};
    tidal_status st = TIDAL_OK;
    TRY_GOTO(engine_create(m, 0, &o, &e));
    for (int i = 0; i < B; i++) {
        engine_request rq = {.prompt = prompts + (size_t)i * P, .prompt_len = P, .max_new_tokens = N,
                             .user = (void *)(intptr_t)i};
        TRY_GOTO(engine_submit(e, &rq, NULL));
    }
    TRY_GOTO(engine_step(e)); /* the prefill, untimed */
    double t0 = bench_now_s();
    while (engine_busy(e)) TRY_GOTO(engine_step(e));
    out->seconds = bench_now_s() - t0;
    out->tps = (double)B * (N - 1) / out->seconds;
    int done = 0;
    for (engine_result *r; (r = engine_next_result(e)); engine_result_free(r)) {
        intptr_t i = (intptr_t)r->user;
        if (r->n != N) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench generate: sequence %d made %d tokens, not %d", (int)i, r->n, N);
            engine_result_free(r);
            goto cleanup;
        }
        for (int t = 0; t < CHECK_STEPS && t < r->n; t++) {
            out->tok[i][t] = r->ids[t];
            out->lp[i][t] = r->logprobs[t];
        }
        done++;
    }
    if (done != B) st = tidal_fail(TIDAL_ERR_INVALID, "bench generate: %d of %d sequences finished", done, B);
cleanup:
    engine_free(e);
    return st;
}

/* Run the peer under environment `env`. */
static tidal_status run_peer(const char *dir, const bench_peer_env *env, int threads, int N, json_t **out)
{
    char model[600], prompts[600], t[16], n[16], steps[16];
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(prompts, sizeof prompts, "%s/prompts.safetensors", dir);
    snprintf(t, sizeof t, "%d", threads), snprintf(n, sizeof n, "%d", N), snprintf(steps, sizeof steps, "%d", CHECK_STEPS);
    char *args[] = {model, prompts, t, n, steps, NULL};
    return bench_run_python("bench generate", generate_peer_py, "generate_peer.py", dir, env, args, out);
}

/* Read the peer's figures for one batch size and check its first tokens
 * against tidal's. */
static tidal_status peer_side(json_t *peer, const char *key, int B, const side *ours, side *out)
{
    json_t *o = json_object_get(peer, key);
    out->tps = json_number_value(json_object_get(o, "tokens_per_s"));
    out->seconds = json_number_value(json_object_get(o, "seconds"));
    json_t *toks = json_object_get(o, "tokens"), *lps = json_object_get(o, "logprobs");
    if (!(out->tps > 0) || json_array_size(toks) != (size_t)B || json_array_size(lps) != (size_t)B)
        return tidal_fail(TIDAL_ERR_DECODE, "bench generate: the peer's %s figures are incomplete", key);
    for (int i = 0; i < B; i++) {
        json_t *ti = json_array_get(toks, (size_t)i), *li = json_array_get(lps, (size_t)i);
        for (int t = 0; t < CHECK_STEPS; t++) {
            out->tok[i][t] = (int32_t)json_integer_value(json_array_get(ti, (size_t)t));
            out->lp[i][t] = (float)json_number_value(json_array_get(li, (size_t)t));
            /* both report the top log-probability of the same state: equal up to
             * fp32 noise, whether or not an argmax near-tie picked another id */
            if (fabsf(out->lp[i][t] - ours->lp[i][t]) > 1e-3f)
                return tidal_fail(TIDAL_ERR_INVALID,
                                  "bench generate: batch %d sequence %d step %d: tidal chose %d (logprob %.6f), "
                                  "PyTorch %d (logprob %.6f): not the same work",
                                  B, i, t, ours->tok[i][t], (double)ours->lp[i][t], out->tok[i][t],
                                  (double)out->lp[i][t]);
            if (out->tok[i][t] != ours->tok[i][t]) break; /* a near-tie: the sequences part here */
        }
    }
    return TIDAL_OK;
}

int bench_generate_main(int argc, char **argv)
{
    int threads = 0, B = 32, P = 32, N = 64, as_json = 0;
    const char *device = "cpu", *dtype = "f32";
    static const struct option opts[] = {{"threads", required_argument, 0, 'j'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"prompt-len", required_argument, 0, 'p'},
                                         {"new-tokens", required_argument, 0, 'n'},
                                         {"json", no_argument, 0, 'J'},
                                         {"device", required_argument, 0, 'd'},
                                         {"dtype", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "j:b:p:n:Jd:t:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'j': threads = atoi(optarg); break;
        case 'b': B = atoi(optarg); break;
        case 'p': P = atoi(optarg); break;
        case 'n': N = atoi(optarg); break;
        case 'J': as_json = 1; break;
        case 'd': device = optarg; break;
        case 't': dtype = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || B < 1 || B > 64 || P < 8 || P > 4096 || N < CHECK_STEPS || N > 4096 || threads < 0) {
        usage(stderr);
        return 2;
    }
    if ((strcmp(device, "cpu") && strcmp(device, "cuda")) || (strcmp(dtype, "f32") && strcmp(dtype, "bf16"))) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(device, "cuda")) return bench_generate_cuda(P, N, as_json, dtype);
    if (threads == 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_threads(threads);

    model *m = NULL;
    int32_t *prompts = malloc((size_t)B * P * sizeof(int32_t));
    side *t1 = calloc(1, sizeof *t1), *tB = calloc(1, sizeof *tB), *p1 = calloc(1, sizeof *p1),
         *pB = calloc(1, sizeof *pB);
    char dir[256] = "";
    json_t *peer = NULL, *pj = NULL;
    st_writer *sw = NULL;
    side *try = NULL, *q1 = NULL, *qB = NULL;
    tidal_status st = TIDAL_OK;
    if (!prompts || !t1 || !tB || !p1 || !pB) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench generate: out of memory");
        goto cleanup;
    }
    TRY_GOTO(bench_model(&m));
    const model_config cfg = *model_cfg(m);
    bench_token_ids(prompts, (size_t)(B * P), cfg.vocab_size);

    /* the peer's inputs */
    TRY_GOTO(bench_temp_dir("bench generate", "tidal-bench-generate", dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/model", dir);
    TRY_GOTO(model_save(m, path, ST_F32));
    TRY_GOTO(st_writer_new(&sw));
    int64_t shape[2] = {B, P};
    TRY_GOTO(st_writer_add_raw(sw, "prompts", ST_I32, 2, shape, prompts, (size_t)B * P * 4));
    snprintf(path, sizeof path, "%s/prompts.safetensors", dir);
    TRY_GOTO(st_writer_save(sw, path));
    st_writer_free(sw);
    sw = NULL;

    /* Rounds, one per environment of bench_peer_envs: tidal at batch 1 and B,
     * then the peer under that environment. Each side's best figure per batch
     * size counts; interleaving the two lets both see the same phases of a
     * noisy machine (on a shared VM, throughput drifts by 30 % in minutes). */
    const bench_peer_env *envs;
    const int n_envs = bench_peer_envs(&envs);
    fprintf(stderr, "tidal: warm-up...\n");
    TRY_GOTO(run_tidal(m, prompts, B, 8 < P ? 8 : P, CHECK_STEPS, tB));
    try = calloc(1, sizeof *try), q1 = calloc(1, sizeof *q1), qB = calloc(1, sizeof *qB);
    if (!try || !q1 || !qB) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench generate: out of memory");
        goto cleanup;
    }
    t1->tps = tB->tps = 0.0;
    const char *pol1 = NULL, *polB = NULL;
    for (int k = 0; k < n_envs; k++) {
        TRY_GOTO(run_tidal(m, prompts, 1, P, N, try));
        if (try->tps > t1->tps) *t1 = *try;
        double b1 = try->tps;
        TRY_GOTO(run_tidal(m, prompts, B, P, N, try));
        if (try->tps > tB->tps) *tB = *try;
        fprintf(stderr, "round %d/%d: tidal:   batch 1 %7.1f tokens/s, batch %d %7.1f tokens/s\n", k + 1, n_envs, b1, B,
                try->tps);
        TRY_GOTO(run_peer(dir, &envs[k], threads, N, &pj));
        TRY_GOTO(peer_side(pj, "b1", 1, t1, q1));
        TRY_GOTO(peer_side(pj, "bB", B, tB, qB));
        fprintf(stderr, "round %d/%d: PyTorch: batch 1 %7.1f tokens/s, batch %d %7.1f tokens/s (%s)\n", k + 1,
                n_envs, q1->tps, B, qB->tps, envs[k].label);
        if (q1->tps > p1->tps) {
            *p1 = *q1;
            pol1 = envs[k].label;
        }
        if (qB->tps > pB->tps) {
            *pB = *qB;
            polB = envs[k].label;
        }
        if (!peer) peer = pj, pj = NULL;
        json_decref(pj);
        pj = NULL;
    }
    double tidal_rss = bench_peak_rss_mb();
    int agree = 0;
    for (int i = 0; i < B; i++)
        for (int t = 0; t < CHECK_STEPS && tB->tok[i][t] == pB->tok[i][t]; t++) agree++;
    const char *torch_version = json_string_value(json_object_get(peer, "torch"));
    double peer_rss = json_number_value(json_object_get(peer, "peak_rss_mb"));
    double ratio = tB->tps / pB->tps, ratio1 = t1->tps / p1->tps;
    size_t n_params = 0;
    model_params(m, &n_params);
    if (!as_json)
        printf("bench generate: %zu parameters, prompts of %d tokens, %d new tokens (greedy), %d threads\n"
               "  tidal engine (CPU):      batch 1 %8.1f tokens/s   batch %d %8.1f tokens/s  peak RSS %6.0f MB\n"
               "  PyTorch %s KV loop: batch 1 %8.1f tokens/s   batch %d %8.1f tokens/s  peak RSS %6.0f MB\n"
               "  (PyTorch's best environment: %s at batch 1, %s at batch %d)\n"
               "  ratio at batch %d %.3f (batch 1: %.3f); first %d tokens agree on %d of %d\n",
               n_params, P, N, threads, t1->tps, B, tB->tps, tidal_rss, torch_version ? torch_version : "?",
               p1->tps, B, pB->tps, peer_rss, pol1, polB, B, B, ratio, ratio1, CHECK_STEPS, agree, B * CHECK_STEPS);
    json_t *o = json_pack("{s:s, s:s++, s:I, s:i, s:i, s:i, s:i, s:{s:f, s:f, s:f}, s:{s:f, s:f, s:f, s:s, s:s}, s:f, "
                          "s:f, s:i}",
                          "bench", "generate", "peer", "PyTorch ", torch_version ? torch_version : "?",
                          " float32 KV-cache greedy decode loop, best environment", "params", (json_int_t)n_params, "threads",
                          threads, "batch", B, "prompt_len", P, "new_tokens", N, "tidal", "b1_tokens_per_s", t1->tps,
                          "batch_tokens_per_s", tB->tps, "peak_rss_mb", tidal_rss, "torch", "b1_tokens_per_s",
                          p1->tps, "batch_tokens_per_s", pB->tps, "peak_rss_mb", peer_rss, "b1_env", pol1,
                          "batch_env", polB, "ratio_b1", ratio1, "ratio",
                          ratio, "tokens_agreeing", agree);
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench generate: %s\n", tidal_errmsg());
    bench_remove_dir("tidal bench generate", dir);
    st_writer_free(sw);
    free(try);
    free(q1);
    free(qB);
    json_decref(pj);
    json_decref(peer);
    model_free(m);
    free(prompts);
    free(t1);
    free(tB);
    free(p1);
    free(pB);
    return st == TIDAL_OK ? 0 : 1;
}
