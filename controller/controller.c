/* controller.c - the controller role (controller.h). */
#include "controller/controller.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "controller/admission.h"
#include "controller/data.h"
#include "base/prom.h"
#include "controller/envwatch.h"
#include "controller/stopreason.h"
#include "controller/tbevents.h"
#include "job/jobmodel.h"
#include "proto/codec.h"
#include "base/fs.h"
#include "base/spawn.h"
#include "base/str.h"
#include "job/names.h"
#include "job/samples.h"

#define MAX_WORKERS 4096
#define WORKER_LIVE_MS 5000
#define EVAL_TIMEOUT_MS 300000
#define EVAL_TEXTS 8            /* evaluation samples per round shown as text in TensorBoard */
#define EVAL_TEXT_BYTES 1500    /* of a prompt or a completion in that text */

typedef struct worker_row {
    char id[192];
    uint64_t updated_ms, trajectories, rejected, redelivered;
    bool gone;
    uint64_t env_failed;        /* its heartbeat's env fields (controller/envwatch.h) */
    bool env_failing;
    char env_error[512];
} worker_row;

/* A prompt's publication rides out a bus restart (reconnect, JetStream recovering its streams):
 * giving up ends the job. */
#define PROMPT_PUBLISH_TIMEOUT_MS 60000

/* One evaluation sample kept for its text (the first EVAL_TEXTS of a round). */
typedef struct eval_text {
    size_t prompt;              /* the held-out item */
    uint32_t sample;
    bool ok;                    /* scored; otherwise `completion` is the error */
    double reward;
    char *completion;           /* heap */
} eval_text;

typedef struct eval_round {
    bool active;
    uint64_t version;
    int prompts, k;
    int received;
    int scored, failed;         /* samples scored (status OK), and failed (env error, timeout, ...) */
    char error[512];            /* the first failed sample's error */
    double reward_sum;          /* over the scored samples */
    int *succ_first, *succ_any; /* [prompts] */
    int *first_scored, *n_scored; /* [prompts]: its sample 0 scored; its samples scored */
    uint8_t *seen;              /* [prompts * k]: samples counted (a repeat of one is not) */
    double started_ms;
    eval_text texts[EVAL_TEXTS];
    int n_texts;
} eval_round;

typedef struct ctl {
    const controller_opts *o;
    const job_spec *s;
    prom *prom;                 /* metrics.controller_port: /metrics (docs/metrics.md); NULL when off */
    job_names names;
    tidal_bus *bus;
    bus_kv *kv, *wkv;
    bus_kv_watcher *wwatch;
    bus_sub *metrics, *evals;
    dataset *data;
    chat_format fmt;
    uint64_t next, epoch;       /* cursor: the next training group's number */
    bool exhausted;
    bool said_zero_variance;    /* the warning that nothing trains because every group is dropped */
    /* the trainer's counts (KV trainer.groups) */
    uint64_t version, trained, failed, dropped_total, rejected_traj, duplicates;
    json_t *dropped;            /* reason -> groups */
    bool done;
    worker_row *workers;
    int n_workers;
    FILE *metrics_f, *eval_f;
    tbevents *tb;               /* RUN/tb/ (metrics.tensorboard); NULL when off or it could not be made */
    bool tb_said;               /* its first failure was logged: once is enough */
    tokenizer *tok;             /* decodes the evaluation samples the dashboard shows; NULL: token ids */
    samples_log *eval_samples;  /* RUN/eval_samples.jsonl (job/samples.h); NULL when off */
    double t0_ms, last_progress_ms, last_counts_ms;
    double reward_last, staleness_last, samples_last_s;
    uint64_t samples_total;
    double first_sample_ms;
    eval_round ev;
    uint64_t next_eval;         /* version of the next evaluation */
    env_watch envw;             /* the env's failures, from the workers' heartbeats */
    env_watch_worker *env_rows; /* [MAX_WORKERS] scratch for watch_env */
    /* reward curve */
    uint64_t *curve_step;
    double *curve_reward;
    size_t n_curve, cap_curve;
} ctl;

static bool stopping(const ctl *c) { return c->o->stop && *c->o->stop; }

/* ---------------------------------------------------------------- cursor */

static tidal_status cursor_load(ctl *c)
{
    void *v = NULL;
    size_t n = 0;
    tidal_status st = bus_kv_get(c->kv, JOB_KEY_CURSOR, &v, &n, NULL);
    if (st == TIDAL_ERR_NOT_FOUND) return TIDAL_OK; /* a new job: it starts at group 0 */
    if (st != TIDAL_OK) return st;
    json_t *o = json_loadb(v, n, 0, NULL);
    free(v);
    if (!json_is_integer(json_object_get(o, "next")))
        st = tidal_fail(TIDAL_ERR_CORRUPT, "controller: KV %s/%s: no \"next\"", c->names.kv_bucket, JOB_KEY_CURSOR);
    else {
        c->next = (uint64_t)json_integer_value(json_object_get(o, "next"));
        c->epoch = (uint64_t)json_integer_value(json_object_get(o, "epoch"));
        c->next_eval = (uint64_t)json_integer_value(json_object_get(o, "next_eval"));
    }
    json_decref(o);
    return st;
}

static tidal_status cursor_put(ctl *c)
{
    char buf[160];
    int n = snprintf(buf, sizeof buf, "{\"next\":%llu,\"epoch\":%llu,\"next_eval\":%llu}", (unsigned long long)c->next,
                     (unsigned long long)c->epoch, (unsigned long long)c->next_eval);
    return bus_kv_put(c->kv, JOB_KEY_CURSOR, buf, (size_t)n, NULL);
}

/* ---------------------------------------------------------------- the trainer's counts */

