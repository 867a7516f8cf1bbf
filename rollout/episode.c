/* episode.c - one group of episodes (see episode.h for the contract). */
#include "rollout/episode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "proto/codec.h"

typedef struct ep {
    int32_t *tok;         /* completion: generated and env tokens */
    float *lp;
    protobuf_c_boolean *mask;
    uint64_t *ver;
    int n, cap;
    int turns;
    double reward, gen_ms, env_ms;
    bool done;
    Tidal__V1__FinishReason finish;
    Tidal__V1__TrajectoryStatus status;
    char error[512];
    env_result last;      /* the last answer (metrics) */
    int turn_start;       /* where this turn's generated tokens begin */
    uint64_t req;         /* the engine request of the current turn; 0 when none */
    double turn_t0;       /* when it was submitted */
    void *user;           /* its back pointer (ep_ref), the request's user pointer */
} ep;

static void ep_free(ep *s)
{
    free(s->tok), free(s->lp), free(s->mask), free(s->ver);
    env_result_clear(&s->last);
}

/* Decoded bytes as valid UTF-8 (heap; NULL when out of memory): an invalid
 * sequence - a model can emit any bytes - becomes U+FFFD, as Hugging Face's
 * decode does. Protobuf strings (the env's action text, completion_text)
 * must be UTF-8, and other languages' decoders enforce it. */
static char *utf8_clean(const char *s, size_t n)
{
    char *out = malloc(3 * n + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k > 0 && cp != 0) {
            memcpy(o, s + i, (size_t)k), o += k, i += (size_t)k;
        } else {
            memcpy(o, "\xEF\xBF\xBD", 3), o += 3, i++;
        }
    }
    *o = '\0';
    return out;
}

/* Append one token (the arrays have room for the whole budget). */
static void put(ep *s, int32_t t, float lp, bool mask, uint64_t v)
{
    s->tok[s->n] = t, s->lp[s->n] = lp, s->mask[s->n] = mask, s->ver[s->n] = v;
    s->n++;
}

/* Score this turn's text; an env failure ends the sample. */
static void score_turn(env_client *env, tokenizer *tok, const episode_group *g, int idx, ep *s, generator *e,
                       bool budget_left)
{
    tok_bytes raw = {0};
    tidal_status st = tokenizer_decode(tok, s->tok + s->turn_start, (size_t)(s->n - s->turn_start), &raw);
    char *text = st == TIDAL_OK ? utf8_clean(raw.data ? raw.data : "", raw.len) : NULL;
    tok_bytes_free(&raw);
    char session[300];
    snprintf(session, sizeof session, "%s-%d", g->group_id, g->first_index + idx);
    env_call call = {.session = session, .op = ENV_OP_STEP, .task_json = g->task_json,
                     .action = text ? text : "",
                     .action_tokens = (const uint32_t *)(s->tok + s->turn_start),
                     .n_action_tokens = (size_t)(s->n - s->turn_start), .turn = (uint32_t)s->turns};
    const double t0 = tidal_clock_ms();
    env_result r = {0};
    st = env_client_call(env, &call, &r);
    s->env_ms += tidal_clock_ms() - t0;
    free(text);
    if (st != TIDAL_OK) {
        s->status = st == TIDAL_ERR_TIMEOUT ? TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_TIMEOUT
                                            : TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_ERROR;
        snprintf(s->error, sizeof s->error, "%s", tidal_errmsg());
        s->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_ERROR;
        s->reward = 0;
        s->done = true;
        return;
    }
    s->reward += r.reward;
    env_result_clear(&s->last);
    s->last = r;
    if (r.done) {
        s->done = true;
        if (g->max_turns > 1) s->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_ENV_DONE;
        return;
    }
    /* the observation joins the context, masked out, as far as the budget allows */
    tok_ids obs = {0};
    if (r.observation && *r.observation &&
        tokenizer_encode(tok, r.observation, strlen(r.observation), false, &obs) == TIDAL_OK)
        for (size_t i = 0; i < obs.n && s->n < g->max_tokens; i++) put(s, obs.ids[i], 0.0f, false, generator_version(e));
    tok_ids_free(&obs);
    if (!budget_left || s->n >= g->max_tokens || s->turns >= g->max_turns) {
        s->done = true;
        s->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    }
}

