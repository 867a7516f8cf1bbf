/* debug.c - `tidal debug fwdbwd`: the model's parity hook (`tidal debug step`,
 * the trainer step's, is in debug_step.c); `tidal debug selfcheck`: the
 * trainer's device self-check (trainer/selfcheck.h) on its own.
 *
 * Tokens, targets, sequence offsets and per-token loss weights in (one
 * safetensors file); logits, per-token logprobs and entropy, the loss
 * L = -sum_t loss_weights[t] * logprob(target_ids[t]) and the gradient of
 * every parameter out (another safetensors file), so any reference (PyTorch
 * here) can check the model tensor by tensor. Optionally runs AdamW steps on
 * the same batch and writes the parameters after them, and saves the model
 * as a Hugging Face directory.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/debug.h"
#include "kernels/cpu/ops.h"
#include "model/hfdir.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "trainer/device.h"
#include "trainer/optimizer.h"
#include "trainer/selfcheck.h"
#include "rollout/engine_selfcheck.h"

#define EXIT_USAGE 2

static const char fwdbwd_usage[] =
    "usage: tidal debug fwdbwd --model DIR --input IN.safetensors --out OUT.safetensors\n"
    "                          [--steps N --lr X --weight-decay X] [--temperature X]\n"
    "                          [--save-model DIR] [--threads N] [--recompute] [--device cpu|cuda]\n"
    "       tidal debug selfcheck [--device cuda|cpu|auto] [--precision auto|bf16|fp32]\n"
    "                             [--steps N | --rerun]\n"
    "       tidal debug engine-selfcheck [--device cuda|cpu|auto|cpu-ref]\n"
    "\n"
    "IN holds input_ids (I32 [T]), target_ids (I32 [T]), cu_seqlens (I32 [S+1]) and\n"
    "loss_weights (F32 [T]). OUT receives logits (F32 [T, V]), logprobs (F32 [T]),\n"
    "entropy (F32 [T]), loss (F32 [1], -sum loss_weights * logprobs) and grad.<name>\n"
    "for every parameter (tied embeddings: one grad.model.embed_tokens.weight).\n"
    "With --steps N: N AdamW updates (decay on 2-D weights) on the same batch;\n"
    "OUT also gets step_losses (F32 [N]) and param.<name> after the last update;\n"
    "the other outputs are those of the first pass.\n"
    "--save-model DIR writes the model (after the steps) as a Hugging Face directory\n"
    "(with the tokenizer files of --model DIR, when it has them).\n"
    "--recompute recomputes the MLP activations in the backward (less memory).\n"
    "--device cuda runs the forward, backward and AdamW steps on the GPU (model_cuda,\n"
    "fp32, through the trainer's device: trainer/device.h); OUT then has no logits\n"
    "(the GPU head never holds them), and --weight-decay must be 0 (the device decays\n"
    "every element, fwdbwd only 2-D weights). Refused when there is no GPU.\n"
    "\n"
    "selfcheck: the trainer's start-up check of a device - a tiny model's forward,\n"
    "backward and one AdamW update there and on the CPU, compared tensor by tensor\n"
    "(exit 1 naming the first op over the tolerance). TIDAL_SELFCHECK_PLANT=STAGE:NAME\n"
    "perturbs one tensor of the device's results (a test of the check itself).\n"
    "--precision: as trainer.precision (auto: bf16 on cuda, fp32 on the CPU; the\n"
    "CPU refuses bf16); the tolerance per tensor is 1e-4 in fp32, 3e-2 in bf16.\n"
    "--steps N: instead, N AdamW steps of the tiny model on the device tracking the\n"
    "CPU's loss (each step's loss within the tolerance). --rerun: instead, the\n"
    "self-check's run twice on the device, equal bit for bit.\n"
    "\n"
    "engine-selfcheck: the rollout worker's start-up check of its engine's device -\n"
    "a tiny model's greedy generation (5 requests, a forked prompt, a weight swap\n"
    "mid-generation) there and on the CPU engine, token for token (exit 1 naming\n"
    "the request and token). TIDAL_ENGINE_SELFCHECK_PLANT=REQ:INDEX replaces one\n"
    "of the device's tokens (a test of the check itself). --device cpu-ref runs the GPU\n"
    "engine's logic (paged cache, forks, Philox sampler) on the CPU references of its kernels.\n";

/* (debug.h) */
tidal_status debug_input_1d(const st_file *in, const char *path, const char *name, st_dtype dt,
                            const st_tensor **out)
{
    const st_tensor *t = st_find(in, name);
    if (!t) return tidal_fail(TIDAL_ERR_INVALID, "%s: tensor %s is missing", path, name);
    if (t->dtype != dt || t->ndim != 1)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: tensor %s must be %s with one dimension (it is %s with %d)", path,
                          name, st_dtype_name(dt), st_dtype_name(t->dtype) ? st_dtype_name(t->dtype) : "?", t->ndim);
    *out = t;
    return TIDAL_OK;
}

