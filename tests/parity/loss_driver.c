/* loss_driver.c - runs trainer/loss.c on a batch from a safetensors file, for test_loss_parity.py.
 *
 * usage: loss_driver IN.safetensors OUT.safetensors
 *
 * IN holds cu_seqlens (I32 [S+1]), logp, logp_prox, logp_beh and optionally
 * logp_ref (F32 [T]), mask (U8 [T]), adv and optionally staleness (F64 [S]);
 * its __metadata__ holds the config: loss, correction, agg, stale, m2po_set
 * (names; loss first: its defaults are loss_cfg_defaults_for(loss)),
 * dual_clip ("0"/"1") and the numbers eps_lo, eps_hi, dual_clip_c, tis_c,
 * mis_lo, mis_hi, sum_norm, kl_beta, stale_a, stale_b, m2po_tau (absent: the
 * default). OUT holds grad (F32 [T]) and every field of loss_result as an F64
 * scalar.
 *
 * Advantage mode: when IN holds `rewards` (F64 [n]) and `group_off` (I32
 * [G+1]), metadata `advantage` names the estimator, and OUT holds adv (F64
 * [n]) from adv_batch(); with `lengths` (F64 [n]) and metadata l_max, l_buf,
 * factor, OUT also holds overlong (F64 [n]) from adv_overlong_penalty().
 * Exit status 0, or 2 with the error on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"
#include "trainer/advantage.h"
#include "trainer/loss.h"

/* Tensor `name` of dtype want with n elements (n < 0: any), copied into a
 * fresh buffer (*out; NULL with TIDAL_OK when absent and optional). */
static tidal_status get(const st_file *f, const char *name, st_dtype want, int64_t n, int optional, void **out,
                        int64_t *count)
{
    *out = NULL;
    const st_tensor *t = st_find(f, name);
    if (!t) return optional ? TIDAL_OK : tidal_fail(TIDAL_ERR_INVALID, "input lacks tensor \"%s\"", name);
    if (t->dtype != want || (n >= 0 && st_numel(t) != n))
        return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\": %s with %lld elements, want %s with %lld", name,
                          st_dtype_name(t->dtype), (long long)st_numel(t), st_dtype_name(want), (long long)n);
    *out = malloc(t->nbytes ? t->nbytes : 1);
    if (!*out) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    memcpy(*out, t->data, t->nbytes);
    if (count) *count = st_numel(t);
    return TIDAL_OK;
}

static tidal_status num(const st_file *f, const char *key, double *v)
{
    const char *s = st_metadata(f, key);
    if (!s) return TIDAL_OK;
    char *end;
    *v = strtod(s, &end);
    if (end == s || *end) return tidal_fail(TIDAL_ERR_INVALID, "metadata %s = \"%s\" is not a number", key, s);
    return TIDAL_OK;
}

static tidal_status config(const st_file *f, loss_cfg *c)
{
    *c = loss_cfg_defaults();
    tidal_status st = TIDAL_OK;
    const char *s;
    loss_kind k = LOSS_PPO;
    if ((s = st_metadata(f, "loss")) && (st = loss_kind_parse(s, &k))) return st;
    *c = loss_cfg_defaults_for(k);
    if ((s = st_metadata(f, "m2po_set")) && (st = loss_m2po_set_parse(s, &c->m2po_set))) return st;
    if ((s = st_metadata(f, "correction")) && (st = loss_correction_parse(s, &c->correction))) return st;
    if ((s = st_metadata(f, "agg")) && (st = loss_agg_parse(s, &c->agg))) return st;
    if ((s = st_metadata(f, "stale")) && (st = loss_stale_parse(s, &c->stale))) return st;
    if ((s = st_metadata(f, "dual_clip"))) c->dual_clip = !strcmp(s, "1");
    if ((st = num(f, "eps_lo", &c->eps_lo)) || (st = num(f, "eps_hi", &c->eps_hi)) ||
        (st = num(f, "dual_clip_c", &c->dual_clip_c)) || (st = num(f, "tis_c", &c->tis_c)) ||
        (st = num(f, "mis_lo", &c->mis_lo)) || (st = num(f, "mis_hi", &c->mis_hi)) ||
        (st = num(f, "sum_norm", &c->sum_norm)) || (st = num(f, "kl_beta", &c->kl_beta)) ||
        (st = num(f, "stale_a", &c->stale_a)) || (st = num(f, "stale_b", &c->stale_b)) ||
        (st = num(f, "m2po_tau", &c->m2po_tau)))
        return st;
    return TIDAL_OK;
}

static tidal_status add_scalar(st_writer *w, const char *name, double v)
{
    const int64_t shape[1] = {1};
    return st_writer_add_raw(w, name, ST_F64, 1, shape, &v, sizeof v);
}

