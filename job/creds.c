/* creds.c - per-role NATS credentials for one job (creds.h). */
#define _GNU_SOURCE /* strdup */
#include "job/creds.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/fs.h"
#include "base/str.h"
#include "bus/nkey.h"

const char *const job_creds_roles[JOB_CREDS_N_ROLES] = {"controller", "trainer", "rollout", "env", "status"};

/* Subject templates: {name} is replaced by the job's name of that object
 * (job_names), {env} by the environment's. */

/* Create or update a stream (bus_stream_ensure: info, then create or update). */
#define ENSURE_STREAM(s) "$JS.API.STREAM.INFO." s, "$JS.API.STREAM.CREATE." s, "$JS.API.STREAM.UPDATE." s
/* Create or update a durable consumer: nats.c sends DURABLE.CREATE to servers
 * before 2.9 and CONSUMER.CREATE.<stream>.<consumer>[.<filter>] to later ones. */
#define ENSURE_CONSUMER(s, c)                                                                             \
    "$JS.API.CONSUMER.INFO." s "." c, "$JS.API.CONSUMER.DURABLE.CREATE." s "." c,                        \
        "$JS.API.CONSUMER.CREATE." s "." c, "$JS.API.CONSUMER.CREATE." s "." c ".>"
/* Pull from a durable consumer and acknowledge what it delivered (acks, naks,
 * in-progress and term all go to the ack subject of the message). */
#define PULL(s, c) "$JS.API.CONSUMER.MSG.NEXT." s "." c, "$JS.ACK." s "." c ".>"
/* Watch a KV bucket: an ephemeral ordered consumer (created, deleted when the
 * watch stops or re-created after a gap) with flow-control replies. */
#define WATCH(bucket)                                                                                      \
    "$JS.API.CONSUMER.CREATE.KV_" bucket, "$JS.API.CONSUMER.CREATE.KV_" bucket ".>",                     \
        "$JS.API.CONSUMER.DELETE.KV_" bucket ".*", "$JS.FC.KV_" bucket ".>"
/* Read a KV key or a stream's last message on a subject (direct get). */
#define GET(s) "$JS.API.DIRECT.GET." s ".>"

/* Every JetStream client: stream look-ups by subject, and its reply inbox
 * (JetStream API answers, publish acks, pulled messages, watch deliveries). */
#define JS_CLIENT "$JS.API.STREAM.NAMES"
#define INBOX "_INBOX.>"

static const char *const CONTROLLER_PUB[] = {
    "{prompts}", "{ctl}", "{metrics}.controller",
    "$KV.{kv}." JOB_KEY_SPEC, "$KV.{kv}." JOB_KEY_STATE, "$KV.{kv}." JOB_KEY_CURSOR,
    JS_CLIENT,
    /* job_bus_ensure: whichever of controller and trainer starts first makes the job's streams */
    ENSURE_STREAM("{prompts_stream}"), ENSURE_STREAM("{traj_stream}"), ENSURE_STREAM("KV_{kv}"),
    ENSURE_STREAM("KV_{workers}"),
    ENSURE_CONSUMER("{prompts_stream}", JOB_CONSUMER_ROLLOUT), ENSURE_CONSUMER("{traj_stream}", JOB_CONSUMER_TRAINER),
    ENSURE_CONSUMER("{traj_stream}", JOB_CONSUMER_EVAL),
    PULL("{traj_stream}", JOB_CONSUMER_EVAL), /* evaluation samples */
    GET("KV_{kv}"), WATCH("{workers}"),       /* the job's state; the live workers */
    NULL};
static const char *const CONTROLLER_SUB[] = {INBOX, "{metrics}.>", NULL};