static void read_counts(ctl *c)
{
    const double t = tidal_clock_ms();
    if (t - c->last_counts_ms < 50) return;
    c->last_counts_ms = t;
    void *v = NULL;
    size_t n = 0;
    /* polled: a key not there yet (or a failed read) leaves the last counts until the next poll */
    if (bus_kv_get(c->kv, JOB_KEY_GROUPS, &v, &n, NULL) == TIDAL_OK) {
        json_t *o = json_loadb(v, n, 0, NULL);
        if (json_is_object(o)) {
            c->version = (uint64_t)json_integer_value(json_object_get(o, "version"));
            c->trained = (uint64_t)json_integer_value(json_object_get(o, "trained"));
            c->failed = (uint64_t)json_integer_value(json_object_get(o, "failed"));
            c->rejected_traj = (uint64_t)json_integer_value(json_object_get(o, "rejected"));
            c->duplicates = (uint64_t)json_integer_value(json_object_get(o, "duplicate_samples"));
            json_t *d = json_object_get(o, "dropped");
            if (json_is_object(d)) {
                json_decref(c->dropped);
                c->dropped = json_incref(d);
                c->dropped_total = 0;
                const char *k;
                json_t *x;
                json_object_foreach(d, k, x) c->dropped_total += (uint64_t)json_integer_value(x);
            }
        }
        json_decref(o);
    }
    free(v);
    if (bus_kv_get(c->kv, JOB_KEY_STATE, &v, &n, NULL) == TIDAL_OK)
        c->done = (n == 7 && !memcmp(v, "trained", 7)) || (n == 4 && !memcmp(v, "done", 4));
    free(v);
}

/* ---------------------------------------------------------------- workers */

static void read_workers(ctl *c)
{
    bus_kv_event ev;
    while (c->wwatch && bus_kv_watch_next(c->wwatch, 1, &ev) == TIDAL_OK) {
        if (ev.kind == BUS_KV_PUT || ev.kind == BUS_KV_DELETE) {
            int i = 0;
            while (i < c->n_workers && strcmp(c->workers[i].id, ev.key)) i++;
            if (i == c->n_workers && c->n_workers < MAX_WORKERS) {
                memset(&c->workers[i], 0, sizeof c->workers[i]);
                snprintf(c->workers[i].id, sizeof c->workers[i].id, "%s", ev.key);
                c->n_workers++;
            }
            worker_row *w = i < c->n_workers ? &c->workers[i] : NULL;
            Tidal__V1__WorkerStatus *s = NULL;
            if (w && ev.kind == BUS_KV_DELETE) w->gone = true;
            else if (w && codec_decode_worker_status(ev.value, ev.len, &s) == TIDAL_OK) {
                w->gone = false;
                w->updated_ms = s->updated_unix_ms;
                w->trajectories = s->trajectories, w->rejected = s->rejected, w->redelivered = s->redelivered;
                w->env_failed = s->env_failed;
                w->env_failing = s->env_failing_since_unix_ms != 0;
                snprintf(w->env_error, sizeof w->env_error, "%s", s->env_error);
                tidal__v1__worker_status__free_unpacked(s, NULL);
            }
        }
        bus_kv_event_clear(&ev);
    }
}

static bool worker_live(const worker_row *w, uint64_t now_unix_ms)
{
    return !w->gone && w->updated_ms + WORKER_LIVE_MS > now_unix_ms;
}

/* The env watch (controller/envwatch.h) over the live workers' heartbeats;
 * an error is the job's stop reason (env.missing_timeout_s). */
static tidal_status watch_env(ctl *c)
{
    env_watch_worker *rows = c->env_rows;
    const uint64_t t = tidal_unix_ms();
    int n = 0;
    for (int i = 0; i < c->n_workers; i++) {
        const worker_row *w = &c->workers[i];
        if (!worker_live(w, t)) continue;
        rows[n++] = (env_watch_worker){.id = w->id, .active = w->trajectories > 0 || w->env_failed > 0,
                                       .failing = w->env_failing, .failed = w->env_failed, .error = w->env_error};
    }
    return env_watch_update(&c->envw, rows, n, tidal_clock_ms());
}

static int live_workers(const ctl *c)
{
    const uint64_t t = tidal_unix_ms();
    int n = 0;
    for (int i = 0; i < c->n_workers; i++) n += worker_live(&c->workers[i], t);
    return n;
}

/* ---------------------------------------------------------------- dispatch */

/* data.answer_key other than "answer": the environments read task.answer, so
 * the row's answer_key field is copied there (the row is otherwise as in the
 * file). *out is malloc'd, or NULL when the row goes as it is. */
static tidal_status task_for_env(const ctl *c, const dataset_item *it, char **out)
{
    *out = NULL;
    const char *key = c->s->data.answer_key;
    if (c->s->data.generator[0] || !strcmp(key, "answer")) return TIDAL_OK;
    json_t *row = json_loads(it->task_json, 0, NULL);
    json_t *ans = json_object_get(row, key);
    tidal_status st = TIDAL_OK;
    if (!ans)
        st = tidal_fail(TIDAL_ERR_INVALID, "%s:%llu: data.answer_key: the row has no field \"%s\"", c->s->data.path,
                        (unsigned long long)it->source, key);
    else {
        json_object_set(row, "answer", ans);
        if (!(*out = json_dumps(row, JSON_COMPACT))) st = tidal_fail(TIDAL_ERR_NOMEM, "controller: out of memory");
    }
    json_decref(row);
    return st;
}

static tidal_status publish_prompt(ctl *c, const char *id, const char *group, const dataset_item *it, int first,
                                   int count, int group_size, uint64_t min_version, uint64_t data_index, bool eval,
                                   double temperature)
{
    tidal_status st = TIDAL_OK;
    char *text = NULL, *task = NULL;
    void *buf = NULL;
    size_t len = 0;
    TRY_GOTO(task_for_env(c, it, &task));
    TRY_GOTO(job_render_prompt(c->fmt, it->prompt, &text));
    Tidal__V1__SamplingParams sp = TIDAL__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = temperature;
    sp.top_p = c->s->rollout.top_p;
    sp.top_k = (uint32_t)c->s->rollout.top_k;
    Tidal__V1__Prompt p = TIDAL__V1__PROMPT__INIT;
    p.schema_version = 1;
    p.prompt_id = (char *)id, p.group_id = (char *)group;
    p.sample_index = (uint32_t)first, p.sample_count = (uint32_t)count, p.group_size = (uint32_t)group_size;
    p.text = text;
    p.task_json = task ? task : it->task_json;
    p.env = (char *)c->s->env.name;
    p.sampling = &sp;
    p.max_tokens = (uint32_t)c->s->rollout.max_tokens;
    p.min_version = min_version;
    p.data_index = data_index;
    p.dispatched_unix_ms = tidal_unix_ms();
    p.controller_epoch = c->epoch;
    p.eval = eval;
    TRY_GOTO(codec_validate(&p.base));
    TRY_GOTO(codec_encode(&p.base, &buf, &len));
    TRY_GOTO(bus_js_publish(c->bus, c->names.prompts_subject, buf, (int)len, id, PROMPT_PUBLISH_TIMEOUT_MS, NULL, NULL));
cleanup:
    free(buf);
    free(text);
    free(task);
    return st;
}

