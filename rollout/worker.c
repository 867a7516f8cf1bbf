/* worker.c - the rollout worker loop (worker.h). */
#include "rollout/worker.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "job/jobmodel.h"
#include "job/spec.h"
#include "envs/client.h"
#include "proto/codec.h"
#include "base/hash.h"
#include "job/names.h"
#include "rollout/engine.h"
#include "rollout/episode.h"
#include "rollout/weights.h"

#define PROMPT_CAP_TOKENS 1024 /* the longest rendered prompt the engine's cache is sized for */
#define HEARTBEAT_MS 1000
#define STATE_POLL_MS 1000

typedef struct worker {
    const worker_opts *o;
    char id[192], host[128];
    tidal_bus *bus;
    job_names names;
    job_spec spec;
    bus_kv *kv, *workers;
    bus_sub *prompts, *ctl;
    tokenizer *tok;
    int32_t stop_id;
    model_config cfg;
    weights_client *wc;
    model *m;                   /* the engine's model; in oldest mode one of hist_m */
    uint64_t version;
    /* rollout.weights oldest: the versions received, oldest first, so a prompt
     * is generated with the oldest one its min_version allows */
    bool oldest;
    model **hist_m;
    uint64_t *hist_v;
    int n_hist, hist_cap;
    engine *e;
    env_client *env;
    int max_len;
    int max_turns;              /* env.config.max_turns, else 16 */
    /* set by the control handler (another thread) */
    volatile sig_atomic_t ctl_stop, ctl_drain, ctl_pause;
    /* the prompt being worked on, for the hook */
    bus_msg *cur;
    bool cur_eval;
    double last_progress_ms, last_beat_ms, last_state_ms;
    int state;
    uint64_t started_ms, trajectories, errors, rejected, redelivered, groups;
    uint64_t tokens_mark;
    double tokens_mark_ms, tokens_per_s;
    double publish_ms;          /* the last group's publication and ack (a unit of --slowdown) */
} worker;

static bool leaving(const worker *w) { return (w->o->stop && *w->o->stop) || w->ctl_stop; }

/* ---------------------------------------------------------------- heartbeat */

static void heartbeat(worker *w, bool force)
{
    const double t = tidal_clock_ms();
    if (!force && t - w->last_beat_ms < HEARTBEAT_MS) return;
    if (w->e) {
        engine_stats es = engine_get_stats(w->e);
        if (w->tokens_mark_ms > 0 && t > w->tokens_mark_ms) {
            const double rate = (double)(es.sampled_tokens - w->tokens_mark) * 1e3 / (t - w->tokens_mark_ms);
            w->tokens_per_s = w->tokens_per_s > 0 ? 0.7 * w->tokens_per_s + 0.3 * rate : rate;
        }
        w->tokens_mark = es.sampled_tokens, w->tokens_mark_ms = t;
    }
    w->last_beat_ms = t;
    if (!w->workers) return;
    Tidal__V1__WorkerStatus s = TIDAL__V1__WORKER_STATUS__INIT;
    s.schema_version = 1;
    s.worker_id = w->id, s.host = w->host, s.pid = (uint32_t)getpid();
    s.state = (Tidal__V1__WorkerState)w->state;
    s.weights_version = w->version;
    s.prompts_in_flight = w->cur ? 1 : 0;
    s.tokens_per_s = w->tokens_per_s;
    s.backend = "builtin", s.device = "cpu";
    s.started_unix_ms = w->started_ms, s.updated_unix_ms = tidal_unix_ms();
    s.capacity = 1;
    s.trajectories = w->trajectories, s.errors = w->errors, s.rejected = w->rejected;
    s.redelivered = w->redelivered;
    void *buf = NULL;
    size_t len = 0;
    if (codec_encode(&s.base, &buf, &len) == TIDAL_OK && bus_kv_put(w->workers, w->id, buf, len, NULL) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "worker %s: heartbeat: %s", w->id, tidal_errmsg());
    free(buf);
}

