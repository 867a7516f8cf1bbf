/* names.c - the names of a job's bus objects (names.h). */
#include "job/names.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proto/codec.h"

#include <stdlib.h>

tidal_status job_names_init(job_names *n, const char *job)
{
    memset(n, 0, sizeof *n);
    TRY(codec_check_name("job.name", job));
    snprintf(n->job, sizeof n->job, "%s", job);
    snprintf(n->prompts_stream, sizeof n->prompts_stream, "TIDAL_%s_PROMPTS", job);
    snprintf(n->prompts_subject, sizeof n->prompts_subject, "tidal.%s.prompts", job);
    snprintf(n->traj_stream, sizeof n->traj_stream, "TIDAL_%s_TRAJ", job);
    snprintf(n->traj_subject, sizeof n->traj_subject, "tidal.%s.traj", job);
    snprintf(n->eval_subject, sizeof n->eval_subject, "tidal.%s.traj.eval", job);
    snprintf(n->weights_stream, sizeof n->weights_stream, "TIDAL_%s_WEIGHTS", job);
    snprintf(n->weights_prefix, sizeof n->weights_prefix, "tidal.%s.weights", job);
    snprintf(n->kv_bucket, sizeof n->kv_bucket, "TIDAL_%s", job);
    snprintf(n->workers_bucket, sizeof n->workers_bucket, "TIDAL_%s_WORKERS", job);
    snprintf(n->ctl_subject, sizeof n->ctl_subject, "tidal.%s.ctl", job);
    snprintf(n->metrics_prefix, sizeof n->metrics_prefix, "tidal.%s.metrics", job);
    return TIDAL_OK;
}

/* Trajectories wait un-acked in the trainer until a checkpoint holds them (or
 * they are dropped), possibly for many steps: the ack wait must outlast the
 * longest gap between checkpoints, and a restarted trainer resets the
 * consumer instead of waiting for it. */
#define TRAINER_ACK_WAIT_MS (6LL * 3600 * 1000)
#define TRAINER_MAX_ACK_PENDING (1LL << 22)

static bus_consumer_cfg trainer_consumer(const job_names *n)
{
    return (bus_consumer_cfg){.stream = n->traj_stream, .durable = JOB_CONSUMER_TRAINER,
                              .filter_subject = n->traj_subject, .ack_wait_ms = TRAINER_ACK_WAIT_MS,
                              .max_ack_pending = TRAINER_MAX_ACK_PENDING};
}

static tidal_status bus_ensure_once(tidal_bus *b, const job_names *n, const job_bus_cfg *c, bus_kv **kv);

tidal_status job_bus_ensure(tidal_bus *b, const job_names *n, const job_bus_cfg *c, bus_kv **kv)
{
    /* On a JetStream cluster a stream or bucket just created (by this role or the other one
     * starting beside it) elects its leader, and API calls time out meanwhile: wait that out,
     * up to a minute, rather than end the role. */
    const double t0 = tidal_clock_ms();
    for (int attempt = 1;; attempt++) {
        tidal_status st = bus_ensure_once(b, n, c, kv);
        if ((st != TIDAL_ERR_TIMEOUT && st != TIDAL_ERR_UNAVAILABLE) || tidal_clock_ms() - t0 > 60000) return st;
        tidal_log(TIDAL_LOG_WARN, "%s; the bus is not answering yet (attempt %d), trying again", tidal_errmsg(), attempt);
        usleep(500 * 1000);
    }
}

static tidal_status bus_ensure_once(tidal_bus *b, const job_names *n, const job_bus_cfg *c, bus_kv **kv)
{
    if (kv) *kv = NULL;
    tidal_status st = TIDAL_OK;
    bus_kv *w = NULL, *j = NULL;
    const char *psubj[1] = {n->prompts_subject};
    bus_stream_cfg ps = {.name = n->prompts_stream, .subjects = psubj, .n_subjects = 1, .work_queue = true,
                         .duplicate_window_ms = 10 * 60 * 1000};
    TRY_GOTO(bus_stream_ensure(b, &ps));
    bus_consumer_cfg pc = {.stream = n->prompts_stream, .durable = JOB_CONSUMER_ROLLOUT,
                           .ack_wait_ms = c->prompt_ack_wait_ms, .max_deliver = c->prompt_max_deliver};
    TRY_GOTO(bus_consumer_ensure(b, &pc));
    const char *tsubj[2] = {n->traj_subject, n->eval_subject};
    bus_stream_cfg ts = {.name = n->traj_stream, .subjects = tsubj, .n_subjects = 2, .work_queue = true,
                         .duplicate_window_ms = 10 * 60 * 1000};
    TRY_GOTO(bus_stream_ensure(b, &ts));
    bus_consumer_cfg tc = trainer_consumer(n);
    TRY_GOTO(bus_consumer_ensure(b, &tc));
    bus_consumer_cfg ec = {.stream = n->traj_stream, .durable = JOB_CONSUMER_EVAL, .filter_subject = n->eval_subject,
                           .ack_wait_ms = 30000};
    TRY_GOTO(bus_consumer_ensure(b, &ec));
    /* file storage although heartbeats are short-lived: a memory bucket would vanish with a server restart */
    bus_kv_cfg wk = {.bucket = n->workers_bucket, .ttl_ms = 15000};
    TRY_GOTO(bus_kv_ensure(b, &wk, &w));
    bus_kv_cfg jk = {.bucket = n->kv_bucket};
    TRY_GOTO(bus_kv_ensure(b, &jk, &j));
    if (kv) *kv = j, j = NULL;
cleanup:
    bus_kv_close(w);
    bus_kv_close(j);
    return st;
}