static tidal_status dispatch(ctl *c)
{
    const job_spec *s = c->s;
    const uint32_t K = (uint32_t)s->buffer.max_staleness, B = (uint32_t)s->trainer.groups_per_step;
    const uint64_t gone = c->dropped_total + c->failed;
    uint64_t room = admission_room(c->version, K, B, c->next, gone);
    tidal_status st = TIDAL_OK;
    dataset_item it = {0};
    while (room-- > 0 && !c->exhausted && !stopping(c)) {
        st = dataset_train_item(c->data, c->next, s->data.epochs, s->data.shuffle, &it);
        if (st == TIDAL_ERR_NOT_FOUND) { /* the end of the data is not a failure */
            if (!c->exhausted) /* not yet the stop: the groups in flight may still train the last steps */
                tidal_log(TIDAL_LOG_WARN, "controller: the data ends after %llu groups (data.epochs %d): no more "
                          "prompts; the job stops short if the groups in flight do not finish trainer.steps",
                          (unsigned long long)c->next, s->data.epochs);
            c->exhausted = true;
            st = TIDAL_OK;
            goto cleanup;
        }
        if (st != TIDAL_OK) goto cleanup;
        /* the step it feeds counts only groups still alive: dropped ones were replaced */
        const uint64_t live = c->next > gone ? c->next - gone : 0;
        const uint64_t minv = admission_min_version(admission_feeds(live, B), K);
        char id[48], group[48];
        snprintf(id, sizeof id, "p%llu", (unsigned long long)c->next);
        snprintf(group, sizeof group, "g%llu", (unsigned long long)c->next);
        TRY_GOTO(publish_prompt(c, id, group, &it, 0, s->rollout.group_size, s->rollout.group_size, minv, c->next,
                                false, s->rollout.temperature));
        dataset_item_clear(&it);
        c->next++;
        TRY_GOTO(cursor_put(c)); /* a crash before this republishes p<n>: de-duplicated */
    }
cleanup:
    dataset_item_clear(&it);
    return st;
}

/* ---------------------------------------------------------------- TensorBoard */

/* A failed write to RUN/tb/ is said once; the job goes on without it. */
static void tb_note(ctl *c, tidal_status st)
{
    if (st == TIDAL_OK || c->tb_said) return;
    c->tb_said = true;
    tidal_log(TIDAL_LOG_WARN, "controller: %s; the job goes on (metrics.jsonl has every step)", tidal_errmsg());
}

/* At most max bytes of s, cut before a UTF-8 sequence that would not fit, with "..." when cut. Heap; NULL on OOM. */
static char *text_head(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max) return strdup(s);
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return str_printf("%.*s...", (int)max, s);
}

static void eval_texts_clear(eval_round *e)
{
    for (int i = 0; i < e->n_texts; i++) free(e->texts[i].completion);
    e->n_texts = 0;
}

/* Keep sample t of held-out item `prompt` for the round's text (while fewer than EVAL_TEXTS are kept). */
static void eval_keep_text(eval_round *e, size_t prompt, const Tidal__V1__Trajectory *t)
{
    if (e->n_texts >= EVAL_TEXTS) return;
    const bool ok = t->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    char *text = text_head(ok ? t->completion_text : *t->error ? t->error : "no message", EVAL_TEXT_BYTES);
    if (!text) return; /* out of memory: one text fewer */
    e->texts[e->n_texts++] = (eval_text){.prompt = prompt, .sample = t->sample_index, .ok = ok, .reward = t->reward,
                                         .completion = text};
}

/* The round's kept samples as TensorBoard text, tag eval/sample_texts (eval/samples is eval.jsonl's
 * count), one Markdown row each: the held-out item's prompt, the completion, the reward. */
static void eval_tb_texts(ctl *c)
{
    const eval_round *e = &c->ev;
    char *rows[EVAL_TEXTS] = {0};
    int n = 0;
    for (int i = 0; i < e->n_texts; i++) {
        const eval_text *t = &e->texts[i];
        dataset_item it = {0};
        char *prompt = dataset_eval_item(c->data, t->prompt, &it) == TIDAL_OK ? text_head(it.prompt, EVAL_TEXT_BYTES)
                                                                              : NULL;
        dataset_item_clear(&it);
        char head[128];
        if (t->ok)
            snprintf(head, sizeof head, "held-out item %zu, sample %u: reward %.4g", t->prompt, t->sample, t->reward);
        else snprintf(head, sizeof head, "held-out item %zu, sample %u: failed", t->prompt, t->sample);
        rows[n] = str_printf("**%s**\n\nprompt:\n\n```\n%s\n```\n\n%s:\n\n```\n%s\n```", head,
                             prompt ? prompt : "(not available)", t->ok ? "completion" : "error", t->completion);
        free(prompt);
        if (rows[n]) n++;
    }
    tb_note(c, tbevents_texts(c->tb, (int64_t)e->version, (double)tidal_unix_ms() / 1e3, "eval/sample_texts",
                              (const char *const *)rows, (size_t)n));
    for (int i = 0; i < n; i++) free(rows[i]);
}

/* ---------------------------------------------------------------- evaluation */

