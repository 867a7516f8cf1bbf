/* loop.c - the trainer role (loop.h). */
#include "base/prom.h"
#include "trainer/loop.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/fs.h"
#include "buffer/buffer.h"
#include "job/jobmodel.h"
#include "proto/codec.h"
#include "job/names.h"
#include "job/samples.h"
#include "job/weights_token.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/selfcheck.h"
#include "trainer/config.h"
#include "trainer/envmetrics.h"
#include "trainer/publish.h"
#include "trainer/step.h"
#include "trainer/workercheck.h"

#define FETCH_BATCH 256
/* A partial group (in parts) is dropped as incomplete this long after its first part: two ack
 * waits (the prompt redelivered, answered again) and a margin for generating it. */
#define PARTIAL_MAX_AGE_ACK_WAITS 2u
#define PARTIAL_MAX_AGE_MIN_MS 300000u
/* Per-worker values in one step's Metric at most (the message's map holds 1024). */
#define METRIC_WORKERS_MAX 256

typedef struct trainer {
    const trainer_opts *o;
    const job_spec *s;
    prom *prom;                 /* metrics.trainer_port: /metrics (docs/metrics.md); NULL when off */
    job_names names;
    tidal_bus *bus;
    bus_kv *kv;
    bus_sub *traj;
    buffer *buf;
    model *m;
    model *ref;                 /* the frozen initial weights, when a KL term is on */
    adamw *opt;
    trainer_device_kind device; /* trainer.device resolved (auto: cuda when there is one) */
    trainer_precision precision; /* trainer.precision resolved (auto: bf16 on cuda, fp32 on the CPU) */
    trainer_device *dev;        /* where m trains (trainer/device.h); m's weights are synced after each step */
    trainer_device *ref_dev;    /* where ref computes; NULL without a reference */
    weights_publisher *pub;
    tidal_sign_key *sign_key; /* signs the weights (the publisher borrows it) */
    ckpt_state ck;              /* counts and trained ids so far (this life and the earlier ones) */
    hf_files hf;                /* the tokenizer files and generation_config.json each checkpoint carries */
    buffer_counts base;         /* the buffer's counts restored from the checkpoint (this life adds to them) */
    uint64_t version, checkpointed;
    char ckpt_root[4096];
    double t0_ms;               /* this life's start, on the monotonic clock */
    double elapsed0_s;          /* training time of the earlier lives (from the checkpoint) */
    double last_step_ms;
    uint64_t tokens_since;      /* completion tokens trained since the last step's metric */
    trainer_step_cfg step_cfg;  /* from the spec, once (the learning rate per step from lr) */
    lr_schedule lr;
    worker_check *wc;           /* each worker's mismatch, the quarantine */
    trainer_sample_check *checks; /* [cap_checks] per sample of a step */
    int cap_checks;
    tokenizer *tok;             /* decodes the samples RUN/samples.jsonl keeps; NULL: token ids are shown */
    samples_log *samples;       /* RUN/samples.jsonl (job/samples.h); NULL when it cannot be written */
} trainer;

static double elapsed_s(const trainer *t) { return t->elapsed0_s + (tidal_clock_ms() - t->t0_ms) / 1e3; }

/* One trajectory message (a group, or a part of one) shared by the
 * trajectories it brought: each admitted trajectory holds a reference, and
 * the admission holds one while it works. The message is acked when the last
 * reference goes and every one of them had a durable fate; a trajectory let
 * go without a fate (at exit) leaves it un-acked, so it comes again. */
typedef struct traj_msg {
    bus_msg *m;
    int refs;
    bool released;
} traj_msg;

static void traj_msg_unref(traj_msg *r)
{
    if (--r->refs > 0) return;
    if (!r->released && bus_ack(r->m) != TIDAL_OK) tidal_log(TIDAL_LOG_WARN, "trainer: ack: %s", tidal_errmsg());
    bus_msg_destroy(r->m);
    free(r);
}

/* A trajectory's fate is durable (dropped or trained and checkpointed). */
static void on_durable(void *ctx, void *handle, bool dropped)
{
    (void)ctx, (void)dropped;
    traj_msg_unref(handle);
}

/* The buffer lets a trajectory go without a fate (at exit). */
static void on_release(void *ctx, void *handle)
{
    (void)ctx;
    traj_msg *r = handle;
    r->released = true;
    traj_msg_unref(r);
}

/* The counts as of now: the checkpoint's plus this life's. */
static void counts_now(const trainer *t, buffer_counts *c)
{
    buffer_counts_get(t->buf, c);
    c->groups_trained += t->base.groups_trained;
    for (int r = 0; r < BUFFER_DROP__COUNT; r++) {
        c->groups_dropped[r] += t->base.groups_dropped[r];
        c->dropped[r] += t->base.dropped[r];
    }
}

