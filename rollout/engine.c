/* engine.c - continuous batching and sampling on the CPU (see engine.h).
 *
 * State: a FIFO queue of requests, `slots` running sequences (one per KV
 * cache slot), a FIFO of finished results. A step:
 *   1. segments: each running sequence feeds its last sampled token; then
 *      queued requests fill free slots (lowest slot first) with their whole
 *      prompt while the step's token budget allows (at least one);
 *   2. one model_infer() over all segments -> last-token logits [S, V];
 *   3. each row is sampled (rows in parallel, each with its request's RNG and
 *      a per-thread scratch);
 *   4. in segment order: record token, logprob, flag, version; call on_token;
 *      finish (stop id, stop string, length), moving the sequence's arrays
 *      into a result and freeing its slot.
 * Admissions are committed only after model_infer succeeded, so a failed
 * step leaves the engine as it was.
 * With a backend (engine_backend.h: the GPU engine, rollout/engine_cuda.h),
 * steps 2 and 3 are the backend's; the rest is this file's, the same for
 * every device.
 */
#include "rollout/engine.h"
#include "rollout/engine_backend.h"

#include "kernels/cpu/softmax.h"
#include "base/hash.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_STEP_TOKENS 4096

/* A request, queued (slot = -1) or running (slot >= 0). */
typedef struct seq {
    uint64_t id;
    void *user;
    int32_t *prompt;
    int prompt_len;
    engine_sampling sp;
    float inv_temp;            /* (float)(1 / temperature), the trainer's scaling; 0 for greedy */
    int max_new;
    int32_t *stop_ids;
    int n_stop_ids;
    char **stop;               /* [n_stop] copies */
    size_t *stop_len;
    int n_stop;
    size_t stop_max;           /* longest stop string */
    uint64_t rng[4];           /* xoshiro256** */
    /* generated so far */
    int n, cap;
    int32_t *ids;
    float *lp;
    uint64_t *ver;
    bool *tr;
    /* decoded text: its length, and a window whose first tail_len bytes are
     * the text's last (stop_max - 1) bytes */
    size_t text_len;
    char *win;
    size_t win_cap, tail_len;
    int slot;
    struct seq *next;          /* queue link */
    /* this step's sample */
    int32_t s_tok;
    float s_lp;
    bool s_tr;
} seq;

typedef struct result_node {
    engine_result r;           /* first: engine_result_free casts back */
    struct result_node *next;
} result_node;

/* A candidate token of a truncated distribution. */
typedef struct cand {
    float z;
    int32_t id;
} cand;

struct engine {
    model *m;
    model_config cfg;
    uint64_t version;
    engine_options opt;
    model_kv *kv;              /* the CPU's cache; NULL with a backend */
    engine_backend be;         /* be.step NULL: the CPU engine */
    engine_segment *segs;      /* [slots]: the backend's view of a step */
    int32_t *b_tok;            /* [slots]: the backend's samples */
    float *b_lp;
    bool *b_tr;
    uint64_t next_id;
    seq **running;             /* [slots] */
    int n_running;
    seq *q_head, *q_tail;
    int n_queued;
    result_node *r_head, *r_tail;
    /* step buffers */
    int32_t *seg_slot;         /* [slots] */
    int32_t *cu;               /* [slots + 1] */
    int32_t *tokens;           /* [tok_cap] */
    size_t tok_cap;
    seq **seg_seq;             /* [slots] */
    float *logits;             /* [slots, V] */
    int n_threads;
    cand *scratch;             /* [n_threads, V] */
    float *terms;              /* [n_threads, V]: a row's exp terms, for the sampler's CDF */
    engine_stats stats;
};

const char *engine_finish_name(engine_finish f)
{
    switch (f) {
    case ENGINE_FINISH_STOP: return "stop";
    case ENGINE_FINISH_LENGTH: return "length";
    case ENGINE_FINISH_ABORT: return "abort";
    }
    return "unknown";
}

/* ------------------------------------------------------------ RNG */

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_uniform(uint64_t *s) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

/* ------------------------------------------------------------ sampling */

