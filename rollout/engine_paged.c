/* engine_paged.c - the paged engine's host side (see engine_paged.h). A step:
 *   1. each segment reserves its positions (a prefill its prompt, a decode
 *      one more); a prefill whose prompt equals an earlier prefill of the
 *      same step forks it instead (no rows of its own, the parent's last row
 *      its logits row, the partly filled last block copied after the step);
 *   2. rows: first the prompts of at most max_prefill tokens, each a run at
 *      positions 0 .. n-1 (the device's packed attention), then the other
 *      segments (decodes, longer prompts: its paged attention), each in
 *      segment order; out_rows[k] is segment k's last row wherever it went,
 *      so sampling keeps the segments' order;
 *   3. the device's step over the rows, logits of the segments' rows only;
 *   4. the forks' tail copies (before the next step writes);
 *   5. the device's sampler with each request's parameters, keyed on (seed,
 *      request id, token index).
 * A failure in 1 to 4 releases the step's prefills (their slots were empty),
 * so engine.c may retry the step.
 */
#include "rollout/engine_paged.h"

#include "rollout/engine_backend.h"
#include "rollout/kvpages.h"

#include <stdlib.h>
#include <string.h>

typedef struct paged {
    paged_device dev;
    kvpages *kv;
    paged_geometry g;
    size_t n_params;
    int32_t *tok, *seq, *pos;       /* [max_rows] */
    int32_t *out_rows;              /* [slots] */
    int32_t *cu;                    /* [slots + 1]: the prefill runs' rows */
    int32_t *c_src, *c_dst, *c_cnt; /* [slots]: this step's fork copies */
    int *fork_of;                   /* [slots]: segment k forks segment fork_of[k], or -1 */
    cuda_sample_params *sp;         /* [slots] */
    uint8_t *tr;                    /* [slots] */
} paged;

tidal_status paged_geometry_of(const engine_options *o, const engine_cuda_options *co, paged_geometry *out)
{
    const engine_cuda_options dflt = {0};
    if (!co) co = &dflt;
    const int bs = co->block_size ? co->block_size : 16, n_blocks = co->n_blocks;
    if (o->slots < 1 || o->max_len < 2 || o->max_step_tokens < 0 || bs < 1 || n_blocks < 0 || co->max_prefill < 0)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (paged): slots %d, max_len %d, max_step_tokens %d, block_size %d, "
                                             "n_blocks %d, max_prefill %d",
                          o->slots, o->max_len, o->max_step_tokens, bs, n_blocks, co->max_prefill);
    const int pf = co->max_prefill ? co->max_prefill : PAGED_MAX_PREFILL;
    out->max_prefill = pf < o->max_len ? pf : o->max_len;
    out->block_size = bs;
    out->max_blocks = (o->max_len + bs - 1) / bs;
    out->max_seqs = o->slots;
    out->n_blocks = n_blocks ? n_blocks : o->slots * out->max_blocks;
    /* the CPU engine's bound on a step: the budget, every decode, one prompt over it */
    out->max_rows = (o->max_step_tokens ? o->max_step_tokens : 4096) + o->slots + o->max_len;
    return TIDAL_OK;
}

static void pg_free(void *impl)
{
    paged *p = impl;
    if (!p) return;
    if (p->dev.free) p->dev.free(p->dev.impl);
    kvpages_free(p->kv);
    free(p->tok), free(p->seq), free(p->pos), free(p->out_rows), free(p->cu);
    free(p->c_src), free(p->c_dst), free(p->c_cnt), free(p->fork_of);
    free(p->sp), free(p->tr);
    free(p);
}

static void pg_release(void *impl, int slot) { kvpages_release(((paged *)impl)->kv, slot); }

static tidal_status pg_set_model(void *impl, model *m)
{
    paged *p = impl;
    size_t n = 0;
    const float *params = model_params(m, &n);
    if (n != p->n_params)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (paged): the model has %zu parameters, the device layout %zu", n,
                          p->n_params);
    return p->dev.set_params(p->dev.impl, params, n);
}

static void release_prefills(paged *p, const engine_segment *segs, int S)
{
    for (int k = 0; k < S; k++)
        if (segs[k].prefill) kvpages_release(p->kv, segs[k].slot);
}

/* Whether segment k is a prefill run: a whole prompt of its own rows (no
 * fork) within the packed attention's limit. */
static bool is_run(const paged *p, const engine_segment *sg, int k)
{
    return sg->prefill && sg->start == 0 && p->fork_of[k] < 0 && sg->n <= p->g.max_prefill;
}

/* Segment k's rows from row T on. */
static int put_rows(paged *p, const engine_segment *sg, int k, int T)
{
    for (int i = 0; i < sg->n; i++) {
        p->tok[T + i] = sg->tokens[i];
        p->seq[T + i] = sg->slot;
        p->pos[T + i] = sg->start + i;
    }
    p->out_rows[k] = T + sg->n - 1;
    return T + sg->n;
}

/* The rows of segments 0 .. S: positions reserved and forks made in segment
 * order; the runs' rows first (cu[0 .. *n_runs]), then the others'. */
