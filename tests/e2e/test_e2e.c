/* test_e2e.c - whole jobs through `tidal run` (label e2e): real processes, a
 * real nats-server, the real engine and trainer. One scenario per ctest
 * entry (argv[1]):
 *   quickstart    examples/quickstart.yaml learns: reward <= 0.3 at the
 *                 start, mean of the last 10 steps >= 0.9
 *   staleness     every trained token has v - v_token <= K (K = 2), and with
 *                 K = 0 every token is exactly on-policy
 *   join          a worker started by hand mid-run contributes and the
 *                 sample rate rises
 *   kill_worker   kill -9 of a worker mid-generation: its prompt comes back,
 *                 the run completes, the summary balances, nothing trained twice;
 *                 kill -9 of one of tidal run's own workers too: the run still
 *                 exits 0 and summary.json's workers_lost names it; a worker
 *                 SIGTERMed while it joins leaves with exit 0
 *   kill_trainer  kill -9 of the trainer fails `tidal run` (exit 1), then
 *                 `tidal run --resume`: the versions continue, the summary
 *                 balances, nothing lost or twice
 *   kill_bus      kill -9 of nats-server (JetStream on disk) and a restart on
 *                 the same port: every role reconnects, the run completes
 *   garbage       garbage on the prompt and trajectory subjects is rejected and
 *                 counted; the run completes
 *   jsonl         a JSONL dataset with its own prompt and answer keys, scored by
 *                 gsm8k: no group fails for want of an answer; `tidal status`
 *                 reads the job while it runs
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "bus/bus.h"
#include "proto/codec.h"
#include "job/names.h"
#include "bus/server.h"

static const char *tidal_bin, *source_dir;
static char work[256];

/* A short job that needs no learning: 12 steps of 4 groups x 8, 2 workers. */
static const char BASE_SPEC[] =
    "job:\n  name: e2e\n"
    "model:\n  init: {layers: 1, hidden: 32, heads: 2, kv_heads: 1, ffn: 64, seed: 3}\n"
    "data:\n  generator: strings\n  template: plain\n  eval_size: 8\n"
    "env:\n  name: strings\n  config: {length: 3, alphabet: digits, ops: [reverse]}\n"
    "rollout:\n  workers: 2\n  group_size: 8\n  max_tokens: 6\n  ack_wait_ms: 2000\n"
    "buffer:\n  max_staleness: 2\n"
    "trainer:\n  steps: 12\n  groups_per_step: 4\n  lr: 0.003\n  checkpoint_every: 3\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* Start tidal with these arguments (NULL-terminated); output to WORK/NAME.out. */
static pid_t start_tidal(const char *name, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)tidal_bin;
    va_list ap;
    va_start(ap, name);
    for (const char *a; argc < 63 && (a = va_arg(ap, const char *));) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    char out[512];
    snprintf(out, sizeof out, "%s/%s.out", work, name);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1), dup2(fd, 2);
        execv(tidal_bin, argv);
        _exit(127);
    }
    return pid;
}

/* Exit status of pid, or -1 after timeout_s (then it is killed). */
static int wait_exit(pid_t pid, double timeout_s)
{
    const double t0 = now_s();
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (now_s() - t0 > timeout_s) {
            kill(pid, SIGTERM);
            usleep(3000 * 1000);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(100 * 1000);
    }
}

static void show_output(const char *name)
{
    char path[512], cmd[1400];
    snprintf(path, sizeof path, "%s/%s.out", work, name);
    snprintf(cmd, sizeof cmd, "tail -n 20 %s >&2; tail -n 15 %s/run/logs/*.log >&2", path, work);
    if (system(cmd) != 0) fprintf(stderr, "(no output)\n");
}

/* The last row of metrics.jsonl, and for each key the largest value over all rows (*mx, a new object). */
static json_t *metrics_last(const char *run, json_t **mx)
{
    char path[512], line[16384];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    json_t *last = NULL;
    *mx = json_object();
    while (f && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o) continue;
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v) {
            const json_t *m = json_object_get(*mx, k);
            if (json_is_number(v) && (!m || json_number_value(v) > json_number_value(m)))
                json_object_set_new(*mx, k, json_real(json_number_value(v)));
        }
        json_decref(last);
        last = o;
    }
    if (f) fclose(f);
    return last;
}