static tidal_status eval_start(ctl *c)
{
    const job_spec *s = c->s;
    eval_round *e = &c->ev;
    size_t n = dataset_eval_count(c->data);
    if (s->eval.max_prompts > 0 && n > (size_t)s->eval.max_prompts) n = (size_t)s->eval.max_prompts;
    if (n == 0) return TIDAL_OK;
    free(e->succ_first), free(e->succ_any), free(e->seen), free(e->first_scored), free(e->n_scored);
    eval_texts_clear(e);
    *e = (eval_round){.active = true, .version = c->version, .prompts = (int)n, .k = s->eval.pass_k,
                      .started_ms = tidal_clock_ms()};
    e->succ_first = calloc(n, sizeof *e->succ_first);
    e->succ_any = calloc(n, sizeof *e->succ_any);
    e->seen = calloc(n * (size_t)(e->k > 0 ? e->k : 1), 1);
    e->first_scored = calloc(n, sizeof *e->first_scored);
    e->n_scored = calloc(n, sizeof *e->n_scored);
    if (!e->succ_first || !e->succ_any || !e->seen || !e->first_scored || !e->n_scored)
        return tidal_fail(TIDAL_ERR_NOMEM, "controller: out of memory");
    const double temp = e->k == 1 ? 0.0 : s->rollout.temperature;
    tidal_status st = TIDAL_OK;
    dataset_item it = {0};
    for (size_t i = 0; i < n; i++) {
        TRY_GOTO(dataset_eval_item(c->data, i, &it));
        char id[64], group[64];
        snprintf(id, sizeof id, "e%llu-%zu", (unsigned long long)e->version, i);
        snprintf(group, sizeof group, "eval%llu-%zu", (unsigned long long)e->version, i);
        TRY_GOTO(publish_prompt(c, id, group, &it, 0, e->k, e->k, e->version, i, true, temp));
        dataset_item_clear(&it);
    }
    tidal_log(TIDAL_LOG_INFO, "controller: evaluation at v%llu: %zu prompts, pass@%d", (unsigned long long)e->version,
              n, e->k);
cleanup:
    dataset_item_clear(&it);
    return st;
}

/* x / n as JSON, null when n is 0 (nothing scored: no value, never 0). */
static json_t *ratio_or_null(double x, int n) { return n > 0 ? json_real(x / n) : json_null(); }

/* The round's record in RUN/eval.jsonl and the log. Failed samples (an env
 * error or timeout) are counted apart and never scored: reward_mean is over
 * the scored samples, pass@1 over the prompts whose sample 0 scored, pass@k
 * over the prompts whose k samples all scored; null when there are none. */
static void eval_finish(ctl *c, bool complete)
{
    eval_round *e = &c->ev;
    int first = 0, any = 0, n_first = 0, n_all = 0;
    for (int i = 0; i < e->prompts; i++) {
        if (e->first_scored[i]) first += e->succ_first[i], n_first++;
        if (e->n_scored[i] == e->k) any += e->succ_any[i] > 0, n_all++;
    }
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer((json_int_t)e->version));
    json_object_set_new(o, "prompts", json_integer(e->prompts));
    json_object_set_new(o, "samples", json_integer(e->received));
    json_object_set_new(o, "scored", json_integer(e->scored));
    json_object_set_new(o, "failed", json_integer(e->failed));
    json_object_set_new(o, "complete", json_boolean(complete));
    json_object_set_new(o, "reward_mean", ratio_or_null(e->reward_sum, e->scored));
    json_object_set_new(o, "pass@1", ratio_or_null(first, n_first));
    if (e->k > 1) {
        char key[32];
        snprintf(key, sizeof key, "pass@%d", e->k);
        json_object_set_new(o, key, ratio_or_null(any, n_all));
    }
    if (e->failed) json_object_set_new(o, "error", json_string(e->error));
    if (e->failed)
        tidal_log(TIDAL_LOG_WARN, "controller: evaluation at v%llu: %d of %d samples failed (%s)%s",
                  (unsigned long long)e->version, e->failed, e->received, e->error,
                  e->scored ? "; reward and pass@ are over the scored samples only"
                            : ": no sample scored, so no reward or pass@ (null in eval.jsonl)");
    char *line = json_dumps(o, JSON_COMPACT);
    if (line && c->eval_f) fprintf(c->eval_f, "%s\n", line), fflush(c->eval_f);
    if (c->tb) { /* eval.jsonl's numbers as eval/<field>, then the samples' text */
        tb_note(c, tbevents_json(c->tb, (int64_t)e->version, (double)tidal_unix_ms() / 1e3, "eval/", o, "step"));
        eval_tb_texts(c);
    }
    eval_texts_clear(e);
    tidal_log(TIDAL_LOG_INFO, "controller: evaluation %s", line ? line : "");
    free(line);
    json_decref(o);
    e->active = false;
}

/* Count one evaluation sample of the active round (once per sample). */
static void eval_count(eval_round *e, const Tidal__V1__Trajectory *t)
{
    unsigned long long v;
    size_t idx;
    if (!e->active || sscanf(t->group_id, "eval%llu-%zu", &v, &idx) != 2 || v != e->version ||
        idx >= (size_t)e->prompts || t->sample_index >= (uint32_t)e->k)
        return;
    uint8_t *seen = &e->seen[idx * (size_t)e->k + t->sample_index];
    if (*seen) return;
    *seen = 1;
    e->received++;
    eval_keep_text(e, idx, t);
    if (t->status != TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK) { /* failed: counted, never scored */
        if (!e->failed++) snprintf(e->error, sizeof e->error, "%s", *t->error ? t->error : "no message");
        return;
    }
    const bool ok = t->reward >= 1.0 - 1e-9;
    if (t->sample_index == 0) e->succ_first[idx] = ok, e->first_scored[idx] = 1;
    e->succ_any[idx] += ok;
    e->n_scored[idx]++;
    e->reward_sum += t->reward;
    e->scored++;
}

static void read_evals(ctl *c)
{
    bus_msg *msgs[64];
    int n = 0;
    if (!c->evals || bus_fetch(c->evals, 64, 5, msgs, &n) != TIDAL_OK) n = 0;
    eval_round *e = &c->ev;
    for (int i = 0; i < n; i++) {
        Tidal__V1__TrajectoryGroup *g = NULL;
        if (codec_decode_trajectory_group(bus_msg_data(msgs[i]), (size_t)bus_msg_len(msgs[i]), &g) != TIDAL_OK)
            tidal_log(TIDAL_LOG_WARN, "controller: rejected a message on %s: %s", bus_msg_subject(msgs[i]),
                      tidal_errmsg());
        for (size_t k = 0; g && k < g->n_trajectories; k++) eval_count(e, g->trajectories[k]);
        if (g && g->n_trajectories) { /* the rollout viewer's evaluation samples */
            Tidal__V1__Trajectory **one[1] = {g->trajectories};
            const int size = (int)g->n_trajectories;
            samples_log_step(c->eval_samples, e->version, e->version, one, &size, 1, 1);
        }
        if (g) tidal__v1__trajectory_group__free_unpacked(g, NULL);
        bus_ack(msgs[i]);
        bus_msg_destroy(msgs[i]);
    }
    if (e->active && e->received >= e->prompts * e->k) eval_finish(c, true);
    else if (e->active && tidal_clock_ms() - e->started_ms > EVAL_TIMEOUT_MS) eval_finish(c, false);
}

