/* bench_train.c - `tidal bench train`: forward + backward tokens/s of the CPU
 * model against PyTorch (Debian's python3-torch, float32, eager) on the same
 * Qwen2-shaped model, the same packed batch and the same thread count, in the
 * same run.
 *
 * tidal writes the model (a Hugging Face directory) and the batch to a temp
 * dir; the peer (bench/peers/train_peer.py, embedded at build time) loads both,
 * so the two compute the same loss - checked, as a guard against comparing
 * different work. ratio = tidal tokens/s / PyTorch tokens/s.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "train_peer_py.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench train [--threads N] [--tokens T] [--iters N] [--json]\n"
               "  Forward + backward of -sum(w * logprob) over a packed batch of T tokens (default\n"
               "  2048, 4 sequences) on a Qwen2-shaped model of ~29 M parameters, tidal's CPU model\n"
               "  against PyTorch float32 with the same threads (default: all cores). N timed\n"
               "  iterations (default 3) after one warm-up.\n");
}

/* Run the peer under environment `env`. */
static tidal_status run_peer(const char *dir, int threads, int iters, const bench_peer_env *env, json_t **out)
{
    char model[600], batch[600], t[16], n[16];
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(batch, sizeof batch, "%s/batch.safetensors", dir);
    snprintf(t, sizeof t, "%d", threads), snprintf(n, sizeof n, "%d", iters);
    char *args[] = {model, batch, t, n, NULL};
    return bench_run_python("bench train", train_peer_py, "train_peer.py", dir, env, args, out);
}