/* The largest value of metric `key` over RUN/metrics.jsonl's rows; `none` when it has none. */
static double metrics_max(const char *run, const char *key, double none)
{
    json_t *mx = NULL, *last = metrics_last(run, &mx);
    const json_t *v = json_object_get(mx, key);
    const double r = v ? json_number_value(v) : none;
    json_decref(last);
    json_decref(mx);
    return r;
}

/* The newest step in RUN/metrics.jsonl (0 when none). */
static long last_step(const char *run) { return (long)metrics_max(run, "step", 0); }

static bool wait_step(const char *run, long step, double timeout_s)
{
    const double t0 = now_s();
    while (now_s() - t0 < timeout_s) {
        if (last_step(run) >= step) return true;
        usleep(100 * 1000);
    }
    return false;
}

/* The pid of role NAME (controller, trainer, rollout-0, ...) from RUN/pids. */
static pid_t pid_of(const char *run, const char *name)
{
    char path[600], n[64], v[256];
    snprintf(path, sizeof path, "%s/pids", run);
    FILE *f = fopen(path, "r");
    pid_t pid = -1;
    while (f && fscanf(f, "%63s %255s", n, v) == 2)
        if (!strcmp(n, name)) pid = (pid_t)atoi(v);
    if (f) fclose(f);
    return pid;
}

static json_t *load_json(const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_error_t e;
    json_t *o = json_load_file(path, 0, &e);
    if (!o) fprintf(stderr, "%s: %s\n", path, e.text);
    return o;
}

static long jint(const json_t *o, const char *a, const char *b)
{
    const json_t *x = json_object_get(o, a);
    if (b) x = json_object_get(x, b);
    return (long)json_integer_value(x);
}

/* dispatched = trained + dropped + failed + in_flight, trained = steps x B,
 * in_flight >= 0. */
static void check_balance(const json_t *s, long steps, long B)
{
    CHECK_MSG(s != NULL, "no summary.json");
    if (!s) return;
    const json_t *g = json_object_get(s, "groups");
    long dropped = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(g, "dropped"), k, v) dropped += (long)json_integer_value(v);
    const long disp = jint(g, "dispatched", NULL), tr = jint(g, "trained", NULL), fl = jint(g, "failed", NULL),
               inf = jint(g, "in_flight", NULL);
    CHECK_MSG(disp == tr + dropped + fl + inf && inf >= 0, "summary: dispatched %ld != trained %ld + dropped %ld + "
              "failed %ld + in_flight %ld", disp, tr, dropped, fl, inf);
    CHECK_MSG(tr == steps * B, "summary: trained %ld groups, want %ld", tr, steps * B);
    CHECK_MSG(jint(s, "version", NULL) == steps && json_is_true(json_object_get(s, "done")), "summary: version %ld",
              jint(s, "version", NULL));
}

/* The checkpoint at `steps`: its trained ids, each exactly once, `want` of them. */
static void check_trained_once(const char *run, long steps, long want)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/checkpoints/step-%ld", run, steps);
    json_t *st = load_json(dir, "state.json");
    json_t *ids = json_object_get(st, "trained_ids");
    const size_t n = json_array_size(ids);
    CHECK_MSG((long)n == want, "%zu trajectories trained, want %ld", n, want);
    json_t *seen = json_object();
    size_t twice = 0, i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        if (json_object_get(seen, json_string_value(v))) twice++;
        json_object_set_new(seen, json_string_value(v), json_true());
    }
    CHECK_MSG(twice == 0, "%zu trajectories trained twice", twice);
    json_decref(seen);
    json_decref(st);
}

/* The largest staleness_max of any step (-1 when there is none). */
static long max_staleness(const char *run) { return (long)metrics_max(run, "staleness_max", -1); }

static void fresh_work(const char *name)
{
    snprintf(work, sizeof work, "/tmp/tidal-e2e-%s-%d", name, (int)getpid());
    mkdir(work, 0755);
}

