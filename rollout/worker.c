/* worker.c - the rollout worker loop (worker.h). */
#include "rollout/worker.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/prom.h"
#include "base/fs.h"
#include "job/jobmodel.h"
#include "job/spec.h"
#include "envs/client.h"
#include "proto/codec.h"
#include "proto/enum_names.h"
#include "base/hash.h"
#include "base/sign.h"
#include "job/names.h"
#include "rollout/engine.h"
#include "rollout/engine_cuda.h"
#include "rollout/engine_selfcheck.h"
#include "rollout/episode.h"
#include "rollout/remote.h"
#include "rollout/weights.h"

#define PROMPT_CAP_TOKENS 1024 /* the longest rendered prompt the engine's cache is sized for */
#define HEARTBEAT_MS 1000
#define STATE_POLL_MS 1000
#define ENV_REPORT_MS 10000 /* a failing env is logged at once, then this often while it lasts */
#define TRAJ_HEADER_ROOM 1024 /* of max_payload, for the message's headers (Nats-Msg-Id and the protocol's) */

typedef struct served served;

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
    engine_device edev;         /* where the built-in engine runs (rollout.device / --device) */
    model *m;                   /* the engine's model; in oldest mode one of hist_m */
    uint64_t version;
    /* rollout.weights oldest: the versions received, oldest first, so a prompt
     * is generated with the oldest one its min_version allows */
    bool oldest;
    model **hist_m;
    uint64_t *hist_v;
    int n_hist, hist_cap;
    engine *e;
    generator gen;              /* what episodes generate with: over e, or over rm */
    remote *rm;                 /* rollout.backend openai: the servers this worker is the sidecar of */
    char sidecar_dir[1024];     /* absolute: where versions are written for them */
    uint64_t sidecar_prev;      /* the version written before the current one (removed at the next) */
    hf_files hf;                /* the tokenizer and config files written beside each version */
    prom *prom;                 /* --metrics-port: /metrics (docs/metrics.md); NULL when off */
    bool sidecar_has_prev;
    env_client *env;
    int max_len;
    int max_turns;              /* env_client_max_turns of the job's env config */
    /* set by the control handler (another thread) */
    volatile sig_atomic_t ctl_stop, ctl_drain, ctl_pause, ctl_quarantine;
    uint64_t fault_rng;         /* ROLLOUT_FAULT_LOGPROB_NOISE's generator */
    /* the prompts held (fetched, not yet acked or returned), oldest first;
     * those running are in the batch, at most one waits for weights */
    served **held;
    int n_held;
    episode_batch *batch;       /* the groups running on gen */
    int max_batch;              /* sequences in flight at most (rollout.max_batch; the group size when 0) */
    bool batched;               /* more than one group at a time (builtin engine, weights newest) */
    double last_empty_fetch_ms; /* when a fetch beside running groups last found nothing */
    int max_held;               /* the most prompts held at once (said when it leaves) */
    double last_progress_ms, last_beat_ms, last_state_ms;
    int state;
    uint64_t started_ms, trajectories, errors, rejected, redelivered, groups;
    uint64_t tokens_mark;
    double tokens_mark_ms, tokens_per_s;
    double publish_ms;          /* the last group's publication and ack (for the bench hook) */
    /* the env's failures as the log has told them (env_report) */
    bool env_reported;          /* a failing line was written and no recovery line since */
    double env_report_ms;       /* when the last failing line was written */
} worker;

static bool leaving(const worker *w) { return (w->o->stop && *w->o->stop) || w->ctl_stop; }

/* The group in progress must be abandoned (its prompt returned). */
static bool abandon(const worker *w) { return leaving(w) || w->ctl_quarantine; }

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
    s.prompts_in_flight = (uint32_t)w->n_held;
    s.tokens_per_s = w->tokens_per_s;
    s.backend = w->rm ? "openai" : "builtin", s.device = (char *)engine_device_name(w->edev);
    s.started_unix_ms = w->started_ms, s.updated_unix_ms = tidal_unix_ms();
    s.capacity = (uint32_t)(w->batched && w->spec.rollout.group_size > 0 ? w->max_batch / w->spec.rollout.group_size : 1);
    s.trajectories = w->trajectories, s.errors = w->errors, s.rejected = w->rejected;
    s.redelivered = w->redelivered;
    if (w->prom) { /* the heartbeat's numbers on /metrics too */
        prom_set(w->prom, "tidal_worker_tokens_per_s", NULL, "generated tokens per second", w->tokens_per_s);
        prom_set(w->prom, "tidal_worker_weights_version", NULL, "the weights version it generates with",
                 (double)w->version);
        prom_set(w->prom, "tidal_worker_groups", NULL, "groups generated and published", (double)w->groups);
        prom_set(w->prom, "tidal_worker_trajectories", NULL, NULL, (double)w->trajectories);
        prom_set(w->prom, "tidal_worker_errors", NULL, NULL, (double)w->errors);
        prom_set(w->prom, "tidal_worker_rejected", NULL, "messages rejected", (double)w->rejected);
        prom_set(w->prom, "tidal_worker_redelivered", NULL, "prompts that came a second time", (double)w->redelivered);
        prom_set(w->prom, "tidal_worker_state", NULL, "its WorkerState (docs/protocol.md)", (double)w->state);
    }
    env_client_health eh = {0};
    if (w->env) env_client_health_get(w->env, &eh);
    s.env_failed = eh.failed;
    s.env_error = eh.failing ? eh.last_error : (char *)"";
    s.env_failing_since_unix_ms = eh.failing ? eh.failing_since_unix_ms : 0;
    prom_set(w->prom, "tidal_worker_env_calls", "result=\"answered\"", "env calls by how they ended", (double)eh.answered);
    prom_set(w->prom, "tidal_worker_env_calls", "result=\"failed\"", NULL, (double)eh.failed);
    prom_set(w->prom, "tidal_worker_env_failing", NULL, "1 while the env's last call failed", eh.failing ? 1.0 : 0.0);
    if (w->wc) {
        weights_stats ws;
        weights_client_stats(w->wc, &ws);
        s.weights_refused = ws.refused;
        s.weights_live = ws.live;
        s.weights_fetched = ws.fetched;
        prom_set(w->prom, "tidal_worker_weights_versions", "how=\"live\"",
                 "weight versions built: from the trainer's live broadcast, or from the stored copy", (double)ws.live);
        prom_set(w->prom, "tidal_worker_weights_versions", "how=\"stored\"", NULL, (double)(ws.fetched - ws.live));
    }
    void *buf = NULL;
    size_t len = 0;
    if (codec_encode(&s.base, &buf, &len) == TIDAL_OK && bus_kv_put(w->workers, w->id, buf, len, NULL) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "worker %s: heartbeat: %s", w->id, tidal_errmsg());
    free(buf);
}