/* Row statistics are kernels/cpu/softmax's, the ones the trainer's head uses:
 * z_j = logits_j * scale in fp32, m = max z, se = sum_j expf(z_j - m) in
 * double, lse = m + log(se); so the same logits give the trainer's logprob to
 * the last bit. */

/* Sorted by z descending, then id ascending (a total order: deterministic). */
static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* true when x ranks below y (lower z, or equal z and higher id) */
static bool cand_worse(const cand *x, const cand *y) { return x->z < y->z || (x->z == y->z && x->id > y->id); }

/* Keep the k best of the row in c[0..k) (a min-heap on the rank), O(V log k). */
static void select_top_k(const float *logits, int V, float scale, int k, cand *c)
{
    for (int j = 0; j < V; j++) {
        cand x = {logits[j] * scale, j};
        if (j < k) { /* sift up */
            int i = j;
            c[i] = x;
            while (i > 0 && cand_worse(&c[i], &c[(i - 1) / 2])) {
                cand t = c[i];
                c[i] = c[(i - 1) / 2];
                c[(i - 1) / 2] = t;
                i = (i - 1) / 2;
            }
        } else if (cand_worse(&c[0], &x)) { /* replace the worst, sift down */
            int i = 0;
            c[0] = x;
            for (;;) {
                int l = 2 * i + 1, r = l + 1, w = i;
                if (l < k && cand_worse(&c[l], &c[w])) w = l;
                if (r < k && cand_worse(&c[r], &c[w])) w = r;
                if (w == i) break;
                cand t = c[i];
                c[i] = c[w];
                c[w] = t;
                i = w;
            }
        }
    }
}

/* Sample one token from a row of unscaled logits for sequence s (advancing
 * its RNG); c is scratch of V candidates, terms of V floats. */