static void cleanup(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", work);
    if (!getenv("TIDAL_KEEP") && system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", work);
}

/* Run BASE_SPEC (with sets) to the end; returns tidal run's exit status. */
static int run_base(const char *name, const char *set1, const char *set2, double timeout_s)
{
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = set2   ? start_tidal(name, "run", spec, "--out", run, "--set", set1, "--set", set2, NULL)
              : set1 ? start_tidal(name, "run", spec, "--out", run, "--set", set1, NULL)
                     : start_tidal(name, "run", spec, "--out", run, NULL);
    return wait_exit(p, timeout_s);
}

/* ---------------------------------------------------------------- scenarios */

static void test_quickstart(void)
{
    fresh_work("quickstart");
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    snprintf(run, sizeof run, "%s/run", work);
    int rc = wait_exit(start_tidal("quickstart", "run", spec, "--out", run, NULL), 400);
    CHECK_MSG(rc == 0, "tidal run examples/quickstart.yaml: exit %d", rc);
    json_t *s = load_json(run, "summary.json");
    const json_t *r = json_object_get(s, "reward");
    const double first = json_number_value(json_object_get(r, "first"));
    const double last10 = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "quickstart: reward first %.3f, last-10 mean %.3f, %.0f s\n", first, last10,
            json_number_value(json_object_get(s, "wall_s")));
    CHECK_MSG(first <= 0.3, "reward at the start %.3f > 0.3", first);
    CHECK_MSG(last10 >= 0.9, "mean reward of the last 10 steps %.3f < 0.9", last10);
    struct stat sb;
    char svg[600];
    snprintf(svg, sizeof svg, "%s/reward.svg", run);
    CHECK_MSG(stat(svg, &sb) == 0 && sb.st_size > 1000, "no reward curve at %s", svg);
    if (check_cur_failed_) show_output("quickstart");
    json_decref(s);
    cleanup();
}

static void test_staleness(void)
{
    const int Ks[2] = {2, 0};
    for (int i = 0; i < 2; i++) {
        fresh_work(i ? "staleness0" : "staleness2");
        char set[64], run[512];
        snprintf(set, sizeof set, "buffer.max_staleness=%d", Ks[i]);
        snprintf(run, sizeof run, "%s/run", work);
        int rc = run_base("run", set, NULL, 240);
        CHECK_MSG(rc == 0, "K = %d: tidal run exit %d", Ks[i], rc);
        const long mx = max_staleness(run);
        CHECK_MSG(mx >= 0 && mx <= Ks[i], "K = %d: a trained token %ld versions old", Ks[i], mx);
        if (Ks[i] == 0) CHECK_MSG(mx == 0, "K = 0: staleness %ld, want exactly on-policy", mx);
        json_t *s = load_json(run, "summary.json");
        check_balance(s, 12, 4);
        json_decref(s);
        if (check_cur_failed_) show_output("run");
        cleanup();
    }
}

/* Every option of the algorithm suite at once, from the job spec: the job runs to the end, each
 * option shows in the metrics, and the ledger holds (a reused group is trained twice but its
 * trajectories are recorded once). */