/* ---------------------------------------------------------------- metrics */

static void curve_add(ctl *c, uint64_t step, double reward)
{
    if (c->n_curve == c->cap_curve) {
        size_t cap = c->cap_curve ? 2 * c->cap_curve : 256;
        uint64_t *s = realloc(c->curve_step, cap * sizeof *s);
        if (s) c->curve_step = s;
        double *r = s ? realloc(c->curve_reward, cap * sizeof *r) : NULL;
        if (!s || !r) return;
        c->curve_reward = r, c->cap_curve = cap;
    }
    c->curve_step[c->n_curve] = step, c->curve_reward[c->n_curve] = reward;
    c->n_curve++;
}

static void read_metrics(ctl *c)
{
    bus_msg *m = NULL;
    while (c->metrics && bus_next(c->metrics, 1, &m) == TIDAL_OK) {
        Tidal__V1__Metric *mt = NULL;
        if (codec_decode_metric(bus_msg_data(m), (size_t)bus_msg_len(m), &mt) != TIDAL_OK) {
            tidal_log(TIDAL_LOG_WARN, "controller: rejected a message on %s: %s", bus_msg_subject(m), tidal_errmsg());
        } else if (!strcmp(mt->role, "trainer")) {
            json_t *o = json_object();
            json_object_set_new(o, "step", json_integer((json_int_t)mt->step));
            prom_set(c->prom, "tidal_step", NULL, "the trainer's last step", (double)mt->step);
            json_object_set_new(o, "time", json_real(mt->time));
            double reward = NAN, samples = 0;
            for (size_t i = 0; i < mt->n_values; i++) {
                const double v = mt->values[i]->value;
                json_object_set_new(o, mt->values[i]->key, isfinite(v) ? json_real(v) : json_null());
                job_metric_export(c->prom, "tidal_trainer", mt->values[i]->key, v); /* every metrics.jsonl field */
                if (!strcmp(mt->values[i]->key, "reward_mean")) reward = v;
                if (!strcmp(mt->values[i]->key, "samples")) samples = v;
                if (!strcmp(mt->values[i]->key, "staleness_mean")) c->staleness_last = v;
            }
            json_object_set_new(o, "workers", json_integer(live_workers(c)));
            char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
            if (line && c->metrics_f) fprintf(c->metrics_f, "%s\n", line), fflush(c->metrics_f);
            if (c->tb) /* the same record: every number of it but the step, tagged by its key */
                tb_note(c, tbevents_json(c->tb, (int64_t)mt->step, (double)tidal_unix_ms() / 1e3, "", o, "step"));
            free(line);
            json_decref(o);
            c->reward_last = reward;
            if (!c->samples_total) c->first_sample_ms = tidal_clock_ms();
            c->samples_total += (uint64_t)samples;
            curve_add(c, mt->step, reward);
        }
        if (mt) tidal__v1__metric__free_unpacked(mt, NULL);
        bus_msg_destroy(m);
    }
}

/* The controller's own numbers on /metrics (once a second, with the progress
 * line): the job's progress and every group by what became of it. */
static void export_metrics(ctl *c, const job_metric_value *vals, int n)
{
    if (!c->prom) return;
    for (int i = 0; i < n; i++) {
        char name[160];
        snprintf(name, sizeof name, "tidal_job_%s", vals[i].key);
        prom_set(c->prom, name, NULL, NULL, vals[i].value);
    }
    prom_set(c->prom, "tidal_groups", "fate=\"trained\"", "groups by what became of them", (double)c->trained);
    prom_set(c->prom, "tidal_groups", "fate=\"failed\"", NULL, (double)c->failed);
    const char *fate;
    json_t *v;
    json_object_foreach(c->dropped, fate, v) {
        char label[96];
        snprintf(label, sizeof label, "fate=\"%.80s\"", fate);
        prom_set(c->prom, "tidal_groups", label, NULL, json_number_value(v));
    }
    prom_set(c->prom, "tidal_groups", "fate=\"dispatched\"", NULL, (double)c->next);
    prom_set(c->prom, "tidal_job_done", NULL, "1 once the last step is trained", c->done ? 1.0 : 0.0);
}

/* One line a second on tidal.J.metrics.controller: what `tidal run` shows. */
static void progress(ctl *c)
{
    const double t = tidal_clock_ms();
    if (t - c->last_progress_ms < 1000) return;
    c->last_progress_ms = t;
    const double run_s = (t - c->first_sample_ms) / 1e3;
    const double sps = c->samples_total && run_s > 0 ? (double)c->samples_total / run_s : 0;
    const double steps = c->s->trainer.steps;
    const double eta = c->version > 0 && sps > 0
                           ? (steps - (double)c->version) * c->s->trainer.groups_per_step * c->s->rollout.group_size / sps
                           : -1;
    const job_metric_value vals[] = {
        {"version", (double)c->version}, {"steps", steps},     {"reward_mean", c->reward_last},
        {"staleness_mean", c->staleness_last}, {"samples_per_s", sps}, {"workers", live_workers(c)},
        {"eta_s", eta},                    {"dispatched", (double)c->next},
        {"env_failed", (double)c->envw.failed}, {"env_failing_workers", c->envw.failing_workers},
    };
    job_metric_publish_alert(c->bus, &c->names, "controller", c->version, (t - c->t0_ms) / 1e3, vals,
                             (int)(sizeof vals / sizeof vals[0]), c->envw.alert);
    export_metrics(c, vals, (int)(sizeof vals / sizeof vals[0]));
}

/* ---------------------------------------------------------------- the end */

/* PATH as a gnuplot single-quoted string's body: a quote is doubled. Heap; NULL on OOM. */
static char *gnuplot_quoted(const char *path)
{
    char *q = malloc(2 * strlen(path) + 1), *w = q;
    for (const char *p = path; q && *p; p++) {
        if (*p == '\'') *w++ = '\'';
        *w++ = *p;
    }
    if (q) *w = '\0';
    return q;
}

/* The reward curve: RUN/reward.tsv always, RUN/reward.svg when gnuplot is
 * installed and a step has trained (RUN/reward.gp is the script, to re-plot by
 * hand). Best effort: a missing or failing gnuplot is a warning, never a
 * failed job. */