static void sample_row(const float *logits, int V, seq *s, cand *c, float *terms)
{
    const engine_sampling *sp = &s->sp;
    if (sp->temperature == 0.0f) { /* greedy: the temperature-1 logprob of the argmax */
        int a;
        float m = cpu_row_max(logits, V, 1.0f, &a);
        double lse = (double)m + log(cpu_row_sumexp(logits, V, 1.0f, m, NULL));
        s->s_tok = a;
        s->s_lp = (float)((double)logits[a] - lse);
        s->s_tr = true;
        return;
    }
    const float sc = s->inv_temp;
    const bool top_k = sp->top_k > 0 && sp->top_k < V;
    const bool top_p = sp->top_p > 0.0f && sp->top_p < 1.0f;
    const bool min_p = sp->min_p > 0.0f;
    const bool full = !top_k && !top_p && !min_p;
    const float m = cpu_row_max(logits, V, sc, NULL);
    const double se = cpu_row_sumexp(logits, V, sc, m, full ? terms : NULL);
    const double lse = (double)m + log(se);
    const double u = next_uniform(s->rng);
    int tok = -1;
    bool truncated = false;

    if (full) { /* the full distribution: invert its CDF in id order */
        const double target = u * se;
        double acc = 0.0;
        int last_pos = 0;
        for (int j = 0; j < V; j++) {
            double e = (double)terms[j]; /* the terms of se, in order */
            if (e > 0.0) last_pos = j;
            acc += e;
            if (acc > target) {
                tok = j;
                break;
            }
        }
        if (tok < 0) tok = last_pos; /* unreachable: acc ends at se > target */
    } else {
        /* candidates, sorted best first; they hold every token that can survive */
        int nc = 0;
        if (top_k) {
            select_top_k(logits, V, sc, sp->top_k, c);
            nc = sp->top_k;
        } else {
            /* top-p: tokens with p < (1 - top_p) / (2V) together hold less than
             * (1 - top_p) / 2 of the mass, so the nucleus never needs them;
             * min-p alone: p_j >= min_p p_max is z_j >= m + log(min_p). */
            double lo = -INFINITY;
            if (top_p) lo = lse + log((1.0 - (double)sp->top_p) / (2.0 * V));
            if (min_p && !top_p) lo = (double)m + log((double)sp->min_p) - 1e-6; /* slack: the exact test is below */
            for (int j = 0; j < V; j++) {
                float z = logits[j] * sc;
                if ((double)z >= lo || z == m) c[nc++] = (cand){z, j};
            }
        }
        qsort(c, (size_t)nc, sizeof *c, cand_cmp);
        int keep = nc;
        if (top_p) { /* the smallest prefix whose mass reaches top_p of the (top-k) mass */
            double mass = 1.0;
            if (top_k) {
                mass = 0.0;
                for (int i = 0; i < nc; i++) mass += exp((double)c[i].z - lse);
            }
            const double thr = (double)sp->top_p * mass;
            double cum = 0.0;
            for (int i = 0; i < nc; i++) {
                cum += exp((double)c[i].z - lse);
                if (cum >= thr) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if (min_p) { /* p_i >= min_p * p_max; c[0] is the row's maximum */
            const double floor_ = (double)sp->min_p * exp((double)c[0].z - lse);
            int k = 1;
            while (k < keep && exp((double)c[k].z - lse) >= floor_) k++;
            keep = k;
        }
        double kept = 0.0;
        for (int i = 0; i < keep; i++) kept += exp((double)c[i].z - lse);
        const double target = u * kept;
        double acc = 0.0;
        tok = c[keep - 1].id;
        for (int i = 0; i < keep; i++) {
            acc += exp((double)c[i].z - lse);
            if (acc > target) {
                tok = c[i].id;
                break;
            }
        }
        truncated = keep < V;
    }
    s->s_tok = tok;
    s->s_lp = (float)((double)(logits[tok] * sc) - lse);
    s->s_tr = truncated;
}

/* ------------------------------------------------------------ requests */

static void seq_free(seq *s)
{
    if (!s) return;
    free(s->prompt);
    free(s->stop_ids);
    for (int i = 0; i < s->n_stop; i++) free(s->stop[i]);
    free(s->stop);
    free(s->stop_len);
    free(s->ids);
    free(s->lp);
    free(s->ver);
    free(s->tr);
    free(s->win);
    free(s);
}

static tidal_status check_request(const engine *e, const engine_request *r)
{
    const int V = e->cfg.vocab_size;
    const engine_sampling *sp = &r->sampling;
    if (!r->prompt || r->prompt_len < 1 || r->prompt_len >= e->opt.max_len)
        return tidal_fail(TIDAL_ERR_INVALID, "engine: prompt of %d tokens (need 1 .. max_len - 1 = %d)", r->prompt_len,
                          e->opt.max_len - 1);
    for (int i = 0; i < r->prompt_len; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "engine: prompt[%d] = %d out of range [0, %d)", i, r->prompt[i], V);
    if (r->max_new_tokens < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "engine: max_new_tokens = %d (need >= 1)", r->max_new_tokens);
    if (!(sp->temperature >= 0.0f) || !isfinite(sp->temperature) ||
        (sp->temperature > 0.0f && !isfinite(1.0f / sp->temperature)))
        return tidal_fail(TIDAL_ERR_INVALID, "engine: temperature = %g (need 0 for greedy, or > 0)",
                          (double)sp->temperature);
    if (sp->top_k < 0) return tidal_fail(TIDAL_ERR_INVALID, "engine: top_k = %d (need >= 0; 0 = off)", sp->top_k);
    if (!(sp->top_p >= 0.0f && sp->top_p <= 1.0f))
        return tidal_fail(TIDAL_ERR_INVALID, "engine: top_p = %g (need 0 .. 1; 0 or 1 = off)", (double)sp->top_p);
    if (!(sp->min_p >= 0.0f && sp->min_p <= 1.0f))
        return tidal_fail(TIDAL_ERR_INVALID, "engine: min_p = %g (need 0 .. 1; 0 = off)", (double)sp->min_p);
    if (r->n_stop_ids < 0 || (r->n_stop_ids > 0 && !r->stop_ids))
        return tidal_fail(TIDAL_ERR_INVALID, "engine: %d stop ids", r->n_stop_ids);
    for (int i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] < 0 || r->stop_ids[i] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "engine: stop_ids[%d] = %d out of range [0, %d)", i, r->stop_ids[i], V);
    if (r->n_stop_strings < 0 || (r->n_stop_strings > 0 && !r->stop_strings))
        return tidal_fail(TIDAL_ERR_INVALID, "engine: %d stop strings", r->n_stop_strings);
    if (r->n_stop_strings > 0 && !e->opt.token_bytes)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "engine: a request with stop strings, but the engine has no token_bytes callback");
    for (int i = 0; i < r->n_stop_strings; i++)
        if (!r->stop_strings[i] || !r->stop_strings[i][0])
            return tidal_fail(TIDAL_ERR_INVALID, "engine: stop_strings[%d] is empty", i);
    return TIDAL_OK;
}