static const char *const TRAINER_PUB[] = {
    "{weights}.>", "{weights}_live.>", "{metrics}.trainer",
    "$KV.{kv}." JOB_KEY_STATE, "$KV.{kv}." JOB_KEY_VERSION, "$KV.{kv}." JOB_KEY_WEIGHTS, "$KV.{kv}." JOB_KEY_GROUPS,
    "$KV.{kv}." JOB_KEY_PUBKEY, /* claimed once (create): the key the weights are signed with */
    "$KV.{kv}." JOB_KEY_WORKER_CHECK, "{ctl}", /* the worker check: its table, and QUARANTINE to a worker */
    JS_CLIENT,
    ENSURE_STREAM("{prompts_stream}"), ENSURE_STREAM("{traj_stream}"), ENSURE_STREAM("KV_{kv}"),
    ENSURE_STREAM("KV_{workers}"), ENSURE_STREAM("{weights_stream}"),
    "$JS.API.STREAM.PURGE.{weights_stream}", /* weights.keep: older versions go */
    "$JS.API.STREAM.MSG.GET.{weights_stream}", /* reading back what it wrote, from the leader */
    ENSURE_CONSUMER("{prompts_stream}", JOB_CONSUMER_ROLLOUT), ENSURE_CONSUMER("{traj_stream}", JOB_CONSUMER_TRAINER),
    ENSURE_CONSUMER("{traj_stream}", JOB_CONSUMER_EVAL),
    "$JS.API.CONSUMER.DELETE.{traj_stream}." JOB_CONSUMER_TRAINER, /* a resumed trainer resets its consumer */
    PULL("{traj_stream}", JOB_CONSUMER_TRAINER),
    GET("{weights_stream}"), GET("KV_{kv}"),
    NULL};
static const char *const TRAINER_SUB[] = {INBOX, NULL};

static const char *const ROLLOUT_PUB[] = {
    "{traj}", "{eval}", "$KV.{workers}.>", /* trajectories, evaluation samples, its heartbeat */
    JS_CLIENT,
    "$JS.API.STREAM.INFO.KV_{kv}", "$JS.API.STREAM.INFO.KV_{workers}", "$JS.API.STREAM.INFO.{weights_stream}",
    /* a worker that comes before the trainer makes the weights stream as the trainer would (an existing
       stream cannot be changed by a create; the worker still cannot publish into it) */
    "$JS.API.STREAM.CREATE.{weights_stream}",
    "$JS.API.CONSUMER.INFO.{prompts_stream}." JOB_CONSUMER_ROLLOUT, PULL("{prompts_stream}", JOB_CONSUMER_ROLLOUT),
    GET("KV_{kv}"), WATCH("{kv}"), /* the spec and state; weights.latest */
    GET("{weights_stream}"),       /* weight blobs, chunk by chunk */
    NULL};
/* {weights}_live.*.c.*.*: the chunks the trainer broadcasts before it stores them, caught by the
   worker's tap (rollout/weights.c): read-only, what a worker may fetch anyway once stored */
static const char *const ROLLOUT_SUB[] = {INBOX, "{ctl}", "{weights}_live.*.c.*.*", NULL};

static const char *const STATUS_PUB[] = {
    JS_CLIENT,
    "$JS.API.STREAM.INFO.KV_{kv}", "$JS.API.STREAM.INFO.KV_{workers}", "$JS.API.STREAM.INFO.{prompts_stream}",
    "$JS.API.STREAM.INFO.{traj_stream}", "$JS.API.CONSUMER.INFO.{prompts_stream}." JOB_CONSUMER_ROLLOUT,
    GET("KV_{kv}"), WATCH("{workers}"),
    NULL};
static const char *const STATUS_SUB[] = {INBOX, "{metrics}.>", NULL};

/* an env service only answers: no publish of its own, replies by allow_responses */
static const char *const NONE[] = {NULL};
static const char *const ENV_SUB[] = {"tidal.env.{env}", NULL};

/* Expand one template; NULL when out of memory. Names are at most 127 bytes
 * (job_names_init, codec_check_name), so `out` always holds the longest. */
static char *expand(const char *tmpl, const job_names *n, const char *env)
{
    const struct {
        const char *token, *value;
    } vars[] = {{"{prompts_stream}", n->prompts_stream}, {"{prompts}", n->prompts_subject},
                {"{traj_stream}", n->traj_stream},       {"{traj}", n->traj_subject},
                {"{eval}", n->eval_subject},             {"{weights_stream}", n->weights_stream},
                {"{weights}", n->weights_prefix},        {"{kv}", n->kv_bucket},
                {"{workers}", n->workers_bucket},        {"{ctl}", n->ctl_subject},
                {"{metrics}", n->metrics_prefix},        {"{env}", env ? env : ""}};
    char out[512];
    size_t o = 0;
    for (const char *p = tmpl; *p && o < sizeof out - 1;) {
        size_t i = 0, nv = sizeof vars / sizeof vars[0];
        while (i < nv && strncmp(p, vars[i].token, strlen(vars[i].token)) != 0) i++;
        if (i == nv) {
            out[o++] = *p++;
            continue;
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "%s", vars[i].value);
        if (o >= sizeof out) o = sizeof out - 1;
        p += strlen(vars[i].token);
    }
    out[o] = '\0';
    return strdup(out);
}