static void plot(ctl *c)
{
    char tsv[4200], svg[4200], gp[4200];
    snprintf(tsv, sizeof tsv, "%s/reward.tsv", c->o->run_dir);
    snprintf(svg, sizeof svg, "%s/reward.svg", c->o->run_dir);
    snprintf(gp, sizeof gp, "%s/reward.gp", c->o->run_dir);
    FILE *f = fopen(tsv, "w");
    if (!f) return;
    fprintf(f, "# step\treward_mean\n");
    size_t points = 0;
    for (size_t i = 0; i < c->n_curve; i++)
        if (isfinite(c->curve_reward[i]))
            fprintf(f, "%llu\t%.6f\n", (unsigned long long)c->curve_step[i], c->curve_reward[i]), points++;
    fclose(f);
    if (points == 0) { /* gnuplot would only say "x range is invalid" */
        tidal_log(TIDAL_LOG_INFO, "controller: no step trained: no reward curve to plot");
        return;
    }
    char *svg_q = gnuplot_quoted(svg), *tsv_q = gnuplot_quoted(tsv), *job_q = gnuplot_quoted(c->names.job);
    char *script = svg_q && tsv_q && job_q
                       ? str_printf("set terminal svg size 800,450 dynamic background rgb 'white'\n"
                                    "set output '%s'\n"
                                    "set title 'job %s: reward per step'\n"
                                    "set xlabel 'trainer step'\nset ylabel 'reward mean'\nset yrange [0:1.05]\n"
                                    "set grid\nset key off\n"
                                    "plot '%s' using 1:2 with linespoints lw 2 pt 7 ps 0.4\n",
                                    svg_q, job_q, tsv_q)
                       : NULL;
    free(svg_q), free(tsv_q), free(job_q);
    if (!script || fs_write_file(gp, script, strlen(script)) != TIDAL_OK) {
        tidal_log(TIDAL_LOG_WARN, "controller: cannot write %s; %s has the curve as text", gp, tsv);
        free(script);
        return;
    }
    free(script);
    char *argv[] = {"gnuplot", gp, NULL}, *out = NULL;
    size_t len = 0;
    int code = -1;
    tidal_status st = spawn_capture("gnuplot", argv, NULL, &out, &len, &code);
    free(out);
    if (st == TIDAL_ERR_NOT_FOUND)
        tidal_log(TIDAL_LOG_WARN, "controller: no gnuplot: %s has the curve as text", tsv);
    else if (st != TIDAL_OK || code != 0)
        tidal_log(TIDAL_LOG_WARN, "controller: gnuplot %s failed (%s); %s has the curve as text", gp,
                  st != TIDAL_OK ? tidal_errmsg() : "see its message above", tsv);
}

/* The job is done: every worker may leave now (they would notice the state
 * key within a second, but the bus may be gone by then). */
static void stop_workers(ctl *c)
{
    Tidal__V1__Control m = TIDAL__V1__CONTROL__INIT;
    m.schema_version = 1;
    m.command = TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_STOP;
    m.reason = "job done", m.issuer = "controller", m.target = "rollout";
    m.issued_unix_ms = tidal_unix_ms();
    void *buf = NULL;
    size_t len = 0;
    if (codec_encode(&m.base, &buf, &len) == TIDAL_OK) bus_publish(c->bus, c->names.ctl_subject, buf, (int)len);
    free(buf);
    bus_flush(c->bus, 2000);
}

/* The trainer's check of each worker (KV trainer.workers: mismatch, who was
 * quarantined and why), as the summary shows it; null when not there. */
static json_t *worker_check_json(ctl *c)
{
    void *v = NULL;
    size_t n = 0;
    json_t *j = NULL;
    if (bus_kv_get(c->kv, JOB_KEY_WORKER_CHECK, &v, &n, NULL) == TIDAL_OK) j = json_loadb(v, n, 0, NULL);
    free(v);
    if (!j) return json_null();
    const char *id;
    json_t *w;
    json_object_foreach(json_object_get(j, "workers"), id, w) {
        const char *why = json_string_value(json_object_get(w, "reason"));
        if (json_is_true(json_object_get(w, "quarantined")))
            tidal_log(TIDAL_LOG_WARN, "controller: worker %s was quarantined: %s", id, why ? why : "");
    }
    return j;
}

/* RUN/summary.json; `stop_reason` says why the job ended ("done", or the
 * failure, or a stop by signal). */
static tidal_status summary(ctl *c, const char *stop_reason)
{
    c->last_counts_ms = 0; /* the newest counts, not a throttled read */
    read_counts(c);
    read_workers(c);
    const uint64_t accounted = c->trained + c->dropped_total + c->failed;
    json_t *o = json_object(), *g = json_object(), *p = json_object(), *r = json_object();
    json_object_set_new(o, "job", json_string(c->names.job));
    json_object_set_new(o, "version", json_integer((json_int_t)c->version));
    json_object_set_new(o, "steps", json_integer(c->s->trainer.steps));
    json_object_set_new(o, "done", json_boolean(c->done));
    json_t *why = json_string(stop_reason);
    json_object_set_new(o, "stop_reason", why ? why : json_string("(not UTF-8)"));
    json_object_set_new(o, "wall_s", json_real((tidal_clock_ms() - c->t0_ms) / 1e3));
    uint64_t redelivered = 0, rejected_prompts = 0;
    for (int i = 0; i < c->n_workers; i++)
        redelivered += c->workers[i].redelivered, rejected_prompts += c->workers[i].rejected;
    json_object_set_new(p, "dispatched", json_integer((json_int_t)c->next));
    json_object_set_new(p, "redelivered", json_integer((json_int_t)redelivered));
    json_object_set_new(o, "prompts", p);
    json_object_set_new(g, "dispatched", json_integer((json_int_t)c->next));
    json_object_set_new(g, "trained", json_integer((json_int_t)c->trained));
    json_object_set_new(g, "dropped", c->dropped ? json_deep_copy(c->dropped) : json_object());
    json_object_set_new(g, "failed", json_integer((json_int_t)c->failed));
    json_object_set_new(g, "in_flight", json_integer((json_int_t)(c->next >= accounted ? c->next - accounted : 0)));
    json_object_set_new(o, "groups", g);
    json_object_set_new(r, "prompts", json_integer((json_int_t)rejected_prompts));
    json_object_set_new(r, "trajectories", json_integer((json_int_t)c->rejected_traj));
    json_object_set_new(o, "rejected", r);
    json_object_set_new(o, "duplicate_samples", json_integer((json_int_t)c->duplicates));
    json_object_set_new(o, "worker_check", worker_check_json(c));
    double first = 0, last = 0;
    size_t nf = 0, nl = 0;
    for (size_t i = 0; i < c->n_curve && i < 10; i++) first += c->curve_reward[i], nf++;
    for (size_t i = c->n_curve > 10 ? c->n_curve - 10 : 0; i < c->n_curve; i++) last += c->curve_reward[i], nl++;
    json_t *rw = json_object();
    json_object_set_new(rw, "first", c->n_curve ? json_real(c->curve_reward[0]) : json_null());
    json_object_set_new(rw, "first10_mean", nf ? json_real(first / nf) : json_null());
    json_object_set_new(rw, "last10_mean", nl ? json_real(last / nl) : json_null());
    json_object_set_new(o, "reward", rw);
    char path[4200];
    snprintf(path, sizeof path, "%s/summary.json", c->o->run_dir);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    json_decref(o);
    tidal_status st = text ? fs_write_file(path, text, strlen(text)) : tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    free(text);
    if (c->next < accounted)
        return tidal_fail(TIDAL_ERR_CORRUPT,
                          "controller: %llu groups dispatched but %llu accounted for (trained %llu, dropped %llu, "
                          "failed %llu): a group was counted twice",
                          (unsigned long long)c->next, (unsigned long long)accounted, (unsigned long long)c->trained,
                          (unsigned long long)c->dropped_total, (unsigned long long)c->failed);
    return st;
}

