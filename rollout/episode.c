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
    uint64_t req;         /* the engine request of the current turn */
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

/* Submit turn `turn` of every sample not done yet: its context is the prompt
 * and its completion so far (ctx is scratch for the longest). *submitted
 * counts the requests; 0 means the group is done. */
static tidal_status submit_turn(generator *e, const episode_group *g, ep *s, int G, int32_t *ctx, int turn,
                                int *submitted)
{
    const int stop[1] = {g->stop_id};
    *submitted = 0;
    for (int i = 0; i < G; i++) {
        if (s[i].done) continue;
        const int ctx_len = g->prompt_len + s[i].n;
        int room = g->max_tokens - s[i].n;
        if (g->max_turn_tokens > 0 && room > g->max_turn_tokens) room = g->max_turn_tokens;
        memcpy(ctx, g->prompt, (size_t)g->prompt_len * sizeof *ctx);
        memcpy(ctx + g->prompt_len, s[i].tok, (size_t)s[i].n * sizeof *ctx);
        engine_request rq = {.prompt = ctx, .prompt_len = ctx_len, .max_new_tokens = room,
                             .sampling = g->sampling, .stop_ids = g->stop_id >= 0 ? stop : NULL,
                             .n_stop_ids = g->stop_id >= 0, .user = &s[i]};
        rq.sampling.seed = g->sampling.seed + (uint64_t)(g->first_index + i) * 7919 + (uint64_t)turn * 104729;
        s[i].turn_start = s[i].n;
        s[i].turns = turn;
        TRY(generator_submit(e, &rq, &s[i].req));
        (*submitted)++;
    }
    return TIDAL_OK;
}

/* Step the engine until the turn's requests are finished (the caller's hook
 * runs between steps and may abandon the group: TIDAL_ERR_CANCELLED), then
 * append each completion and let the env score it. */
static tidal_status finish_turn(generator *e, tokenizer *tok, env_client *env, const episode_group *g, ep *s)
{
    const double t0 = tidal_clock_ms();
    while (generator_busy(e)) {
        TRY(generator_step(e));
        if (g->between_steps && generator_busy(e) && !g->between_steps(g->hook_ctx))
            return tidal_fail(TIDAL_ERR_CANCELLED, "episode %s: abandoned", g->group_id);
    }
    const double gen = tidal_clock_ms() - t0;
    for (engine_result *r; (r = generator_next_result(e)); engine_result_free(r)) {
        ep *x = r->user;
        for (int k = 0; k < r->n && x->n < g->max_tokens; k++) put(x, r->ids[k], r->logprobs[k], true, r->versions[k]);
        x->gen_ms += gen;
        const bool budget_left = x->n < g->max_tokens; /* a turn cut at max_turn_tokens still continues */
        if (!budget_left) x->finish = TIDAL__V1__FINISH_REASON__FINISH_REASON_LENGTH;
        score_turn(env, tok, g, (int)(x - s), x, e, budget_left);
    }
    return TIDAL_OK;
}

/* After a failure: leave the engine as it came - nothing queued, running or
 * finished. Requests that already finished are not found by engine_abort,
 * which is expected here, so the failure's message is kept. */
static void leave_engine(generator *e, const ep *s, int G, tidal_status st)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", tidal_errmsg());
    for (int i = 0; i < G; i++)
        if (s[i].req) (void)generator_abort(e, s[i].req);
    for (engine_result *r; (r = generator_next_result(e));) engine_result_free(r);
    tidal_fail(st, "%s", why);
}

tidal_status episode_run_group(generator *e, tokenizer *tok, env_client *env, const episode_group *g,
                               episode_out *out)
{
    const int G = g->count > 0 ? g->count : g->group_size - g->first_index;
    if (g->group_size < 1 || g->first_index < 0 || G < 1 || g->first_index + G > g->group_size || g->prompt_len < 1 ||
        g->max_tokens < 1 || g->max_turns < 1)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "episode %s: samples %d..%d of a group of %d, prompt %d tokens, max_tokens %d, max_turns %d",
                          g->group_id, g->first_index, g->first_index + G - 1, g->group_size, g->prompt_len,
                          g->max_tokens, g->max_turns);
    if (generator_busy(e)) return tidal_fail(TIDAL_ERR_INVALID, "episode %s: the engine has requests of its own", g->group_id);
    for (int i = 0; i < G; i++) out[i] = (episode_out){0};
    tidal_status st = TIDAL_OK;
    ep *s = calloc((size_t)G, sizeof *s);
    int32_t *ctx = malloc((size_t)(g->prompt_len + g->max_tokens) * sizeof *ctx);
    if (!s || !ctx) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "episode: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < G; i++) TRY_GOTO(ep_init(&s[i], g->max_tokens));
    for (int turn = 1; turn <= g->max_turns; turn++) {
        int submitted = 0;
        TRY_GOTO(submit_turn(e, g, s, G, ctx, turn, &submitted));
        if (!submitted) break;
        TRY_GOTO(finish_turn(e, tok, env, g, s));
    }
    for (int i = 0; i < G; i++) TRY_GOTO(encode(g, i, &s[i], tok, &out[i]));
cleanup:
    if (st != TIDAL_OK) {
        if (s) leave_engine(e, s, G, st);
        for (int i = 0; i < G; i++) free(out[i].data), out[i] = (episode_out){0};
    }
    for (int i = 0; s && i < G; i++) ep_free(&s[i]);
    free(s);
    free(ctx);
    return st;
}