/* ---------------------------------------------------------------- control */

static void on_control(tidal_bus *b, bus_msg *m, void *closure)
{
    (void)b;
    worker *w = closure;
    Tidal__V1__Control *c = NULL;
    if (codec_decode_control(bus_msg_data(m), (size_t)bus_msg_len(m), &c) != TIDAL_OK) {
        tidal_log(TIDAL_LOG_WARN, "worker %s: %s: %s", w->id, bus_msg_subject(m), tidal_errmsg());
        w->rejected++;
    } else if (!*c->target || !strcmp(c->target, "rollout") || !strcmp(c->target, w->id)) {
        switch (c->command) {
        case TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_STOP: w->ctl_stop = 1; break;
        case TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_DRAIN: w->ctl_drain = 1; break;
        case TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_PAUSE: w->ctl_pause = 1; break;
        case TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_RESUME: w->ctl_pause = 0; break;
        default: break;
        }
        tidal_log(TIDAL_LOG_INFO, "worker %s: control %d from %s (%s)", w->id, (int)c->command, c->issuer,
                  c->reason);
    }
    if (c) tidal__v1__control__free_unpacked(c, NULL);
    bus_msg_destroy(m);
}

/* The job's state key says "done": nothing more to do. */
static bool job_done(worker *w)
{
    const double t = tidal_clock_ms();
    if (t - w->last_state_ms < STATE_POLL_MS) return false;
    w->last_state_ms = t;
    void *v = NULL;
    size_t n = 0;
    bool done = bus_kv_get(w->kv, JOB_KEY_STATE, &v, &n, NULL) == TIDAL_OK && n == 4 && !memcmp(v, "done", 4);
    free(v);
    return done;
}

/* ---------------------------------------------------------------- weights */

/* oldest mode: keep model nm of version v (newest last); beyond the cap the
 * oldest ones go, never the engine's. */
static void hist_push(worker *w, model *nm, uint64_t v)
{
    w->hist_m[w->n_hist] = nm, w->hist_v[w->n_hist] = v, w->n_hist++;
    for (int i = 0; w->n_hist > w->hist_cap && i < w->n_hist;) {
        if (w->hist_m[i] == w->m) {
            i++;
            continue;
        }
        model_free(w->hist_m[i]);
        memmove(w->hist_m + i, w->hist_m + i + 1, (size_t)(w->n_hist - i - 1) * sizeof *w->hist_m);
        memmove(w->hist_v + i, w->hist_v + i + 1, (size_t)(w->n_hist - i - 1) * sizeof *w->hist_v);
        w->n_hist--;
    }
}

/* Make nm (version v) the engine's model. The previous one is freed unless
 * the history holds it. */
static tidal_status use_model(worker *w, model *nm, uint64_t v)
{
    if (nm == w->m) return TIDAL_OK;
    tidal_status st = engine_set_model(w->e, nm, v);
    if (st != TIDAL_OK) return st;
    if (!w->oldest) model_free(w->m);
    w->m = nm;
    w->version = v;
    return TIDAL_OK;
}

/* Newest mode: swap in the newest weights there are (between decode steps, or
 * before a prompt). Oldest mode: only collect them into the history. */
static void take_newer_weights(worker *w)
{
    for (;;) {
        uint64_t v = 0;
        const uint64_t have = w->oldest && w->n_hist ? w->hist_v[w->n_hist - 1] : w->version;
        model *nm = weights_client_take(w->wc, have, &v);
        if (!nm) return;
        if (w->oldest) {
            hist_push(w, nm, v);
            continue;
        }
        if (use_model(w, nm, v) != TIDAL_OK) {
            tidal_log(TIDAL_LOG_WARN, "worker %s: weights v%llu: %s", w->id, (unsigned long long)v, tidal_errmsg());
            model_free(nm);
        }
        return;
    }
}