static void test_options(void)
{
    fresh_work("options");
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "trainer.loss=m2po", "--set",
                          "trainer.correction=tis", "--set", "trainer.minibatches=2", "--set", "trainer.kl=0.01",
                          "--set", "trainer.kl_reward=0.01", "--set", "trainer.stale_weight=poly", "--set",
                          "trainer.overlong_buffer=2", "--set", "trainer.advantage=rloo", "--set",
                          "buffer.sampling=priority", "--set", "buffer.reuse=2", "--set",
                          "buffer.filter_zero_variance=true", "--set", "rollout.weights=oldest", "--set",
                          "buffer.max_staleness=3", "--set", "weights.keep=5", "--set", "trainer.lr_schedule=cosine",
                          NULL);
    int rc = wait_exit(p, 300);
    CHECK_MSG(rc == 0, "tidal run with every option: exit %d", rc);
    json_t *mx = NULL, *last = metrics_last(run, &mx);
    CHECK_MSG(last != NULL, "no metrics");
    const double steps = 12, B = 4, G = 8;
    const double trained = json_number_value(json_object_get(last, "groups_trained"));
    const double reused = json_number_value(json_object_get(last, "groups_reused"));
    fprintf(stderr, "options: %g groups trained, %g reused; staleness max %g; updates %g; ref_kl max %g; "
            "kl_reward max %g; masked max %g; dropped_zero_var %g\n", trained, reused,
            json_number_value(json_object_get(mx, "staleness_max")), json_number_value(json_object_get(last, "updates")),
            json_number_value(json_object_get(mx, "ref_kl")), json_number_value(json_object_get(mx, "kl_reward")),
            json_number_value(json_object_get(mx, "masked_frac")),
            json_number_value(json_object_get(last, "dropped_zero_var")));
    CHECK_MSG(trained + reused == steps * B, "%g first trainings + %g reuses != %g batch slots", trained, reused,
              steps * B);
    CHECK_MSG(reused > 0, "buffer.reuse 2: no group was trained twice");
    CHECK_MSG(json_number_value(json_object_get(last, "updates")) == 2, "trainer.minibatches 2: updates %g",
              json_number_value(json_object_get(last, "updates")));
    CHECK_MSG(json_number_value(json_object_get(mx, "staleness_max")) == 3,
              "rollout.weights oldest, K = 3: the stalest sample is %g versions old, want exactly 3",
              json_number_value(json_object_get(mx, "staleness_max")));
    CHECK_MSG(json_number_value(json_object_get(mx, "ref_kl")) > 0, "trainer.kl: ref_kl never above 0");
    const double lr_last = json_number_value(json_object_get(last, "lr")), lr_max = json_number_value(json_object_get(mx, "lr"));
    CHECK_MSG(lr_max > 0.0029 && lr_last < 0.5 * lr_max, "trainer.lr_schedule cosine: lr %g at the end, %g at most",
              lr_last, lr_max);
    json_t *s = load_json(run, "summary.json");
    const long inf = jint(json_object_get(s, "groups"), "in_flight", NULL);
    CHECK_MSG(s && inf >= 0 && json_is_true(json_object_get(s, "done")), "summary: in_flight %ld", inf);
    check_trained_once(run, (long)steps, (long)(trained * G));
    json_decref(s);
    json_decref(last);
    json_decref(mx);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* Samples trained per second between steps a and b of metrics.jsonl. */
static double rate_between(const char *run, long a, long b)
{
    char path[512], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    double ta = -1, tb = -1, samples = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        long s = (long)json_integer_value(json_object_get(o, "step"));
        double t = json_number_value(json_object_get(o, "time"));
        if (s == a) ta = t;
        if (s > a && s <= b) samples += json_number_value(json_object_get(o, "samples"));
        if (s == b) tb = t;
        json_decref(o);
    }
    if (f) fclose(f);
    return ta >= 0 && tb > ta ? samples / (tb - ta) : 0;
}

/* The bus URL of a run's private server (RUN/pids). */
static void bus_url_of(const char *run, char *url, size_t n)
{
    char path[600], name[64], v[256];
    snprintf(path, sizeof path, "%s/pids", run);
    FILE *f = fopen(path, "r");
    url[0] = 0;
    while (f && fscanf(f, "%63s %255s", name, v) == 2)
        if (!strcmp(name, "nats-server")) snprintf(url, n, "%s", v);
    if (f) fclose(f);
}

/* Wait until worker `id`'s heartbeat says it is generating a prompt. */
static bool wait_generating(const char *url, const char *id, double timeout_s)
{
    tidal_bus *b = NULL;
    bus_kv *kv = NULL;
    bus_opts bo = {.urls = url, .name = "e2e-watch"};
    bool yes = false;
    const double t0 = now_s();
    if (bus_connect(&b, &bo) != TIDAL_OK) return false;
    while (!yes && now_s() - t0 < timeout_s) {
        void *v = NULL;
        size_t n = 0;
        Tidal__V1__WorkerStatus *ws = NULL;
        if (!kv) bus_kv_open(b, "TIDAL_e2e_WORKERS", &kv);
        if (kv && bus_kv_get(kv, id, &v, &n, NULL) == TIDAL_OK && codec_decode_worker_status(v, n, &ws) == TIDAL_OK) {
            yes = ws->state == TIDAL__V1__WORKER_STATE__WORKER_STATE_GENERATING && ws->prompts_in_flight == 1 &&
                  ws->trajectories > 0;
            tidal__v1__worker_status__free_unpacked(ws, NULL);
        }
        free(v);
        if (!yes) usleep(5 * 1000);
    }
    bus_kv_close(kv);
    bus_close(b);
    return yes;
}