/* Encode sample idx as a Trajectory into out, with its id and length beside
 * it. On failure out holds nothing. */
static tidal_status encode(const episode_group *g, int idx, const ep *s, tokenizer *tok, episode_out *out)
{
    idx += g->first_index;
    snprintf(out->trajectory_id, sizeof out->trajectory_id, "%s-%d", g->group_id, idx);
    Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
    uint32_t *prompt = malloc((size_t)g->prompt_len * sizeof *prompt);
    uint64_t *vv = malloc((size_t)(s->n ? s->n : 1) * sizeof *vv);
    uint32_t *runs = malloc((size_t)(s->n ? s->n : 1) * sizeof *runs);
    Tidal__V1__Trajectory__RewardComponentsEntry ent[ENV_MAX_METRICS], *entp[ENV_MAX_METRICS];
    tok_bytes raw = {0};
    char *text = NULL;
    tidal_status st = TIDAL_OK;
    if (!prompt || !vv || !runs) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < g->prompt_len; i++) prompt[i] = (uint32_t)g->prompt[i];
    /* the text is a convenience for people reading trajectories: without it the sample still trains */
    if (tokenizer_decode(tok, s->tok, (size_t)s->n, &raw) == TIDAL_OK) text = utf8_clean(raw.data ? raw.data : "", raw.len);
    Tidal__V1__Timings tm = TIDAL__V1__TIMINGS__INIT;
    tm.generate_ms = s->gen_ms, tm.env_ms = s->env_ms, tm.total_ms = s->gen_ms + s->env_ms;
    t.schema_version = 1;
    t.trajectory_id = out->trajectory_id;
    t.prompt_id = (char *)g->prompt_id, t.group_id = (char *)g->group_id, t.worker_id = (char *)g->worker_id;
    t.sample_index = (uint32_t)idx, t.group_size = (uint32_t)g->group_size;
    t.n_prompt_token_ids = (size_t)g->prompt_len, t.prompt_token_ids = prompt;
    t.n_completion_token_ids = (size_t)s->n, t.completion_token_ids = (uint32_t *)s->tok;
    t.n_logprobs = (size_t)s->n, t.logprobs = s->lp;
    t.n_loss_mask = (size_t)s->n, t.loss_mask = s->mask;
    t.n_version_values = t.n_version_runs = codec_versions_rle(s->ver, (size_t)s->n, vv, runs);
    t.version_values = vv, t.version_runs = runs;
    t.reward = s->reward;
    for (int i = 0; i < s->last.n_metrics; i++) {
        ent[i] = (Tidal__V1__Trajectory__RewardComponentsEntry)TIDAL__V1__TRAJECTORY__REWARD_COMPONENTS_ENTRY__INIT;
        ent[i].key = (char *)s->last.metrics[i].name, ent[i].value = s->last.metrics[i].value;
        entp[i] = &ent[i];
    }
    t.n_reward_components = (size_t)s->last.n_metrics, t.reward_components = entp;
    t.finish_reason = s->finish, t.status = s->status;
    t.error = (char *)(s->error[0] ? s->error : "");
    t.timings = &tm;
    t.turns = (uint32_t)s->turns;
    t.min_version = g->min_version;
    t.eval = g->eval;
    t.temperature = g->sampling.temperature;
    t.completion_text = text ? text : (char *)"";
    if (g->tamper) g->tamper(g->hook_ctx, &t);
    TRY_GOTO(codec_encode(&t.base, &out->data, &out->len));
    out->completion_tokens = (uint64_t)s->n;
    out->reward = s->reward;
    out->status = s->status;
cleanup:
    tok_bytes_free(&raw);
    free(text);
    free(prompt), free(vv), free(runs);
    return st;
}