tidal_status job_trainer_consumer_reset(tidal_bus *b, const job_names *n)
{
    bus_consumer_cfg tc = trainer_consumer(n);
    tidal_status st = bus_consumer_delete(b, n->traj_stream, JOB_CONSUMER_TRAINER);
    if (st != TIDAL_OK && st != TIDAL_ERR_NOT_FOUND) return st; /* none to delete is fine */
    return bus_consumer_ensure(b, &tc);
}

tidal_status job_bus_remove(tidal_bus *b, const job_names *n)
{
    char kv[sizeof n->kv_bucket + 3], workers[sizeof n->workers_bucket + 3];
    snprintf(kv, sizeof kv, "KV_%s", n->kv_bucket); /* a KV bucket is the stream KV_<bucket> */
    snprintf(workers, sizeof workers, "KV_%s", n->workers_bucket);
    const char *streams[] = {n->traj_stream, n->prompts_stream, n->weights_stream, kv, workers};
    tidal_status first = TIDAL_OK;
    char why[512] = "";
    for (size_t i = 0; i < sizeof streams / sizeof *streams; i++) {
        /* every stream is tried; the first failure other than "not there" is returned */
        tidal_status s = bus_stream_delete(b, streams[i]);
        if (s == TIDAL_OK || s == TIDAL_ERR_NOT_FOUND || first != TIDAL_OK) continue;
        first = s;
        snprintf(why, sizeof why, "%s", tidal_errmsg());
    }
    if (first != TIDAL_OK) return tidal_fail(first, "%s", why);
    tidal_clear();
    return TIDAL_OK;
}

tidal_status job_metric_publish(tidal_bus *b, const job_names *n, const char *role, uint64_t step, double time_s,
                                const job_metric_value *v, int nv)
{
    return job_metric_publish_alert(b, n, role, step, time_s, v, nv, NULL);
}

tidal_status job_metric_publish_alert(tidal_bus *b, const job_names *n, const char *role, uint64_t step,
                                      double time_s, const job_metric_value *v, int nv, const char *alert)
{
    tidal_status st = TIDAL_OK;
    void *buf = NULL;
    size_t len = 0;
    Tidal__V1__Metric__ValuesEntry *ent = calloc((size_t)(nv > 0 ? nv : 1), sizeof *ent);
    Tidal__V1__Metric__ValuesEntry **entp = calloc((size_t)(nv > 0 ? nv : 1), sizeof *entp);
    if (!ent || !entp) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "metric: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < nv; i++) {
        ent[i] = (Tidal__V1__Metric__ValuesEntry)TIDAL__V1__METRIC__VALUES_ENTRY__INIT;
        ent[i].key = (char *)v[i].key, ent[i].value = v[i].value;
        entp[i] = &ent[i];
    }
    Tidal__V1__Metric mt = TIDAL__V1__METRIC__INIT;
    mt.schema_version = 1;
    mt.role = (char *)role, mt.source = (char *)role;
    mt.step = step, mt.time = time_s, mt.unix_ms = tidal_unix_ms();
    mt.n_values = (size_t)nv, mt.values = entp;
    mt.alert = (char *)(alert ? alert : "");
    char subject[JOB_NAME_MAX + 64];
    snprintf(subject, sizeof subject, "%s.%s", n->metrics_prefix, role);
    TRY_GOTO(codec_encode(&mt.base, &buf, &len));
    TRY_GOTO(bus_publish(b, subject, buf, (int)len));
cleanup:
    free(buf);
    free(ent);
    free(entp);
    return st;
}

void job_metric_export(prom *p, const char *prefix, const char *key, double v)
{
    if (!p) return;
    char name[256], label[256];
    const char *dot = strchr(key, '.');
    if (dot && strncmp(key, "env.", 4) != 0) { /* NAME.WORKER */
        snprintf(name, sizeof name, "%s_%.*s", prefix, (int)(dot - key), key);
        snprintf(label, sizeof label, "worker=\"%.200s\"", dot + 1);
        for (char *c = label + 8; *c && c[1]; c++)
            if (*c == '"' || *c == '\\' || *c == '\n') *c = '_'; /* a label value holds no quote or escape */
        prom_set(p, name, label, NULL, v);
        return;
    }
    snprintf(name, sizeof name, "%s_%s", prefix, key);
    prom_set(p, name, NULL, NULL, v);
}
