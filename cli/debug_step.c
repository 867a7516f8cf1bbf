/* debug_step.c - `tidal debug step`: the trainer step's parity hook.
 *
 * One real trainer_step (trainer/step.c) on trajectories given as tensors,
 * with the configuration read from job-spec keys (--set) by trainer/config.h,
 * as the trainer's is, so a reference can check the
 * whole path - shaped rewards, advantages, the layout, the proximal policy,
 * M2PO's selection, the loss and the model's backward - tensor by tensor.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/debug.h"
#include "job/spec.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "proto/codec.h"
#include "trainer/config.h"
#include "trainer/device.h"
#include "trainer/step.h"

#define EXIT_USAGE 2
#define MAX_SETS 64

static const char step_usage[] =
    "usage: tidal debug step --model DIR --input IN.safetensors --out OUT.safetensors\n"
    "                        [--ref DIR] [--version V] [--set key=value]... [--device cpu|cuda]\n"
    "\n"
    "IN holds n samples in G groups: prompt_ids and prompt_off (I32, [sum P], [n+1]),\n"
    "completion_ids and completion_off (I32, [sum C], [n+1]), logprobs (F32 [sum C], the\n"
    "behaviour logprobs), loss_mask (U8 [sum C]), versions (F64 [sum C], each token's\n"
    "behaviour version), rewards (F64 [n]), group_off (I32 [G+1]) and temperature (F64 [1]).\n"
    "One trainer step at version V (default: the newest token version) with the job-spec\n"
    "trainer.* keys given by --set (e.g. --set trainer.loss=gspo); --ref DIR is the\n"
    "reference model for trainer.kl / trainer.kl_reward. OUT receives grad.<name> of every\n"
    "parameter (the last update's gradients, before clipping when trainer.grad_clip=0),\n"
    "param.<name> after the step, and the step's metrics as F64 scalars.\n"
    "--device cuda runs the step on the GPU (trainer/device.h; the reference too);\n"
    "grad.<name> are then the device's gradients, never clipped in place.\n";

/* What IN holds, copied out, and the trajectories built over it. */
typedef struct inputs {
    int32_t *pid, *poff, *cid, *coff, *goff;
    float *lp;
    uint8_t *mask;
    double *ver, *rew, temperature;
    int n, G;
    int64_t n_p, n_c;
    Tidal__V1__Trajectory *tr;
    uint32_t *pid_u, *cid_u;
    protobuf_c_boolean *mask_b;
    uint64_t *vval;
    uint32_t *vrun;
    char (*ids)[32];
    Tidal__V1__Trajectory **ptr;
    buffer_group *groups;
} inputs;

static void inputs_free(inputs *x)
{
    free(x->pid), free(x->poff), free(x->cid), free(x->coff), free(x->goff), free(x->lp), free(x->mask), free(x->ver);
    free(x->rew), free(x->tr), free(x->pid_u), free(x->cid_u), free(x->mask_b), free(x->vval), free(x->vrun);
    free(x->ids), free(x->ptr), free(x->groups);
}

/* IN's ten tensors, checked for dtype and rank, copied out into x (their
 * lengths checked against each other). */
static tidal_status read_tensors(const char *path, inputs *x)
{
    st_file *f = NULL;
    TRY(st_open(path, &f));
    tidal_status st = TIDAL_OK;
    const st_tensor *t[10] = {0};
    const char *names[10] = {"prompt_ids", "prompt_off", "completion_ids", "completion_off", "group_off",
                             "logprobs", "loss_mask", "versions", "rewards", "temperature"};
    const st_dtype dts[10] = {ST_I32, ST_I32, ST_I32, ST_I32, ST_I32, ST_F32, ST_U8, ST_F64, ST_F64, ST_F64};
    for (int i = 0; i < 10; i++) TRY_GOTO(debug_input_1d(f, path, names[i], dts[i], &t[i]));
    x->pid = debug_copy_out(t[0]), x->poff = debug_copy_out(t[1]), x->cid = debug_copy_out(t[2]), x->coff = debug_copy_out(t[3]);
    x->goff = debug_copy_out(t[4]), x->lp = debug_copy_out(t[5]), x->mask = debug_copy_out(t[6]), x->ver = debug_copy_out(t[7]);
    x->rew = debug_copy_out(t[8]);
    memcpy(&x->temperature, t[9]->data, sizeof x->temperature);
    x->n = (int)t[8]->shape[0], x->G = (int)t[4]->shape[0] - 1;
    x->n_p = t[0]->shape[0], x->n_c = t[2]->shape[0];
    const bool sizes = t[1]->shape[0] == x->n + 1 && t[3]->shape[0] == x->n + 1 && t[5]->shape[0] == x->n_c &&
                       t[6]->shape[0] == x->n_c && t[7]->shape[0] == x->n_c && x->G >= 1 && x->n >= 1;
    if (!x->pid || !x->poff || !x->cid || !x->coff || !x->goff || !x->lp || !x->mask || !x->ver || !x->rew)
        st = tidal_fail(TIDAL_ERR_NOMEM, "debug step: out of memory");
    else if (!sizes)
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: the tensors' lengths do not agree (see --help)", path);
cleanup:
    st_close(f);
    return st;
}

