/* bench_train.c - `tidal bench train`: forward + backward tokens/s of the CPU
 * model against PyTorch (Debian's python3-torch, float32, eager) on the same
 * Qwen2-shaped model, the same packed batch and the same thread count, in the
 * same run.
 *
 * tidal writes the model (a Hugging Face directory) and the batch to a temp
 * dir; the peer (bench/peers/train_peer.py, embedded at build time) loads both,
 * so the two compute the same loss - checked, as a guard against comparing
 * different work. ratio = tidal tokens/s / PyTorch tokens/s.
 *
 * --device cuda: training steps (forward, backward, global-norm clipping and
 * AdamW, model/model_cuda) of a Qwen2.5-0.5B-shaped model with random
 * weights on the GPU, no peer; tokens/s and MFU = 6 N tokens/s / the card's
 * dense bf16 peak (trainer_device_peak_bf16_flops). Refused cleanly where
 * there is no GPU or no CUDA in the build.
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
#include "trainer/device.h"
#ifdef TIDAL_HAVE_CUDA
#include "kernels/cuda/common.h"
#include "model/gpu_layout.h"
#include "model/model_cuda.h"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench train [--threads N] [--tokens T] [--iters N] [--json]\n"
               "       tidal bench train --device cuda [--dtype bf16|f32] [--tokens T] [--iters N] [--json]\n"
               "  Forward + backward of -sum(w * logprob) over a packed batch of T tokens (default\n"
               "  2048, 4 sequences) on a Qwen2-shaped model of ~29 M parameters, tidal's CPU model\n"
               "  against PyTorch float32 with the same threads (default: all cores). N timed\n"
               "  iterations (default 3) after one warm-up.\n"
               "  --device cuda: training steps (forward, backward, clipping, AdamW) on the GPU of a\n"
               "  Qwen2.5-0.5B-shaped model with random weights, T tokens (default 8192) in sequences\n"
               "  of 1024; tokens/s and MFU (6 x params x tokens/s / the card's bf16 peak).\n");
}

#ifdef TIDAL_HAVE_CUDA
/* Qwen2.5-0.5B's shape (its config.json). */
static const model_config qwen05b = {.type = MODEL_QWEN2, .vocab_size = 151936, .hidden_size = 896, .num_layers = 24,
                                     .num_heads = 14, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 4864,
                                     .max_position_embeddings = 32768, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                                     .tie_word_embeddings = true, .qkv_bias = true, .o_bias = false,
                                     .bos_token_id = -1, .eos_token_id = -1};
#endif

/* --device cuda (see the top comment). */
static int bench_train_cuda(int T, int iters, int as_json, const char *dtype)
{
    tidal_status st = trainer_device_cuda_available();
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal bench train: --device cuda: %s\n", tidal_errmsg());
        return 1;
    }