/* A sample's token arrays, room for the whole budget. */
static tidal_status ep_init(ep *s, int cap)
{
    s->cap = cap;
    s->tok = malloc((size_t)cap * sizeof *s->tok);
    s->lp = malloc((size_t)cap * sizeof *s->lp);
    s->mask = malloc((size_t)cap * sizeof *s->mask);
    s->ver = malloc((size_t)cap * sizeof *s->ver);
    s->status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    s->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_STOP;
    if (!s->tok || !s->lp || !s->mask || !s->ver) return tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- the batch */

/* One group in the batch: its samples, each with at most one engine request
 * (its current turn) in flight. */
typedef struct run {
    const episode_group *g;
    episode_out *out;
    ep *s;                /* [G] */
    int G;
    int done;             /* samples done */
    tidal_status st;      /* TIDAL_OK, or why the group failed */
    char why[1024];
    int32_t *ctx;         /* scratch: the longest context */
    struct run *next;
} run;

/* The sample's back pointer, the request's user pointer (the engine hands
 * back only that). A group that goes while a request of its is in flight
 * leaves the pointer behind with r = NULL (an orphan): the request's result,
 * if the generator still delivers one, is thrown away. */
typedef struct ep_ref {
    struct run *r;
    int i;
    struct ep_ref *next;  /* in the batch's orphans */
} ep_ref;

struct episode_batch {
    generator *e;
    tokenizer *tok;
    env_client *env;
    run *runs;            /* the groups in it, oldest first */
    ep_ref *orphans;
};

/* Abort r's requests in flight; their back pointers become orphans. Keeps
 * the caller's error message (engine_abort's "not found" for a request that
 * has just finished is expected here). */
static void detach(episode_batch *b, run *r)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", tidal_errmsg());
    for (int i = 0; r->s && i < r->G; i++) {
        if (!r->s[i].req) continue;
        (void)generator_abort(b->e, r->s[i].req);
        ep_ref *ref = r->s[i].user;
        ref->r = NULL;
        ref->next = b->orphans, b->orphans = ref;
        r->s[i].user = NULL, r->s[i].req = 0;
    }
    (void)tidal_fail(TIDAL_ERR_CANCELLED, "%s", why);
}

static void run_free(run *r)
{
    if (!r) return;
    for (int i = 0; r->s && i < r->G; i++) {
        free(r->s[i].user);
        ep_free(&r->s[i]);
    }
    free(r->s);
    free(r->ctx);
    free(r);
}

/* The group fails: its message kept, its outputs freed, its requests aborted. */
static void run_fail(episode_batch *b, run *r, tidal_status st)
{
    if (r->st != TIDAL_OK) return;
    r->st = st;
    snprintf(r->why, sizeof r->why, "%s", tidal_errmsg());
    for (int i = 0; i < r->G; i++) {
        free(r->out[i].data);
        r->out[i] = (episode_out){0};
    }
    detach(b, r);
}

/* Submit sample i's next turn: its context is the prompt and its completion
 * so far. The seed depends on the sample and the turn only, so a sample's
 * tokens do not depend on what else the engine runs. */
static tidal_status submit_sample(episode_batch *b, run *r, int i)
{
    const episode_group *g = r->g;
    ep *s = &r->s[i];
    const int stop[1] = {g->stop_id};
    const int turn = s->turns + 1;
    int room = g->max_tokens - s->n;
    if (g->max_turn_tokens > 0 && room > g->max_turn_tokens) room = g->max_turn_tokens;
    memcpy(r->ctx, g->prompt, (size_t)g->prompt_len * sizeof *r->ctx);
    memcpy(r->ctx + g->prompt_len, s->tok, (size_t)s->n * sizeof *r->ctx);
    engine_request rq = {.prompt = r->ctx, .prompt_len = g->prompt_len + s->n, .max_new_tokens = room,
                         .sampling = g->sampling, .stop_ids = g->stop_id >= 0 ? stop : NULL,
                         .n_stop_ids = g->stop_id >= 0, .user = s->user};
    rq.sampling.seed = g->sampling.seed + (uint64_t)(g->first_index + i) * 7919 + (uint64_t)turn * 104729;
    s->turn_start = s->n;
    s->turns = turn;
    s->turn_t0 = tidal_clock_ms();
    uint64_t id = 0;
    TRY(generator_submit(b->e, &rq, &id));
    s->req = id;
    return TIDAL_OK;
}