/* Advantage mode (see the top comment). */
static tidal_status run_adv(const st_file *f, const char *outp)
{
    void *r = NULL, *off = NULL, *len = NULL;
    double *adv = NULL, *pen = NULL;
    int64_t n = 0, G1 = 0;
    st_writer *w = NULL;
    adv_kind kind = ADV_GRPO;
    const char *s = st_metadata(f, "advantage");
    tidal_status st = s ? adv_kind_parse(s, &kind) : TIDAL_OK;
    if (!st) st = get(f, "rewards", ST_F64, -1, 0, &r, &n);
    if (!st) st = get(f, "group_off", ST_I32, -1, 0, &off, &G1);
    if (!st) st = get(f, "lengths", ST_F64, n, 1, &len, NULL);
    if (!st && (G1 < 2 || ((const int32_t *)off)[G1 - 1] != n))
        st = tidal_fail(TIDAL_ERR_INVALID, "group_off (%lld entries) does not end at %lld", (long long)G1, (long long)n);
    if (!st && !(adv = calloc((size_t)n + 1, sizeof *adv))) st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    if (!st) st = adv_batch(kind, r, off, (int)(G1 - 1), adv);
    if (!st) st = st_writer_new(&w);
    if (!st) st = st_writer_add_raw(w, "adv", ST_F64, 1, (const int64_t[1]){n}, adv, (size_t)n * sizeof *adv);
    if (!st && len) {
        double l_max = 0, l_buf = 0, factor = 1;
        if (!(st = num(f, "l_max", &l_max)) && !(st = num(f, "l_buf", &l_buf)) && !(st = num(f, "factor", &factor))) {
            if (!(pen = calloc((size_t)n + 1, sizeof *pen))) st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
            for (int64_t i = 0; !st && i < n; i++) pen[i] = adv_overlong_penalty(((double *)len)[i], l_max, l_buf, factor);
            if (!st) st = st_writer_add_raw(w, "overlong", ST_F64, 1, (const int64_t[1]){n}, pen, (size_t)n * sizeof *pen);
        }
    }
    if (!st) st = st_writer_save(w, outp);
    st_writer_free(w);
    free(r), free(off), free(len), free(adv), free(pen);
    return st;
}

static tidal_status run(const char *in, const char *outp)
{
    st_file *f = NULL;
    st_writer *w = NULL;
    void *cu = NULL, *lp = NULL, *lprox = NULL, *lbeh = NULL, *lref = NULL, *mask = NULL, *adv = NULL, *stale = NULL;
    float *grad = NULL;
    int64_t ncu = 0, T = 0;
    loss_cfg c;
    loss_result r = {0};
    tidal_status st = st_open(in, &f);
    if (!st && st_find(f, "rewards")) {
        st = run_adv(f, outp);
        st_close(f);
        return st;
    }
    if (!st) st = config(f, &c);
    if (!st) st = get(f, "cu_seqlens", ST_I32, -1, 0, &cu, &ncu);
    if (!st && ncu < 2) st = tidal_fail(TIDAL_ERR_INVALID, "cu_seqlens has %lld elements", (long long)ncu);
    if (!st) st = get(f, "logp", ST_F32, -1, 0, &lp, &T);
    if (!st) st = get(f, "logp_prox", ST_F32, T, 1, &lprox, NULL);
    if (!st) st = get(f, "logp_beh", ST_F32, T, 1, &lbeh, NULL);
    if (!st) st = get(f, "logp_ref", ST_F32, T, 1, &lref, NULL);
    if (!st) st = get(f, "mask", ST_U8, T, 0, &mask, NULL);
    if (!st) st = get(f, "adv", ST_F64, ncu - 1, 0, &adv, NULL);
    if (!st) st = get(f, "staleness", ST_F64, ncu - 1, 1, &stale, NULL);
    if (!st && ((const int32_t *)cu)[ncu - 1] != T)
        st = tidal_fail(TIDAL_ERR_INVALID, "cu_seqlens ends at %d, logp has %lld", ((const int32_t *)cu)[ncu - 1],
                        (long long)T);
    if (!st && !(grad = calloc((size_t)T + 1, sizeof *grad))) st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    if (!st) {
        loss_batch b = {.S = (int)(ncu - 1), .cu_seqlens = cu, .logp = lp, .logp_prox = lprox, .logp_beh = lbeh,
                        .logp_ref = lref, .mask = mask, .adv = adv, .staleness = stale};
        st = loss_compute(&c, &b, NULL, grad, &r);
    }
    if (!st) st = st_writer_new(&w);
    if (!st) st = st_writer_add_f32(w, "grad", ST_F32, 1, (const int64_t[1]){T}, grad);
    const struct { const char *name; double v; } m[] = {
        {"loss", r.loss},
        {"policy_loss", r.policy_loss},
        {"kl_loss", r.kl_loss},
        {"tokens", (double)r.tokens},
        {"seqs", (double)r.seqs},
        {"clip_frac", r.clip_frac},
        {"dual_clip_frac", r.dual_clip_frac},
        {"approx_kl", r.approx_kl},
        {"mismatch_k1", r.mismatch_k1},
        {"mismatch_k3", r.mismatch_k3},
        {"is_mean", r.is_mean},
        {"is_max", r.is_max},
        {"is_ess", r.is_ess},
        {"masked_frac", r.masked_frac},
        {"adv_mean", r.adv_mean},
        {"ref_kl", r.ref_kl},
        {"nonfinite", (double)r.nonfinite},
    };
    for (size_t i = 0; !st && i < sizeof m / sizeof m[0]; i++) st = add_scalar(w, m[i].name, m[i].v);
    if (!st) st = st_writer_save(w, outp);
    st_writer_free(w);
    st_close(f);
    free(cu), free(lp), free(lprox), free(lbeh), free(lref), free(mask), free(adv), free(stale), free(grad);
    return st;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: loss_driver IN.safetensors OUT.safetensors\n");
        return 2;
    }
    tidal_status st = run(argv[1], argv[2]);
    if (st) {
        fprintf(stderr, "loss_driver: %s: %s\n", tidal_status_name(st), tidal_errmsg());
        return 2;
    }
    return 0;
}