#ifdef TIDAL_HAVE_CUDA
    const cuda_dtype dt = !strcmp(dtype, "f32") ? CUDA_F32 : CUDA_BF16;
    const model_gpu_dims d = model_gpu_dims_of(&qwen05b);
    const size_t n = model_gpu_params(&d);
    const int S = T >= 1024 ? (T + 1023) / 1024 : 1;
    model *m = NULL;
    model_cuda *mc = NULL;
    int32_t *ids = malloc((size_t)T * 4), *tg = malloc((size_t)T * 4), *cu = malloc((size_t)(S + 1) * 4);
    float *lp = malloc((size_t)T * 4), *ent = malloc((size_t)T * 4), *dlp = malloc((size_t)T * 4);
    char name[256] = "";
    if (!ids || !tg || !cu || !lp || !ent || !dlp) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench train: out of memory");
        goto cleanup;
    }
    TRY_GOTO(cuda_device_name(name, sizeof name));
    TRY_GOTO(model_create(&qwen05b, &m)); /* the random weights come from the CPU model's initialiser */
    model_init_random(m, 1, 0.02f, true);
    TRY_GOTO(model_cuda_create(&d, dt, &mc));
    TRY_GOTO(model_cuda_set_params(mc, model_params(m, NULL)));
    model_free(m);
    m = NULL;
    bench_token_ids(ids, (size_t)T, d.vocab);
    for (int t = 0; t < T; t++) tg[t] = ids[(t + 1) % T], dlp[t] = -1.0f / (float)T;
    for (int i = 0; i <= S; i++) cu[i] = (int32_t)((int64_t)T * i / S);
    const model_cuda_batch b = {.T = T, .S = S, .ids = ids, .targets = tg, .cu_seqlens = cu, .inv_temp = 1.0f};
    const model_cuda_adamw a = {.lr = 1e-6f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.0f,
                                .max_norm = 1.0f};
    double t0 = 0.0, loss = 0.0, norm = 0.0;
    for (int it = 0; it <= iters; it++) {
        if (it == 1) t0 = bench_now_s(); /* iteration 0 warms up (allocations, cuBLASLt heuristics) */
        TRY_GOTO(model_cuda_zero_grads(mc));
        TRY_GOTO(model_cuda_forward(mc, &b, lp, ent)); /* waits for the stream: the step's time is all in */
        TRY_GOTO(model_cuda_backward(mc, &b, dlp, NULL));
        TRY_GOTO(model_cuda_step(mc, &a, &norm)); /* waits for the stream */
        if (it == 0) {
            for (int t = 0; t < T; t++) loss -= (double)lp[t] / T;
            if (!isfinite(loss) || !isfinite(norm)) {
                st = tidal_fail(TIDAL_ERR_INVALID, "bench train: --device cuda: loss %g, gradient norm %g: not finite",
                                loss, norm);
                goto cleanup;
            }
        }
        fprintf(stderr, "\rbench train (cuda): iteration %d/%d", it, iters);
    }
    const double secs = bench_now_s() - t0, tps = (double)T * iters / secs;
    const double peak = trainer_device_peak_bf16_flops(name);
    const double mfu = peak > 0 ? 6.0 * (double)n * tps / peak : NAN;
    fprintf(stderr, "\n");
    if (!as_json)
        printf("bench train --device cuda: %s, %s, %zu parameters (Qwen2.5-0.5B shape, random), %d tokens in %d "
               "sequences\n  %8.0f tokens/s  MFU %s%.1f%%%s (6N FLOPs per token against %.0f TFLOP/s bf16)  loss %.4f\n",
               name, cuda_dtype_name(dt), n, T, S, tps, peak > 0 ? "" : "(unknown card) ", peak > 0 ? 100 * mfu : 0.0,
               "", peak / 1e12, loss);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i, s:i, s:i, s:f, s:f, s:f}", "bench", "train", "device",
                          "cuda", "gpu", name, "dtype", cuda_dtype_name(dt), "params", (json_int_t)n, "tokens", T,
                          "sequences", S, "iters", iters, "tokens_per_s", tps, "seconds", secs, "loss", loss);
    if (o) {
        json_object_set_new(o, "peak_bf16_flops", peak > 0 ? json_real(peak) : json_null());
        json_object_set_new(o, "mfu", peak > 0 ? json_real(mfu) : json_null());
        json_object_set_new(o, "model", json_string("Qwen2.5-0.5B shape, random weights"));
    }
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench train: --device cuda: %s\n", tidal_errmsg());
    model_cuda_free(mc);
    model_free(m);
    free(ids), free(tg), free(cu), free(lp), free(ent), free(dlp);
    return st == TIDAL_OK ? 0 : 1;
#else
    (void)T, (void)iters, (void)as_json, (void)dtype;
    return 1;
#endif
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
    int threads = 0, T = 0, iters = 3, as_json = 0;
    const char *device = "cpu", *dtype = "bf16";
    static const struct option opts[] = {{"threads", required_argument, 0, 'j'},
                                         {"device", required_argument, 0, 'd'},
                                         {"dtype", required_argument, 0, 'D'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"iters", required_argument, 0, 'n'},
                                         {"json", no_argument, 0, 'J'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "j:t:n:Jhd:D:", opts, NULL)) != -1;) {
        switch (c) {
        case 'd': device = optarg; break;
        case 'D': dtype = optarg; break;
        case 'j': threads = atoi(optarg); break;
        case 't': T = atoi(optarg); break;
        case 'n': iters = atoi(optarg); break;
        case 'J': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const bool cuda = !strcmp(device, "cuda");
    if (T == 0) T = cuda ? 8192 : 2048;
    if (optind < argc || T < 4 || T > 65536 || iters < 1 || threads < 0 || (!cuda && strcmp(device, "cpu") != 0) ||
        (strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f32") != 0)) {
        usage(stderr);
        return 2;
    }
    if (cuda) return bench_train_cuda(T, iters, as_json, dtype);
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