/* Make room for one more generated token. */
static bool seq_grow(seq *s)
{
    if (s->n < s->cap) return true;
    int cap = s->cap ? s->cap * 2 : 64;
    if (cap > s->max_new) cap = s->max_new;
    int32_t *ids = realloc(s->ids, (size_t)cap * sizeof *ids);
    if (ids) s->ids = ids;
    float *lp = realloc(s->lp, (size_t)cap * sizeof *lp);
    if (lp) s->lp = lp;
    uint64_t *ver = realloc(s->ver, (size_t)cap * sizeof *ver);
    if (ver) s->ver = ver;
    bool *tr = realloc(s->tr, (size_t)cap * sizeof *tr);
    if (tr) s->tr = tr;
    if (!ids || !lp || !ver || !tr) return false;
    s->cap = cap;
    return true;
}

tidal_status engine_submit(engine *e, const engine_request *r, uint64_t *id)
{
    if (id) *id = 0;
    TRY(check_request(e, r));
    seq *s = calloc(1, sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory");
    s->user = r->user;
    s->prompt_len = r->prompt_len;
    s->sp = r->sampling;
    s->inv_temp = s->sp.temperature > 0.0f ? 1.0f / s->sp.temperature : 0.0f;
    s->max_new = r->max_new_tokens;
    s->slot = -1;
    s->prompt = malloc((size_t)r->prompt_len * sizeof *s->prompt);
    bool ok = s->prompt != NULL;
    if (ok) memcpy(s->prompt, r->prompt, (size_t)r->prompt_len * sizeof *s->prompt);
    if (ok && r->n_stop_ids > 0) {
        s->stop_ids = malloc((size_t)r->n_stop_ids * sizeof *s->stop_ids);
        ok = s->stop_ids != NULL;
        if (ok) {
            memcpy(s->stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof *s->stop_ids);
            s->n_stop_ids = r->n_stop_ids;
        }
    }
    if (ok && r->n_stop_strings > 0) {
        s->stop = calloc((size_t)r->n_stop_strings, sizeof *s->stop);
        s->stop_len = calloc((size_t)r->n_stop_strings, sizeof *s->stop_len);
        ok = s->stop && s->stop_len;
        for (int i = 0; ok && i < r->n_stop_strings; i++) {
            s->stop_len[i] = strlen(r->stop_strings[i]);
            s->stop[i] = malloc(s->stop_len[i] + 1);
            ok = s->stop[i] != NULL;
            if (ok) memcpy(s->stop[i], r->stop_strings[i], s->stop_len[i] + 1);
            s->n_stop = i + 1;
            if (s->stop_len[i] > s->stop_max) s->stop_max = s->stop_len[i];
        }
    }
    if (!ok) {
        seq_free(s);
        return tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory queueing a request");
    }
    uint64_t sm = s->sp.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64_next(&sm);
    s->id = ++e->next_id;
    if (e->q_tail) e->q_tail->next = s;
    else e->q_head = s;
    e->q_tail = s;
    e->n_queued++;
    if (id) *id = s->id;
    return TIDAL_OK;
}

/* ------------------------------------------------------------ results */

/* Move a sequence into a result (its arrays change owner), free the rest and
 * its slot. On out-of-memory for the node, the sequence is dropped and
 * the error returned. */
static tidal_status finish(engine *e, seq *s, engine_finish why, int stop_string, size_t stop_offset)
{
    if (s->slot >= 0) {
        if (e->be.step) e->be.release(e->be.impl, s->slot);
        else model_kv_reset(e->kv, s->slot);
        e->running[s->slot] = NULL;
        e->n_running--;
        s->slot = -1;
    }
    result_node *nd = calloc(1, sizeof *nd);
    if (!nd) {
        seq_free(s);
        return tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory finishing a request");
    }
    engine_result *r = &nd->r;
    r->id = s->id;
    r->user = s->user;
    r->finish = why;
    r->n = s->n;
    r->ids = s->ids;
    r->logprobs = s->lp;
    r->versions = s->ver;
    r->truncated = s->tr;
    r->stop_string = stop_string;
    r->stop_offset = stop_offset;
    r->prompt_len = s->prompt_len;
    s->ids = NULL;
    s->lp = NULL;
    s->ver = NULL;
    s->tr = NULL;
    seq_free(s);
    if (e->r_tail) e->r_tail->next = nd;
    else e->r_head = nd;
    e->r_tail = nd;
    e->stats.finished++;
    return TIDAL_OK;
}

engine_result *engine_next_result(engine *e)
{
    result_node *nd = e->r_head;
    if (!nd) return NULL;
    e->r_head = nd->next;
    if (!e->r_head) e->r_tail = NULL;
    nd->next = NULL;
    return &nd->r;
}

void engine_result_free(engine_result *r)
{
    if (!r) return;
    free(r->ids);
    free(r->logprobs);
    free(r->versions);
    free(r->truncated);
    free((result_node *)r);
}

/* ------------------------------------------------------------ lifecycle */

tidal_status engine_create(model *m, uint64_t version, const engine_options *o, engine **out)
{
    return engine_create_backend(m, version, o, NULL, out);
}

tidal_status engine_create_backend(model *m, uint64_t version, const engine_options *o, const engine_backend *b,
                                   engine **out)
{
    *out = NULL;
    const model_config *c = model_cfg(m);
    engine_backend be = {0};
    if (b) be = *b;
#define FAIL_FREEING_BACKEND(...)                        \
    do {                                                 \
        if (be.free) be.free(be.impl);                   \
        return tidal_fail(TIDAL_ERR_INVALID, __VA_ARGS__); \
    } while (0)
    if (o->slots < 1) FAIL_FREEING_BACKEND("engine: slots = %d (need >= 1)", o->slots);
    if (o->max_len < 2 || o->max_len > c->max_position_embeddings)
        FAIL_FREEING_BACKEND("engine: max_len = %d (need 2 .. max_position_embeddings = %d)", o->max_len,
                          c->max_position_embeddings);
    if (o->max_step_tokens < 0)
        FAIL_FREEING_BACKEND("engine: max_step_tokens = %d (need >= 0; 0 = %d)", o->max_step_tokens,
                          DEFAULT_STEP_TOKENS);
#undef FAIL_FREEING_BACKEND
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        if (be.free) be.free(be.impl);
        return tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory");
    }
    e->be = be;
    e->m = m;
    e->cfg = *c;
    e->version = version;
    e->opt = *o;
    if (!e->opt.max_step_tokens) e->opt.max_step_tokens = DEFAULT_STEP_TOKENS;
    const size_t slots = (size_t)o->slots, V = (size_t)c->vocab_size;
    e->tok_cap = (size_t)e->opt.max_step_tokens + slots + (size_t)o->max_len;
    e->n_threads = omp_get_max_threads();
    if (e->n_threads < 1) e->n_threads = 1;
    e->running = calloc(slots, sizeof *e->running);
    e->seg_slot = malloc(slots * sizeof *e->seg_slot);
    e->cu = malloc((slots + 1) * sizeof *e->cu);
    e->seg_seq = malloc(slots * sizeof *e->seg_seq);
    e->tokens = malloc(e->tok_cap * sizeof *e->tokens);
    e->logits = malloc(slots * V * sizeof *e->logits);
    e->scratch = malloc((size_t)e->n_threads * V * sizeof *e->scratch);
    e->terms = malloc((size_t)e->n_threads * V * sizeof *e->terms);
    tidal_status st = TIDAL_OK;
    if (!e->running || !e->seg_slot || !e->cu || !e->seg_seq || !e->tokens || !e->logits || !e->scratch ||
        !e->terms) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "cannot allocate step buffers for %d slots x %zu vocabulary", o->slots, V);
        goto cleanup;
    }
    if (e->be.step) {
        e->segs = calloc(slots, sizeof *e->segs);
        e->b_tok = malloc(slots * sizeof *e->b_tok);
        e->b_lp = malloc(slots * sizeof *e->b_lp);
        e->b_tr = malloc(slots * sizeof *e->b_tr);
        if (!e->segs || !e->b_tok || !e->b_lp || !e->b_tr) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "cannot allocate step buffers for %d slots", o->slots);
            goto cleanup;
        }
    } else {
        TRY_GOTO(model_kv_create(c, o->slots, o->max_len, &e->kv));
    }
    *out = e;