static void test_join(void)
{
    fresh_work("join");
    char spec[512], run[512], url[256] = "";
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    /* no worker of tidal run's own; hand-started workers slowed 10x, so that generation (not the trainer or
       the 2 cores) limits the rate and a second worker must raise it */
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "rollout.workers=0", "--set", "trainer.steps=36",
                          NULL);
    for (int i = 0; i < 100 && !url[0]; i++) {
        usleep(100 * 1000);
        bus_url_of(run, url, sizeof url);
    }
    setenv("OMP_NUM_THREADS", "1", 1); /* as tidal run gives its workers on 2 cores */
    pid_t w1 = start_tidal("first", "rollout", "--bus", url, "--job", "e2e", "--id", "first", "--slowdown", "10", NULL);
    CHECK_MSG(wait_step(run, 4, 120), "no step 4");
    const long s0 = last_step(run);
    CHECK(wait_step(run, s0 + 8, 120));
    const long s1 = last_step(run);
    const double alone = rate_between(run, s0, s1);
    pid_t w2 = start_tidal("joiner", "rollout", "--bus", url, "--job", "e2e", "--id", "joiner", "--slowdown", "10", NULL);
    unsetenv("OMP_NUM_THREADS");
    CHECK(wait_step(run, s1 + 3, 120)); /* let it join */
    const long s2 = last_step(run);
    CHECK(wait_step(run, s2 + 12, 120));
    const long s3 = last_step(run);
    const double both = rate_between(run, s2, s3);
    int rc = wait_exit(p, 240);
    CHECK_MSG(rc == 0, "tidal run exit %d", rc);
    CHECK_MSG(wait_exit(w1, 30) == 0 && wait_exit(w2, 30) == 0, "a worker did not leave cleanly at the end");
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "grep -q 'leaving after [1-9][0-9]* groups' %s/joiner.out", work);
    CHECK_MSG(system(cmd) == 0, "the joined worker generated no group");
    fprintf(stderr, "join: %.1f samples/s with one worker, %.1f with two\n", alone, both);
    CHECK_MSG(both > 1.3 * alone, "samples/s %.1f with two workers, %.1f with one: no rise", both, alone);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 36, 4);
    json_decref(s);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

static bool grep_file(const char *file, const char *pattern);

static void test_kill_worker(void)
{
    fresh_work("kill_worker");
    char spec[512], run[512], url[256];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "trainer.steps=100", "--set",
                          "rollout.ack_wait_ms=1000", NULL);
    CHECK_MSG(wait_step(run, 1, 120), "no step 1");
    bus_url_of(run, url, sizeof url);
    /* a slow worker (it holds each prompt 10 x its generation time) is killed in the middle of a group */
    pid_t w = start_tidal("victim", "rollout", "--bus", url, "--job", "e2e", "--id", "victim", "--slowdown", "10", NULL);
    /* a worker told to leave while it is still joining (here: waiting for a job that never starts) leaves
       cleanly, exit 0, as a churning fleet's do */
    pid_t early = start_tidal("early", "rollout", "--bus", url, "--job", "e2e-none", "--id", "early", NULL);
    CHECK_MSG(wait_generating(url, "victim", 60), "the victim never got to generate");
    CHECK_MSG(grep_file("early.out", "waiting for the KV bucket"), "the early worker is not waiting for its job");
    kill(early, SIGTERM);
    const int early_rc = wait_exit(early, 30);
    CHECK_MSG(early_rc == 0, "a worker told to leave while joining: exit %d, want 0", early_rc);
    CHECK_MSG(kill(w, SIGKILL) == 0, "cannot kill the victim (%d)", (int)w);
    waitpid(w, NULL, 0);
    /* and one of tidal run's own workers: elastic, so the run still completes and exits 0, and names it lost */
    const pid_t own = pid_of(run, "rollout-0");
    CHECK_MSG(own > 0 && kill(own, SIGKILL) == 0, "cannot kill rollout-0 (%d)", (int)own);
    int rc = wait_exit(p, 300);
    CHECK_MSG(rc == 0, "tidal run exit %d after the workers' kill", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 100, 4);
    CHECK_MSG(jint(s, "prompts", "redelivered") >= 1, "no prompt redelivered after the kill");
    const json_t *lost = json_object_get(s, "workers_lost"), *l0 = json_array_get(lost, 0);
    const char *lost_id = json_string_value(json_object_get(l0, "id"));
    CHECK_MSG(json_array_size(lost) == 1 && lost_id && !strncmp(lost_id, "w0-", 3) &&
                  !strcmp(json_string_value(json_object_get(l0, "name")), "rollout-0") &&
                  json_integer_value(json_object_get(l0, "signal")) == SIGKILL &&
                  json_is_null(json_object_get(l0, "exit_code")) && jint(l0, "unix_ms", NULL) > 0,
              "summary.json workers_lost: want rollout-0 (w0-...) killed by signal 9, have %zu entries (first %s)",
              json_array_size(lost), lost_id ? lost_id : "none");
    json_decref(s);
    CHECK_MSG(grep_file("run.out", "rollout-0 (worker w0-[0-9]*) lost: killed by signal 9"),
              "tidal run did not say rollout-0 was lost");
    check_trained_once(run, 100, 100 * 4 * 8);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