/* Say in the log that the env fails - at once, then every ENV_REPORT_MS while
 * it lasts, with the failure's message (a missing remote env's names its
 * subject: "no responders on tidal.env.NAME") - and when it answers again.
 * A change reaches the heartbeat (and so the controller) at once. */
static void env_report(worker *w)
{
    if (!w->env) return;
    env_client_health h;
    env_client_health_get(w->env, &h);
    const double t = tidal_clock_ms();
    if (h.failing) { /* never more often than ENV_REPORT_MS, even when it flips (a few bad rows) */
        if (w->env_report_ms > 0 && t - w->env_report_ms < ENV_REPORT_MS) return;
        const uint64_t now = tidal_unix_ms();
        const double for_s = now > h.failing_since_unix_ms ? (double)(now - h.failing_since_unix_ms) / 1e3 : 0;
        tidal_log(TIDAL_LOG_WARN,
                  "worker %s: env %s failing for %.0f s (%llu samples failed, %llu in all): %s; those samples are "
                  "published as failed: never trained or scored", w->id, w->spec.env.name, for_s,
                  (unsigned long long)h.failed_in_run, (unsigned long long)h.failed, h.last_error);
        const bool news = !w->env_reported;
        w->env_reported = true, w->env_report_ms = t;
        if (news) heartbeat(w, true);
    } else if (w->env_reported) {
        tidal_log(TIDAL_LOG_INFO, "worker %s: env %s answers again (%llu samples failed in all)", w->id,
                  w->spec.env.name, (unsigned long long)h.failed);
        w->env_reported = false;
        heartbeat(w, true);
    }
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
        case TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_QUARANTINE: /* for this worker alone, never by role */
            if (!strcmp(c->target, w->id)) w->ctl_quarantine = 1;
            break;
        default: break;
        }
        tidal_log(TIDAL_LOG_INFO, "worker %s: control %s from %s (%s)", w->id, proto_control_command_name(c->command),
                  c->issuer, c->reason);
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
static tidal_status sidecar_push(worker *w, const model *nm, uint64_t v);

/* A model the worker is done with goes back to the weights client, which
 * builds the next version in its memory (no fresh pages to fault in). */
static void drop_model(worker *w, model *m)
{
    if (w->wc) weights_client_recycle(w->wc, m);
    else model_free(m);
}