/* (debug.h) */
void *debug_copy_out(const st_tensor *t)
{
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    if (p) memcpy(p, t->data, t->nbytes);
    return p;
}

static tidal_status add_f32(st_writer *w, const char *name, int ndim, int64_t d0, int64_t d1, const float *x)
{
    int64_t shape[2] = {d0, d1};
    return st_writer_add_f32(w, name, ST_F32, ndim, shape, x);
}

/* --save-model: the model as a Hugging Face directory, with the tokenizer
 * files and generation_config.json of the model it was loaded from when that
 * directory has them (model/hfdir.h). */
static tidal_status save_model(const model *m, const char *from, const char *dir)
{
    char path[4200];
    hf_files f = {0};
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_save(m, dir, ST_F32));
    snprintf(path, sizeof path, "%s/tokenizer.json", from);
    if (access(path, F_OK) == 0) {
        TRY_GOTO(hf_files_from_source(from, &f));
        TRY_GOTO(hf_files_write(&f, dir));
    }
cleanup:
    hf_files_clear(&f);
    return st;
}

static int fwdbwd(int argc, char **argv)
{
    const char *model_dir = NULL, *in_path = NULL, *out_path = NULL, *save_dir = NULL;
    int steps = 0, threads = 0, recompute = 0;
    double lr = 1e-3, wd = 0.0, temperature = 1.0;
    const char *device = "cpu";
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"input", required_argument, 0, 'i'},
                                         {"out", required_argument, 0, 'o'},
                                         {"steps", required_argument, 0, 's'},
                                         {"lr", required_argument, 0, 'l'},
                                         {"weight-decay", required_argument, 0, 'w'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"save-model", required_argument, 0, 'S'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"recompute", no_argument, 0, 'R'},
                                         {"device", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "m:i:o:s:l:w:t:S:j:Rd:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'd': device = optarg; break;
        case 'm': model_dir = optarg; break;
        case 'i': in_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'l': lr = atof(optarg); break;
        case 'w': wd = atof(optarg); break;
        case 't': temperature = atof(optarg); break;
        case 'S': save_dir = optarg; break;
        case 'j': threads = atoi(optarg); break;
        case 'R': recompute = 1; break;
        case 'h': fputs(fwdbwd_usage, stdout); return 0;
        default: fputs(fwdbwd_usage, stderr); return EXIT_USAGE;
        }
    }
    const bool on_cuda = !strcmp(device, "cuda");
    if (!model_dir || !in_path || !out_path || optind < argc || steps < 0 || !(temperature > 0) ||
        (!on_cuda && strcmp(device, "cpu") != 0)) {
        fputs(fwdbwd_usage, stderr);
        return EXIT_USAGE;
    }
    if (on_cuda && steps > 0 && wd != 0.0) {
        fprintf(stderr, "tidal debug fwdbwd: --device cuda --weight-decay %g: the device decays every element, "
                        "fwdbwd 2-D weights only; use 0\n", wd);
        return EXIT_USAGE;
    }
    if (on_cuda && trainer_device_cuda_available() != TIDAL_OK) { /* before any work */
        fprintf(stderr, "tidal debug fwdbwd: --device cuda: %s\n", tidal_errmsg());
        return 1;
    }
    cpu_set_threads(threads);
    trainer_device *dev = NULL; /* --device cuda */

    model *m = NULL;
    st_file *in = NULL;
    st_writer *w = NULL;
    adamw *opt = NULL;
    int32_t *ids = NULL, *targets = NULL, *cu = NULL;
    float *weights = NULL, *logprob = NULL, *entropy = NULL, *logits = NULL, *dlogprob = NULL, *first_grads = NULL;
    float *step_losses = NULL;
    uint8_t *decay = NULL;
    int rc = 1;

    tidal_status st = TIDAL_OK;
    rc = EXIT_USAGE; /* the model directory and the input file: a failure to read them is bad input */
    TRY_GOTO(model_load(model_dir, &m));
    TRY_GOTO(st_open(in_path, &in));
    const st_tensor *t_ids = NULL, *t_tg = NULL, *t_cu = NULL, *t_w = NULL;
    TRY_GOTO(debug_input_1d(in, in_path, "input_ids", ST_I32, &t_ids));
    TRY_GOTO(debug_input_1d(in, in_path, "target_ids", ST_I32, &t_tg));
    TRY_GOTO(debug_input_1d(in, in_path, "cu_seqlens", ST_I32, &t_cu));
    TRY_GOTO(debug_input_1d(in, in_path, "loss_weights", ST_F32, &t_w));
    if (t_tg->shape[0] != t_ids->shape[0] || t_w->shape[0] != t_ids->shape[0]) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: input_ids, target_ids and loss_weights must have the same length (%lld, %lld, %lld)",
                        in_path, (long long)t_ids->shape[0], (long long)t_tg->shape[0], (long long)t_w->shape[0]);
        goto cleanup;
    }
    if (t_cu->shape[0] < 2 || t_ids->shape[0] < 1 || t_ids->shape[0] > (1 << 24)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: need at least one token and one sequence (cu_seqlens has S+1 entries)", in_path);
        goto cleanup;
    }
    rc = 1;
    model_set_recompute_mlp(m, recompute);
    const int T = (int)t_ids->shape[0], S = (int)t_cu->shape[0] - 1, V = model_cfg(m)->vocab_size;
    ids = debug_copy_out(t_ids);
    targets = debug_copy_out(t_tg);
    cu = debug_copy_out(t_cu);
    weights = debug_copy_out(t_w);
    logprob = malloc((size_t)T * sizeof(float));
    entropy = malloc((size_t)T * sizeof(float));
    dlogprob = malloc((size_t)T * sizeof(float));
    logits = on_cuda ? malloc(sizeof(float)) : malloc((size_t)T * (size_t)V * sizeof(float));
    step_losses = calloc((size_t)(steps ? steps : 1), sizeof(float));
    if (!ids || !targets || !cu || !weights || !logprob || !entropy || !dlogprob || !logits || !step_losses) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "debug fwdbwd: out of memory for %d tokens x %d vocabulary", T, V);
        goto cleanup;
    }
    for (int t = 0; t < T; t++) {
        if (!(weights[t] == weights[t]) || weights[t] > 3.0e38f || weights[t] < -3.0e38f) {
            st = tidal_fail(TIDAL_ERR_INVALID, "%s: loss_weights[%d] is not finite", in_path, t);
            rc = EXIT_USAGE;
            goto cleanup;
        }
        dlogprob[t] = -weights[t];
    }
    model_batch b = {.T = T, .S = S, .ids = ids, .targets = targets, .cu_seqlens = cu,
                     .inv_temp = (float)(1.0 / temperature)};
    st = model_batch_check(m, &b);
    if (st != TIDAL_OK) { /* a batch the model refuses: bad input */
        tidal_wrap(st, "%s", in_path);
        rc = EXIT_USAGE;
        goto cleanup;
    }

    size_t n_params = 0;
    float *params = model_params(m, &n_params);
    float *grads = model_grads(m, NULL);
    if (steps > 0) {
        adamw_cfg oc = adamw_defaults();
        oc.weight_decay = (float)wd;
        TRY_GOTO(adamw_create(n_params, &oc, &opt));
        decay = calloc(n_params, 1);
        first_grads = malloc(n_params * sizeof(float));
        if (!decay || !first_grads) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "debug fwdbwd: out of memory");
            goto cleanup;
        }
        for (int i = 0; i < model_num_tensors(m); i++) {
            const model_tensor *mt = model_tensor_at(m, i);
            if (mt->ndim == 2) memset(decay + mt->offset, 1, mt->numel);
        }
    }
    if (on_cuda) TRY_GOTO(trainer_device_create(TRAINER_DEVICE_CUDA, m, opt, &dev)); /* opt: NULL without steps */
    /* first pass: the outputs; then the optimizer steps, if any */
    float loss0 = 0.0f;
    for (int step = 0; step < (steps ? steps : 1); step++) {
        if (dev) { /* the GPU: the trainer's device, gradients back to the host model for the outputs */
            TRY_GOTO(trainer_device_zero_grads(dev));
            TRY_GOTO(trainer_device_forward(dev, &b, logprob, entropy));
            TRY_GOTO(trainer_device_backward(dev, &b, dlogprob, NULL));
            TRY_GOTO(trainer_device_sync_grads(dev));
        } else {
            model_zero_grads(m);
            TRY_GOTO(model_forward(m, &b, logprob, entropy, step == 0 ? logits : NULL));
            TRY_GOTO(model_backward(m, &b, dlogprob, NULL));
        }
        double loss = 0.0;
        for (int t = 0; t < T; t++) loss -= (double)weights[t] * logprob[t];
        step_losses[step] = (float)loss;
        if (step == 0) {
            loss0 = (float)loss;
            if (steps) memcpy(first_grads, grads, n_params * sizeof(float));
            /* keep the first pass's per-token outputs */
            TRY_GOTO(st_writer_new(&w));
            if (!dev) TRY_GOTO(add_f32(w, "logits", 2, T, V, logits));
            TRY_GOTO(add_f32(w, "logprobs", 1, T, 0, logprob));
            TRY_GOTO(add_f32(w, "entropy", 1, T, 0, entropy));
            TRY_GOTO(add_f32(w, "loss", 1, 1, 0, &loss0));
        }
        if (steps && dev) {
            double norm = 0.0;
            TRY_GOTO(trainer_device_update(dev, 0.0, (float)lr, &norm)); /* no clipping, as adamw_step */
        } else if (steps) {
            adamw_step(opt, params, grads, decay, (float)lr);
        }
    }
    if (dev) TRY_GOTO(trainer_device_sync_params(dev)); /* param.* and --save-model from the device's weights */
    const float *g0 = steps ? first_grads : grads;
    for (int i = 0; i < model_num_tensors(m); i++) {
        const model_tensor *mt = model_tensor_at(m, i);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", mt->name);
        TRY_GOTO(st_writer_add_f32(w, name, ST_F32, mt->ndim, mt->shape, g0 + mt->offset));
        if (steps) {
            snprintf(name, sizeof name, "param.%s", mt->name);
            TRY_GOTO(st_writer_add_f32(w, name, ST_F32, mt->ndim, mt->shape, params + mt->offset));
        }
    }
    if (steps) TRY_GOTO(add_f32(w, "step_losses", 1, steps, 0, step_losses));
    TRY_GOTO(st_writer_save(w, out_path));
    if (save_dir) TRY_GOTO(save_model(m, model_dir, save_dir));
    fprintf(stderr, "fwdbwd: %d tokens in %d sequences, loss %.6f, grad norm %.6g%s\n", T, S, (double)loss0,
            model_grad_norm(m), steps ? " (after the last step)" : "");
    rc = 0;