cleanup:
    if (st != TIDAL_OK) {
        engine_free(e);
        return tidal_wrap(st, "engine");
    }
    return TIDAL_OK;
}

void engine_free(engine *e)
{
    if (!e) return;
    for (seq *s = e->q_head, *nx; s; s = nx) {
        nx = s->next;
        seq_free(s);
    }
    if (e->running)
        for (int i = 0; i < e->opt.slots; i++) seq_free(e->running[i]);
    for (result_node *r = e->r_head, *nx; r; r = nx) {
        nx = r->next;
        engine_result_free(&r->r);
    }
    model_kv_free(e->kv);
    if (e->be.free) e->be.free(e->be.impl);
    free(e->segs);
    free(e->b_tok);
    free(e->b_lp);
    free(e->b_tr);
    free(e->running);
    free(e->seg_slot);
    free(e->cu);
    free(e->seg_seq);
    free(e->tokens);
    free(e->logits);
    free(e->scratch);
    free(e->terms);
    free(e);
}

tidal_status engine_set_model(engine *e, model *m, uint64_t version)
{
    const model_config *a = &e->cfg, *b = model_cfg(m);
#define SAME(field, fmt)                                                                                        \
    if (a->field != b->field)                                                                                   \
        return tidal_fail(TIDAL_ERR_INVALID, "engine: new weights have " #field " = " fmt ", the engine's " fmt, \
                          b->field, a->field)
    SAME(vocab_size, "%d");
    SAME(hidden_size, "%d");
    SAME(num_layers, "%d");
    SAME(num_heads, "%d");
    SAME(num_kv_heads, "%d");
    SAME(head_dim, "%d");
    SAME(intermediate_size, "%d");
    SAME(tie_word_embeddings, "%d");
    SAME(qkv_bias, "%d");
    SAME(o_bias, "%d");
    SAME(rope_theta, "%g");
    SAME(rms_norm_eps, "%g");
#undef SAME
    if (a->type != b->type)
        return tidal_fail(TIDAL_ERR_INVALID, "engine: new weights are of another model type (%s, the engine's %s)",
                          model_type_name(b->type), model_type_name(a->type));
    if (e->be.step) TRY_WRAP(e->be.set_model(e->be.impl, m), "engine: new weights (version %llu)", (unsigned long long)version);
    e->m = m;
    e->version = version;
    return TIDAL_OK;
}