/* KV trainer.groups: what the controller balances its summary against. */
static void put_groups(trainer *t)
{
    buffer_counts c;
    counts_now(t, &c);
    json_t *o = json_object(), *d = json_object();
    json_object_set_new(o, "version", json_integer((json_int_t)t->version));
    json_object_set_new(o, "trained", json_integer((json_int_t)c.groups_trained));
    json_object_set_new(o, "failed", json_integer((json_int_t)c.groups_dropped[BUFFER_DROP_FAILED]));
    for (int r = 0; r < BUFFER_DROP__COUNT; r++)
        if (r != BUFFER_DROP_FAILED && r != BUFFER_DROP_STALE_GROUP && r != BUFFER_DROP_DUPLICATE)
            json_object_set_new(d, buffer_drop_name((buffer_drop_reason)r), json_integer((json_int_t)c.groups_dropped[r]));
    json_object_set_new(o, "dropped", d);
    json_object_set_new(o, "held_complete", json_integer((json_int_t)c.groups_complete));
    json_object_set_new(o, "held_partial", json_integer((json_int_t)c.groups_partial));
    json_object_set_new(o, "duplicate_samples", json_integer((json_int_t)c.dropped[BUFFER_DROP_DUPLICATE]));
    json_object_set_new(o, "rejected", json_integer((json_int_t)t->ck.rejected));
    json_object_set_new(o, "checkpointed", json_integer((json_int_t)t->checkpointed));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text && bus_kv_put(t->kv, JOB_KEY_GROUPS, text, strlen(text), NULL) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: %s", tidal_errmsg());
    free(text);
}

static tidal_status checkpoint(trainer *t)
{
    buffer_counts c;
    counts_now(t, &c);
    t->ck.version = t->version;
    t->ck.elapsed_s = elapsed_s(t);
    t->ck.groups_trained = c.groups_trained;
    memcpy(t->ck.groups_dropped, c.groups_dropped, sizeof c.groups_dropped);
    memcpy(t->ck.samples_dropped, c.dropped, sizeof c.dropped);
    const double t0 = tidal_clock_ms();
    TRY_WRAP(trainer_device_sync_optimizer(t->dev), "trainer: checkpoint: the optimizer from the device");
    TRY(checkpoint_save(t->ckpt_root, t->m, t->opt, &t->ck, t->s->trainer.checkpoint_keep, &t->hf));
    buffer_checkpointed(t->buf, t->version); /* now their fate is durable */
    bus_flush(t->bus, 5000);
    t->checkpointed = t->version;
    tidal_log(TIDAL_LOG_INFO, "trainer: checkpoint step-%llu (%.0f ms)", (unsigned long long)t->version,
              tidal_clock_ms() - t0);
    put_groups(t);
    return TIDAL_OK;
}

/* t->checks holds room for n samples. */
static tidal_status checks_room(trainer *t, int n)
{
    if (n <= t->cap_checks) return TIDAL_OK;
    trainer_sample_check *c = realloc(t->checks, (size_t)n * sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "trainer: out of memory for %d samples", n);
    t->checks = c, t->cap_checks = n;
    return TIDAL_OK;
}