/* Keep the prompt alive while a long wait or group goes on. */
static void keep_alive(worker *w)
{
    const double t = tidal_clock_ms();
    if (w->cur && t - w->last_progress_ms > (double)w->spec.rollout.ack_wait_ms / 4) {
        bus_in_progress(w->cur);
        w->last_progress_ms = t;
    }
    heartbeat(w, false);
}

static bool between_steps(void *ctx, engine *e)
{
    (void)e;
    worker *w = ctx;
    if (!w->cur_eval || w->oldest) take_newer_weights(w); /* in-flight update: later tokens carry the new version */
    keep_alive(w);
    return !leaving(w);
}

/* Wait for weights >= min_version (the prompt stays alive meanwhile). In
 * oldest mode the oldest received version >= min_version is used. */
static tidal_status sync_to(worker *w, uint64_t min_version)
{
    take_newer_weights(w);
    for (int i = 0; w->oldest && i < w->n_hist; i++)
        if (w->hist_v[i] >= min_version) return use_model(w, w->hist_m[i], w->hist_v[i]);
    if (!w->oldest && w->version >= min_version) return TIDAL_OK;
    w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_SYNCING;
    heartbeat(w, true);
    while (!leaving(w)) {
        model *nm = NULL;
        uint64_t v = 0;
        tidal_status st = weights_client_wait(w->wc, min_version, 200, &nm, &v);
        if (st == TIDAL_OK) {
            if (w->oldest) hist_push(w, nm, v);
            if ((st = use_model(w, nm, v)) != TIDAL_OK && !w->oldest) model_free(nm);
            return st;
        }
        if (st != TIDAL_ERR_TIMEOUT) return st;
        keep_alive(w);
    }
    return tidal_fail(TIDAL_ERR_CANCELLED, "worker %s: leaving while waiting for weights v%llu", w->id,
                      (unsigned long long)min_version);
}

/* ---------------------------------------------------------------- one prompt */

/* Reject a message that is not a usable prompt: it is never redelivered. */
static void reject(worker *w, bus_msg *m, const char *why)
{
    tidal_log(TIDAL_LOG_WARN, "worker %s: rejected a message on %s: %s", w->id, bus_msg_subject(m), why);
    w->rejected++;
    bus_term(m);
    bus_msg_destroy(m);
    heartbeat(w, true); /* the count reaches the controller's summary even if the job ends now */
}

static int max_turns_of(const job_spec *s)
{
    int turns = 16;
    json_t *cfg = s->env.config_json ? json_loads(s->env.config_json, 0, NULL) : NULL;
    json_t *mt = cfg ? json_object_get(cfg, "max_turns") : NULL;
    if (json_is_integer(mt) && json_integer_value(mt) >= 1 && json_integer_value(mt) <= 1024)
        turns = (int)json_integer_value(mt);
    json_decref(cfg);
    return turns;
}