/* Request result res of group r's sample i: append it, let the env score the
 * turn, then submit the next turn or count the sample done; the group's last
 * sample encodes the group. A failure fails the group alone. */
static void take_result(episode_batch *b, run *r, int i, const engine_result *res)
{
    ep *x = &r->s[i];
    const episode_group *g = r->g;
    x->req = 0;
    if (r->st != TIDAL_OK) return;
    for (int k = 0; k < res->n && x->n < g->max_tokens; k++) put(x, res->ids[k], res->logprobs[k], true, res->versions[k]);
    x->gen_ms += tidal_clock_ms() - x->turn_t0;
    const bool budget_left = x->n < g->max_tokens; /* a turn cut at max_turn_tokens still continues */
    if (!budget_left) x->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    score_turn(b->env, b->tok, g, i, x, b->e, budget_left);
    if (!x->done && x->turns >= g->max_turns) x->done = true; /* no turn after the last */
    if (!x->done) {
        tidal_status st = submit_sample(b, r, i);
        if (st != TIDAL_OK) run_fail(b, r, st);
        return;
    }
    if (++r->done < r->G) return;
    for (int k = 0; k < r->G; k++) {
        tidal_status st = encode(g, k, &r->s[k], b->tok, &r->out[k]);
        if (st != TIDAL_OK) {
            run_fail(b, r, st);
            return;
        }
    }
}

/* Every finished request the generator holds goes to its sample. */
static void route_results(episode_batch *b)
{
    for (engine_result *res; (res = generator_next_result(b->e)); engine_result_free(res)) {
        ep_ref *ref = res->user;
        if (!ref) continue;
        if (ref->r) {
            take_result(b, ref->r, ref->i, res);
            continue;
        }
        for (ep_ref **l = &b->orphans; *l; l = &(*l)->next) /* an aborted request's last word */
            if (*l == ref) {
                *l = ref->next;
                free(ref);
                break;
            }
    }
}

tidal_status episode_batch_create(generator *e, tokenizer *tok, env_client *env, episode_batch **out)
{
    *out = NULL;
    if (generator_busy(e)) return tidal_fail(TIDAL_ERR_INVALID, "episode: the engine has requests of its own");
    episode_batch *b = calloc(1, sizeof *b);
    if (!b) return tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
    b->e = e, b->tok = tok, b->env = env;
    *out = b;
    return TIDAL_OK;
}

/* Unlink r and free it (its requests finished or detached). */
static void run_remove(episode_batch *b, run *r)
{
    for (run **l = &b->runs; *l; l = &(*l)->next)
        if (*l == r) {
            *l = r->next;
            break;
        }
    run_free(r);
}

void episode_batch_drop(episode_batch *b, const episode_group *g)
{
    if (!b) return;
    run *r = b->runs;
    while (r && r->g != g) r = r->next;
    if (!r) return;
    for (int i = 0; i < r->G; i++) {
        free(r->out[i].data);
        r->out[i] = (episode_out){0};
    }
    detach(b, r);
    run_remove(b, r);
}

void episode_batch_free(episode_batch *b)
{
    if (!b) return;
    while (b->runs) episode_batch_drop(b, b->runs->g);
    /* the aborted requests' results, thrown away */
    for (engine_result *res; (res = generator_next_result(b->e));) engine_result_free(res);
    while (b->orphans) {
        ep_ref *ref = b->orphans;
        b->orphans = ref->next;
        free(ref);
    }
    free(b);
}