/* KV trainer.workers: each worker's check (what `tidal status` and the summary show). */
static void put_workers(trainer *t)
{
    int n = 0;
    const worker_check_row *rows = worker_check_rows(t->wc, &n);
    const worker_check_cfg *cfg = worker_check_config(t->wc);
    json_t *o = json_object(), *ws = json_object();
    json_object_set_new(o, "enabled", json_boolean(cfg->enabled));
    json_object_set_new(o, "threshold", json_real(cfg->threshold));
    json_object_set_new(o, "window", json_integer(cfg->window));
    json_object_set_new(o, "version", json_integer((json_int_t)t->version));
    int q = 0;
    for (int i = 0; i < n; i++) {
        const worker_check_row *w = &rows[i];
        json_t *x = json_object();
        json_object_set_new(x, "k3_mean", json_real(w->tokens ? w->k3_sum / (double)w->tokens : 0.0));
        json_object_set_new(x, "score_mean", json_real(w->excess_tokens ? w->excess_sum / (double)w->excess_tokens : 0.0));
        json_object_set_new(x, "score_last", w->steps ? json_real(w->last) : json_null());
        json_object_set_new(x, "tokens", json_integer((json_int_t)w->tokens));
        json_object_set_new(x, "steps", json_integer((json_int_t)w->steps));
        json_object_set_new(x, "over", json_integer(w->over));
        json_object_set_new(x, "quarantined", json_boolean(w->quarantined));
        if (w->quarantined) {
            json_object_set_new(x, "quarantined_at", json_integer((json_int_t)w->quarantined_at));
            json_object_set_new(x, "reason", json_string(w->reason));
            q++;
        }
        json_object_set_new(ws, w->id, x);
    }
    json_object_set_new(o, "quarantined", json_integer(q));
    json_object_set_new(o, "workers", ws);
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (text && bus_kv_put(t->kv, JOB_KEY_WORKER_CHECK, text, strlen(text), NULL) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: %s", tidal_errmsg());
    free(text);
}

/* Quarantine worker row w (just decided, or restored at a resume): its held
 * groups go, its later samples follow them, and it is told on the control
 * subject to take no more prompts. */
static void quarantine(trainer *t, const worker_check_row *w, bool tell)
{
    int dropped = 0;
    if (buffer_quarantine(t->buf, w->id, &dropped) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: quarantine of worker %s: %s", w->id, tidal_errmsg());
    tidal_log(TIDAL_LOG_WARN, "trainer: worker %s quarantined: %s; %d held groups of it dropped as quarantined", w->id,
              w->reason, dropped);
    if (!tell) return;
    Tidal__V1__Control m = TIDAL__V1__CONTROL__INIT;
    m.schema_version = 1;
    m.command = TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_QUARANTINE;
    m.reason = (char *)w->reason, m.issuer = "trainer", m.target = (char *)w->id;
    m.issued_unix_ms = tidal_unix_ms();
    void *buf = NULL;
    size_t len = 0;
    /* best effort: its samples are dropped here whether or not it hears */
    if (codec_encode(&m.base, &buf, &len) != TIDAL_OK ||
        bus_publish(t->bus, t->names.ctl_subject, buf, (int)len) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: telling worker %s of its quarantine: %s", w->id, tidal_errmsg());
    free(buf);
}

/* The step just trained closes the workers' check: the newly quarantined go. */
static void check_workers(trainer *t)
{
    int nr = 0;
    worker_check_rows(t->wc, &nr);
    int *newly = malloc((size_t)(nr ? nr : 1) * sizeof *newly);
    if (!newly) { /* the step stays open: it closes with the next one */
        tidal_log(TIDAL_LOG_WARN, "trainer: worker check: out of memory");
        return;
    }
    const int n = worker_check_end_step(t->wc, t->version, newly, nr);
    const worker_check_row *rows = worker_check_rows(t->wc, &nr);
    for (int i = 0; i < n; i++) quarantine(t, &rows[newly[i]], true);
    free(newly);
    put_workers(t);
}

/* The check values of the step just closed, for its Metric: the raw mean k3
 * over every scored token and their count, and per scored worker
 * k3.<id> (raw), k3_score.<id> (above the baseline; when it counted) and
 * k3_tokens.<id> (keys in keys[]). Returns how many. */
static int worker_values(const trainer *t, job_metric_value *v, char (*keys)[224])
{
    int n = 0, nv = 0, nk = 0;
    const worker_check_row *rows = worker_check_rows(t->wc, &n);
    double sum = 0;
    uint64_t tokens = 0;
    for (int i = 0; i < n; i++) sum += rows[i].step_raw * (double)rows[i].step_n, tokens += rows[i].step_n;
    v[nv++] = (job_metric_value){"check_k3", tokens ? sum / (double)tokens : 0.0};
    v[nv++] = (job_metric_value){"check_tokens", (double)tokens};
    for (int i = 0; i < n && nk + 3 <= 3 * METRIC_WORKERS_MAX; i++) {
        if (!rows[i].step_n) continue;
        snprintf(keys[nk], sizeof keys[nk], "k3.%s", rows[i].id);
        v[nv++] = (job_metric_value){keys[nk++], rows[i].step_raw};
        snprintf(keys[nk], sizeof keys[nk], "k3_tokens.%s", rows[i].id);
        v[nv++] = (job_metric_value){keys[nk++], (double)rows[i].step_n};
        if (!rows[i].counted) continue;
        snprintf(keys[nk], sizeof keys[nk], "k3_score.%s", rows[i].id);
        v[nv++] = (job_metric_value){keys[nk++], rows[i].step_score};
    }
    return nv;
}

static void publish_metric(trainer *t, const trainer_step_result *r, double step_ms, double lr,
                           const job_metric_value *extra, int n_extra)
{
    buffer_counts c;
    counts_now(t, &c);
    const double since = tidal_clock_ms() - t->last_step_ms;
    const job_metric_value vals[] = {
        {"version", (double)t->version},
        {"reward_mean", r->reward_mean},
        {"reward_std", r->reward_std},
        {"staleness_mean", r->staleness_mean},
        {"staleness_max", (double)r->staleness_max},
        {"samples", r->samples},
        {"dropped_stale", (double)(c.dropped[BUFFER_DROP_STALE] + c.dropped[BUFFER_DROP_STALE_GROUP])},
        {"dropped_zero_var", (double)c.dropped[BUFFER_DROP_ZERO_VARIANCE]},
        {"tokens_per_s", since > 0 ? (double)t->tokens_since * 1e3 / since : 0},
        {"staleness_min", r->staleness_min},
        {"loss", r->loss.loss},
        {"policy_loss", r->loss.policy_loss},
        {"kl_loss", r->loss.kl_loss},
        {"ref_kl", r->loss.ref_kl},
        {"kl_reward", r->kl_reward_mean},
        {"overlong", r->overlong_mean},
        {"adv_mean", r->loss.adv_mean},
        {"entropy", r->entropy_mean},
        {"mismatch_k1", r->loss.mismatch_k1},
        {"mismatch_k3", r->loss.mismatch_k3},
        {"approx_kl", r->loss.approx_kl},
        {"clip_frac", r->loss.clip_frac},
        {"dual_clip_frac", r->loss.dual_clip_frac},
        {"masked_frac", r->loss.masked_frac},
        {"is_mean", r->loss.is_mean},
        {"is_max", r->loss.is_max},
        {"is_ess", r->loss.tokens > 0 ? r->loss.is_ess / (double)r->loss.tokens : 0},
        {"grad_norm", r->grad_norm},
        {"grad_spikes", (double)r->grad_spikes},
        {"lr", lr},
        {"updates", r->updates},
        {"groups_reused", (double)c.groups_reused},
        {"step_ms", step_ms},
        {"groups_trained", (double)c.groups_trained},
        {"buffer_groups", (double)c.groups_complete},
        {"dropped_quarantined", (double)c.groups_dropped[BUFFER_DROP_QUARANTINED]},
    };
    const int nb = (int)(sizeof vals / sizeof vals[0]);
    job_metric_value all[sizeof vals / sizeof vals[0] + 2 + 3 * METRIC_WORKERS_MAX + ENV_METRICS_MAX];
    memcpy(all, vals, sizeof vals);
    memcpy(all + nb, extra, (size_t)n_extra * sizeof *extra);
    job_metric_publish(t->bus, &t->names, "trainer", t->version, elapsed_s(t), all, nb + n_extra);
    for (int i = 0; t->prom && i < nb + n_extra; i++) /* the same numbers on /metrics */
        job_metric_export(t->prom, "tidal_trainer", all[i].key, all[i].value);
    prom_set(t->prom, "tidal_trainer_step", NULL, "optimizer steps applied", (double)t->version);
    tidal_log(TIDAL_LOG_INFO,
              "trainer: step %llu reward %.3f entropy %.3f loss %.4f staleness %.2f (max %llu) samples %d "
              "grad %.3f %.0f ms",
              (unsigned long long)t->version, r->reward_mean, r->entropy_mean, r->loss.loss, r->staleness_mean,
              (unsigned long long)r->staleness_max, r->samples, r->grad_norm, step_ms);
}

/* A few of the step's groups into RUN/samples.jsonl, with the staleness they
 * were trained at (t->version is still the policy this step trained). */
static void log_samples(trainer *t, const buffer_batch *b)
{
    if (!t->samples || b->n_groups <= 0) return;
    Tidal__V1__Trajectory **groups[b->n_groups];
    int sizes[b->n_groups];
    for (int g = 0; g < b->n_groups; g++) groups[g] = b->groups[g].samples, sizes[g] = b->groups[g].n;
    samples_log_step(t->samples, t->version + 1, t->version, groups, sizes, b->n_groups, 0);
}

/* One optimizer step on B groups from the buffer. */
static tidal_status train_step(trainer *t)
{
    const job_spec *s = t->s;
    buffer_batch batch;
    TRY(buffer_take(t->buf, s->trainer.groups_per_step, &batch));
    trainer_step_cfg cfg = t->step_cfg;
    cfg.lr = lr_at(&t->lr, (long)t->version);
    uint64_t tokens = 0;
    for (int g = 0; g < batch.n_groups; g++)
        for (int i = 0; i < batch.groups[g].n; i++) tokens += batch.groups[g].samples[i]->n_completion_token_ids;
    int n = 0;
    for (int g = 0; g < batch.n_groups; g++) n += batch.groups[g].n;
    trainer_step_result r;
    const double t0 = tidal_clock_ms();
    tidal_status st = checks_room(t, n);
    if (st == TIDAL_OK) st = trainer_step_on(t->dev, &batch, t->version, &cfg, &r, t->checks);
    if (st != TIDAL_OK) { /* the groups go back to the buffer untrained */
        buffer_untake(t->buf, &batch);
        return st;
    }
    const double step_ms = tidal_clock_ms() - t0;
    env_metrics em; /* the env's own metrics of the step (before buffer_trained frees the samples) */
    env_metrics_of_batch(&batch, &em);
    if (st == TIDAL_OK) log_samples(t, &batch); /* the groups of a step that trained, labelled with it */
    tidal_status cs = TIDAL_OK; /* the check's failure (out of memory) costs a step's scores, never the step */
    for (int g = 0, k = 0; g < batch.n_groups && cs == TIDAL_OK; g++)
        for (int i = 0; i < batch.groups[g].n && cs == TIDAL_OK; i++, k++)
            cs = worker_check_add(t->wc, batch.groups[g].samples[i]->worker_id, &t->checks[k]);
    if (cs != TIDAL_OK) tidal_log(TIDAL_LOG_WARN, "trainer: worker check: %s", tidal_errmsg());
    for (int g = 0; g < batch.n_groups && st == TIDAL_OK; g++) /* a reused group's ids are in already */
        for (int i = 0; i < batch.groups[g].n && st == TIDAL_OK && batch.groups[g].uses == 0; i++)
            st = ckpt_state_add_trained(&t->ck, batch.groups[g].samples[i]->trajectory_id);
    t->version++;
    buffer_trained(t->buf, &batch, t->version);
    buffer_set_version(t->buf, t->version);
    t->tokens_since += tokens;
    if (st == TIDAL_OK) st = trainer_device_sync_params(t->dev); /* the device's master weights, to publish */
    if (st == TIDAL_OK) st = weights_publish(t->pub, t->m, t->version);
    job_metric_value wv[2 + 3 * METRIC_WORKERS_MAX + ENV_METRICS_MAX];
    char wkeys[3 * METRIC_WORKERS_MAX][224];
    check_workers(t);
    int nwv = worker_values(t, wv, wkeys);
    nwv += env_metrics_values(&em, wv + nwv);
    put_groups(t);
    publish_metric(t, &r, step_ms, cfg.lr, wv, nwv);
    t->tokens_since = 0;
    t->last_step_ms = tidal_clock_ms();
    return st;
}

/* Reject a message that is not a usable trajectory group: terminated (never
 * redelivered) and counted. */
static void reject(trainer *t, bus_msg *m, const char *why)
{
    tidal_log(TIDAL_LOG_WARN, "trainer: rejected a message on %s (stream seq %llu): %s", bus_msg_subject(m),
              (unsigned long long)bus_msg_stream_seq(m), why);
    t->ck.rejected++;
    bus_term(m);
    bus_msg_destroy(m);
}

/* Admit the trajectories of one message (a TrajectoryGroup or a part of
 * one) into the buffer, each holding a reference to the message. */
static void admit(trainer *t, bus_msg *m)
{
    Tidal__V1__TrajectoryGroup *g = NULL;
    if (codec_decode_trajectory_group(bus_msg_data(m), (size_t)bus_msg_len(m), &g) != TIDAL_OK) {
        reject(t, m, tidal_errmsg());
        return;
    }
    if (g->eval) { /* evaluation samples never train (they belong on tidal.J.traj.eval) */
        char why[320];
        snprintf(why, sizeof why, "evaluation group %s on the training subject", g->group_id);
        tidal__v1__trajectory_group__free_unpacked(g, NULL);
        reject(t, m, why);
        return;
    }
    traj_msg *r = malloc(sizeof *r);
    if (!r) { /* not acked: it comes again */
        tidal_log(TIDAL_LOG_WARN, "trainer: out of memory admitting %s", g->group_id);
        tidal__v1__trajectory_group__free_unpacked(g, NULL);
        bus_msg_destroy(m);
        return;
    }
    *r = (traj_msg){.m = m, .refs = 1};
    size_t i = 0;
    for (; i < g->n_trajectories; i++) {
        r->refs++;
        if (buffer_admit(t->buf, g->trajectories[i], r) != TIDAL_OK) break;
        g->trajectories[i] = NULL; /* the buffer's now */
    }
    if (i < g->n_trajectories) {
        /* Out of memory: the rest is not admitted, so the message must never be
         * acked by this life; the admission's reference stays released. */
        tidal_log(TIDAL_LOG_WARN, "trainer: %s (group %s: %zu of %zu trajectories admitted; the message comes again)",
                  tidal_errmsg(), g->group_id, i, g->n_trajectories);
        r->refs--, r->released = true;
        for (size_t k = i; k < g->n_trajectories; k++) {
            tidal__v1__trajectory__free_unpacked(g->trajectories[k], NULL);
            g->trajectories[k] = NULL;
        }
    }
    g->n_trajectories = 0; /* its trajectories are the buffer's or freed */
    tidal__v1__trajectory_group__free_unpacked(g, NULL);
    traj_msg_unref(r);
}

/* A resumed trainer keeps the quarantines its earlier life decided (KV
 * trainer.workers): their samples are dropped again, and each is told again.
 * No key or one that does not read: nobody was quarantined. */
static tidal_status restore_quarantine(trainer *t)
{
    void *v = NULL;
    size_t n = 0;
    if (bus_kv_get(t->kv, JOB_KEY_WORKER_CHECK, &v, &n, NULL) != TIDAL_OK) return TIDAL_OK;
    json_t *o = json_loadb(v, n, 0, NULL);
    free(v);
    const char *id;
    json_t *w;
    tidal_status st = TIDAL_OK;
    json_object_foreach(json_object_get(o, "workers"), id, w) {
        if (!json_is_true(json_object_get(w, "quarantined"))) continue;
        TRY_GOTO(worker_check_restore(t->wc, id, (uint64_t)json_integer_value(json_object_get(w, "quarantined_at")),
                                      json_string_value(json_object_get(w, "reason"))));
    }
    int nr = 0;
    const worker_check_row *rows = worker_check_rows(t->wc, &nr);
    for (int i = 0; i < nr; i++) quarantine(t, &rows[i], true);
    if (nr) put_workers(t);
cleanup:
    json_decref(o);
    return st;
}

/* trainer.device: which device (auto: cuda when there is one), and
 * trainer.precision: what it computes in (auto: bf16 on cuda; the CPU only
 * fp32), said in the log; a GPU must first pass the self-check
 * (trainer/selfcheck.h) in that precision - one that disagrees with the CPU
 * is refused, naming the op, before anything else starts. */
static tidal_status choose_device(trainer *t)
{
    char why[512];
    TRY(trainer_device_resolve(t->s->trainer.device, &t->device, why, sizeof why));
    tidal_log(TIDAL_LOG_INFO, "trainer: %s", why);
    TRY(trainer_precision_resolve(t->s->trainer.precision, t->device, &t->precision, why, sizeof why));
    tidal_log(TIDAL_LOG_INFO, "trainer: %s", why);
    if (t->device == TRAINER_DEVICE_CUDA)
        TRY_WRAP(trainer_selfcheck(t->device, t->precision, NULL), "trainer.device %s: refused", t->s->trainer.device);
    return TIDAL_OK;
}

/* What the spec may ask that this trainer cannot do yet: refused, never ignored. */
static tidal_status supported(const job_spec *s)
{
    if (strcmp(s->weights.transport, "bus") != 0 && strcmp(s->weights.transport, "http") != 0 &&
        strcmp(s->weights.transport, "dir") != 0)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "weights.transport %s is not available in this build (bus, http and dir are)",
                          s->weights.transport);
    return TIDAL_OK;
}

static tidal_status start(trainer *t)
{
    const job_spec *s = t->s;
    TRY(supported(s));
    TRY(choose_device(t));
    TRY(trainer_step_cfg_from_spec(s, &t->step_cfg, &t->lr));
    TRY(job_names_init(&t->names, s->job.name));
    bus_opts bo = t->o->bus;
    if (!bo.name) bo.name = "trainer";
    TRY(bus_connect(&t->bus, &bo));
    job_bus_cfg jc = {.prompt_ack_wait_ms = s->rollout.ack_wait_ms, .prompt_max_deliver = 5};
    TRY(job_bus_ensure(t->bus, &t->names, &jc, &t->kv));
    snprintf(t->ckpt_root, sizeof t->ckpt_root, "%s/checkpoints", t->o->run_dir);
    TRY_WRAP(job_hf_files(s, &t->hf), "trainer: the checkpoints' tokenizer files");
    bool resumed = false;
    if (t->o->resume) { /* no checkpoint yet is not a failure: start fresh */
        tidal_status st = checkpoint_load_latest(t->ckpt_root, &t->m, &t->opt, &t->ck);
        if (st == TIDAL_OK) resumed = true;
        else if (st == TIDAL_ERR_NOT_FOUND) tidal_log(TIDAL_LOG_INFO, "trainer: --resume: %s; starting fresh", tidal_errmsg());
        else return st;
    }
    const adamw_cfg ac = trainer_adamw_cfg_from_spec(s);
    if (!resumed) {
        TRY(job_model_initial(s, &t->m));
        size_t n = 0;
        model_params(t->m, &n);
        TRY(adamw_create(n, &ac, &t->opt));
    }
    if (t->step_cfg.kl_reward > 0 || t->step_cfg.loss.kl_beta > 0) { /* the frozen reference: the initial weights */
        TRY(job_model_initial(s, &t->ref));
        t->step_cfg.ref = t->ref;
    }
    /* a resumed optimizer keeps its moments and eps; the spec's betas and decay apply to it too */
    t->opt->cfg.beta1 = ac.beta1, t->opt->cfg.beta2 = ac.beta2;
    t->opt->cfg.weight_decay = ac.weight_decay;
    TRY(trainer_device_create_in(t->device, t->precision, t->m, t->opt, &t->dev)); /* CUDA: weights, moments uploaded */
    if (t->ref && t->device != TRAINER_DEVICE_CPU) {
        TRY(trainer_device_create_in(t->device, t->precision, t->ref, NULL, &t->ref_dev));
        t->step_cfg.ref_device = t->ref_dev;
    }
    t->version = t->checkpointed = t->ck.version;
    t->elapsed0_s = t->ck.elapsed_s;
    t->base.groups_trained = t->ck.groups_trained;
    memcpy(t->base.groups_dropped, t->ck.groups_dropped, sizeof t->base.groups_dropped);
    memcpy(t->base.dropped, t->ck.samples_dropped, sizeof t->base.dropped);

    buffer_sampling smp = !strcmp(s->buffer.sampling, "newest")     ? BUFFER_NEWEST
                          : !strcmp(s->buffer.sampling, "uniform")  ? BUFFER_UNIFORM
                          : !strcmp(s->buffer.sampling, "priority") ? BUFFER_PRIORITY
                                                                    : BUFFER_FIFO;
    buffer_opts bopt = {.max_staleness = s->buffer.max_staleness, .capacity = s->buffer.capacity, .sampling = smp,
                        .priority_temperature = s->buffer.priority_temperature, .reuse = s->buffer.reuse,
                        .filter_zero_variance = s->buffer.filter_zero_variance,
                        .seed = (uint64_t)s->trainer.seed, .ack = on_durable, .release = on_release, .ack_ctx = t,
                        /* A group in parts waits for the rest while its prompt may be redelivered
                         * (after the ack wait) and answered again; one whose parts stop coming goes. */
                        .max_partial = 4 * s->buffer.capacity + 64,
                        .partial_max_age_ms = PARTIAL_MAX_AGE_ACK_WAITS * (uint64_t)s->rollout.ack_wait_ms +
                                              PARTIAL_MAX_AGE_MIN_MS};
    TRY(buffer_create(&bopt, &t->buf));
    buffer_set_version(t->buf, t->version);
    const worker_check_cfg wcc = {.enabled = s->trainer.worker_check.enabled,
                                  .threshold = s->trainer.worker_check.threshold,
                                  .window = s->trainer.worker_check.window,
                                  .min_tokens = s->trainer.worker_check.min_tokens};
    TRY(worker_check_create(&wcc, &t->wc));
    if (resumed) TRY(restore_quarantine(t));
    for (size_t i = 0; i < t->ck.n_trained; i++) TRY(buffer_remember_trained(t->buf, t->ck.trained_ids[i]));

    st_dtype dt = !strcmp(s->weights.dtype, "bf16") ? ST_BF16 : ST_F32;
    TRY(weights_signing_key_open(s->weights.signing_key, t->o->run_dir, s->weights.public_key, &t->sign_key));
    if (s->metrics.trainer_port != 0) {
        char labels[160];
        snprintf(labels, sizeof labels, "tidal_job=\"%s\"", t->names.job);
        TRY_WRAP(prom_start(s->metrics.bind, s->metrics.trainer_port > 0 ? s->metrics.trainer_port : 0, labels, &t->prom),
                 "trainer: metrics.trainer_port");
        tidal_log(TIDAL_LOG_INFO, "trainer: metrics on http://%s:%d/metrics", s->metrics.bind, prom_port(t->prom));
    }
    char *http_token = NULL; /* from the environment, never the spec (job/weights_token.h) */
    const bool http = !strcmp(s->weights.transport, "http");
    if (http) TRY(weights_token_from_env(&http_token));
    weights_publisher_opts po = {.bus = t->bus, .names = &t->names, .keep = s->weights.keep, .dtype = dt,
                                 .signing_key = t->sign_key, .http = http, .http_bind = s->weights.http_bind,
                                 .http_url = s->weights.http_url, .http_token = http_token, .hf = &t->hf,
                                 .delta = s->weights.delta, .full_every = s->weights.full_every};
    char *wdir = NULL; /* transport dir: absolute, as the manifest names it to workers and servers */
    if (!strcmp(s->weights.transport, "dir")) {
        TRY_WRAP(fs_mkdirs(s->weights.dir), "weights.dir");
        if (!(wdir = realpath(s->weights.dir, NULL))) {
            free(http_token);
            return tidal_fail(TIDAL_ERR_IO, "weights.dir %s: %s", s->weights.dir, strerror(errno));
        }
        po.dir = wdir;
    }
    const tidal_status pst = weights_publisher_create(&po, &t->pub);
    free(http_token);
    free(wdir);
    TRY(pst);
    TRY(weights_publish(t->pub, t->m, t->version));
    TRY(weights_publisher_flush(t->pub, 120000));
    if (resumed) { /* what the dead trainer held un-acked comes again now, not after the ack wait */
        TRY(job_trainer_consumer_reset(t->bus, &t->names));
        tidal_log(TIDAL_LOG_INFO, "trainer: resumed at step-%llu (%zu trajectories trained before)",
                  (unsigned long long)t->version, t->ck.n_trained);
    }
    /* the rollout viewer's samples: best effort, the training goes on without them */
    if (job_tokenizer(s, &t->tok) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: samples.jsonl shows token ids: %s", tidal_errmsg());
    if (samples_log_open(t->o->run_dir, "samples", t->tok, 0, &t->samples) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "trainer: %s; the dashboard shows no samples", tidal_errmsg());
    TRY(bus_pull_subscribe(t->bus, t->names.traj_stream, JOB_CONSUMER_TRAINER, &t->traj));
    put_groups(t);
    const char *state = t->version >= (uint64_t)s->trainer.steps ? "trained" : "running";
    return bus_kv_put(t->kv, JOB_KEY_STATE, state, strlen(state), NULL);
}

tidal_status trainer_run(const trainer_opts *o)
{
    trainer *t = calloc(1, sizeof *t);
    if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "trainer: out of memory");
    t->o = o, t->s = o->spec;
    t->t0_ms = t->last_step_ms = tidal_clock_ms();
    tidal_status st = TIDAL_OK;
    const uint64_t steps = (uint64_t)t->s->trainer.steps;
    bool stopped = false;
    TRY_GOTO(start(t));
    tidal_log(TIDAL_LOG_INFO, "trainer: job %s at v%llu, %llu steps of %d groups x %d, K = %d", t->names.job,
              (unsigned long long)t->version, (unsigned long long)steps, t->s->trainer.groups_per_step,
              t->s->rollout.group_size, t->s->buffer.max_staleness);
    while (t->version < steps) {
        if (o->stop && *o->stop) {
            stopped = true;
            break;
        }
        bus_msg *msgs[FETCH_BATCH];
        int n = 0;
        tidal_status fs = bus_fetch(t->traj, FETCH_BATCH, 100, msgs, &n);
        if (fs != TIDAL_OK && fs != TIDAL_ERR_TIMEOUT) {
            tidal_log(TIDAL_LOG_WARN, "trainer: fetch: %s", tidal_errmsg());
            usleep(200 * 1000);
        }
        uint64_t gone0 = 0, gone1 = 0;
        buffer_counts bc;
        buffer_counts_get(t->buf, &bc);
        for (int r = 0; r < BUFFER_DROP__COUNT; r++) gone0 += bc.groups_dropped[r];
        for (int i = 0; i < n; i++) admit(t, msgs[i]);
        buffer_tick(t->buf, (uint64_t)tidal_clock_ms());
        buffer_counts_get(t->buf, &bc);
        for (int r = 0; r < BUFFER_DROP__COUNT; r++) gone1 += bc.groups_dropped[r];
        if (gone1 != gone0) put_groups(t); /* dropped groups free their places in the controller's admission */
        while (t->version < steps && buffer_ready(t->buf) >= t->s->trainer.groups_per_step) {
            TRY_GOTO(train_step(t));
            const int every = t->s->trainer.checkpoint_every;
            if (t->version == steps || (every > 0 && t->version % (uint64_t)every == 0)) TRY_GOTO(checkpoint(t));
        }
    }
    if (t->version > t->checkpointed) TRY_GOTO(checkpoint(t)); /* a clean stop keeps its steps */
    TRY_GOTO(weights_publisher_flush(t->pub, 120000));
    if (t->version >= steps) {
        st = bus_kv_put(t->kv, JOB_KEY_STATE, "trained", 7, NULL); /* the controller makes it "done" */
        tidal_log(TIDAL_LOG_INFO, "trainer: done at v%llu", (unsigned long long)t->version);
    } else if (stopped) {
        tidal_log(TIDAL_LOG_INFO, "trainer: stopped at v%llu", (unsigned long long)t->version);
    }
cleanup:;
    char err[1024] = ""; /* the message, before releasing can overwrite it */
    if (st != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg());
    weights_publisher_free(t->pub);
    prom_stop(t->prom);
    tidal_sign_key_free(t->sign_key);
    bus_unsubscribe(t->traj);
    buffer_free(t->buf);
    worker_check_free(t->wc);
    free(t->checks);
    bus_kv_close(t->kv);
    bus_close(t->bus);
    trainer_device_free(t->dev);
    trainer_device_free(t->ref_dev);
    model_free(t->m);
    model_free(t->ref);
    adamw_free(t->opt);
    ckpt_state_clear(&t->ck);
    hf_files_clear(&t->hf);
    samples_log_close(t->samples);
    tokenizer_free(t->tok);
    free(t);
    return st == TIDAL_OK ? TIDAL_OK : tidal_fail(st, "%s", err);
}