/* Generate, publish and ack one prompt message m (consumed here). */
static tidal_status serve_prompt(worker *w, bus_msg *m)
{
    Tidal__V1__Prompt *p = NULL;
    if (codec_decode_prompt(bus_msg_data(m), (size_t)bus_msg_len(m), &p) != TIDAL_OK) {
        reject(w, m, tidal_errmsg());
        return TIDAL_OK;
    }
    tok_ids ids = {0};
    tidal_status st = TIDAL_OK;
    if (p->n_token_ids) {
        for (size_t i = 0; i < p->n_token_ids && st == TIDAL_OK; i++)
            if (p->token_ids[i] >= (uint32_t)w->cfg.vocab_size)
                st = tidal_fail(TIDAL_ERR_INVALID, "token_ids[%zu] = %u outside the vocabulary of %d", i,
                                p->token_ids[i], w->cfg.vocab_size);
    } else {
        st = tokenizer_encode(w->tok, p->text, strlen(p->text), false, &ids);
    }
    const int plen = p->n_token_ids ? (int)p->n_token_ids : (int)ids.n;
    const int max_tokens = p->max_tokens ? (int)p->max_tokens : w->spec.rollout.max_tokens;
    char why[256] = "";
    if (st != TIDAL_OK) snprintf(why, sizeof why, "prompt %s: tokens: %s", p->prompt_id, tidal_errmsg());
    else if (plen < 1 || plen > PROMPT_CAP_TOKENS)
        snprintf(why, sizeof why, "prompt %s: %d tokens (1 .. %d accepted)", p->prompt_id, plen, PROMPT_CAP_TOKENS);
    else if (max_tokens > w->spec.rollout.max_tokens)
        snprintf(why, sizeof why, "prompt %s: max_tokens %d above the job's %d", p->prompt_id, max_tokens,
                 w->spec.rollout.max_tokens);
    else if (*p->env && strcmp(p->env, w->spec.env.name) != 0)
        snprintf(why, sizeof why, "prompt %s: env %.60s is not the job's (%.60s)", p->prompt_id, p->env,
                 w->spec.env.name);
    else if (p->sample_index + p->sample_count > p->group_size)
        snprintf(why, sizeof why, "prompt %s: samples %u..%u of a group of %u", p->prompt_id, p->sample_index,
                 p->sample_index + p->sample_count - 1, p->group_size);
    if (*why) {
        tok_ids_free(&ids);
        tidal__v1__prompt__free_unpacked(p, NULL);
        reject(w, m, why);
        return TIDAL_OK;
    }
    int32_t *prompt = malloc((size_t)plen * sizeof *prompt);
    if (!prompt) st = tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    for (int i = 0; prompt && i < plen; i++) prompt[i] = p->n_token_ids ? (int32_t)p->token_ids[i] : ids.ids[i];
    tok_ids_free(&ids);

    w->cur = m, w->cur_eval = p->eval, w->last_progress_ms = tidal_clock_ms();
    const double t0 = tidal_clock_ms();
    if (st == TIDAL_OK) st = sync_to(w, p->min_version);
    const double sync_ms = tidal_clock_ms() - t0;
    const int count = (int)p->sample_count;
    episode_out *out = calloc((size_t)(count > 0 ? count : 1), sizeof *out);
    if (st == TIDAL_OK && !out) st = tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    const double g0 = tidal_clock_ms();
    if (st == TIDAL_OK) {
        w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_GENERATING;
        heartbeat(w, true);
        const Tidal__V1__SamplingParams *sp = p->sampling;
        episode_group g = {
            .prompt_id = p->prompt_id, .group_id = p->group_id, .worker_id = w->id, .task_json = p->task_json,
            .prompt = prompt, .prompt_len = plen, .group_size = (int)p->group_size,
            .first_index = (int)p->sample_index, .count = count, .eval = p->eval, .max_tokens = max_tokens,
            .max_turns = w->max_turns, .stop_id = w->stop_id, .min_version = p->min_version,
            .between_steps = between_steps, .hook_ctx = w,
            .sampling = {.temperature = sp ? (float)sp->temperature : (float)w->spec.rollout.temperature,
                         .top_p = sp ? (float)sp->top_p : (float)w->spec.rollout.top_p,
                         .top_k = sp ? (int)sp->top_k : w->spec.rollout.top_k,
                         .seed = sp && sp->seed ? sp->seed : hash_string(p->group_id) ^ (uint64_t)w->spec.data.seed},
        };
        if (g.sampling.top_p >= 1.0f) g.sampling.top_p = 0;
        st = episode_run_group(w->e, w->tok, w->env, &g, out);
    }
    const double gen_ms = tidal_clock_ms() - g0;
    /* the trajectory ids (Nats-Msg-Id) and the tokens generated */
    char (*msg_ids)[300] = calloc((size_t)(count > 0 ? count : 1), sizeof *msg_ids);
    uint64_t tokens = 0;
    if (st == TIDAL_OK && !msg_ids) st = tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    for (int i = 0; st == TIDAL_OK && i < count; i++) {
        Tidal__V1__Trajectory *t = NULL;
        if ((st = codec_decode_trajectory(out[i].data, out[i].len, &t)) != TIDAL_OK) break;
        snprintf(msg_ids[i], sizeof msg_ids[i], "%s", t->trajectory_id);
        tokens += t->n_completion_token_ids;
        tidal__v1__trajectory__free_unpacked(t, NULL);
    }
    /* simulated slower hardware and long-tailed completions (benchmarks): hold the group before publishing */
    double factor = w->o->slowdown > 1 ? w->o->slowdown : 1;
    if (w->o->tail > 0) {
        const double u = (double)((hash_string(p->group_id) >> 11) + 1) / 9007199254740993.0; /* (0, 1], per group */
        const double x = pow(u, -1.0 / w->o->tail);
        factor *= x < 50 ? x : 50;
    }
    const double hold_ms = w->o->token_ms > 0 ? w->o->token_ms * (double)tokens * factor
                                              : (gen_ms + w->publish_ms) * (factor - 1);
    if (st == TIDAL_OK && hold_ms > 0) { /* the prompt is held (and kept alive) meanwhile */
        const double until = tidal_clock_ms() + hold_ms;
        for (double left; (left = until - tidal_clock_ms()) > 0 && !leaving(w);) {
            usleep((useconds_t)(left < 20 ? left * 1e3 : 20e3));
            keep_alive(w);
        }
    }
    const double pub0 = tidal_clock_ms();
    /* publish: Nats-Msg-Id = trajectory id, so a redelivered prompt's trajectories are stored once */
    const char *subject = p->eval ? w->names.eval_subject : w->names.traj_subject;
    for (int i = 0; st == TIDAL_OK && i < count; i++) {
        /* one at a time, each retried through a server restart until the stream acks it */
        st = bus_js_publish(w->bus, subject, out[i].data, (int)out[i].len, msg_ids[i], 30000, NULL, NULL);
        w->errors += out[i].status != TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    }
    free(msg_ids);
    if (st == TIDAL_OK) st = bus_ack_sync(m, 10000);
    if (st == TIDAL_OK) w->publish_ms = tidal_clock_ms() - pub0;
    if (st == TIDAL_OK) {
        w->trajectories += (uint64_t)count;
        w->groups++;
        tidal_log(TIDAL_LOG_DEBUG, "worker %s: %s done: %d samples, v%llu, sync %.0f ms, generate %.0f ms", w->id,
                  p->group_id, count, (unsigned long long)w->version, sync_ms, gen_ms);
    } else {
        /* returned: another worker (or this one) takes it again */
        tidal_log(st == TIDAL_ERR_CANCELLED ? TIDAL_LOG_INFO : TIDAL_LOG_WARN, "worker %s: %s returned: %s", w->id,
                  p->group_id, tidal_errmsg());
        bus_nak(m, 0);
    }
    for (int i = 0; out && i < count; i++) free(out[i].data);
    free(out);
    free(prompt);
    tidal__v1__prompt__free_unpacked(p, NULL);
    w->cur = NULL;
    bus_msg_destroy(m);
    w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_IDLE;
    return st == TIDAL_ERR_CANCELLED ? TIDAL_OK : st;
}