tidal_status episode_batch_add(episode_batch *b, const episode_group *g, episode_out *out)
{
    const int G = g->count > 0 ? g->count : g->group_size - g->first_index;
    if (g->group_size < 1 || g->first_index < 0 || G < 1 || g->first_index + G > g->group_size || g->prompt_len < 1 ||
        g->max_tokens < 1 || g->max_turns < 1)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "episode %s: samples %d..%d of a group of %d, prompt %d tokens, max_tokens %d, max_turns %d",
                          g->group_id, g->first_index, g->first_index + G - 1, g->group_size, g->prompt_len,
                          g->max_tokens, g->max_turns);
    for (run *o = b->runs; o; o = o->next)
        if (o->g == g) return tidal_fail(TIDAL_ERR_INVALID, "episode %s: the group is in the batch already", g->group_id);
    for (int i = 0; i < G; i++) out[i] = (episode_out){0};
    tidal_status st = TIDAL_OK;
    run *r = calloc(1, sizeof *r);
    if (!r) return tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
    r->g = g, r->out = out, r->G = G;
    r->s = calloc((size_t)G, sizeof *r->s);
    r->ctx = malloc((size_t)(g->prompt_len + g->max_tokens) * sizeof *r->ctx);
    if (!r->s || !r->ctx) {
        run_free(r);
        return tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
    }
    for (int i = 0; i < G; i++) {
        TRY_GOTO(ep_init(&r->s[i], g->max_tokens));
        ep_ref *ref = calloc(1, sizeof *ref);
        if (!ref) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
            goto cleanup;
        }
        ref->r = r, ref->i = i;
        r->s[i].user = ref;
    }
    run **tail = &b->runs;
    while (*tail) tail = &(*tail)->next;
    *tail = r;
    for (int i = 0; i < G; i++)
        if ((st = submit_sample(b, r, i)) != TIDAL_OK) {
            episode_batch_drop(b, g); /* what was submitted is aborted; the message kept */
            return st;
        }
    return TIDAL_OK;
cleanup:
    run_free(r);
    return st;
}

tidal_status episode_batch_step(episode_batch *b)
{
    route_results(b); /* results that came before this step (a drop's, a generator's early ones) */
    if (generator_busy(b->e)) TRY(generator_step(b->e));
    route_results(b);
    return TIDAL_OK;
}

const episode_group *episode_batch_next_done(episode_batch *b, tidal_status *st)
{
    for (run *r = b->runs; r; r = r->next) {
        if (r->st == TIDAL_OK && r->done < r->G) continue;
        const episode_group *g = r->g;
        *st = r->st == TIDAL_OK ? TIDAL_OK : tidal_fail(r->st, "%s", r->why);
        run_remove(b, r);
        return g;
    }
    return NULL;
}

int episode_batch_samples(const episode_batch *b)
{
    int n = 0;
    for (const run *r = b->runs; r; r = r->next) n += r->G;
    return n;
}

int episode_batch_groups(const episode_batch *b)
{
    int n = 0;
    for (const run *r = b->runs; r; r = r->next) n++;
    return n;
}

tidal_status episode_run_group(generator *e, tokenizer *tok, env_client *env, const episode_group *g,
                               episode_out *out)
{
    episode_batch *b = NULL;
    if (generator_busy(e)) return tidal_fail(TIDAL_ERR_INVALID, "episode %s: the engine has requests of its own", g->group_id);
    TRY(episode_batch_create(e, tok, env, &b));
    tidal_status st = episode_batch_add(b, g, out);
    while (st == TIDAL_OK) {
        tidal_status done_st = TIDAL_OK;
        if (episode_batch_next_done(b, &done_st)) {
            st = done_st;
            break;
        }
        if (!generator_busy(e))
            st = tidal_fail(TIDAL_ERR_INVALID, "episode %s: the generator holds none of its requests", g->group_id);
        else st = episode_batch_step(b);
        if (st == TIDAL_OK && g->between_steps && generator_busy(e) && !g->between_steps(g->hook_ctx))
            st = tidal_fail(TIDAL_ERR_CANCELLED, "episode %s: abandoned", g->group_id);
    }
    episode_batch_drop(b, g); /* after a failure: its requests aborted, out[] zeroed; done: not in it */
    episode_batch_free(b);
    return st;
}