uint64_t engine_version(const engine *e) { return e->version; }
int engine_num_running(const engine *e) { return e->n_running; }
int engine_num_queued(const engine *e) { return e->n_queued; }
engine_stats engine_get_stats(const engine *e) { return e->stats; }

tidal_status engine_abort(engine *e, uint64_t id)
{
    for (int i = 0; i < e->opt.slots; i++)
        if (e->running[i] && e->running[i]->id == id)
            return finish(e, e->running[i], ENGINE_FINISH_ABORT, -1, e->running[i]->text_len);
    for (seq *s = e->q_head, *prev = NULL; s; prev = s, s = s->next) {
        if (s->id != id) continue;
        if (prev) prev->next = s->next;
        else e->q_head = s->next;
        if (e->q_tail == s) e->q_tail = prev;
        e->n_queued--;
        s->next = NULL;
        return finish(e, s, ENGINE_FINISH_ABORT, -1, 0);
    }
    return tidal_fail(TIDAL_ERR_NOT_FOUND, "engine: abort: request %llu is not queued or running",
                      (unsigned long long)id);
}

/* ------------------------------------------------------------ stop strings */

/* Append token tok's bytes to the sequence's text and look for a stop string
 * that ends in them. Returns the index of the match with the earliest start
 * (then the lowest index), or -1; *offset receives its start in the text. */