/* ---------------------------------------------------------------- joining */

/* Retry `what` until it works, the join timeout passes or the worker leaves. */
static bool keep_trying(worker *w, double t0, const char *what, bool *said)
{
    if (leaving(w)) return false;
    if (w->o->join_timeout_ms > 0 && tidal_clock_ms() - t0 > w->o->join_timeout_ms) return false;
    if (!*said) tidal_log(TIDAL_LOG_INFO, "worker %s: waiting for %s of job %s", w->id, what, w->names.job);
    *said = true;
    usleep(200 * 1000);
    return true;
}

static tidal_status join(worker *w)
{
    const double t0 = tidal_clock_ms();
    bool said = false;
    tidal_status st;
    while ((st = bus_kv_open(w->bus, w->names.kv_bucket, &w->kv)) != TIDAL_OK)
        if (st != TIDAL_ERR_NOT_FOUND || !keep_trying(w, t0, "the KV bucket", &said)) return st;
    void *spec = NULL;
    size_t n = 0;
    said = false;
    while ((st = bus_kv_get(w->kv, JOB_KEY_SPEC, &spec, &n, NULL)) != TIDAL_OK)
        if (st != TIDAL_ERR_NOT_FOUND || !keep_trying(w, t0, "the spec", &said)) return st;
    json_error_t jerr;
    json_t *j = json_loadb(spec, n, 0, &jerr);
    free(spec);
    if (!j) return tidal_fail(TIDAL_ERR_DECODE, "worker: KV %s/%s: not JSON: %s", w->names.kv_bucket, JOB_KEY_SPEC,
                              jerr.text);
    char name[256];
    snprintf(name, sizeof name, "KV %s/%s", w->names.kv_bucket, JOB_KEY_SPEC);
    st = spec_from_json(j, name, &w->spec);
    json_decref(j);
    if (st != TIDAL_OK) return st;
    if (strcmp(w->spec.rollout.backend, "builtin") != 0)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "worker: rollout.backend %s is not available in this build",
                          w->spec.rollout.backend);
    chat_format f;
    if ((st = job_tokenizer(&w->spec, &w->tok)) != TIDAL_OK) return st;
    if ((st = job_chat_format(&w->spec, &f)) != TIDAL_OK) return st;
    w->stop_id = job_stop_id(f, w->tok);
    if ((st = job_model_config(&w->spec, &w->cfg)) != TIDAL_OK) return st;
    if ((st = weights_client_create(w->bus, &w->names, &w->cfg, &w->wc)) != TIDAL_OK) return st;
    said = false;
    while ((st = weights_client_wait(w->wc, 0, 500, &w->m, &w->version)) != TIDAL_OK)
        if (st != TIDAL_ERR_TIMEOUT || !keep_trying(w, t0, "the first weights", &said)) return st;
    w->oldest = !strcmp(w->spec.rollout.weights, "oldest");
    if (w->oldest) { /* K + 1 versions span the bound; one more arrives while the engine holds one */
        w->hist_cap = w->spec.buffer.max_staleness + 2;
        w->hist_m = calloc((size_t)w->hist_cap + 1, sizeof *w->hist_m);
        w->hist_v = calloc((size_t)w->hist_cap + 1, sizeof *w->hist_v);
        if (!w->hist_m || !w->hist_v) return tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
        hist_push(w, w->m, w->version);
    }
    w->max_turns = max_turns_of(&w->spec);
    w->max_len = PROMPT_CAP_TOKENS + w->spec.rollout.max_tokens + 1;
    if (w->max_len > w->cfg.max_position_embeddings) w->max_len = w->cfg.max_position_embeddings;
    engine_options eo = {.slots = w->spec.rollout.slots, .max_len = w->max_len};
    if ((st = engine_create(w->m, w->version, &eo, &w->e)) != TIDAL_OK) return st;
    if (w->spec.env.remote) {
        env_client_opts co = {.timeout_ms = w->spec.env.timeout_ms, .retries = w->spec.env.retries};
        st = env_client_remote(w->bus, w->spec.env.name, &co, &w->env);
    } else {
        st = env_client_local(w->spec.env.name, w->spec.env.config_json, &w->env);
    }
    if (st != TIDAL_OK) return st;
    said = false;
    while ((st = bus_pull_subscribe(w->bus, w->names.prompts_stream, JOB_CONSUMER_ROLLOUT, &w->prompts)) != TIDAL_OK)
        if (st != TIDAL_ERR_NOT_FOUND || !keep_trying(w, t0, "the prompt consumer", &said)) return st;
    if ((st = bus_kv_open(w->bus, w->names.workers_bucket, &w->workers)) != TIDAL_OK) return st;
    return bus_subscribe(w->bus, w->names.ctl_subject, NULL, on_control, w, &w->ctl);
}