static tidal_status use_model(worker *w, model *nm, uint64_t v)
{
    if (nm == w->m) return TIDAL_OK;
    if (w->rm) { /* the servers load it; on failure they and this worker keep the old version */
        TRY(sidecar_push(w, nm, v));
        if (!w->oldest) drop_model(w, w->m);
        w->m = nm;
        w->version = v;
        return TIDAL_OK;
    }
    if (w->o->fault == ROLLOUT_FAULT_STALE_WEIGHTS) { /* the lie: the old weights under the new version */
        TRY(engine_set_model(w->e, w->m, v));
        if (!w->oldest) model_free(nm);
        w->version = v;
        return TIDAL_OK;
    }
    TRY(engine_set_model(w->e, nm, v));
    if (!w->oldest) drop_model(w, w->m);
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

static bus_msg *held_msg(const worker *w, int i);
static bool eval_running(const worker *w);

/* Keep the prompts held alive while a long wait or group goes on. */
static void keep_alive(worker *w)
{
    const double t = tidal_clock_ms();
    if (w->n_held && t - w->last_progress_ms > (double)w->spec.rollout.ack_wait_ms / 4) {
        for (int i = 0; i < w->n_held; i++) bus_in_progress(held_msg(w, i));
        w->last_progress_ms = t;
    }
    heartbeat(w, false);
}

/* Between engine steps: newer weights and the prompts kept alive. */
static void between_steps(worker *w)
{
    /* in-flight update: later tokens carry the new version. Not for servers:
     * their reload waits for requests in flight, so it happens between
     * groups; not while an evaluation group runs (it is generated with one
     * version) */
    if (!w->rm && (!eval_running(w) || w->oldest)) take_newer_weights(w);
    keep_alive(w);
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
    while (!abandon(w)) {
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

/* The prompt being served, from validation to its ack or nak. */
struct served {
    bus_msg *m;                 /* the message (the served owns it) */
    Tidal__V1__Prompt *p;       /* decoded */
    tok_ids ids;                /* its text's tokens (when it gives text, not token_ids) */
    int plen, max_tokens;       /* the prompt's tokens; the completion budget per sample */
    int32_t *prompt;            /* [plen] what the engine is given */
    int count;                  /* samples asked for */
    episode_out *out;           /* [count] the encoded trajectories */
    episode_group g;            /* the group, as the batch runs it */
    bool running;               /* in the batch (else it waits for weights) */
    double t0, g0;              /* taken; added to the batch */
    double sync_ms, gen_ms;
};

static bus_msg *held_msg(const worker *w, int i) { return w->held[i]->m; }

static bool eval_running(const worker *w)
{
    for (int i = 0; i < w->n_held; i++)
        if (w->held[i]->running && w->held[i]->p->eval) return true;
    return false;
}

/* Reject a message that is not a usable prompt: it is never redelivered. */
static void reject(worker *w, bus_msg *m, const char *why)
{
    tidal_log(TIDAL_LOG_WARN, "worker %s: rejected a message on %s: %s", w->id, bus_msg_subject(m), why);
    w->rejected++;
    bus_term(m);
    bus_msg_destroy(m);
    heartbeat(w, true); /* the count reaches the controller's summary even if the job ends now */
}

/* Why prompt p (its tokens in sv) cannot be served by this worker, into why
 * ("" when it can): tokens outside the vocabulary or untokenizable text, a
 * length the engine's cache is not sized for, a budget above the job's,
 * another env, samples outside the group. */
static void check_prompt(const worker *w, const served *sv, tidal_status tokens_st, char *why, size_t cap)
{
    const Tidal__V1__Prompt *p = sv->p;
    if (tokens_st != TIDAL_OK) snprintf(why, cap, "prompt %s: tokens: %s", p->prompt_id, tidal_errmsg());
    else if (sv->plen < 1 || sv->plen > PROMPT_CAP_TOKENS)
        snprintf(why, cap, "prompt %s: %d tokens (1 .. %d accepted)", p->prompt_id, sv->plen, PROMPT_CAP_TOKENS);
    else if (sv->max_tokens > w->spec.rollout.max_tokens)
        snprintf(why, cap, "prompt %s: max_tokens %d above the job's %d", p->prompt_id, sv->max_tokens,
                 w->spec.rollout.max_tokens);
    else if (*p->env && strcmp(p->env, w->spec.env.name) != 0)
        snprintf(why, cap, "prompt %s: env %.60s is not the job's (%.60s)", p->prompt_id, p->env, w->spec.env.name);
    else if (p->sample_index + p->sample_count > p->group_size)
        snprintf(why, cap, "prompt %s: samples %u..%u of a group of %u", p->prompt_id, p->sample_index,
                 p->sample_index + p->sample_count - 1, p->group_size);
}

/* The prompt's tokens: its token_ids, each inside the vocabulary, or its text
 * tokenized into sv->ids. */
static tidal_status prompt_tokens(const worker *w, served *sv)
{
    const Tidal__V1__Prompt *p = sv->p;
    if (!p->n_token_ids) return tokenizer_encode(w->tok, p->text, strlen(p->text), false, &sv->ids);
    for (size_t i = 0; i < p->n_token_ids; i++)
        if (p->token_ids[i] >= (uint32_t)w->cfg.vocab_size)
            return tidal_fail(TIDAL_ERR_INVALID, "token_ids[%zu] = %u outside the vocabulary of %d", i,
                              p->token_ids[i], w->cfg.vocab_size);
    return TIDAL_OK;
}

/* Validate: decode sv->m and check it is a prompt this worker can serve.
 * true: sv holds the decoded prompt, its tokens and budget. false: the
 * message was no usable prompt and has been rejected (terminated, never
 * redelivered; logged and counted) and consumed - a bad message is the
 * producer's fault, not a failure of this worker. */
static bool validate(worker *w, served *sv)
{
    if (codec_decode_prompt(bus_msg_data(sv->m), (size_t)bus_msg_len(sv->m), &sv->p) != TIDAL_OK) {
        reject(w, sv->m, tidal_errmsg());
        return false;
    }
    const Tidal__V1__Prompt *p = sv->p;
    const tidal_status tokens_st = prompt_tokens(w, sv);
    sv->plen = p->n_token_ids ? (int)p->n_token_ids : (int)sv->ids.n;
    sv->max_tokens = p->max_tokens ? (int)p->max_tokens : w->spec.rollout.max_tokens;
    sv->count = (int)p->sample_count;
    char why[256] = "";
    check_prompt(w, sv, tokens_st, why, sizeof why);
    if (!*why) return true;
    tok_ids_free(&sv->ids);
    tidal__v1__prompt__free_unpacked(sv->p, NULL);
    sv->p = NULL;
    reject(w, sv->m, why);
    return false;
}

/* A standard normal draw from the worker's fault generator (Box-Muller). */
static double fault_normal(worker *w)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        uint64_t z = (w->fault_rng += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        u[i] = ((double)((z ^ (z >> 31)) >> 11) + 0.5) * 0x1p-53; /* in (0, 1) */
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* Test-only (worker_opts.fault): the lies told in each trajectory. */
static void tamper(void *ctx, Tidal__V1__Trajectory *t)
{
    worker *w = ctx;
    /* the temperature it was told, not the doubled one it sampled at (exact: a power of 2) */
    if (w->o->fault == ROLLOUT_FAULT_TEMPERATURE) t->temperature /= 2.0;
    if (w->o->fault != ROLLOUT_FAULT_LOGPROB_NOISE) return;
    for (size_t i = 0; i < t->n_logprobs; i++)
        if (t->loss_mask[i] && isfinite(t->logprobs[i]))
            t->logprobs[i] = (float)fmin(0.0, (double)t->logprobs[i] + 0.5 * fault_normal(w));
}

/* The faults' names, by rollout_fault value. */
static const char *const fault_names[] = {"none", "logprob-noise", "temperature", "stale-weights"};

const char *rollout_fault_name(rollout_fault f)
{
    return (unsigned)f < sizeof fault_names / sizeof fault_names[0] ? fault_names[f] : "unknown";
}

bool rollout_fault_parse(const char *name, rollout_fault *out)
{
    for (int i = 0; i < (int)(sizeof fault_names / sizeof fault_names[0]); i++)
        if (!strcmp(name, fault_names[i])) {
            *out = (rollout_fault)i;
            return true;
        }
    return false;
}

/* The episode group sv's prompt asks for, as the job configures it (the
 * prompt's sampling parameters win over the job's). */
static episode_group group_of(worker *w, const served *sv)
{
    const Tidal__V1__Prompt *p = sv->p;
    const Tidal__V1__SamplingParams *sp = p->sampling;
    episode_group g = {
        .prompt_id = p->prompt_id, .group_id = p->group_id, .worker_id = w->id, .task_json = p->task_json,
        .prompt = sv->prompt, .prompt_len = sv->plen, .group_size = (int)p->group_size,
        .first_index = (int)p->sample_index, .count = sv->count, .eval = p->eval, .max_tokens = sv->max_tokens,
        .max_turns = w->max_turns, .stop_id = w->stop_id, .min_version = p->min_version,
        .hook_ctx = w,
        .sampling = {.temperature = sp ? (float)sp->temperature : (float)w->spec.rollout.temperature,
                     .top_p = sp ? (float)sp->top_p : (float)w->spec.rollout.top_p,
                     .top_k = sp ? (int)sp->top_k : w->spec.rollout.top_k,
                     .seed = sp && sp->seed ? sp->seed : hash_string(p->group_id) ^ (uint64_t)w->spec.data.seed},
    };
    if (g.sampling.top_p >= 1.0f) g.sampling.top_p = 0;
    if (w->o->fault == ROLLOUT_FAULT_TEMPERATURE || w->o->fault == ROLLOUT_FAULT_LOGPROB_NOISE) g.tamper = tamper;
    if (w->o->fault == ROLLOUT_FAULT_TEMPERATURE) g.sampling.temperature *= 2.0f;
    return g;
}

/* Make the prompt ready to run: its ids for the engine, room for its
 * trajectories and its group. */
static tidal_status prepare(worker *w, served *sv)
{
    const Tidal__V1__Prompt *p = sv->p;
    sv->prompt = malloc((size_t)sv->plen * sizeof *sv->prompt);
    for (int i = 0; sv->prompt && i < sv->plen; i++)
        sv->prompt[i] = p->n_token_ids ? (int32_t)p->token_ids[i] : sv->ids.ids[i];
    tok_ids_free(&sv->ids);
    tidal_log(TIDAL_LOG_DEBUG, "worker %s: %s taken (delivery %d)", w->id, p->group_id, (int)bus_msg_delivered(sv->m));
    if (!sv->prompt) return tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    sv->out = calloc((size_t)(sv->count > 0 ? sv->count : 1), sizeof *sv->out);
    if (!sv->out) return tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    sv->g = group_of(w, sv);
    return TIDAL_OK;
}

/* Run the group: its samples join the engine's batch. The weights are the
 * prompt's min_version or newer (the caller made sure). */
static tidal_status begin(worker *w, served *sv)
{
    sv->sync_ms = tidal_clock_ms() - sv->t0;
    sv->g0 = tidal_clock_ms();
    TRY(episode_batch_add(w->batch, &sv->g, sv->out));
    sv->running = true;
    if (w->state != TIDAL__V1__WORKER_STATE__WORKER_STATE_GENERATING) {
        w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_GENERATING;
        heartbeat(w, true);
    }
    return TIDAL_OK;
}

/* Wait ms (if > 0), keeping the prompt alive; ends early when the worker leaves. */
static void hold_for(worker *w, double ms)
{
    if (!(ms > 0)) return;
    const double until = tidal_clock_ms() + ms;
    for (double left; (left = until - tidal_clock_ms()) > 0 && !leaving(w);) {
        usleep((useconds_t)(left < 20 ? left * 1e3 : 20e3));
        keep_alive(w);
    }
}

/* A benchmark's hold (worker_opts.bench) of the generated group: the prompt
 * is kept alive meanwhile, and the hold ends early when the worker leaves. */
static void bench_hold(worker *w, const served *sv)
{
    const rollout_bench_hook *h = w->o->bench;
    if (!h || !h->hold_ms) return;
    rollout_group_info gi = {.group_id = sv->p->group_id, .generate_ms = sv->gen_ms, .last_publish_ms = w->publish_ms};
    for (int i = 0; i < sv->count; i++) gi.tokens += sv->out[i].completion_tokens;
    hold_for(w, h->hold_ms(h->ctx, &gi));
}

/* Publish: the prompt's trajectories as one TrajectoryGroup on tidal.J.traj
 * (.eval for evaluation prompts) - or, when it would exceed the server's
 * max_payload, as parts of whole trajectories - each with its Nats-Msg-Id
 * (codec_group_msg_id) and retried through a server restart until the stream
 * acks it; then the prompt is acked. An error leaves the prompt to be
 * returned (what was stored stays; the buffer takes each sample once). */
static tidal_status publish(worker *w, served *sv)
{
    const Tidal__V1__Prompt *p = sv->p;
    bench_hold(w, sv);
    const double pub0 = tidal_clock_ms();
    const char *subject = p->eval ? w->names.eval_subject : w->names.traj_subject;
    codec_encoded *enc = calloc((size_t)sv->count, sizeof *enc);
    codec_parts parts = {0};
    tidal_status st = TIDAL_OK;
    if (!enc) return tidal_fail(TIDAL_ERR_NOMEM, "worker: out of memory");
    for (int i = 0; i < sv->count; i++) {
        const episode_out *o = &sv->out[i];
        enc[i] = (codec_encoded){.data = o->data, .len = o->len, .trajectory_id = o->trajectory_id};
    }
    Tidal__V1__TrajectoryGroup head = TIDAL__V1__TRAJECTORY_GROUP__INIT;
    head.schema_version = CODEC_SCHEMA_VERSION;
    head.group_id = p->group_id, head.prompt_id = p->prompt_id, head.worker_id = w->id;
    head.attempt = (uint32_t)bus_msg_delivered(sv->m);
    if (head.attempt < 1) head.attempt = 1;
    head.group_size = p->group_size, head.sample_index = p->sample_index, head.sample_count = (uint32_t)sv->count;
    head.eval = p->eval;
    const int64_t room = bus_max_payload(w->bus) - TRAJ_HEADER_ROOM;
    TRY_GOTO(codec_frame_group_parts(&head, enc, (size_t)sv->count, room > 0 ? (size_t)room : 0, &parts));
    for (size_t k = 0; k < parts.n; k++) {
        char id[CODEC_MAX_ID_BYTES + 32];
        head.part_index = (uint32_t)k, head.part_count = parts.n > 1 ? (uint32_t)parts.n : 0;
        codec_group_msg_id(&head, id, sizeof id);
        TRY_GOTO(bus_js_publish(w->bus, subject, parts.buf[k], (int)parts.len[k], id, 30000, NULL, NULL));
        if (parts.n > 1)
            tidal_log(TIDAL_LOG_DEBUG, "worker %s: %s part %zu of %zu stored (%zu bytes)", w->id, p->group_id, k + 1,
                      parts.n, parts.len[k]);
        if (k + 1 < parts.n && w->o->bench) hold_for(w, w->o->bench->part_gap_ms);
    }
    TRY_GOTO(bus_ack_sync(sv->m, 10000));
    w->publish_ms = tidal_clock_ms() - pub0;
    w->trajectories += (uint64_t)sv->count;
    for (int i = 0; i < sv->count; i++)
        w->errors += sv->out[i].status != TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    w->groups++;
    tidal_log(TIDAL_LOG_DEBUG,
              "worker %s: %s done: %d samples in %zu message(s), v%llu, sync %.0f ms, generate %.0f ms, publish %.0f ms",
              w->id, p->group_id, sv->count, parts.n, (unsigned long long)w->version, sv->sync_ms, sv->gen_ms,
              w->publish_ms);
cleanup:
    codec_parts_free(&parts);
    free(enc);
    return st;
}

/* Return the prompt (nak): another worker (or this one) takes it again. */
static void give_back(worker *w, const served *sv, tidal_status st)
{
    tidal_log(st == TIDAL_ERR_CANCELLED ? TIDAL_LOG_INFO : TIDAL_LOG_WARN, "worker %s: %s returned: %s", w->id,
              sv->p->group_id, tidal_errmsg());
    bus_nak(sv->m, 0);
}

/* Forget held prompt sv (acked or returned already): out of the batch, out
 * of the list, freed. */
static void release(worker *w, served *sv)
{
    if (sv->running) episode_batch_drop(w->batch, &sv->g);
    for (int i = 0; i < w->n_held; i++)
        if (w->held[i] == sv) {
            memmove(w->held + i, w->held + i + 1, (size_t)(w->n_held - i - 1) * sizeof *w->held);
            w->n_held--;
            break;
        }
    for (int i = 0; sv->out && i < sv->count; i++) free(sv->out[i].data);
    free(sv->out);
    free(sv->prompt);
    tok_ids_free(&sv->ids);
    tidal__v1__prompt__free_unpacked(sv->p, NULL);
    bus_msg_destroy(sv->m);
    free(sv);
    if (!w->n_held && w->state != TIDAL__V1__WORKER_STATE__WORKER_STATE_QUARANTINED)
        w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_IDLE;
}

/* Return every prompt held (the worker leaves, is quarantined, or its
 * generator failed), st and the thread's message saying why. */
static void give_back_all(worker *w, tidal_status st)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", tidal_errmsg());
    while (w->n_held) {
        served *sv = w->held[0];
        tidal_fail(st, "%s", why);
        give_back(w, sv, st);
        release(w, sv);
    }
}

/* The samples of the prompts held (their groups' sequences). */
static int held_samples(const worker *w)
{
    int n = 0;
    for (int i = 0; i < w->n_held; i++) n += w->held[i]->count;
    return n;
}

/* Take another prompt now: nothing held, or - batching - none waiting for
 * weights and a group of the job's size still fits under max_batch. */
static bool may_take(const worker *w)
{
    if (w->ctl_pause || w->ctl_drain || w->ctl_quarantine) return false;
    if (!w->n_held) return true;
    if (!w->batched) return false;
    for (int i = 0; i < w->n_held; i++)
        if (!w->held[i]->running) return false;
    return held_samples(w) + w->spec.rollout.group_size <= w->max_batch;
}

/* Take prompt message m (consumed here): validate, then start its group -
 * at once when the weights are new enough; alone (the weights waited for,
 * as one group at a time does) when nothing else runs; else it waits,
 * held, until the weights come or the groups running finish. A failure
 * returns the prompt and is logged. */
static void take_prompt(worker *w, bus_msg *m)
{
    served *sv = calloc(1, sizeof *sv);
    served **held = realloc(w->held, (size_t)(w->n_held + 1) * sizeof *w->held);
    if (!sv || !held) {
        free(sv);
        if (held) w->held = held;
        tidal_log(TIDAL_LOG_WARN, "worker %s: out of memory: a prompt returned", w->id);
        bus_nak(m, 0);
        bus_msg_destroy(m);
        return;
    }
    w->held = held;
    sv->m = m;
    if (!validate(w, sv)) { /* rejected: terminated, counted and consumed */
        free(sv);
        return;
    }
    sv->t0 = tidal_clock_ms();
    if (!w->n_held) w->last_progress_ms = sv->t0;
    w->held[w->n_held++] = sv;
    if (w->n_held > w->max_held) w->max_held = w->n_held;
    tidal_status st = prepare(w, sv);
    if (st == TIDAL_OK && !episode_batch_groups(w->batch)) st = sync_to(w, sv->p->min_version);
    if (st == TIDAL_OK && (w->version >= sv->p->min_version || !episode_batch_groups(w->batch))) st = begin(w, sv);
    if (st == TIDAL_OK) return;
    give_back(w, sv, st);
    if (st != TIDAL_ERR_CANCELLED) tidal_log(TIDAL_LOG_WARN, "worker %s: %s", w->id, tidal_errmsg());
    release(w, sv);
}

/* A prompt waiting for weights starts when they came, or alone once the
 * groups running are done (waiting for the weights then, as one group at a
 * time does). */
static void start_waiting(worker *w)
{
    for (int i = 0; i < w->n_held; i++) {
        served *sv = w->held[i];
        if (sv->running) continue;
        tidal_status st = TIDAL_OK;
        if (w->version < sv->p->min_version) {
            if (episode_batch_groups(w->batch)) return;
            st = sync_to(w, sv->p->min_version);
        }
        if (st == TIDAL_OK) st = begin(w, sv);
        if (st == TIDAL_OK) return;
        give_back(w, sv, st);
        if (st != TIDAL_ERR_CANCELLED) tidal_log(TIDAL_LOG_WARN, "worker %s: %s", w->id, tidal_errmsg());
        release(w, sv);
        return;
    }
}

/* A group is done: publish it and ack its prompt, or return the prompt (its
 * group failed, the publication failed, or the worker is quarantined - the
 * trainer would drop it: another worker answers it). */
static void finish(worker *w, served *sv, tidal_status st)
{
    sv->running = false; /* out of the batch already */
    sv->gen_ms = tidal_clock_ms() - sv->g0;
    env_report(w);
    if (st == TIDAL_OK && w->ctl_quarantine) st = tidal_fail(TIDAL_ERR_CANCELLED, "worker %s: quarantined", w->id);
    if (st == TIDAL_OK) st = publish(w, sv);
    if (st != TIDAL_OK) {
        give_back(w, sv, st);
        if (st != TIDAL_ERR_CANCELLED) tidal_log(TIDAL_LOG_WARN, "worker %s: %s", w->id, tidal_errmsg());
    }
    release(w, sv);
}

/* One engine step for the groups running, then the groups done are
 * published. A generator failure returns every prompt held. */
static void step_groups(worker *w)
{
    tidal_status st = episode_batch_step(w->batch);
    if (st != TIDAL_OK) {
        tidal_log(TIDAL_LOG_WARN, "worker %s: generation: %s; returning the prompts held", w->id, tidal_errmsg());
        give_back_all(w, st);
        return;
    }
    const episode_group *g;
    tidal_status gst;
    while ((g = episode_batch_next_done(w->batch, &gst))) {
        for (int i = 0; i < w->n_held; i++)
            if (&w->held[i]->g == g) {
                finish(w, w->held[i], gst);
                break;
            }
    }
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

/* The job's spec from KV `spec` (waiting for the bucket and the key to
 * appear), one this build can honour. */
/* A failure a join waits out rather than gives up on. */
static bool join_transient(tidal_status st)
{
    return st == TIDAL_ERR_NOT_FOUND || st == TIDAL_ERR_TIMEOUT || st == TIDAL_ERR_UNAVAILABLE;
}

static tidal_status join_spec(worker *w, double t0)
{
    bool said = false;
    tidal_status st;
    /* not there yet, or not answering yet (a replicated bucket just created elects its leader; a
     * cluster node is restarting): both are waited for, up to the join timeout */
    while ((st = bus_kv_open(w->bus, w->names.kv_bucket, &w->kv)) != TIDAL_OK)
        if (!join_transient(st) || !keep_trying(w, t0, "the KV bucket", &said)) return st;
    void *spec = NULL;
    size_t n = 0;
    said = false;
    while ((st = bus_kv_get(w->kv, JOB_KEY_SPEC, &spec, &n, NULL)) != TIDAL_OK)
        if (!join_transient(st) || !keep_trying(w, t0, "the spec", &said)) return st;
    json_error_t jerr;
    json_t *j = json_loadb(spec, n, 0, &jerr);
    free(spec);
    if (!j) return tidal_fail(TIDAL_ERR_DECODE, "worker: KV %s/%s: not JSON: %s", w->names.kv_bucket, JOB_KEY_SPEC,
                              jerr.text);
    char name[256];
    snprintf(name, sizeof name, "KV %s/%s", w->names.kv_bucket, JOB_KEY_SPEC);
    st = spec_from_json(j, name, &w->spec);
    json_decref(j);
    TRY(st);
    return TIDAL_OK;
}

/* The model side: tokenizer, stop token, shape, the first weights (waited
 * for) and, in oldest mode, the history they start. */
static tidal_status join_model(worker *w, double t0)
{
    chat_format f;
    TRY(job_tokenizer(&w->spec, &w->tok));
    TRY(job_chat_format(&w->spec, &f));
    w->stop_id = job_stop_id(f, w->tok);
    TRY(job_model_config_of(&w->spec, w->tok, &w->cfg)); /* the tokenizer just loaded sets a tiny model's vocab */
    uint8_t pin[TIDAL_SIGN_PUB_BYTES]; /* the spec's weights.public_key, when it pins one */
    if (w->spec.weights.public_key[0])
        TRY(tidal_sign_pub_parse(w->spec.weights.public_key, strlen(w->spec.weights.public_key), "weights.public_key", pin));
    const weights_client_http wh = {.timeout_ms = w->spec.weights.http_timeout_ms,
                                    .parallel = w->spec.weights.http_parallel}; /* the token: from the environment */
    bool said = false;
    tidal_status st;
    /* its KV watch can time out while the cluster elects a leader (a partition): waited out like the rest of a join */
    while ((st = weights_client_create_http(w->bus, &w->names, &w->cfg, w->spec.weights.public_key[0] ? pin : NULL,
                                            &wh, &w->wc)) != TIDAL_OK)
        if (!join_transient(st) || !keep_trying(w, t0, "the weights watch", &said)) return st;
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
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- servers (backend openai) */

/* Write version v of the weights as a Hugging Face directory
 * SIDECAR/step_V (under a temporary name, then renamed, so a server never
 * reads half a version) and reload the servers from it. The directory
 * before the current one is removed: a server holds at most the current. */
/* weights.transport dir: the servers load the trainer's own directory for v
 * (nothing written here); false when the worker's weights client has none
 * for v (then the sidecar writes its own). */
static bool sidecar_push_shared(worker *w, uint64_t v, tidal_status *st)
{
    char shared[4096];
    if (!w->wc || !weights_client_dir(w->wc, v, shared, sizeof shared)) return false;
    const double t0 = tidal_clock_ms();
    *st = remote_reload(w->rm, shared, v);
    if (*st != TIDAL_OK) {
        char why[2048];
        snprintf(why, sizeof why, "%s", tidal_errmsg());
        *st = tidal_fail(*st, "worker %s: the servers stay on v%llu: %s", w->id, (unsigned long long)w->version, why);
        return true;
    }
    tidal_log(TIDAL_LOG_INFO, "worker %s: servers reloaded v%llu from the trainer's %s in %.0f ms", w->id,
              (unsigned long long)v, shared, tidal_clock_ms() - t0);
    /* what this sidecar wrote itself before, unless its directory is the trainer's */
    const size_t n = strlen(w->sidecar_dir);
    if (w->sidecar_has_prev && w->sidecar_prev != v && !(strncmp(shared, w->sidecar_dir, n) == 0 && shared[n] == '/')) {
        char cmd[2600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s/step_%llu'", w->sidecar_dir, (unsigned long long)w->sidecar_prev);
        if (system(cmd) != 0) tidal_log(TIDAL_LOG_WARN, "worker %s: cannot remove an old version", w->id);
    }
    w->sidecar_prev = w->version, w->sidecar_has_prev = true;
    return true;
}

static tidal_status sidecar_push(worker *w, const model *nm, uint64_t v)
{
    tidal_status shared_st;
    if (sidecar_push_shared(w, v, &shared_st)) return shared_st;
    char dir[1100], tmp[1200];
    snprintf(dir, sizeof dir, "%s/step_%llu", w->sidecar_dir, (unsigned long long)v);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    char cmd[2600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", tmp, dir);
    if (system(cmd) != 0) return tidal_fail(TIDAL_ERR_IO, "worker %s: cannot clear %s", w->id, dir);
    const st_dtype dt = !strcmp(w->spec.weights.dtype, "bf16") ? ST_BF16 : ST_F32; /* as the bus carried them */
    TRY_WRAP(model_save(nm, tmp, dt), "worker %s: sidecar", w->id);
    TRY_WRAP(hf_files_write(&w->hf, tmp), "worker %s: sidecar", w->id);
    if (rename(tmp, dir) != 0) return tidal_fail(TIDAL_ERR_IO, "worker %s: rename %s: %s", w->id, tmp, strerror(errno));
    const double t0 = tidal_clock_ms();
    tidal_status st = remote_reload(w->rm, dir, v);
    if (st != TIDAL_OK) {
        char why[2048];
        snprintf(why, sizeof why, "%s", tidal_errmsg());
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) tidal_log(TIDAL_LOG_WARN, "worker %s: cannot remove %s", w->id, dir);
        return tidal_fail(st, "worker %s: the servers stay on v%llu: %s", w->id, (unsigned long long)w->version, why);
    }
    tidal_log(TIDAL_LOG_INFO, "worker %s: servers reloaded v%llu from %s in %.0f ms", w->id, (unsigned long long)v, dir,
              tidal_clock_ms() - t0);
    if (w->sidecar_has_prev && w->sidecar_prev != v) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s/step_%llu'", w->sidecar_dir, (unsigned long long)w->sidecar_prev);
        if (system(cmd) != 0) tidal_log(TIDAL_LOG_WARN, "worker %s: cannot remove an old version", w->id);
    }
    w->sidecar_prev = w->version, w->sidecar_has_prev = true;
    return TIDAL_OK;
}

/* The servers this worker drives: reachable (waited for up to the join
 * timeout), and loaded with the weights it holds. */
static tidal_status join_servers(worker *w, double t0)
{
    const char *endpoints = w->o->endpoints ? w->o->endpoints : w->spec.rollout.endpoints;
    const char *dialect = w->o->dialect ? w->o->dialect : w->spec.rollout.dialect;
    remote_opts ro = {.endpoints = endpoints, .token = w->o->endpoint_token, .vocab = w->cfg.vocab_size,
                      .connect_timeout_ms = w->spec.rollout.connect_timeout_ms,
                      .request_timeout_ms = w->spec.rollout.request_timeout_ms, .retries = w->spec.rollout.retries,
                      .in_flight = w->spec.rollout.in_flight};
    if (!endpoints || !*endpoints)
        return tidal_fail(TIDAL_ERR_INVALID, "worker %s: rollout.backend openai needs the servers: rollout.endpoints "
                          "or `tidal rollout --endpoints URL`", w->id);
    TRY_WRAP(remote_dialect_parse(dialect, &ro.dialect), "worker %s: rollout.dialect", w->id);
    TRY_WRAP(remote_create(&ro, &w->rm), "worker %s", w->id);
    bool said = false;
    tidal_status st;
    while ((st = remote_check(w->rm)) != TIDAL_OK) {
        if (!said) tidal_log(TIDAL_LOG_WARN, "worker %s: %s", w->id, tidal_errmsg());
        if (st != TIDAL_ERR_UNAVAILABLE || !keep_trying(w, t0, "the inference servers", &said)) return st;
    }
    const char *wd = w->o->weights_dir ? w->o->weights_dir : w->spec.rollout.weights_dir;
    char want[1024];
    if (*wd) snprintf(want, sizeof want, "%s", wd);
    else snprintf(want, sizeof want, "/tmp/tidal-sidecar-%s", w->id);
    TRY(fs_mkdirs(want));
    TRY_WRAP(job_hf_files(&w->spec, &w->hf), "worker %s: the files beside the weights", w->id);
    char *abs = realpath(want, NULL); /* servers resolve paths from their own working directory */
    if (!abs) return tidal_fail(TIDAL_ERR_IO, "worker %s: rollout.weights_dir %s: %s", w->id, want, strerror(errno));
    snprintf(w->sidecar_dir, sizeof w->sidecar_dir, "%s", abs);
    free(abs);
    TRY(sidecar_push(w, w->m, w->version));
    w->gen = remote_generator(w->rm);
    tidal_log(TIDAL_LOG_INFO, "worker %s: generating on %s (%s), versions written under %s", w->id, endpoints, dialect,
              w->sidecar_dir);
    return TIDAL_OK;
}

/* Everything a worker needs from the job, waited for up to the join
 * timeout: spec, model and first weights, engine, env client, the prompt
 * consumer, the heartbeat bucket and the control subject. */
static tidal_status join(worker *w)
{
    const double t0 = tidal_clock_ms();
    TRY(join_spec(w, t0));
    if (w->o->metrics_port != 0) {
        char labels[400];
        snprintf(labels, sizeof labels, "tidal_job=\"%s\",worker=\"%s\"", w->names.job, w->id);
        TRY_WRAP(prom_start(w->spec.metrics.bind, w->o->metrics_port > 0 ? w->o->metrics_port : 0, labels, &w->prom),
                 "worker %s: --metrics-port", w->id);
        tidal_log(TIDAL_LOG_INFO, "worker %s: metrics on http://%s:%d/metrics", w->id, w->spec.metrics.bind,
                  prom_port(w->prom));
    }
    TRY(join_model(w, t0));
    w->max_turns = env_client_max_turns(w->spec.env.config_json);
    w->max_len = PROMPT_CAP_TOKENS + w->spec.rollout.max_tokens + 1;
    if (w->max_len > w->cfg.max_position_embeddings) w->max_len = w->cfg.max_position_embeddings;
    if (!strcmp(w->o->backend ? w->o->backend : w->spec.rollout.backend, "openai")) {
        TRY(join_servers(w, t0));
    } else {
        /* rollout.device: the CPU unless asked; cuda only after the self-check agrees with the CPU */
        const char *dev = w->o->device ? w->o->device : w->spec.rollout.device;
        char why[400] = "--device cpu-ref: the GPU engine's logic on the CPU references of its kernels (a test)";
        if (!strcmp(dev, "cpu-ref")) w->edev = ENGINE_DEVICE_CPU_REF; /* test-only, never a spec's value */
        else TRY_WRAP(engine_device_resolve(dev, &w->edev, why, sizeof why), "worker %s", w->id);
        tidal_log(TIDAL_LOG_INFO, "worker %s: %s", w->id, why);
        if (w->edev != ENGINE_DEVICE_CPU) TRY_WRAP(engine_selfcheck(w->edev), "worker %s: refusing to start", w->id);
        engine_options eo = {.slots = w->spec.rollout.slots, .max_len = w->max_len};
        TRY(engine_create_on(w->edev, w->m, w->version, &eo, NULL, &w->e));
        w->gen = generator_of_engine(w->e);
    }
    if (w->spec.env.remote) {
        env_client_opts co = {.timeout_ms = w->spec.env.timeout_ms, .retries = w->spec.env.retries};
        TRY(env_client_remote(w->bus, w->spec.env.name, &co, &w->env));
    } else {
        TRY(env_client_local(w->spec.env.name, w->spec.env.config_json, &w->env));
    }
    bool said = false;
    tidal_status st;
    while ((st = bus_pull_subscribe(w->bus, w->names.prompts_stream, JOB_CONSUMER_ROLLOUT, &w->prompts)) != TIDAL_OK)
        if (st != TIDAL_ERR_NOT_FOUND || !keep_trying(w, t0, "the prompt consumer", &said)) return st;
    TRY(bus_kv_open(w->bus, w->names.workers_bucket, &w->workers));
    return bus_subscribe(w->bus, w->names.ctl_subject, NULL, on_control, w, &w->ctl);
}

/* Connect and join, then serve prompts until the job is done, a STOP or
 * DRAIN arrives or *stop is set. Errors are the join's and the bus's for
 * good; a prompt's failure is logged and the loop goes on. */
static tidal_status serve(worker *w)
{
    bus_opts bo = w->o->bus;
    if (!bo.name) bo.name = w->id;
    TRY(job_names_init(&w->names, w->o->job));
    TRY(bus_connect(&w->bus, &bo));
    TRY(join(w));
    tidal_log(TIDAL_LOG_INFO, "worker %s: joined job %s at weights v%llu (env %s%s)", w->id, w->names.job,
              (unsigned long long)w->version, w->spec.env.name, w->spec.env.remote ? ", remote" : "");
    TRY(episode_batch_create(&w->gen, w->tok, w->env, &w->batch));
    const int G = w->spec.rollout.group_size;
    w->max_batch = w->spec.rollout.max_batch > 0 ? w->spec.rollout.max_batch : G;
    w->batched = w->max_batch >= 2 * G && !w->rm && !w->oldest;
    if (w->max_batch >= 2 * G && !w->batched)
        tidal_log(TIDAL_LOG_WARN, "worker %s: rollout.max_batch %d: one group at a time all the same (%s)", w->id,
                  w->max_batch, w->rm ? "rollout.backend openai" : "rollout.weights oldest");
    else if (w->batched)
        tidal_log(TIDAL_LOG_INFO, "worker %s: up to %d sequences in flight (%d groups of %d)", w->id, w->max_batch,
                  w->max_batch / G, G);
    while (!leaving(w) && !(w->ctl_drain && !w->n_held)) {
        heartbeat(w, false);
        if (job_done(w)) {
            tidal_log(TIDAL_LOG_INFO, "worker %s: job %s is done", w->id, w->names.job);
            break;
        }
        if (w->ctl_quarantine) { /* idle until the job is done or it is stopped */
            if (w->n_held) give_back_all(w, tidal_fail(TIDAL_ERR_CANCELLED, "worker %s: quarantined", w->id));
            if (w->state != TIDAL__V1__WORKER_STATE__WORKER_STATE_QUARANTINED) {
                tidal_log(TIDAL_LOG_WARN, "worker %s: quarantined by the trainer: taking no more prompts", w->id);
                w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_QUARANTINED;
                heartbeat(w, true);
            }
            usleep(100 * 1000);
            continue;
        }
        if (w->n_held) between_steps(w);
        else take_newer_weights(w);
        if (!w->n_held && w->ctl_pause) {
            usleep(100 * 1000);
            continue;
        }
        start_waiting(w);
        /* beside groups running: a short look at the stream, at most every 50 ms while it is empty */
        const bool running = episode_batch_groups(w->batch) > 0;
        if (may_take(w) && (!running || tidal_clock_ms() - w->last_empty_fetch_ms > 50)) {
            bus_msg *m = NULL;
            int n = 0;
            tidal_status fs = bus_fetch(w->prompts, 1, running ? 5 : 500, &m, &n);
            if (fs == TIDAL_OK && n > 0) {
                if (bus_msg_delivered(m) > 1) {
                    w->redelivered++;
                    heartbeat(w, true);
                }
                take_prompt(w, m);
                continue; /* another may fit before the next step */
            }
            if (running) w->last_empty_fetch_ms = tidal_clock_ms();
            else if (fs != TIDAL_OK && fs != TIDAL_ERR_TIMEOUT) { /* the bus reconnects on its own; try again shortly */
                tidal_log(TIDAL_LOG_WARN, "worker %s: fetch: %s", w->id, tidal_errmsg());
                usleep(200 * 1000);
            }
            if (!running) continue;
        }
        if (running) step_groups(w);
        else usleep(10 * 1000); /* nothing to step (a prompt returned meanwhile): look again shortly */
    }
    if (w->n_held) give_back_all(w, tidal_fail(TIDAL_ERR_CANCELLED, "worker %s: leaving", w->id));
    return TIDAL_OK;
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
    w->fault_rng = hash_string(w->id);
    if (o->fault != ROLLOUT_FAULT_NONE)
        tidal_log(TIDAL_LOG_WARN, "worker %s: test-only fault %s on: it lies to the trainer", w->id,
                  rollout_fault_name(o->fault));
    w->state = TIDAL__V1__WORKER_STATE__WORKER_STATE_IDLE;
    tidal_status st = serve(w);
    char err[1024] = ""; /* the failure's message, kept through the releases below */
    if (st != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg());
    if (st != TIDAL_OK && !w->ctl && leaving(w)) { /* told to leave while joining (its waits end early): a clean leave */
        tidal_log(TIDAL_LOG_INFO, "worker %s: told to leave while joining (%s)", w->id, err);
        st = TIDAL_OK;
    }
    if (w->ctl) bus_unsubscribe(w->ctl);
    if (w->workers) bus_kv_delete(w->workers, w->id);
    tidal_log(TIDAL_LOG_INFO,
              "worker %s: leaving after %llu groups (%llu trajectories, %llu rejected messages, at most %d prompts "
              "at once)", w->id, (unsigned long long)w->groups, (unsigned long long)w->trajectories,
              (unsigned long long)w->rejected, w->max_held);
    bus_detach(w->bus); /* what follows needs no server, which a job's end may have stopped */
    bus_unsubscribe(w->prompts);
    bus_kv_close(w->workers);
    bus_kv_close(w->kv);
    free(w->held); /* serve returned every prompt it held */
    episode_batch_free(w->batch);
    env_client_free(w->env);
    engine_free(w->e);
    remote_free(w->rm);
    prom_stop(w->prom);
    hf_files_clear(&w->hf);
    weights_client_free(w->wc);
    for (int i = 0; i < w->n_hist; i++) model_free(w->hist_m[i] == w->m ? NULL : w->hist_m[i]);
    free(w->hist_m);
    free(w->hist_v);
    model_free(w->m);
    tokenizer_free(w->tok);
    bus_close(w->bus);
    spec_release(&w->spec);
    free(w);
    if (st != TIDAL_OK) return tidal_fail(st, "%s", err);
    return TIDAL_OK;
}