static tidal_status plan_rows(paged *p, const engine_segment *segs, int S, int *T_out, int *n_runs, int *n_copy)
{
    int T = 0, nc = 0, nr = 0;
    for (int k = 0; k < S; k++) {
        const engine_segment *sg = &segs[k];
        p->fork_of[k] = -1;
        if (sg->prefill)
            for (int j = 0; j < k; j++)
                if (segs[j].prefill && p->fork_of[j] < 0 && segs[j].n == sg->n &&
                    !memcmp(segs[j].tokens, sg->tokens, (size_t)sg->n * sizeof *sg->tokens)) {
                    p->fork_of[k] = j;
                    break;
                }
        if (p->fork_of[k] >= 0) {
            kvpages_copy cp;
            TRY(kvpages_fork(p->kv, segs[p->fork_of[k]].slot, sg->slot, &cp));
            if (cp.n > 0) {
                p->c_src[nc] = cp.src, p->c_dst[nc] = cp.dst, p->c_cnt[nc] = cp.n;
                nc++;
            }
            continue;
        }
        if (T + sg->n > p->g.max_rows)
            return tidal_fail(TIDAL_ERR_INVALID, "engine (paged): a step of more than %d rows", p->g.max_rows);
        TRY(kvpages_reserve(p->kv, sg->slot, sg->start + sg->n));
        T += sg->n;
    }
    T = 0;
    p->cu[0] = 0;
    for (int k = 0; k < S; k++)
        if (is_run(p, &segs[k], k)) T = put_rows(p, &segs[k], k, T), p->cu[++nr] = T;
    for (int k = 0; k < S; k++)
        if (p->fork_of[k] < 0 && !is_run(p, &segs[k], k)) T = put_rows(p, &segs[k], k, T);
    for (int k = 0; k < S; k++) /* a fork's parent is no fork: its row is set */
        if (p->fork_of[k] >= 0) p->out_rows[k] = p->out_rows[p->fork_of[k]];
    *T_out = T;
    *n_runs = nr;
    *n_copy = nc;
    return TIDAL_OK;
}

static tidal_status pg_step(void *impl, const engine_segment *segs, int S, int32_t *token, float *logprob,
                           bool *truncated, float *logits)
{
    paged *p = impl;
    int T = 0, nr = 0, nc = 0;
    tidal_status st = plan_rows(p, segs, S, &T, &nr, &nc);
    if (st == TIDAL_OK)
        st = p->dev.step(p->dev.impl, p->tok, p->seq, p->pos, T, p->cu, nr, kvpages_table(p->kv), p->out_rows, S);
    if (st == TIDAL_OK) st = p->dev.copy_blocks(p->dev.impl, p->c_src, p->c_dst, p->c_cnt, nc);
    if (st != TIDAL_OK) {
        release_prefills(p, segs, S);
        return st;
    }
    for (int k = 0; k < S; k++) {
        const engine_sampling *sp = segs[k].sp;
        p->sp[k] = (cuda_sample_params){.temperature = sp->temperature, .top_p = sp->top_p, .min_p = sp->min_p,
                                        .top_k = sp->top_k, .seed = sp->seed, .sequence = segs[k].request,
                                        .step = (uint32_t)segs[k].index};
    }
    /* the cache holds the step from here: a failure is the device's, not undone */
    TRY(p->dev.sample(p->dev.impl, p->sp, S, token, logprob, p->tr, logits));
    for (int k = 0; k < S; k++) truncated[k] = p->tr[k] != 0;
    return TIDAL_OK;
}

tidal_status engine_paged_create(model *m, uint64_t version, const engine_options *o, const paged_geometry *g,
                                 const paged_device *dev, engine **out)
{
    *out = NULL;
    tidal_status st = TIDAL_OK;
    paged *p = calloc(1, sizeof *p);
    if (!p) {
        if (dev->free) dev->free(dev->impl);
        return tidal_fail(TIDAL_ERR_NOMEM, "engine (paged): out of memory");
    }
    p->dev = *dev;
    p->g = *g;
    const model_config *c = model_cfg(m);
    model_params(m, &p->n_params);
    const size_t R = (size_t)g->max_rows, Sl = (size_t)o->slots;
    (void)c;
    p->tok = malloc(R * 4), p->seq = malloc(R * 4), p->pos = malloc(R * 4), p->out_rows = malloc(Sl * 4);
    p->cu = malloc((Sl + 1) * 4);
    p->c_src = malloc(Sl * 4), p->c_dst = malloc(Sl * 4), p->c_cnt = malloc(Sl * 4);
    p->fork_of = malloc(Sl * sizeof *p->fork_of);
    p->sp = malloc(Sl * sizeof *p->sp), p->tr = malloc(Sl);
    if (!p->tok || !p->seq || !p->pos || !p->out_rows || !p->cu || !p->c_src || !p->c_dst || !p->c_cnt || !p->fork_of ||
        !p->sp || !p->tr) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "engine (paged): out of memory for step arrays of %zu rows", R);
        goto cleanup;
    }
    TRY_GOTO(kvpages_create(g->n_blocks, g->block_size, g->max_seqs, g->max_blocks, &p->kv));
    TRY_GOTO(pg_set_model(p, m));
    const engine_backend be = {.impl = p, .step = pg_step, .release = pg_release, .set_model = pg_set_model,
                               .free = pg_free};
    p = NULL; /* the engine owns it from here, also when creation fails */
    st = engine_create_backend(m, version, o, &be, out);
cleanup:
    pg_free(p);
    return st;
}