int bench_train_main(int argc, char **argv)
{
    int threads = 0, T = 2048, iters = 3, as_json = 0;
    static const struct option opts[] = {{"threads", required_argument, 0, 'j'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"iters", required_argument, 0, 'n'},
                                         {"json", no_argument, 0, 'J'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "j:t:n:Jh", opts, NULL)) != -1;) {
        switch (c) {
        case 'j': threads = atoi(optarg); break;
        case 't': T = atoi(optarg); break;
        case 'n': iters = atoi(optarg); break;
        case 'J': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || T < 4 || T > 65536 || iters < 1 || threads < 0) {
        usage(stderr);
        return 2;
    }
    if (threads == 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_threads(threads);

    const int S = 4;
    model *m = NULL;
    int32_t *ids = malloc((size_t)T * 4), *tg = malloc((size_t)T * 4), cu[5];
    float *w = malloc((size_t)T * 4), *lp = malloc((size_t)T * 4), *ent = malloc((size_t)T * 4), *dlp = malloc((size_t)T * 4);
    char dir[256] = "";
    json_t *peer = NULL, *one = NULL;
    st_writer *sw = NULL;
    tidal_status st = TIDAL_OK;
    if (!ids || !tg || !w || !lp || !ent || !dlp) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench train: out of memory");
        goto cleanup;
    }
    TRY_GOTO(bench_model(&m));
    const model_config cfg = *model_cfg(m);
    bench_token_ids(ids, (size_t)(T), cfg.vocab_size);
    for (int t = 0; t < T; t++) {
        tg[t] = ids[(t + 1) % T];
        w[t] = 1.0f / (float)T;
        dlp[t] = -w[t];
    }
    for (int i = 0; i <= S; i++) cu[i] = (int32_t)((int64_t)T * i / S);
    model_batch b = {.T = T, .S = S, .ids = ids, .targets = tg, .cu_seqlens = cu, .inv_temp = 1.0f};

    /* the peer's inputs */
    TRY_GOTO(bench_temp_dir("bench train", "tidal-bench-train", dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/model", dir);
    TRY_GOTO(model_save(m, path, ST_F32));
    TRY_GOTO(st_writer_new(&sw));
    int64_t shT = T, shS = S + 1;
    TRY_GOTO(st_writer_add_raw(sw, "input_ids", ST_I32, 1, &shT, ids, (size_t)T * 4));
    TRY_GOTO(st_writer_add_raw(sw, "target_ids", ST_I32, 1, &shT, tg, (size_t)T * 4));
    TRY_GOTO(st_writer_add_raw(sw, "cu_seqlens", ST_I32, 1, &shS, cu, (size_t)(S + 1) * 4));
    TRY_GOTO(st_writer_add_f32(sw, "loss_weights", ST_F32, 1, &shT, w));
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    TRY_GOTO(st_writer_save(sw, path));
    st_writer_free(sw);
    sw = NULL;

    /* Rounds, one per environment of bench_peer_envs: tidal's iterations, then
     * the peer's under that environment. Each side's best figure counts;
     * interleaving lets both see the same phases of a noisy machine. */
    const bench_peer_env *envs;
    const int n_envs = bench_peer_envs(&envs);
    const char *policy = "default"; /* the label of the peer's best environment */
    double loss = 0.0, tidal_s = 0.0, tidal_tps = 0.0;
    for (int k = 0; k < n_envs; k++) {
        double t0 = 0.0;
        for (int it = 0; it <= iters; it++) {
            if (it == 1) t0 = bench_now_s(); /* iteration 0 warms up */
            model_zero_grads(m);
            TRY_GOTO(model_forward(m, &b, lp, ent, NULL));
            TRY_GOTO(model_backward(m, &b, dlp, NULL));
            if (it == 0 && k == 0) {
                loss = 0.0;
                for (int t = 0; t < T; t++) loss -= (double)w[t] * lp[t];
            }
            fprintf(stderr, "\rround %d/%d: tidal: iteration %d/%d", k + 1, n_envs, it, iters);
        }
        const double secs = bench_now_s() - t0, tps = (double)T * iters / secs;
        if (tps > tidal_tps) tidal_tps = tps, tidal_s = secs;
        fprintf(stderr, "\rround %d/%d: tidal:   %6.0f tokens/s\n", k + 1, n_envs, tps);
        TRY_GOTO(run_peer(dir, threads, iters, &envs[k], &one));
        const double ptps = json_number_value(json_object_get(one, "tokens_per_s"));
        fprintf(stderr, "round %d/%d: PyTorch: %6.0f tokens/s (%s)\n", k + 1, n_envs, ptps, envs[k].label);
        if (!peer || ptps > json_number_value(json_object_get(peer, "tokens_per_s"))) {
            json_decref(peer);
            peer = one;
            policy = envs[k].label;
        } else {
            json_decref(one);
        }
        one = NULL;
    }
    const double tidal_rss = bench_peak_rss_mb();
    double peer_tps = json_number_value(json_object_get(peer, "tokens_per_s"));
    double peer_loss = json_number_value(json_object_get(peer, "loss"));
    double peer_rss = json_number_value(json_object_get(peer, "peak_rss_mb"));
    const char *torch_version = json_string_value(json_object_get(peer, "torch"));
    if (!(peer_tps > 0) || fabs(peer_loss - loss) > 1e-3 * fabs(loss) + 1e-6) {
        st = tidal_fail(TIDAL_ERR_INVALID, "bench train: the peer computed loss %.6f, tidal %.6f: not the same work",
                        peer_loss, loss);
        goto cleanup;
    }
    double ratio = tidal_tps / peer_tps;
    size_t n_params = 0;
    model_params(m, &n_params);
    if (!as_json)
        printf("bench train: %zu parameters, %d tokens in %d sequences, %d threads\n"
               "  tidal (CPU, OpenBLAS + OpenMP):   %8.0f tokens/s  peak RSS %6.0f MB\n"
               "  PyTorch %s float32 eager:     %8.0f tokens/s  peak RSS %6.0f MB\n"
               "  ratio %.3f  (loss %.6f / %.6f)\n",
               n_params, T, S, threads, tidal_tps, tidal_rss, torch_version ? torch_version : "?", peer_tps, peer_rss,
               ratio, loss, peer_loss);
    json_t *o = json_pack("{s:s, s:s+, s:I, s:i, s:i, s:i, s:{s:f, s:f, s:f, s:f}, s:{s:f, s:f, s:f, s:f, s:s}, s:f}", "bench",
                          "train", "peer", "PyTorch float32 eager ", torch_version ? torch_version : "?",
                          "params", (json_int_t)n_params, "tokens", T, "threads", threads, "iters", iters, "tidal",
                          "tokens_per_s", tidal_tps, "seconds", tidal_s, "peak_rss_mb", tidal_rss, "loss", loss,
                          "torch", "tokens_per_s", peer_tps, "seconds",
                          json_number_value(json_object_get(peer, "seconds")), "peak_rss_mb", peer_rss, "loss",
                          peer_loss, "env", policy, "ratio", ratio);
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench train: %s\n", tidal_errmsg());
    bench_remove_dir("tidal bench train", dir);
    st_writer_free(sw);
    json_decref(one);
    json_decref(peer);
    model_free(m);
    free(ids);
    free(tg);
    free(w);
    free(lp);
    free(ent);
    free(dlp);
    return st == TIDAL_OK ? 0 : 1;
}