/* IN (see step_usage) into x: its tensors, their offsets checked, and the
 * trajectories and groups built over them; *newest is the newest token version. */
static tidal_status read_inputs(const char *path, inputs *x, uint64_t *newest)
{
    TRY(read_tensors(path, x));
    if (x->poff[0] != 0 || x->poff[x->n] != x->n_p || x->coff[0] != 0 || x->coff[x->n] != x->n_c ||
        x->goff[0] != 0 || x->goff[x->G] != x->n)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: an offsets tensor does not start at 0 or end at its length", path);
    for (int i = 0; i < x->n; i++)
        if (x->poff[i + 1] <= x->poff[i] || x->coff[i + 1] < x->coff[i])
            return tidal_fail(TIDAL_ERR_INVALID, "%s: sample %d: empty prompt or decreasing offsets", path, i);
    for (int g = 0; g < x->G; g++)
        if (x->goff[g + 1] <= x->goff[g]) return tidal_fail(TIDAL_ERR_INVALID, "%s: group %d is empty", path, g);
    /* the trajectories, pointing into copies in the message's own types */
    x->tr = calloc((size_t)x->n, sizeof *x->tr), x->ptr = calloc((size_t)x->n, sizeof *x->ptr);
    x->ids = calloc((size_t)x->n, sizeof *x->ids), x->groups = calloc((size_t)x->G, sizeof *x->groups);
    x->pid_u = malloc((size_t)(x->n_p + 1) * sizeof *x->pid_u), x->cid_u = malloc((size_t)(x->n_c + 1) * sizeof *x->cid_u);
    x->mask_b = malloc((size_t)(x->n_c + 1) * sizeof *x->mask_b);
    x->vval = malloc((size_t)(x->n_c + 1) * sizeof *x->vval), x->vrun = malloc((size_t)(x->n_c + 1) * sizeof *x->vrun);
    if (!x->tr || !x->ptr || !x->ids || !x->groups || !x->pid_u || !x->cid_u || !x->mask_b || !x->vval || !x->vrun)
        return tidal_fail(TIDAL_ERR_NOMEM, "debug step: out of memory");
    *newest = 0;
    for (int64_t i = 0; i < x->n_p; i++) x->pid_u[i] = (uint32_t)x->pid[i];
    for (int64_t i = 0; i < x->n_c; i++) {
        x->cid_u[i] = (uint32_t)x->cid[i], x->mask_b[i] = x->mask[i] != 0;
        if (!(x->ver[i] >= 0 && x->ver[i] < 1e15))
            return tidal_fail(TIDAL_ERR_INVALID, "%s: versions[%lld] = %g", path, (long long)i, x->ver[i]);
        if ((uint64_t)x->ver[i] > *newest) *newest = (uint64_t)x->ver[i];
    }
    uint64_t *v64 = malloc((size_t)(x->n_c + 1) * sizeof *v64);
    if (!v64) return tidal_fail(TIDAL_ERR_NOMEM, "debug step: out of memory");
    size_t runs_at = 0;
    for (int i = 0; i < x->n; i++) {
        Tidal__V1__Trajectory *r = &x->tr[i];
        tidal__v1__trajectory__init(r);
        const int c0 = x->coff[i], C = x->coff[i + 1] - c0;
        snprintf(x->ids[i], sizeof x->ids[i], "s%d", i);
        r->trajectory_id = x->ids[i];
        r->prompt_token_ids = x->pid_u + x->poff[i], r->n_prompt_token_ids = (size_t)(x->poff[i + 1] - x->poff[i]);
        r->completion_token_ids = x->cid_u + c0, r->n_completion_token_ids = (size_t)C;
        r->logprobs = x->lp + c0, r->n_logprobs = (size_t)C;
        r->loss_mask = x->mask_b + c0, r->n_loss_mask = (size_t)C;
        for (int k = 0; k < C; k++) v64[k] = (uint64_t)x->ver[c0 + k];
        const size_t nr = codec_versions_rle(v64, (size_t)C, x->vval + runs_at, x->vrun + runs_at);
        r->version_values = x->vval + runs_at, r->n_version_values = nr;
        r->version_runs = x->vrun + runs_at, r->n_version_runs = nr;
        runs_at += nr;
        r->min_version = C ? v64[0] : 0;
        for (int k = 1; k < C; k++)
            if (v64[k] < r->min_version) r->min_version = v64[k];
        r->reward = x->rew[i];
        r->temperature = x->temperature;
        x->ptr[i] = r;
    }
    free(v64);
    for (int g = 0; g < x->G; g++) {
        snprintf(x->groups[g].group_id, sizeof x->groups[g].group_id, "g%d", g);
        x->groups[g].n = x->goff[g + 1] - x->goff[g];
        x->groups[g].samples = x->ptr + x->goff[g];
    }
    return TIDAL_OK;
}