/* ---------------------------------------------------------------- start */

/* The effective spec: for workers (KV) and for people (the run directory). */
static tidal_status write_spec(ctl *c)
{
    json_t *sj = spec_to_json(c->s);
    char *text = sj ? json_dumps(sj, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(sj);
    if (!text) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    tidal_status st = TIDAL_OK;
    char path[4200];
    snprintf(path, sizeof path, "%s/spec.json", c->o->run_dir);
    TRY_GOTO(fs_write_file(path, text, strlen(text)));
    TRY_GOTO(bus_kv_put(c->kv, JOB_KEY_SPEC, text, strlen(text), NULL));
cleanup:
    free(text);
    return st;
}

static tidal_status start(ctl *c)
{
    const job_spec *s = c->s;
    TRY(job_names_init(&c->names, s->job.name));
    TRY(fs_mkdirs(c->o->run_dir));
    bus_opts bo = c->o->bus;
    if (!bo.name) bo.name = "controller";
    TRY(bus_connect(&c->bus, &bo));
    job_bus_cfg jc = {.prompt_ack_wait_ms = s->rollout.ack_wait_ms, .prompt_max_deliver = 5};
    TRY(job_bus_ensure(c->bus, &c->names, &jc, &c->kv));
    TRY(write_spec(c));
    TRY(cursor_load(c));
    c->epoch++;
    if (s->data.generator[0])
        TRY(dataset_open_generator(s->data.generator, s->env.config_json, (uint64_t)s->data.seed, s->data.eval_size,
                                   &c->data));
    else
        TRY(dataset_open_jsonl(s->data.path, s->data.prompt_key, s->data.eval_fraction, (uint64_t)s->data.seed,
                               &c->data));
    /* the format from the model directory's files: rendering text needs no tokenizer */
    TRY(job_chat_format(s, &c->fmt));
    if (!strcmp(s->data.template_, "auto")) /* say what auto chose: a wrong format is a silent failure */
        tidal_log(TIDAL_LOG_INFO, "controller: data.template auto: prompts in the %s format (%s)",
                  chat_format_name(c->fmt),
                  s->model.init.on && !s->model.init.tokenizer[0]
                      ? "model.init's own tokenizer has no chat template"
                      : s->model.init.on ? "from model.init.tokenizer's tokenizer_config.json chat_template; plain "
                                           "when it has none"
                                         : "from model.path's tokenizer_config.json chat_template; plain when it has "
                                           "none");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->o->run_dir);
    c->metrics_f = fopen(path, "a");
    snprintf(path, sizeof path, "%s/eval.jsonl", c->o->run_dir);
    c->eval_f = s->eval.every > 0 ? fopen(path, "a") : NULL;
    if (s->eval.every > 0) { /* best effort: the job goes on without them */
        if (job_tokenizer(s, &c->tok) != TIDAL_OK)
            tidal_log(TIDAL_LOG_WARN, "controller: eval_samples.jsonl shows token ids: %s", tidal_errmsg());
        if (samples_log_open(c->o->run_dir, "eval_samples", c->tok, 0, &c->eval_samples) != TIDAL_OK)
            tidal_log(TIDAL_LOG_WARN, "controller: %s", tidal_errmsg());
    }
    if (!c->metrics_f) return tidal_fail(TIDAL_ERR_IO, "controller: cannot write %s/metrics.jsonl", c->o->run_dir);
    if (s->metrics.tensorboard) { /* best effort: a run directory that takes no event file still runs */
        snprintf(path, sizeof path, "%s/tb", c->o->run_dir);
        tb_note(c, tbevents_open(path, (double)tidal_unix_ms() / 1e3, &c->tb));
        if (c->tb) tidal_log(TIDAL_LOG_INFO, "controller: TensorBoard events in %s (tensorboard --logdir %s)",
                             tbevents_path(c->tb), path);
    }
    char subj[200];
    snprintf(subj, sizeof subj, "%s.>", c->names.metrics_prefix);
    TRY(bus_subscribe_sync(c->bus, subj, NULL, &c->metrics));
    if (s->metrics.controller_port != 0) {
        char labels[160];
        snprintf(labels, sizeof labels, "tidal_job=\"%s\"", c->names.job);
        TRY_WRAP(prom_start(s->metrics.bind, s->metrics.controller_port > 0 ? s->metrics.controller_port : 0, labels,
                            &c->prom),
                 "controller: metrics.controller_port");
        tidal_log(TIDAL_LOG_INFO, "controller: metrics on http://%s:%d/metrics", s->metrics.bind, prom_port(c->prom));
    }
    TRY(bus_pull_subscribe(c->bus, c->names.traj_stream, JOB_CONSUMER_EVAL, &c->evals));
    TRY(bus_kv_open(c->bus, c->names.workers_bucket, &c->wkv));
    TRY(bus_kv_watch(c->wkv, NULL, &c->wwatch));
    c->workers = calloc(MAX_WORKERS, sizeof *c->workers);
    c->env_rows = calloc(MAX_WORKERS, sizeof *c->env_rows);
    if (!c->workers || !c->env_rows) return tidal_fail(TIDAL_ERR_NOMEM, "controller: out of memory");
    tidal_log(TIDAL_LOG_INFO, "controller: job %s (controller epoch %llu) continues at group %llu; run dir %s",
              c->names.job, (unsigned long long)c->epoch, (unsigned long long)c->next, c->o->run_dir);
    return cursor_put(c);
}