static void free_list(char **l)
{
    for (size_t i = 0; l && l[i]; i++) free(l[i]);
    free(l);
}

static tidal_status expand_list(const char *const *tmpl, const job_names *n, const char *env, const char *extra,
                                char ***out)
{
    size_t k = 0;
    while (tmpl[k]) k++;
    char **l = calloc(k + 2, sizeof *l);
    if (!l) return tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
    size_t j = 0;
    for (size_t i = 0; i < k; i++) l[j++] = expand(tmpl[i], n, env);
    if (extra) l[j++] = expand(extra, n, env);
    for (size_t i = 0; i < j; i++)
        if (!l[i]) {
            free_list(l);
            return tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
        }
    *out = l;
    return TIDAL_OK;
}

void job_perms_clear(job_perms *p)
{
    free_list(p->publish);
    free_list(p->subscribe);
    memset(p, 0, sizeof *p);
}

tidal_status job_creds_permissions(const job_names *n, const char *env_name, const char *role, job_perms *out)
{
    memset(out, 0, sizeof *out);
    const char *const *pub = NULL, *const *sub = NULL;
    const char *extra_pub = NULL;
    if (!strcmp(role, "controller")) pub = CONTROLLER_PUB, sub = CONTROLLER_SUB;
    else if (!strcmp(role, "trainer")) pub = TRAINER_PUB, sub = TRAINER_SUB;
    else if (!strcmp(role, "rollout")) pub = ROLLOUT_PUB, sub = ROLLOUT_SUB, extra_pub = env_name ? "tidal.env.{env}" : NULL;
    else if (!strcmp(role, "status")) pub = STATUS_PUB, sub = STATUS_SUB;
    else if (!strcmp(role, "env")) pub = NONE, sub = ENV_SUB, out->responses = true;
    else return tidal_fail(TIDAL_ERR_INVALID, "creds: no role '%s' (controller, trainer, rollout, env, status)", role);
    if (!strcmp(role, "env") && !env_name)
        return tidal_fail(TIDAL_ERR_INVALID, "creds: the env role needs the environment's name (env.name)");
    tidal_status st = TIDAL_OK;
    TRY_GOTO(expand_list(pub, n, env_name, extra_pub, &out->publish));
    TRY_GOTO(expand_list(sub, n, env_name, NULL, &out->subscribe));
cleanup:
    if (st != TIDAL_OK) job_perms_clear(out);
    return st;
}

/* ---------------------------------------------------------------- files */

/* Write text to path through path.tmp (created with `mode`: a secret is never
 * readable by others, even for a moment), fsync, rename. */
static tidal_status write_file_mode(const char *path, const char *text, mode_t mode)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp);
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) return tidal_fail(TIDAL_ERR_IO, "creds: %s: %s", tmp, strerror(errno));
    const size_t len = strlen(text);
    size_t done = 0;
    while (done < len) {
        const ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    const int ok = done == len && fsync(fd) == 0;
    const int err = errno;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return tidal_fail(TIDAL_ERR_IO, "creds: %s: %s", path, strerror(ok ? errno : err));
    }
    return TIDAL_OK;
}

/* Append the subjects to *s, one a line, quoted ($JS... unquoted would be a
 * variable reference). */
static tidal_status append_quoted(char **s, char *const *subjects)
{
    for (size_t i = 0; subjects[i]; i++) {
        char *t = str_printf("%s          \"%s\"%s\n", *s, subjects[i], subjects[i + 1] ? "," : "");
        if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
        free(*s);
        *s = t;
    }
    return TIDAL_OK;
}

static tidal_status append(char **s, const char *text)
{
    char *t = str_printf("%s%s", *s, text);
    if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
    free(*s);
    *s = t;
    return TIDAL_OK;
}

/* One user entry of the authorization block. */
static tidal_status auth_user(char **conf, const char *role, const char *public_key, const job_perms *p)
{
    char head[256];
    snprintf(head, sizeof head, "    # %s\n    { nkey: \"%s\"\n      permissions: {\n", role, public_key);
    TRY(append(conf, head));
    if (p->publish[0]) {
        TRY(append(conf, "        publish: { allow: [\n"));
        TRY(append_quoted(conf, p->publish));
        TRY(append(conf, "        ] }\n"));
    } else {
        TRY(append(conf, "        publish: { deny: [\">\"] }\n"));
    }
    TRY(append(conf, "        subscribe: { allow: [\n"));
    TRY(append_quoted(conf, p->subscribe));
    TRY(append(conf, "        ] }\n"));
    if (p->responses) TRY(append(conf, "        allow_responses: true\n"));
    return append(conf, "      } }\n");
}