static tidal_status add_scalar(st_writer *w, const char *name, double v)
{
    const int64_t shape[1] = {1};
    return st_writer_add_raw(w, name, ST_F64, 1, shape, &v, sizeof v);
}

/* OUT: grad.<name> and param.<name> of every parameter after the step, and
 * the step's metrics r as F64 scalars. */
static tidal_status write_outputs(model *m, const trainer_step_result *r, const char *path)
{
    st_writer *w = NULL;
    tidal_status st = TIDAL_OK;
    size_t np = 0;
    const float *params = model_params(m, &np), *grads = model_grads(m, &np);
    TRY_GOTO(st_writer_new(&w));
    for (int i = 0; i < model_num_tensors(m); i++) {
        const model_tensor *mt = model_tensor_at(m, i);
        char name[160];
        snprintf(name, sizeof name, "grad.%s", mt->name);
        TRY_GOTO(st_writer_add_f32(w, name, ST_F32, mt->ndim, mt->shape, grads + mt->offset));
        snprintf(name, sizeof name, "param.%s", mt->name);
        TRY_GOTO(st_writer_add_f32(w, name, ST_F32, mt->ndim, mt->shape, params + mt->offset));
    }
    const struct { const char *name; double v; } mv[] = {
        {"loss", r->loss.loss}, {"policy_loss", r->loss.policy_loss}, {"kl_loss", r->loss.kl_loss},
        {"tokens", (double)r->loss.tokens}, {"clip_frac", r->loss.clip_frac}, {"masked_frac", r->loss.masked_frac},
        {"mismatch_k3", r->loss.mismatch_k3}, {"adv_mean", r->loss.adv_mean}, {"ref_kl", r->loss.ref_kl},
        {"entropy", r->entropy_mean}, {"kl_reward", r->kl_reward_mean}, {"overlong", r->overlong_mean},
        {"updates", r->updates}, {"grad_norm", r->grad_norm}, {"staleness_mean", r->staleness_mean},
    };
    for (size_t i = 0; i < sizeof mv / sizeof mv[0]; i++) TRY_GOTO(add_scalar(w, mv[i].name, mv[i].v));
    TRY_GOTO(st_writer_save(w, path));
cleanup:
    st_writer_free(w);
    return st;
}