static void test_kill_trainer(void)
{
    fresh_work("kill_trainer");
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, NULL);
    CHECK_MSG(wait_step(run, 5, 120), "no step 5");
    pid_t t = pid_of(run, "trainer");
    CHECK_MSG(t > 0 && kill(t, SIGKILL) == 0, "cannot kill the trainer (%d)", (int)t);
    int rc = wait_exit(p, 60);
    CHECK_MSG(rc == 1, "tidal run exit %d after the trainer's kill, want 1", rc);
    const long before = last_step(run);
    rc = wait_exit(start_tidal("resume", "run", "--resume", run, NULL), 300);
    CHECK_MSG(rc == 0, "tidal run --resume exit %d", rc);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "grep -q 'resumed at step-' %s/logs/trainer.log", run);
    CHECK_MSG(system(cmd) == 0, "the trainer did not resume from a checkpoint");
    CHECK_MSG(last_step(run) == 12 && before >= 5, "steps: %ld before the kill, %ld at the end", before, last_step(run));
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 12, 4);
    json_decref(s);
    check_trained_once(run, 12, 12 * 4 * 8);
    if (check_cur_failed_) show_output("resume");
    cleanup();
}

static void test_kill_bus(void)
{
    fresh_work("kill_bus");
    char store[512], spec[1024], run[512], set[300];
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(run, sizeof run, "%s/run", work);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    write_file(spec, BASE_SPEC);
    snprintf(set, sizeof set, "bus.url=%s", tidal_server_url(srv));
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", set, "--set", "trainer.steps=16", NULL);
    CHECK_MSG(wait_step(run, 4, 120), "no step 4");
    CHECK_OK(tidal_server_kill(srv));
    usleep(1500 * 1000);
    CHECK_OK(tidal_server_restart(srv));
    int rc = wait_exit(p, 300);
    CHECK_MSG(rc == 0, "tidal run exit %d after the server's kill -9 and restart", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 16, 4);
    json_decref(s);
    check_trained_once(run, 16, 16 * 4 * 8);
    if (check_cur_failed_) show_output("run");
    tidal_server_stop(srv);
    cleanup();
}

/* True when `file` (under work/) has a line matching the grep pattern. */
static bool grep_file(const char *file, const char *pattern)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "grep -q -e '%s' %s/%s 2>/dev/null", pattern, work, file);
    return system(cmd) == 0;
}

/* A server whose max_payload (64 KB) cannot hold a group of 96 samples of a
 * 900-token prompt: every answer goes in parts, which the trainer reassembles
 * and trains once. A worker that waits between two parts is killed -9 there:
 * its prompt is redelivered, the answer comes again whole, the samples of the
 * part it had stored are duplicates, and the summary balances. */