tidal_status worker_run(const worker_opts *o)
{
    worker *w = calloc(1, sizeof *w);
    if (!w) return tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    w->o = o;
    spec_defaults(&w->spec);
    gethostname(w->host, sizeof w->host - 1);
    if (o->id) snprintf(w->id, sizeof w->id, "%s", o->id);
    else snprintf(w->id, sizeof w->id, "%.120s-%d", w->host, (int)getpid());
    for (char *c = w->id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-'))
            *c = '_'; /* a KV key and a subject token */
    w->started_ms = tidal_unix_ms();
    w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_IDLE;
    bus_opts bo = o->bus;
    if (!bo.name) bo.name = w->id;
    tidal_status st = job_names_init(&w->names, o->job);
    if (st == TIDAL_OK) st = bus_connect(&w->bus, &bo);
    if (st == TIDAL_OK) st = join(w);
    if (st == TIDAL_OK)
        tidal_log(TIDAL_LOG_INFO, "worker %s: joined job %s at weights v%llu (env %s%s)", w->id, w->names.job,
                  (unsigned long long)w->version, w->spec.env.name, w->spec.env.remote ? ", remote" : "");
    while (st == TIDAL_OK && !leaving(w) && !w->ctl_drain) {
        heartbeat(w, false);
        if (job_done(w)) {
            tidal_log(TIDAL_LOG_INFO, "worker %s: job %s is done", w->id, w->names.job);
            break;
        }
        if (w->ctl_pause) {
            usleep(100 * 1000);
            continue;
        }
        take_newer_weights(w);
        bus_msg *m = NULL;
        int n = 0;
        tidal_status fs = bus_fetch(w->prompts, 1, 500, &m, &n);
        if (fs == TIDAL_ERR_TIMEOUT || (fs == TIDAL_OK && n == 0)) continue;
        if (fs != TIDAL_OK) { /* the bus reconnects on its own; try again shortly */
            tidal_log(TIDAL_LOG_WARN, "worker %s: fetch: %s", w->id, tidal_errmsg());
            usleep(200 * 1000);
            continue;
        }
        if (bus_msg_delivered(m) > 1) {
            w->redelivered++;
            heartbeat(w, true);
        }
        tidal_status ps = serve_prompt(w, m);
        if (ps != TIDAL_OK) tidal_log(TIDAL_LOG_WARN, "worker %s: %s", w->id, tidal_errmsg());
    }
    const tidal_status result = st;
    char err[1024] = "";
    if (st != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg());
    if (w->ctl) bus_unsubscribe(w->ctl);
    if (w->workers) bus_kv_delete(w->workers, w->id);
    tidal_log(TIDAL_LOG_INFO, "worker %s: leaving after %llu groups (%llu trajectories, %llu rejected messages)",
              w->id, (unsigned long long)w->groups, (unsigned long long)w->trajectories,
              (unsigned long long)w->rejected);
    bus_unsubscribe(w->prompts);
    bus_kv_close(w->workers);
    bus_kv_close(w->kv);
    env_client_free(w->env);
    engine_free(w->e);
    weights_client_free(w->wc);
    for (int i = 0; i < w->n_hist; i++) model_free(w->hist_m[i] == w->m ? NULL : w->hist_m[i]);
    free(w->hist_m);
    free(w->hist_v);
    model_free(w->m);
    tokenizer_free(w->tok);
    bus_close(w->bus);
    spec_release(&w->spec);
    free(w);
    if (result != TIDAL_OK) return tidal_fail(result, "%s", err);
    return TIDAL_OK;
}