cleanup:
    if (rc != 0) fprintf(stderr, "tidal debug fwdbwd: %s\n", tidal_errmsg());
    trainer_device_free(dev);
    st_writer_free(w);
    st_close(in);
    model_free(m);
    adamw_free(opt);
    free(ids);
    free(targets);
    free(cu);
    free(weights);
    free(logprob);
    free(entropy);
    free(dlogprob);
    free(logits);
    free(first_grads);
    free(step_losses);
    free(decay);
    return rc;
}

/* `tidal debug selfcheck [--device D] [--precision P] [--steps N | --rerun]`:
 * exit 0 when the device agrees with the CPU (or tracks its loss, or repeats
 * its own bits), 1 naming the op or step, 2 for a bad command line. */
static int selfcheck(int argc, char **argv)
{
    const char *device = "cuda", *precision = "auto";
    long steps = 0;
    bool rerun = false;
    static const struct option opts[] = {{"device", required_argument, 0, 'd'},
                                         {"precision", required_argument, 0, 'p'},
                                         {"steps", required_argument, 0, 's'},
                                         {"rerun", no_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "d:p:s:rh", opts, NULL)) != -1;) {
        char *end = NULL;
        switch (c) {
        case 'd': device = optarg; break;
        case 'p': precision = optarg; break;
        case 's':
            steps = strtol(optarg, &end, 10);
            if (!*optarg || *end || steps < 1 || steps > SELFCHECK_TRACK_MAX) {
                fprintf(stderr, "tidal debug selfcheck: --steps: '%s' is not a count of 1 .. %d\n", optarg,
                        SELFCHECK_TRACK_MAX);
                return EXIT_USAGE;
            }
            break;
        case 'r': rerun = true; break;
        case 'h': fputs(fwdbwd_usage, stdout); return 0;
        default: fputs(fwdbwd_usage, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc || (steps > 0 && rerun) ||
        (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto"))) {
        fputs(fwdbwd_usage, stderr);
        return EXIT_USAGE;
    }
    trainer_device_kind k = TRAINER_DEVICE_CPU;
    trainer_precision p = TRAINER_PRECISION_FP32;
    char why[512];
    tidal_status st = trainer_device_resolve(device, &k, why, sizeof why);
    if (st == TIDAL_OK) {
        fprintf(stderr, "selfcheck: %s\n", why);
        st = trainer_precision_resolve(precision, k, &p, why, sizeof why);
    }
    if (st == TIDAL_OK) fprintf(stderr, "selfcheck: %s\n", why);
    const char *dev = trainer_device_kind_name(k), *pn = trainer_precision_name(p);
    const double tol = selfcheck_tolerance(p);
    if (st == TIDAL_OK && steps > 0) {
        selfcheck_track_result *r = calloc(1, sizeof *r);
        st = r ? selfcheck_track(k, p, (int)steps, r) : tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
        if (r && r->steps == steps)
            for (int i = 0; i <= r->steps; i++)
                printf("loss track (%s, %s): %s %d: device %.7g, cpu %.7g\n", dev, pn,
                       i < r->steps ? "before update" : "after update", i < r->steps ? i + 1 : r->steps,
                       r->dev_loss[i], r->cpu_loss[i]);
        if (st == TIDAL_OK)
            printf("loss track (%s, %s): %ld AdamW steps track the CPU: worst error %.3g (tolerance %.0e)\n", dev, pn,
                   steps, r->worst, tol);
        free(r);
    } else if (st == TIDAL_OK && rerun) {
        st = selfcheck_rerun(k, p);
        if (st == TIDAL_OK)
            printf("rerun (%s, %s): the self-check's forward, backward and update twice: equal bit for bit\n", dev, pn);
    } else if (st == TIDAL_OK) {
        selfcheck_errors e;
        st = trainer_selfcheck(k, p, &e);
        if (st == TIDAL_OK)
            printf("selfcheck (%s, %s): agrees with the CPU: worst error forward %.3g, backward %.3g, adamw %.3g "
                   "(tolerance %.0e)\n", dev, pn, e.forward, e.backward, e.adamw, tol);
    }
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal debug selfcheck: %s\n", tidal_errmsg());
        return 1;
    }
    return 0;
}

/* `tidal debug engine-selfcheck [--device D]`: exit 0 when the device's engine agrees with the
 * CPU engine, 1 naming the request and token (rollout/engine_selfcheck.h). */
static int engine_selfcheck_cmd(int argc, char **argv)
{
    const char *device = "cuda";
    static const struct option opts[] = {{"device", required_argument, 0, 'd'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'd': device = optarg; break;
        case 'h': fputs(fwdbwd_usage, stdout); return 0;
        default: fputs(fwdbwd_usage, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc ||
        (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto") && strcmp(device, "cpu-ref"))) {
        fputs(fwdbwd_usage, stderr);
        return EXIT_USAGE;
    }
    engine_device d = ENGINE_DEVICE_CPU_REF;
    char why[512] = "the GPU engine's logic on the CPU references of its kernels";
    tidal_status st = strcmp(device, "cpu-ref") ? engine_device_resolve(device, &d, why, sizeof why) : TIDAL_OK;
    if (st == TIDAL_OK) {
        fprintf(stderr, "engine-selfcheck: %s\n", why);
        st = engine_selfcheck(d);
    }
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal debug engine-selfcheck: %s\n", tidal_errmsg());
        return 1;
    }
    printf("engine-selfcheck (%s): greedy generation equal to the CPU engine's\n", engine_device_name(d));
    return 0;
}

int debug_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(fwdbwd_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "fwdbwd")) return fwdbwd(argc - 1, argv + 1);
    if (!strcmp(argv[1], "step")) return debug_step(argc - 1, argv + 1);
    if (!strcmp(argv[1], "selfcheck")) return selfcheck(argc - 1, argv + 1);
    if (!strcmp(argv[1], "engine-selfcheck")) return engine_selfcheck_cmd(argc - 1, argv + 1);
    fprintf(stderr, "tidal debug: unknown hook '%s'\n%s", argv[1], fwdbwd_usage);
    return EXIT_USAGE;
}