static void test_parts(void)
{
    fresh_work("parts");
    char conf[512], store[512], data[512], spec[512], run[512], set[300], url[256];
    snprintf(conf, sizeof conf, "%s/nats.conf", work);
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(data, sizeof data, "%s/rows.jsonl", work);
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(conf, "max_payload: 65536\nmax_pending: 512MB\nwrite_deadline: \"10s\"\n");
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 40; i++) {
        fprintf(f, "{\"q\": \"");
        for (int k = 0; k < 90; k++) fprintf(f, "context%02d ", k); /* 900 bytes: 900 tokens of one byte each on the wire */
        fprintf(f, "What is %d + %d?\", \"sol\": \"#### %d\"}\n", i, i, 2 * i);
    }
    if (f) fclose(f);
    char text[2048];
    snprintf(text, sizeof text,
             "job:\n  name: e2e\n"
             "model:\n  init: {layers: 1, hidden: 32, heads: 2, kv_heads: 1, ffn: 64, seed: 3}\n"
             "data:\n  path: %s\n  prompt_key: q\n  answer_key: sol\n  template: plain\n  epochs: 20\n"
             "env:\n  name: gsm8k\n"
             "rollout:\n  workers: 1\n  group_size: 96\n  max_tokens: 8\n  ack_wait_ms: 2000\n"
             "buffer:\n  max_staleness: 4\n"
             "trainer:\n  steps: 6\n  groups_per_step: 2\n  lr: 0.001\n  checkpoint_every: 3\n",
             data);
    write_file(spec, text);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store, .config_file = conf};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    snprintf(set, sizeof set, "bus.url=%s", url);
    setenv("TIDAL_LOG", "debug", 1); /* the workers say where each part went */
    setenv("OMP_NUM_THREADS", "1", 1);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", set, NULL);
    pid_t victim = start_tidal("victim", "rollout", "--bus", url, "--job", "e2e", "--id", "victim", "--part-gap-ms",
                               "60000", NULL);
    unsetenv("OMP_NUM_THREADS");
    unsetenv("TIDAL_LOG");
    bool between = false;
    for (double t0 = now_s(); !between && now_s() - t0 < 120; usleep(100 * 1000))
        between = grep_file("victim.out", "part 1 of [2-9] stored");
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    CHECK_MSG(between, "the victim never stored a first part (no group in parts?)");
    int rc = wait_exit(p, 300);
    CHECK_MSG(rc == 0, "tidal run exit %d after a worker died between two parts", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 6, 2);
    CHECK_MSG(jint(s, "duplicate_samples", NULL) > 0,
              "no duplicate samples: the redelivered answer did not repeat the stored part's samples");
    json_decref(s);
    check_trained_once(run, 6, 6 * 2 * 96);
    CHECK_MSG(grep_file("run/logs/rollout-0.log", "part 2 of [2-9] stored"), "the job's worker sent no group in parts");
    if (check_cur_failed_) show_output("run");
    tidal_server_stop(srv);
    cleanup();
}

static void test_garbage(void)
{
    fresh_work("garbage");
    char spec[512], run[512], url[256] = "";
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "trainer.steps=40", NULL);
    CHECK_MSG(wait_step(run, 2, 120), "no step 2");
    bus_url_of(run, url, sizeof url);
    tidal_bus *b = NULL;
    bus_opts bo = {.urls = url, .name = "garbage"};
    CHECK_OK(bus_connect(&b, &bo));
    job_names jn;
    job_names_init(&jn, "e2e");
    const char junk[] = "\xff\x01garbage, not a protobuf";
    const unsigned char neg[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0x0f}; /* decodes, but schema_version nonsense */
    for (int i = 0; b && i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "junk-p%d", i);
        CHECK_OK(bus_js_publish(b, jn.prompts_subject, junk, (int)sizeof junk - 1, id, 0, NULL, NULL));
        snprintf(id, sizeof id, "junk-t%d", i);
        CHECK_OK(bus_js_publish(b, jn.traj_subject, i ? junk : (const char *)neg, i ? (int)sizeof junk - 1 : 6, id,
                                0, NULL, NULL));
    }
    bus_close(b);
    int rc = wait_exit(p, 300);
    CHECK_MSG(rc == 0, "tidal run exit %d after the garbage", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 40, 4);
    CHECK_MSG(jint(s, "rejected", "prompts") == 3, "rejected prompts %ld, want 3", jint(s, "rejected", "prompts"));
    CHECK_MSG(jint(s, "rejected", "trajectories") == 3, "rejected trajectories %ld, want 3",
              jint(s, "rejected", "trajectories"));
    json_decref(s);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