static int stop_string_check(engine *e, seq *s, int32_t tok, size_t *offset, tidal_status *err)
{
    size_t len = 0;
    const char *b = e->opt.token_bytes(e->opt.token_bytes_ctx, tok, &len);
    if (!b) len = 0;
    const size_t before = s->text_len;
    s->text_len += len;
    if (s->n_stop == 0 || len == 0) return -1;
    size_t need = s->tail_len + len;
    if (need > s->win_cap) {
        size_t cap = need < 64 ? 64 : need * 2;
        char *w = realloc(s->win, cap);
        if (!w) {
            *err = tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory matching stop strings");
            return -1;
        }
        s->win = w;
        s->win_cap = cap;
    }
    memcpy(s->win + s->tail_len, b, len);
    const size_t wl = need, tl = s->tail_len;
    int hit = -1;
    size_t hit_pos = 0;
    /* a match must end among the new bytes: pos + L > tl */
    for (size_t pos = tl + 1 > s->stop_max ? tl + 1 - s->stop_max : 0; pos < wl && hit < 0; pos++) {
        for (int k = 0; k < s->n_stop; k++) {
            const size_t L = s->stop_len[k];
            if (pos + L > wl || pos + L <= tl) continue;
            if (!memcmp(s->win + pos, s->stop[k], L)) {
                hit = k;
                hit_pos = pos;
                break;
            }
        }
    }
    /* keep the last stop_max - 1 bytes */
    const size_t keep = s->stop_max - 1 < wl ? s->stop_max - 1 : wl;
    memmove(s->win, s->win + wl - keep, keep);
    s->tail_len = keep;
    if (hit >= 0) *offset = before - tl + hit_pos;
    return hit;
}

/* ------------------------------------------------------------ the step */