int debug_step(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"ref", required_argument, 0, 'r'},
                                         {"input", required_argument, 0, 'i'}, {"out", required_argument, 0, 'o'},
                                         {"version", required_argument, 0, 'v'}, {"set", required_argument, 0, 's'},
                                         {"device", required_argument, 0, 'd'},  {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *device = "cpu";
    const char *model_dir = NULL, *ref_dir = NULL, *in_path = NULL, *out_path = NULL;
    const char *sets[MAX_SETS];
    int n_sets = 0;
    long long version = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'r': ref_dir = optarg; break;
        case 'i': in_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'v': version = atoll(optarg); break;
        case 'd': device = optarg; break;
        case 's':
            if (n_sets == MAX_SETS) {
                fprintf(stderr, "tidal debug step: more than %d --set\n", MAX_SETS);
                return EXIT_USAGE;
            }
            sets[n_sets++] = optarg;
            break;
        case 'h': fputs(step_usage, stdout); return 0;
        default: fputs(step_usage, stderr); return EXIT_USAGE;
        }
    }
    const bool on_cuda = !strcmp(device, "cuda");
    if (!model_dir || !in_path || !out_path || optind < argc || (!on_cuda && strcmp(device, "cpu") != 0)) {
        fputs(step_usage, stderr);
        return EXIT_USAGE;
    }
    if (on_cuda && trainer_device_cuda_available() != TIDAL_OK) { /* before any work */
        fprintf(stderr, "tidal debug step: --device cuda: %s\n", tidal_errmsg());
        return 1;
    }
    cpu_set_threads(0);
    static const char base[] = "job: {name: debug}\nenv: {name: strings}\ndata: {generator: strings}\n"
                               "model: {init: {layers: 1}}\n" /* the model itself comes from --model */
                               "trainer: {grad_clip: 0}\n";
    job_spec spec;
    model *m = NULL, *ref = NULL;
    adamw *opt = NULL;
    trainer_device *dev = NULL, *ref_dev = NULL;
    inputs x = {0};
    uint64_t newest = 0;
    trainer_step_cfg cfg;
    lr_schedule lrs;
    trainer_step_result r;
    size_t np = 0;
    int rc = EXIT_USAGE; /* a spec, model or input the caller got wrong */
    tidal_status st = TIDAL_OK;
    TRY_GOTO(spec_parse(base, strlen(base), "debug step", sets, n_sets, &spec));
    TRY_GOTO(trainer_step_cfg_from_spec(&spec, &cfg, &lrs));
    TRY_GOTO(model_load(model_dir, &m));
    if (ref_dir) TRY_GOTO(model_load(ref_dir, &ref));
    TRY_GOTO(read_inputs(in_path, &x, &newest));
    rc = 1;
    cfg.ref = ref;
    cfg.lr = lr_at(&lrs, 0);
    model_params(m, &np);
    const adamw_cfg ac = trainer_adamw_cfg_from_spec(&spec);
    TRY_GOTO(adamw_create(np, &ac, &opt));
    const buffer_batch batch = {.n_groups = x.G, .groups = x.groups};
    rc = EXIT_USAGE; /* a batch or configuration the step refuses */
    const trainer_device_kind kind = on_cuda ? TRAINER_DEVICE_CUDA : TRAINER_DEVICE_CPU;
    rc = 1;
    TRY_GOTO(trainer_device_create(kind, m, opt, &dev));
    if (ref && on_cuda) TRY_GOTO(trainer_device_create(kind, ref, NULL, &ref_dev));
    cfg.ref_device = ref_dev;
    rc = EXIT_USAGE;
    TRY_GOTO(trainer_step_on(dev, &batch, version >= 0 ? (uint64_t)version : newest, &cfg, &r, NULL));
    rc = 1;
    TRY_GOTO(trainer_device_sync_params(dev)); /* the outputs from the host model (no-ops on the CPU) */
    TRY_GOTO(trainer_device_sync_grads(dev));
    TRY_GOTO(write_outputs(m, &r, out_path));
    fprintf(stderr, "debug step: %d samples in %d groups, %d update(s), loss %.6g, grad norm %.6g\n", x.n, x.G,
            r.updates, r.loss.loss, r.grad_norm);
    rc = 0;
cleanup:
    if (rc != 0) fprintf(stderr, "tidal debug step: %s\n", tidal_errmsg());
    trainer_device_free(dev);
    trainer_device_free(ref_dev);
    inputs_free(&x);
    model_free(m);
    model_free(ref);
    adamw_free(opt);
    spec_release(&spec);
    return rc;
}