static void test_jsonl(void)
{
    fresh_work("jsonl");
    char data[512], spec[512], run[512], url[256] = "";
    snprintf(data, sizeof data, "%s/rows.jsonl", work);
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 40; i++)
        fprintf(f, "{\"q\": \"What is %d + %d?\", \"sol\": \"%d + %d = %d\\n#### %d\"}\n", i, i, i, i, 2 * i, 2 * i);
    fclose(f);
    char text[2048];
    snprintf(text, sizeof text,
             "job:\n  name: e2e\n"
             "model:\n  init: {layers: 1, hidden: 32, heads: 2, kv_heads: 1, ffn: 64, seed: 3}\n"
             "data:\n  path: %s\n  prompt_key: q\n  answer_key: sol\n  template: plain\n  epochs: 20\n"
             "  eval_fraction: 0.1\n"
             "env:\n  name: gsm8k\n"
             "rollout:\n  workers: 2\n  group_size: 4\n  max_tokens: 8\n"
             "trainer:\n  steps: 40\n  groups_per_step: 4\n  lr: 0.001\n"
             "eval:\n  every: 20\n",
             data);
    write_file(spec, text);
    pid_t p = start_tidal("run", "run", spec, "--out", run, NULL);
    CHECK_MSG(wait_step(run, 2, 120), "no step 2");
    bus_url_of(run, url, sizeof url);
    /* Workers write their status asynchronously (a heartbeat), so a job can reach step 2 before
       both have: ask until the answer is whole, and show the last answer if it never is. */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s status --bus %s --job e2e --json > %s/status.json", tidal_bin, url, work);
    json_t *st = NULL;
    bool whole = false;
    for (double t0 = now_s(); !whole && now_s() - t0 < 30; usleep(200 * 1000)) {
        CHECK_MSG(system(cmd) == 0, "tidal status failed");
        json_decref(st);
        st = load_json(work, "status.json");
        whole = json_is_string(json_object_get(st, "state")) && json_is_array(json_object_get(st, "workers")) &&
                json_array_size(json_object_get(st, "workers")) == 2 &&
                json_is_integer(json_object_get(json_object_get(st, "trainer"), "trained"));
    }
    if (!whole) {
        char *text = json_dumps(st, JSON_COMPACT);
        fprintf(stderr, "tidal status, the last answer: %s\n", text ? text : "(none)");
        free(text);
    }
    CHECK_MSG(whole, "tidal status: no whole answer in 30 s");
    json_decref(st);
    int rc = wait_exit(p, 240);
    CHECK_MSG(rc == 0, "tidal run exit %d", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 40, 4);
    CHECK_MSG(jint(s, "groups", "failed") == 0, "%ld groups failed (the env could not find the answer?)",
              jint(s, "groups", "failed"));
    json_decref(s);
    json_t *ev = NULL;
    snprintf(cmd, sizeof cmd, "%s/eval.jsonl", run);
    FILE *e = fopen(cmd, "r");
    char line[4096];
    int evals = 0;
    while (e && fgets(line, sizeof line, e)) {
        ev = json_loads(line, 0, NULL);
        evals += json_is_true(json_object_get(ev, "complete"));
        json_decref(ev);
    }
    if (e) fclose(e);
    CHECK_MSG(evals == 3, "%d complete evaluations, want 3 (steps 0, 20, 40)", evals);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

int main(int argc, char **argv)
{
    tidal_bin = getenv("TIDAL_BIN");
    source_dir = getenv("TIDAL_SOURCE_DIR");
    if (!tidal_bin || !source_dir || argc != 2) {
        fprintf(stderr, "usage: TIDAL_BIN=... TIDAL_SOURCE_DIR=... test_e2e SCENARIO\n");
        return 2;
    }
    setenv("OMP_WAIT_POLICY", "passive", 0);
    const char *s = argv[1];
    if (!strcmp(s, "quickstart")) RUN(test_quickstart);
    else if (!strcmp(s, "staleness")) RUN(test_staleness);
    else if (!strcmp(s, "join")) RUN(test_join);
    else if (!strcmp(s, "kill_worker")) RUN(test_kill_worker);
    else if (!strcmp(s, "kill_trainer")) RUN(test_kill_trainer);
    else if (!strcmp(s, "kill_bus")) RUN(test_kill_bus);
    else if (!strcmp(s, "garbage")) RUN(test_garbage);
    else if (!strcmp(s, "jsonl")) RUN(test_jsonl);
    else if (!strcmp(s, "options")) RUN(test_options);
    else if (!strcmp(s, "parts")) RUN(test_parts);
    else {
        fprintf(stderr, "test_e2e: unknown scenario %s\n", s);
        return 2;
    }
    return check_summary();
}