tidal_status engine_step(engine *e)
{
    const int V = e->cfg.vocab_size;
    int S = 0;
    size_t T = 0;
    /* decodes: every running sequence feeds its last token */
    for (int i = 0; i < e->opt.slots; i++) {
        seq *s = e->running[i];
        if (!s) continue;
        e->seg_slot[S] = i;
        e->seg_seq[S] = s;
        e->cu[S] = (int32_t)T;
        e->tokens[T++] = s->ids[s->n - 1];
        S++;
    }
    const int n_decode = S;
    /* prefills: queued requests into free slots, within the token budget */
    int n_admit = 0;
    seq *q = e->q_head;
    for (int i = 0; i < e->opt.slots && q; i++) {
        if (e->running[i]) continue;
        if (n_admit > 0 && T + (size_t)q->prompt_len > (size_t)e->opt.max_step_tokens) break;
        e->seg_slot[S] = i;
        e->seg_seq[S] = q;
        e->cu[S] = (int32_t)T;
        memcpy(e->tokens + T, q->prompt, (size_t)q->prompt_len * sizeof *e->tokens);
        T += (size_t)q->prompt_len;
        if (!e->be.step) model_kv_reset(e->kv, i);
        S++;
        n_admit++;
        q = q->next;
    }
    if (S == 0) return TIDAL_OK;
    e->cu[S] = (int32_t)T;

    if (e->be.step) {
        for (int k = 0; k < S; k++) {
            seq *s = e->seg_seq[k];
            const bool pre = k >= n_decode;
            e->segs[k] = (engine_segment){.slot = e->seg_slot[k], .tokens = e->tokens + e->cu[k],
                                          .n = e->cu[k + 1] - e->cu[k], .start = pre ? 0 : s->prompt_len + s->n - 1,
                                          .prefill = pre, .request = s->id, .index = s->n, .sp = &s->sp};
        }
        TRY_WRAP(e->be.step(e->be.impl, e->segs, S, e->b_tok, e->b_lp, e->b_tr, e->opt.on_token ? e->logits : NULL),
                 "engine step (%d decodes, %d prefills, %zu tokens)", n_decode, n_admit, T);
    } else {
        TRY_WRAP(model_infer(e->m, e->kv, S, e->seg_slot, e->cu, e->tokens, e->logits),
                 "engine step (%d decodes, %d prefills, %zu tokens)", n_decode, n_admit, T);
    }

    /* commit the admissions */
    for (int k = n_decode; k < S; k++) {
        seq *s = e->q_head;
        e->q_head = s->next;
        s->next = NULL;
        s->slot = e->seg_slot[k];
        e->running[s->slot] = s;
        e->n_running++;
        e->n_queued--;
    }
    if (!e->q_head) e->q_tail = NULL;
    e->stats.steps++;
    e->stats.decode_tokens += (uint64_t)n_decode;
    e->stats.prefill_tokens += (uint64_t)(T - (size_t)n_decode);

    /* sample every row; each sequence's RNG is its own, so rows are independent */
    const int nt = e->n_threads;
    if (e->be.step)
        for (int k = 0; k < S; k++) {
            e->seg_seq[k]->s_tok = e->b_tok[k];
            e->seg_seq[k]->s_lp = e->b_lp[k];
            e->seg_seq[k]->s_tr = e->b_tr[k];
        }
    else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (S > 1)
        for (int k = 0; k < S; k++) {
            int t = omp_get_thread_num();
            sample_row(e->logits + (size_t)k * V, V, e->seg_seq[k], e->scratch + (size_t)t * V,
                       e->terms + (size_t)t * V);
        }
    }

    /* record, stream, finish: every row, even after a failure (kept, the first one
     * returned), so no sequence is left half-recorded */
    tidal_status err = TIDAL_OK;
    for (int k = 0; k < S; k++) {
        seq *s = e->seg_seq[k];
        if (!seq_grow(s)) {
            if (err == TIDAL_OK) err = tidal_fail(TIDAL_ERR_NOMEM, "engine: out of memory recording a token");
            finish(e, s, ENGINE_FINISH_ABORT, -1, s->text_len);
            continue;
        }
        const int32_t tok = s->s_tok;
        s->ids[s->n] = tok;
        s->lp[s->n] = s->s_lp;
        s->ver[s->n] = e->version;
        s->tr[s->n] = s->s_tr;
        s->n++;
        e->stats.sampled_tokens++;

        engine_finish why = 0;
        int stop_k = -1;
        size_t stop_off = 0;
        for (int i = 0; i < s->n_stop_ids; i++)
            if (s->stop_ids[i] == tok) why = ENGINE_FINISH_STOP;
        if (e->opt.token_bytes) {
            tidal_status se = TIDAL_OK;
            stop_k = stop_string_check(e, s, tok, &stop_off, &se);
            if (se != TIDAL_OK && err == TIDAL_OK) err = se;
            if (stop_k >= 0) why = ENGINE_FINISH_STOP;
        }
        if (!why && (s->n >= s->max_new || s->prompt_len + s->n >= e->opt.max_len)) why = ENGINE_FINISH_LENGTH;
        if (stop_k < 0) stop_off = s->text_len;

        if (e->opt.on_token) {
            engine_token_event ev = {.request = s->id, .user = s->user, .index = s->n - 1, .token = tok,
                                     .logprob = s->s_lp, .truncated = s->s_tr, .version = e->version,
                                     .logits = e->logits + (size_t)k * V, .last = why != 0};
            e->opt.on_token(e->opt.on_token_ctx, &ev);
        }
        if (why) {
            tidal_status fs = finish(e, s, why, stop_k, stop_off);
            if (fs != TIDAL_OK && err == TIDAL_OK) err = fs;
        }
    }
    return err;
}