/* The counts a stop reason names. */
static stop_counts counts_of(const ctl *c)
{
    return (stop_counts){.dispatched = c->next, .trained = c->trained, .failed = c->failed, .dropped = c->dropped,
                         .version = c->version, .steps = c->s->trainer.steps,
                         .groups_per_step = c->s->trainer.groups_per_step, .epochs = c->s->data.epochs};
}

/* Say once, early, that nothing trains because every group so far was
 * dropped as zero-variance (an untrained model that solves none of its
 * tasks): the job goes on - a group that differs may come - but the user
 * should not have to wait for the data to run out to learn why. */
static void warn_zero_variance(ctl *c)
{
    const uint64_t B = (uint64_t)c->s->trainer.groups_per_step;
    stop_counts sc = counts_of(c);
    const uint64_t zv = stop_counts_dropped(&sc, "zero_variance");
    if (c->said_zero_variance || c->trained > 0 || zv < 4 * B || zv < c->dropped_total + c->failed) return;
    c->said_zero_variance = true;
    tidal_log(TIDAL_LOG_WARN, "controller: the first %llu groups were all dropped as zero-variance (every sample of "
              "each scored the same; buffer.filter_zero_variance): nothing trains until a group's rewards differ. An "
              "untrained model that solves none of its tasks never gets there: set buffer.filter_zero_variance: "
              "false, or start from a model that solves some", (unsigned long long)zv);
}

tidal_status controller_run(const controller_opts *o)
{
    ctl *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "controller: out of memory");
    c->o = o, c->s = o->spec;
    c->t0_ms = c->first_sample_ms = tidal_clock_ms();
    c->reward_last = NAN;
    env_watch_init(&c->envw, o->spec->env.name, o->spec->env.missing_timeout_s);
    tidal_status st = TIDAL_OK;
    TRY_GOTO(start(c));
    const int every = c->s->eval.every;
    while (!stopping(c)) {
        read_counts(c);
        read_workers(c);
        read_metrics(c);
        if (every > 0) {
            read_evals(c);
            if (!c->ev.active && c->version >= c->next_eval && (!c->done || c->version == c->next_eval)) {
                TRY_GOTO(eval_start(c));
                c->next_eval = (c->version / (uint64_t)every + 1) * (uint64_t)every;
                if (c->next_eval > (uint64_t)c->s->trainer.steps && c->version < (uint64_t)c->s->trainer.steps)
                    c->next_eval = (uint64_t)c->s->trainer.steps; /* the last version is always evaluated */
                TRY_GOTO(cursor_put(c));
            }
        }
        if (c->done && !c->ev.active) break;
        TRY_GOTO(watch_env(c)); /* a failing env: said loudly; the job stops after env.missing_timeout_s */
        /* a job where nothing can train: say so rather than spin (an env failing everywhere has its own bound) */
        const uint64_t B = (uint64_t)c->s->trainer.groups_per_step;
        if (c->trained == 0 && c->failed >= 8 * B && !env_watch_all_failing(&c->envw)) {
            st = tidal_fail(TIDAL_ERR_INVALID,
                            "controller: the first %llu groups all failed (env errors or timeouts: the workers' logs "
                            "say why); stopping the job", (unsigned long long)c->failed);
            goto cleanup;
        }
        warn_zero_variance(c);
        if (c->exhausted && c->next == c->trained + c->dropped_total + c->failed) {
            char why[1024];
            stop_counts sc = counts_of(c);
            stop_reason_exhausted(&sc, why, sizeof why);
            st = tidal_fail(TIDAL_ERR_INVALID, "controller: %s", why);
            goto cleanup;
        }
        if (!c->done) TRY_GOTO(dispatch(c));
        progress(c);
        usleep(20 * 1000);
    }
    /* Stopped, done or failed, the job ends the same way: the summary, the curve, the
     * workers told; a summary's failure is reported only when nothing failed before. */
cleanup:;
    char err[1024] = "";
    if (st != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg()); /* before the summary's calls overwrite it */
    if (c->bus) {
        read_metrics(c);
        tidal_status ss = summary(c, c->done ? "done" : err[0] ? err : "stopped (SIGINT or SIGTERM) before the end");
        if (st == TIDAL_OK && ss != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg());
        if (st == TIDAL_OK) st = ss;
        plot(c);
        if (c->done) { /* workers that join later see "done" and leave at once */
            tidal_log(TIDAL_LOG_INFO, "controller: job %s done at v%llu", c->names.job, (unsigned long long)c->version);
            if (bus_kv_put(c->kv, JOB_KEY_STATE, "done", 4, NULL) != TIDAL_OK)
                tidal_log(TIDAL_LOG_WARN, "controller: %s", tidal_errmsg());
            stop_workers(c);
        }
    }
    if (c->ev.active) eval_finish(c, false);
    eval_texts_clear(&c->ev);
    tbevents_close(c->tb);
    free(c->ev.succ_first), free(c->ev.succ_any), free(c->ev.seen), free(c->ev.first_scored), free(c->ev.n_scored);
    if (c->metrics_f) fclose(c->metrics_f);
    if (c->eval_f) fclose(c->eval_f);
    samples_log_close(c->eval_samples);
    tokenizer_free(c->tok);
    bus_kv_watch_stop(c->wwatch);
    bus_kv_close(c->wkv);
    bus_unsubscribe(c->metrics);
    bus_unsubscribe(c->evals);
    bus_kv_close(c->kv);
    bus_close(c->bus);
    dataset_free(c->data);
    json_decref(c->dropped);
    prom_stop(c->prom);
    free(c->workers);
    free(c->env_rows);
    free(c->curve_step), free(c->curve_reward);
    free(c);
    return st == TIDAL_OK ? TIDAL_OK : tidal_fail(st, "%s", err);
}