static const char *role_use(const char *role)
{
    if (!strcmp(role, "controller")) return "tidal controller JOB.yaml --creds DIR/controller.creds";
    if (!strcmp(role, "trainer")) return "tidal trainer JOB.yaml --creds DIR/trainer.creds";
    if (!strcmp(role, "rollout")) return "tidal rollout --bus URL --job JOB --creds DIR/rollout.creds";
    if (!strcmp(role, "env")) return "tidal env serve ENV --bus URL --creds DIR/env.creds";
    return "tidal status --bus URL --job JOB --creds DIR/status.creds";
}

tidal_status job_creds_write(const job_names *n, const job_creds_opts *o)
{
    tidal_status st = TIDAL_OK;
    char *conf = NULL, *creds = NULL;
    char pub[BUS_NKEY_PUBLIC_LEN + 1], seed[BUS_NKEY_SEED_LEN + 1] = "";
    job_perms p = {0};
    char path[4200];
    TRY_GOTO(fs_mkdirs(o->dir));
    /* every file is checked before any is written: all new, or none */
    for (int i = 0; i <= JOB_CREDS_N_ROLES && !o->force; i++) {
        if (i < JOB_CREDS_N_ROLES && !strcmp(job_creds_roles[i], "env") && !o->env_name) continue;
        if (i < JOB_CREDS_N_ROLES) snprintf(path, sizeof path, "%s/%s.creds", o->dir, job_creds_roles[i]);
        else snprintf(path, sizeof path, "%s/nats-auth.conf", o->dir);
        struct stat sb;
        if (stat(path, &sb) == 0) {
            st = tidal_fail(TIDAL_ERR_CONFLICT, "creds: %s exists (--force replaces it; the server's "
                            "nats-auth.conf must then be replaced too)", path);
            goto cleanup;
        }
    }
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    conf = str_printf("# nats-server authorization for tidal job %s: one nkey user per role, each allowed only what\n"
                      "# the role does on the bus (docs/deployment.md). Written by `tidal creds` at %s.\n"
                      "# Public keys only: nothing here is secret. In the server's configuration (JetStream on):\n"
                      "#   include \"nats-auth.conf\"\n"
                      "authorization {\n  users = [\n",
                      n->job, when);
    if (!conf) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < JOB_CREDS_N_ROLES; i++) {
        const char *role = job_creds_roles[i];
        if (!strcmp(role, "env") && !o->env_name) continue; /* no env on the bus, no env role */
        TRY_GOTO(job_creds_permissions(n, o->env_name, role, &p));
        TRY_GOTO(bus_nkey_generate(pub, seed));
        TRY_GOTO(auth_user(&conf, role, pub, &p));
        job_perms_clear(&p);
        creds = str_printf("# tidal credentials: the %s role of job %s%s%s (a NATS user nkey seed).\n"
                           "# Secret: whoever holds this file acts as this role on the bus. Its public key\n"
                           "# %s is in nats-auth.conf.\n"
                           "# Use: %s\n"
                           "%s\n",
                           role, n->job, strcmp(role, "env") ? "" : ", environment ",
                           strcmp(role, "env") ? "" : o->env_name, pub, role_use(role), seed);
        OPENSSL_cleanse(seed, sizeof seed);
        if (!creds) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "creds: out of memory");
            goto cleanup;
        }
        snprintf(path, sizeof path, "%s/%s.creds", o->dir, role);
        TRY_GOTO(write_file_mode(path, creds, 0600));
        OPENSSL_cleanse(creds, strlen(creds));
        free(creds);
        creds = NULL;
    }
    TRY_GOTO(append(&conf, "  ]\n}\n"));
    snprintf(path, sizeof path, "%s/nats-auth.conf", o->dir);
    TRY_GOTO(write_file_mode(path, conf, 0644)); /* public keys only */
cleanup:
    job_perms_clear(&p);
    OPENSSL_cleanse(seed, sizeof seed);
    if (creds) OPENSSL_cleanse(creds, strlen(creds));
    free(creds);
    free(conf);
    return st;
}
