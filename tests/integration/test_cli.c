/* test_cli.c - the `tidal` entry point as a user meets it: run the built
 * binary ($TIDAL_BIN) and check exit statuses (0 ok, 2 usage) and what goes to
 * stdout and stderr for help, version, unknown and not-yet-available commands. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "check.h"
#include "base/fs.h"
#include "model/model.h"

extern char **environ;

static const char *tidal_bin;

/* What one run of the binary did. out and err are NUL-terminated heap
 * strings owned by the struct (free with run_free). */
typedef struct {
    int status; /* exit status, or 128 + signal, or -1 when it could not run */
    char *out;
    char *err;
} run_result;

static void run_free(run_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* Append what is readable on fd to *buf; returns 0 at EOF. */
static int drain(int fd, char **buf, size_t *len)
{
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) return 0;
    char *grown = realloc(*buf, *len + (size_t)n + 1);
    if (!grown) return 0;
    memcpy(grown + *len, chunk, (size_t)n);
    *len += (size_t)n;
    grown[*len] = '\0';
    *buf = grown;
    return 1;
}

/* A pipe whose ends close on exec (posix_spawn's dup2 clears it on 1 and 2). */
static int cloexec_pipe(int fds[2])
{
    if (pipe(fds) != 0) return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

/* Run `tidal ARGS...` (NULL-terminated) with stdin from /dev/null, capturing
 * stdout and stderr. */
static run_result run_tidal(const char *first, ...)
{
    run_result r = {-1, calloc(1, 1), calloc(1, 1)};
    char *argv[16];
    int argc = 0;
    argv[argc++] = (char *)tidal_bin;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 15; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;

    int out[2], err[2];
    if (cloexec_pipe(out) != 0) return r;
    if (cloexec_pipe(err) != 0) {
        close(out[0]);
        close(out[1]);
        return r;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    pid_t pid;
    int rc = posix_spawn(&pid, tidal_bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    if (rc == 0) {
        size_t olen = 0, elen = 0;
        struct pollfd p[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
        while (p[0].fd >= 0 || p[1].fd >= 0) {
            if (poll(p, 2, 30000) <= 0) {
                if (errno == EINTR) continue;
                break; /* hung: give up on the output, still reap below */
            }
            if (p[0].fd >= 0 && p[0].revents && !drain(out[0], &r.out, &olen)) p[0].fd = -1;
            if (p[1].fd >= 0 && p[1].revents && !drain(err[0], &r.err, &elen)) p[1].fd = -1;
        }
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    close(out[0]);
    close(err[0]);
    return r;
}

#define CHECK_RUN(r, want_status)                                                                \
    CHECK_MSG((r).status == (want_status), "exit %d, want %d\nstdout: %s\nstderr: %s", (r).status, \
              (want_status), (r).out, (r).err)

static const char *const all_commands[] = {"run",   "controller", "rollout",  "trainer",
                                           "env",   "status",     "bench",    "tokenize",
                                           "generate", "debug",   "version", "view"};

static void test_help_lists_every_command(void)
{
    const char *forms[][2] = {{"--help", NULL}, {"-h", NULL}, {"help", NULL}};
    for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
        run_result r = run_tidal(forms[f][0], forms[f][1]);
        int ok = r.status == 0 && strstr(r.out, "usage: tidal") && r.err[0] == '\0';
        for (size_t i = 0; ok && i < sizeof all_commands / sizeof all_commands[0]; i++) {
            char line[64];
            snprintf(line, sizeof line, "\n  %s ", all_commands[i]);
            ok = strstr(r.out, line) != NULL;
        }
        CHECK_MSG(ok, "tidal %s: exit %d\nstdout: %s\nstderr: %s", forms[f][0], r.status, r.out, r.err);
        run_free(&r);
    }
}

static void test_help_for_one_command(void)
{
    run_result r = run_tidal("help", "bench", NULL);
    int ok = r.status == 0 && strstr(r.out, "usage: tidal bench") && strstr(r.out, "bus") && !r.err[0];
    CHECK_MSG(ok, "help bench: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);

    r = run_tidal("bench", "--help", NULL);
    ok = r.status == 0 && strstr(r.out, "usage: tidal bench") && !r.err[0];
    CHECK_MSG(ok, "bench --help: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);

    /* --help works for a command that is not available yet, too. */
    r = run_tidal("rollout", "--help", NULL);
    ok = r.status == 0 && strstr(r.out, "usage: tidal rollout") && strstr(r.out, "--bus URL");
    CHECK_MSG(ok, "rollout --help: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);

    r = run_tidal("help", "nosuch", NULL);
    ok = r.status == 2 && !r.out[0] && strstr(r.err, "nosuch") && strstr(r.err, "usage: tidal");
    CHECK_MSG(ok, "help nosuch: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);
}

static void test_version(void)
{
    const char *forms[] = {"version", "--version"};
    for (size_t f = 0; f < 2; f++) {
        run_result r = run_tidal(forms[f], NULL);
        int ok = r.status == 0 && strncmp(r.out, "tidal ", 6) == 0 &&
                 (strstr(r.out, "(cuda: yes)\n") || strstr(r.out, "(cuda: no)\n")) &&
                 strstr(r.out, "\nnats.c 3.") && strstr(r.out, "\nprotobuf-c 1.") && !r.err[0];
        CHECK_MSG(ok, "tidal %s: exit %d\nstdout: %s\nstderr: %s", forms[f], r.status, r.out, r.err);
        run_free(&r);
    }
    run_result r = run_tidal("version", "extra", NULL);
    int ok = r.status == 2 && strstr(r.err, "usage: tidal version");
    CHECK_MSG(ok, "version extra: exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);
}

static void test_unknown_or_missing_command(void)
{
    run_result r = run_tidal("frobnicate", NULL);
    int ok = r.status == 2 && !r.out[0] && strstr(r.err, "frobnicate") && strstr(r.err, "usage: tidal");
    CHECK_MSG(ok, "unknown: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);

    r = run_tidal(NULL);
    ok = r.status == 2 && !r.out[0] && strstr(r.err, "usage: tidal");
    CHECK_MSG(ok, "no command: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);
}

/* The role commands refuse what they cannot run with exit 2 and say why. */
static void test_role_usage_errors(void)
{
    const char *bad = "/tmp/tidal-test-cli-bad.yaml";
    FILE *f = fopen(bad, "w");
    fputs("job:\n  name: x\ntrainer:\n  lr: fast\n", f);
    fclose(f);
    struct {
        const char *a, *b, *c, *d, *e, *want;
    } cases[] = {
        {"run", NULL, NULL, NULL, NULL, "tidal run: which job?"},
        {"run", "/nonexistent/job.yaml", NULL, NULL, NULL, "/nonexistent/job.yaml"},
        {"run", bad, NULL, NULL, NULL, "tidal-test-cli-bad.yaml:4: trainer.lr"},
        {"trainer", bad, NULL, NULL, NULL, "tidal-test-cli-bad.yaml:4: trainer.lr"},
        {"controller", bad, "--nosuch", NULL, NULL, "unknown option '--nosuch'"},
        {"rollout", "--bus", "nats://127.0.0.1:1", NULL, NULL, "--job NAME is required"},
        {"rollout", "--job", "j", "extra", NULL, "unexpected argument 'extra'"},
        {"rollout", "--fault", "bogus", NULL, NULL, "--fault bogus: not logprob-noise, temperature or stale-weights"},
        {"status", "--job", "j", NULL, NULL, "--bus URL and --job NAME are required"},
        {"rollout", "--threads", "0", NULL, NULL, "--threads 0: want an integer from 1 to 4096"},
        {"trainer", bad, "--share", "2x", NULL, "--share 2x: want an integer from 1 to 4096"},
        {"status", "--share", "2", "--job", "j", "--threads and --share are for tidal controller, trainer and rollout"},
        {"trainer", bad, "--dashboard", "8080", NULL, "--dashboard and --dashboard-bind are for tidal run and tidal controller"},
        {"controller", bad, "--dashboard", "0", NULL, "--dashboard 0: want a port 1 .. 65535, or -1"},
        {"controller", bad, "--dashboard-bind", "0.0.0.0", NULL, "--dashboard-bind without --dashboard PORT"},
        {"view", NULL, NULL, NULL, NULL, "tidal view: which run directory?"},
        {"view", "/nonexistent/run", NULL, NULL, NULL, "/nonexistent/run: No such file or directory"},
        {"view", "/tmp", "--port", "70000", NULL, "--port 70000: want a port"},
        {"view", "/", NULL, NULL, NULL, "/: not a run directory: it holds neither spec.json nor metrics.jsonl"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_result r = run_tidal(cases[i].a, cases[i].b, cases[i].c, cases[i].d, cases[i].e, NULL);
        int ok = r.status == 2 && strstr(r.err, cases[i].want);
        CHECK_MSG(ok, "tidal %s %s: exit %d, want 2 and '%s'\nstderr: %s", cases[i].a, cases[i].b ? cases[i].b : "",
                  r.status, cases[i].want, r.err);
        run_free(&r);
    }
    remove(bad);
}

/* A role started by hand says which threading it chose and why, before it
 * connects (here to a bus that is not there: exit 1): --threads and --share
 * as given, and the policy the test's environment set (OMP_WAIT_POLICY=passive,
 * so not "set by tidal"). */
static void test_role_threading_line(void)
{
    run_result r = run_tidal("rollout", "--bus", "nats://127.0.0.1:1", "--job", "j", "--threads", "3", NULL);
    CHECK_MSG(r.status == 1 && strstr(r.err, "rollout: 3 threads (--threads 3; ") &&
                  strstr(r.err, "; OMP_WAIT_POLICY=passive)"),
              "exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);
    r = run_tidal("rollout", "--bus", "nats://127.0.0.1:1", "--job", "j", "--share", "4096", NULL);
    CHECK_MSG(r.status == 1 && strstr(r.err, "rollout: 1 thread (--share 4096: "), "exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);
}

/* `tidal run` checks the spec's local paths before it starts a server or a
 * role: exit 2 naming the key and the path, and no run directory made. */
static void test_run_checks_paths_first(void)
{
    const char *spec = "/tmp/tidal-test-cli-paths.yaml", *out = "/tmp/tidal-test-cli-paths-run";
    struct {
        const char *yaml, *want;
    } cases[] = {
        {"job: {name: p}\nmodel: {path: /nonexistent/model}\ndata: {generator: strings}\nenv: {name: strings}\n",
         "tidal-test-cli-paths.yaml: model.path: /nonexistent/model: no such directory"},
        {"job: {name: p}\nmodel: {path: /tmp}\ndata: {generator: strings}\nenv: {name: strings}\n",
         "model.path: /tmp has no readable config.json"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
         "data: {path: /nonexistent/data.jsonl}\nenv: {name: gsm8k}\n",
         "data.path: /nonexistent/data.jsonl: No such file or directory"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, "
         "tokenizer: /nonexistent/tok}}\ndata: {generator: strings}\nenv: {name: strings}\n",
         "tidal-test-cli-paths.yaml: model.init.tokenizer: /nonexistent/tok: No such file or directory"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, tokenizer: /tmp}}\n"
         "data: {generator: strings}\nenv: {name: strings}\n",
         "model.init.tokenizer: /tmp has no readable tokenizer.json"},
        /* beyond paths: what the roles would find first, found before anything starts */
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
         "data: {path: /tmp/tidal-test-cli-paths.jsonl, prompt_key: question}\nenv: {name: gsm8k}\n",
         "tidal-test-cli-paths.yaml: data.path: /tmp/tidal-test-cli-paths.jsonl:2: question is missing"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, vocab: 100}}\n"
         "data: {generator: strings}\nenv: {name: strings}\n",
         "tidal-test-cli-paths.yaml: model.init.vocab: 100 cannot hold"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
         "data: {generator: strings}\nenv: {name: strings, config: {length: 0}}\n",
         "tidal-test-cli-paths.yaml: data.generator strings: env strings: config.length"},
        {"job: {name: p}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
         "data: {generator: strings}\nenv: {name: nosuchenv}\n",
         "env nosuchenv: no such built-in environment"},
    };
    FILE *df = fopen("/tmp/tidal-test-cli-paths.jsonl", "w");
    CHECK(df != NULL);
    if (!df) return;
    fputs("{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"q\": \"no question key\"}\n", df);
    fclose(df);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(spec, "w");
        CHECK(f != NULL);
        if (!f) return;
        fputs(cases[i].yaml, f);
        fclose(f);
        run_result r = run_tidal("run", spec, "--out", out, NULL);
        struct stat st;
        CHECK_MSG(r.status == 2 && strstr(r.err, cases[i].want), "case %zu: exit %d, want 2 and '%s'\nstderr: %s", i,
                  r.status, cases[i].want, r.err);
        CHECK_MSG(stat(out, &st) != 0, "case %zu: %s was made for a run that cannot start", i, out);
        run_free(&r);
    }
    remove(spec);
    remove("/tmp/tidal-test-cli-paths.jsonl");
}

static void test_bench_dispatch(void)
{
    run_result r = run_tidal("bench", "nosuch", NULL);
    int ok = r.status == 2 && !r.out[0] && strstr(r.err, "nosuch") && strstr(r.err, "usage: tidal bench");
    CHECK_MSG(ok, "bench nosuch: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    run_free(&r);

    r = run_tidal("bench", NULL);
    ok = r.status == 2 && strstr(r.err, "usage: tidal bench");
    CHECK_MSG(ok, "bench: exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);

    r = run_tidal("bench", "async", "--nosuch", NULL);
    ok = r.status == 2 && strstr(r.err, "usage: tidal bench async");
    CHECK_MSG(ok, "bench async --nosuch: exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);

    r = run_tidal("bench", "weights", "--nosuch", NULL);
    ok = r.status == 2 && strstr(r.err, "usage: tidal bench weights");
    CHECK_MSG(ok, "bench weights --nosuch: exit %d\nstderr: %s", r.status, r.err);
    run_free(&r);
}

/* `tidal generate` on a tiny model tidal writes itself: greedy ids with
 * logprobs, deterministic; a text prompt without a tokenizer is a clear error;
 * generation_config.json's eos ids stop it, a malformed one is named. */
static void test_generate_tiny_model(void)
{
    model_config c = {.type = MODEL_QWEN2, .vocab_size = 50, .hidden_size = 16, .num_layers = 1, .num_heads = 2,
                      .num_kv_heads = 1, .head_dim = 8, .intermediate_size = 24, .max_position_embeddings = 128,
                      .rope_theta = 1e4, .rms_norm_eps = 1e-6, .tie_word_embeddings = true, .qkv_bias = true,
                      .bos_token_id = -1, .eos_token_id = -1};
    model *m = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 9, 0.5f, true);
    char dir[] = "/tmp/tidal-gen-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    tidal_status s = model_save(m, dir, ST_F32);
    model_free(m);
    CHECK_OK(s);
    run_result a = run_tidal("generate", "--model", dir, "--ids", "1 2 3", "--max-tokens", "5", "--temperature", "0", NULL);
    run_result b = run_tidal("generate", "--model", dir, "--ids", "1 2 3", "--max-tokens", "5", "--temperature", "0", NULL);
    int lines = 0, ok = a.status == 0 && !strcmp(a.out, b.out);
    for (const char *p = a.out; ok && *p; p++) lines += *p == '\n';
    float lp = 1.0f;
    int id = -1;
    ok = ok && lines == 5 && sscanf(a.out, "%d %f", &id, &lp) == 2 && id >= 0 && id < 50 && lp <= 0.0f;
    CHECK_MSG(ok, "exit %d, %d lines\nstdout: %s\nstderr: %s", a.status, lines, a.out, a.err);
    run_free(&a);
    run_free(&b);
    run_result t = run_tidal("generate", "--model", dir, "--prompt", "hello", NULL);
    ok = t.status != 0 && strstr(t.err, "tokenizer") != NULL;
    CHECK_MSG(ok, "text prompt without a tokenizer: exit %d, stderr: %s", t.status, t.err);
    run_free(&t);
    /* generation_config.json's eos ids stop it too (as in transformers): the first greedy token ends it */
    char path[128], text[64];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    snprintf(text, sizeof text, "{\"eos_token_id\": [49, %d]}\n", id);
    CHECK_OK(fs_write_file(path, text, strlen(text)));
    run_result g = run_tidal("generate", "--model", dir, "--ids", "1 2 3", "--max-tokens", "5", "--temperature", "0", NULL);
    lines = 0;
    for (const char *p = g.out; *p; p++) lines += *p == '\n';
    ok = g.status == 0 && lines == 1 && strstr(g.err, "[stop:");
    CHECK_MSG(ok, "stop at generation_config.json's eos %d: exit %d, %d lines\nstdout: %s\nstderr: %s", id, g.status,
              lines, g.out, g.err);
    run_free(&g);
    static const char bad[] = "{\"eos_token_id\": \"x\"}";
    CHECK_OK(fs_write_file(path, bad, strlen(bad)));
    g = run_tidal("generate", "--model", dir, "--ids", "1 2 3", NULL);
    ok = g.status == 2 && strstr(g.err, "generation_config.json") && strstr(g.err, "eos_token_id");
    CHECK_MSG(ok, "a malformed generation_config.json: exit %d, stderr: %s", g.status, g.err);
    run_free(&g);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* A bench's last stdout line parsed as JSON (NULL when it is not); the caller decrefs. */
static json_t *last_line_json(const run_result *r)
{
    size_t n = r->out ? strlen(r->out) : 0;
    while (n > 0 && r->out[n - 1] == '\n') n--;
    size_t start = n;
    while (start > 0 && r->out[start - 1] != '\n') start--;
    return n > start ? json_loadb(r->out + start, n - start, 0, NULL) : NULL;
}

/* `tidal bench bus` end to end on a private server, small: the JSON line has
 * both paths' figures and the CPU accounting (a number only a real
 * nats-server child and real traffic give), and every message arrived. */
static void test_bench_bus_reports(void)
{
    run_result r = run_tidal("bench", "bus", "--single", "--messages", "3000", "--rounds", "1", "--json", NULL);
    json_t *o = last_line_json(&r);
    json_t *t = json_object_get(o, "tidal"), *raw = json_object_get(o, "raw");
    double ratio = json_number_value(json_object_get(o, "ratio"));
    double cpu_ratio = json_number_value(json_object_get(o, "cpu_ratio"));
    int ok = r.status == 0 && o && t && raw && json_integer_value(json_object_get(t, "messages")) == 3000 &&
             json_integer_value(json_object_get(raw, "messages")) == 3000 && ratio > 0 && cpu_ratio > 0 &&
             json_number_value(json_object_get(t, "server_cpu_us_per_msg")) > 0 &&
             json_number_value(json_object_get(t, "client_cpu_us_per_msg")) > 0 &&
             json_number_value(json_object_get(raw, "cores_used")) > 0 && strstr(r.err, "round 1:") &&
             !strcmp(json_string_value(json_object_get(o, "message")) ? json_string_value(json_object_get(o, "message")) : "",
                     "Trajectory");
    CHECK_MSG(ok, "bench bus: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    json_decref(o);
    run_free(&r);

    /* one TrajectoryGroup of 3 per message, as a worker sends it: 3 trajectories and the group's header */
    r = run_tidal("bench", "bus", "--messages", "500", "--rounds", "1", "--group", "3", "--json", NULL);
    o = last_line_json(&r);
    t = json_object_get(o, "tidal");
    ok = r.status == 0 && json_integer_value(json_object_get(o, "trajectories_per_message")) == 3 &&
         json_is_string(json_object_get(o, "message")) &&
         !strcmp(json_string_value(json_object_get(o, "message")), "TrajectoryGroup") &&
         json_integer_value(json_object_get(o, "message_bytes")) > 3 * 8900 &&
         fabs(json_number_value(json_object_get(t, "trajectories_per_s")) -
              3 * json_number_value(json_object_get(t, "msgs_per_s"))) <=
             1e-4 * json_number_value(json_object_get(t, "trajectories_per_s")); /* printed to 6 digits */
    CHECK_MSG(ok, "bench bus --group 3: exit %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    json_decref(o);
    run_free(&r);
    r = run_tidal("bench", "bus", "--group", "0", NULL);
    CHECK_MSG(r.status == 2 && strstr(r.err, "usage: tidal bench bus"), "--group 0: exit %d", r.status);
    run_free(&r);
}

/* --dry-run: the role reads its flags and spec (or env config), checks the
 * files its flags name, prints what it would start and exits 0 - connecting
 * to nothing (the bus here is a closed port, which a real start fails on with
 * exit 1) and writing nothing; a wrong flag, spec or file is still exit 2. */
static void test_dry_run(void)
{
    const char *spec = "/tmp/tidal-test-cli-dry.yaml", *bad = "/tmp/tidal-test-cli-dry-bad.yaml";
    const char *out = "/tmp/tidal-test-cli-dry-run", *bus = "nats://127.0.0.1:1";
    FILE *f = fopen(spec, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("job: {name: dry}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
          "data: {generator: strings}\nenv: {name: strings, remote: true}\nmetrics: {trainer_port: 9102}\n",
          f);
    fclose(f);
    f = fopen(bad, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("job:\n  name: x\ntrainer:\n  lr: fast\n", f);
    fclose(f);
    struct {
        const char *a, *b, *c, *d, *e, *f, *g, *h;
        int status;
        const char *want; /* in stdout when 0, in stderr when 2 */
    } cases[] = {
        {"controller", spec, "--bus", bus, "--out", out, "--dry-run", NULL, 0, "run directory: /tmp/tidal-test-cli-dry-run\n"},
        {"controller", spec, "--bus", bus, "--dry-run", NULL, NULL, NULL, 0, "env: strings (served on the bus"},
        {"trainer", spec, "--bus", bus, "--out", out, "--dry-run", NULL, 0, "metrics: http://127.0.0.1:9102/metrics"},
        {"trainer", bad, "--bus", bus, "--dry-run", NULL, NULL, NULL, 2, "tidal-test-cli-dry-bad.yaml:4: trainer.lr"},
        {"controller", spec, "--bus", bus, "--set", "model.init.tokenizer=/nonexistent/tok", "--dry-run", NULL, 2,
         "model.init.tokenizer: /nonexistent/tok: No such file or directory"},
        {"trainer", spec, "--bus", bus, "--creds", "/nonexistent/t.creds", "--dry-run", NULL, 2,
         "--creds /nonexistent/t.creds: No such file or directory"},
        {"rollout", "--bus", bus, "--job", "dry", "--id", "w1", "--dry-run", 0, "worker id: w1\n"},
        {"rollout", "--bus", bus, "--job", "dry", "--metrics-prot", "1", "--dry-run", 2, "unknown option '--metrics-prot'"},
        {"rollout", "--bus", bus, "--dry-run", NULL, NULL, NULL, NULL, 2, "--job NAME is required"},
        {"env", "serve", "strings", "--bus", bus, "--config", "{\"length\": 4}", "--dry-run", 0, "serving tidal.env.strings"},
        {"env", "serve", "strings", "--bus", bus, "--config", "{\"length\": 0}", "--dry-run", 2, "config.length"},
        {"env", "serve", "strings", "--dry-run", NULL, NULL, NULL, NULL, 2, "--bus URL (or $TIDAL_BUS) is required"},
        {"env", "call", "strings", "--bus", bus, "--dry-run", NULL, NULL, 2, "--dry-run is for tidal env serve"},
        {"status", "--bus", bus, "--job", "dry", "--dry-run", NULL, NULL, 2, "--dry-run is for tidal controller"},
    };
    unsetenv("TIDAL_BUS");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_result r = run_tidal(cases[i].a, cases[i].b, cases[i].c, cases[i].d, cases[i].e, cases[i].f, cases[i].g,
                                 cases[i].h, NULL);
        const char *where = cases[i].status == 0 ? r.out : r.err;
        CHECK_MSG(r.status == cases[i].status && strstr(where, cases[i].want),
                  "case %zu (tidal %s %s): exit %d, want %d and '%s'\nstdout: %s\nstderr: %s", i, cases[i].a,
                  cases[i].b ? cases[i].b : "", r.status, cases[i].status, cases[i].want, r.out, r.err);
        run_free(&r);
    }
    struct stat st;
    CHECK_MSG(stat(out, &st) != 0, "%s was made by a dry run", out);
    remove(spec);
    remove(bad);
}
/* The GPU paths where no GPU answers (CUDA compiled in without a driver, or a
 * build without CUDA): each refuses with the reason, before any work - the
 * trainer with trainer.device cuda (exit 1, before it connects to a bus),
 * tidal run (exit 2, before a server starts), the self-check, the fwdbwd
 * parity hook and bench train. The self-check's comparison itself, CPU
 * against CPU with an error planted through TIDAL_SELFCHECK_PLANT, names the
 * op. (On a GPU host the device cases are skipped, said on stderr.) */
static void test_gpu_refusals(void)
{
    run_result probe = run_tidal("debug", "selfcheck", "--device", "auto", NULL);
    CHECK_RUN(probe, 0);
    const bool no_gpu = strstr(probe.err, "trainer.device auto: the CPU (no CUDA: ") != NULL;
    run_free(&probe);
    if (no_gpu) {
        const char *spec = "/tmp/tidal-test-cli-cuda.yaml", *out = "/tmp/tidal-test-cli-cuda-run";
        FILE *f = fopen(spec, "w");
        CHECK(f != NULL);
        if (!f) return;
        fputs("job: {name: g}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
              "data: {generator: strings}\nenv: {name: strings}\ntrainer: {device: cuda}\n", f);
        fclose(f);
        run_result r = run_tidal("trainer", spec, "--bus", "nats://127.0.0.1:1", NULL);
        CHECK_RUN(r, 1);
        CHECK_MSG(strstr(r.err, "tidal trainer: trainer.device cuda: ") && !strstr(r.err, "bus: connect"),
                  "stderr: %s", r.err);
        run_free(&r);
        r = run_tidal("run", spec, "--out", out, NULL);
        struct stat sst;
        CHECK_RUN(r, 2);
        CHECK_MSG(strstr(r.err, "tidal run: /tmp/tidal-test-cli-cuda.yaml: trainer.device cuda: "), "stderr: %s", r.err);
        CHECK_MSG(stat(out, &sst) != 0, "%s was made for a run that cannot start", out);
        run_free(&r);
        remove(spec);
        const char *cmds[][8] = {
            {"debug", "selfcheck", "--device", "cuda", NULL},
            {"debug", "fwdbwd", "--model", "/nonexistent", "--input", "x", "--out", "y"},
            {"bench", "train", "--device", "cuda", "--json", NULL},
        };
        const char *want[] = {"tidal debug selfcheck: trainer.device cuda: ", "tidal debug fwdbwd: --device cuda: ",
                              "tidal bench train: --device cuda: "};
        for (size_t i = 0; i < 3; i++) {
            r = i == 1 ? run_tidal(cmds[i][0], cmds[i][1], cmds[i][2], cmds[i][3], cmds[i][4], cmds[i][5], cmds[i][6],
                                   cmds[i][7], "--device", "cuda", NULL)
                       : run_tidal(cmds[i][0], cmds[i][1], cmds[i][2], cmds[i][3], cmds[i][4], NULL);
            CHECK_RUN(r, 1);
            CHECK_MSG(strstr(r.err, want[i]) && (strstr(r.err, "no usable device") || strstr(r.err, "no CUDA path")),
                      "tidal %s %s: stderr: %s", cmds[i][0], cmds[i][1], r.err);
            CHECK_MSG(r.out[0] == '\0', "tidal %s %s printed: %s", cmds[i][0], cmds[i][1], r.out);
            run_free(&r);
        }
    } else {
        fprintf(stderr, "  a GPU answers here: the refusals without one are not exercised\n");
    }
    setenv("TIDAL_SELFCHECK_PLANT", "backward:model.layers.1.self_attn.o_proj.weight", 1);
    run_result r = run_tidal("debug", "selfcheck", "--device", "cpu", NULL);
    unsetenv("TIDAL_SELFCHECK_PLANT");
    CHECK_RUN(r, 1);
    CHECK_MSG(strstr(r.err, "tidal debug selfcheck: trainer self-check (cpu): backward: gradient of "
                            "model.layers.1.self_attn.o_proj.weight: error "),
              "stderr: %s", r.err);
    run_free(&r);
}

/* trainer.precision: bf16 is refused on the CPU by name (the self-check hook,
 * tidal run before anything starts); the check's two other modes - five
 * steps tracking the CPU's loss, the bit-identical rerun - CPU against CPU,
 * and their command-line errors. */
static void test_precision_and_check_modes(void)
{
    run_result r = run_tidal("debug", "selfcheck", "--device", "cpu", "--precision", "bf16", NULL);
    CHECK_RUN(r, 1);
    CHECK_MSG(strstr(r.err, "tidal debug selfcheck: trainer.precision bf16: the CPU trainer computes in fp32 only"),
              "stderr: %s", r.err);
    run_free(&r);
    const char *spec = "/tmp/tidal-test-cli-bf16.yaml", *out = "/tmp/tidal-test-cli-bf16-run";
    FILE *f = fopen(spec, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("job: {name: g}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
          "data: {generator: strings}\nenv: {name: strings}\ntrainer: {device: cpu, precision: bf16}\n", f);
    fclose(f);
    r = run_tidal("run", spec, "--out", out, NULL);
    struct stat sst;
    CHECK_RUN(r, 2);
    CHECK_MSG(strstr(r.err, "tidal run: /tmp/tidal-test-cli-bf16.yaml: trainer.precision bf16: the CPU trainer "),
              "stderr: %s", r.err);
    CHECK_MSG(stat(out, &sst) != 0, "%s was made for a run that cannot start", out);
    run_free(&r);
    remove(spec);
    r = run_tidal("debug", "selfcheck", "--device", "cpu", "--steps", "5", NULL);
    CHECK_RUN(r, 0);
    CHECK_MSG(strstr(r.out, "loss track (cpu, fp32): before update 1: device ") &&
                  strstr(r.out, "loss track (cpu, fp32): after update 5: device ") &&
                  strstr(r.out, "loss track (cpu, fp32): 5 AdamW steps track the CPU: worst error 0 (tolerance 1e-04)"),
              "stdout: %s", r.out);
    run_free(&r);
    r = run_tidal("debug", "selfcheck", "--device", "cpu", "--rerun", NULL);
    CHECK_RUN(r, 0);
    CHECK_MSG(strstr(r.out, "rerun (cpu, fp32): the self-check's forward, backward and update twice: equal bit for bit"),
              "stdout: %s", r.out);
    run_free(&r);
    const char *bad[][6] = {{"--steps", "0"}, {"--steps", "x"}, {"--steps", "5", "--rerun"}};
    for (size_t i = 0; i < 3; i++) {
        r = run_tidal("debug", "selfcheck", "--device", "cpu", bad[i][0], bad[i][1], bad[i][2], NULL);
        CHECK_RUN(r, 2);
        run_free(&r);
    }
}

/* The GPU engine (rollout.device cuda) where no GPU answers: the worker
 * (`tidal rollout --device cuda`, exit 1 before it connects to a bus), the
 * engine self-check and `bench generate --device cuda` refuse with the
 * reason. The self-check's comparison itself, the CPU engine against itself
 * with a token planted through TIDAL_ENGINE_SELFCHECK_PLANT, names the
 * request and token; unplanted it agrees. (On a GPU host the device cases
 * are skipped and the cuda self-check must agree instead.) */
static void test_engine_gpu_refusals(void)
{
    run_result probe = run_tidal("debug", "engine-selfcheck", "--device", "auto", NULL);
    CHECK_RUN(probe, 0);
    const bool no_gpu = strstr(probe.err, "rollout.device auto: the CPU engine (no CUDA: ") != NULL;
    CHECK_MSG(strstr(probe.out, "engine-selfcheck (") != NULL, "stdout: %s", probe.out);
    run_free(&probe);
    if (no_gpu) {
        const char *spec = "/tmp/tidal-test-cli-engine-cuda.yaml", *out = "/tmp/tidal-test-cli-engine-cuda-run";
        FILE *f = fopen(spec, "w");
        CHECK(f != NULL);
        if (!f) return;
        fputs("job: {name: g}\nmodel: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}}\n"
              "data: {generator: strings}\nenv: {name: strings}\nrollout: {device: cuda}\n", f);
        fclose(f);
        run_result r = run_tidal("run", spec, "--out", out, NULL);
        struct stat sst;
        CHECK_RUN(r, 2);
        CHECK_MSG(strstr(r.err, "tidal run: /tmp/tidal-test-cli-engine-cuda.yaml: rollout.device cuda: "), "stderr: %s",
                  r.err);
        CHECK_MSG(stat(out, &sst) != 0, "%s was made for a run that cannot start", out);
        run_free(&r);
        remove(spec);
        r = run_tidal("rollout", "--job", "j", "--bus", "nats://127.0.0.1:1", "--device", "cuda", NULL);
        CHECK_RUN(r, 1);
        CHECK_MSG(strstr(r.err, "tidal rollout: rollout.device cuda: ") && !strstr(r.err, "bus: connect"),
                  "stderr: %s", r.err);
        run_free(&r);
        const char *cmds[][6] = {
            {"debug", "engine-selfcheck", "--device", "cuda", NULL},
            {"bench", "generate", "--device", "cuda", "--json", NULL},
        };
        const char *want[] = {"tidal debug engine-selfcheck: rollout.device cuda: ",
                              "tidal bench generate: --device cuda: "};
        for (size_t i = 0; i < 2; i++) {
            r = run_tidal(cmds[i][0], cmds[i][1], cmds[i][2], cmds[i][3], cmds[i][4], NULL);
            CHECK_RUN(r, 1);
            CHECK_MSG(strstr(r.err, want[i]) && (strstr(r.err, "no usable device") || strstr(r.err, "no CUDA path")),
                      "tidal %s %s: stderr: %s", cmds[i][0], cmds[i][1], r.err);
            CHECK_MSG(r.out[0] == '\0', "tidal %s %s printed: %s", cmds[i][0], cmds[i][1], r.out);
            run_free(&r);
        }
    } else {
        fprintf(stderr, "  a GPU answers here: the engine's refusals without one are not exercised\n");
        run_result r = run_tidal("debug", "engine-selfcheck", "--device", "cuda", NULL);
        CHECK_RUN(r, 0);
        run_free(&r);
    }
    run_result r = run_tidal("rollout", "--job", "j", "--bus", "nats://127.0.0.1:1", "--device", "tpu", NULL);
    CHECK_RUN(r, 2);
    CHECK_MSG(strstr(r.err, "--device tpu: want cpu, cuda or auto"), "stderr: %s", r.err);
    run_free(&r);
    r = run_tidal("debug", "engine-selfcheck", "--device", "cpu", NULL);
    CHECK_RUN(r, 0);
    CHECK_MSG(strstr(r.out, "engine-selfcheck (cpu): greedy generation equal to the CPU engine's"), "stdout: %s", r.out);
    run_free(&r);
    setenv("TIDAL_ENGINE_SELFCHECK_PLANT", "2:5", 1);
    r = run_tidal("debug", "engine-selfcheck", "--device", "cpu", NULL);
    CHECK_RUN(r, 1);
    CHECK_MSG(strstr(r.err, "tidal debug engine-selfcheck: engine self-check (cpu): request 2 (prompt of 17 tokens): "
                            "token 5: the device gave "),
              "stderr: %s", r.err);
    run_free(&r);
    setenv("TIDAL_ENGINE_SELFCHECK_PLANT", "9:0", 1);
    r = run_tidal("debug", "engine-selfcheck", "--device", "cpu", NULL);
    unsetenv("TIDAL_ENGINE_SELFCHECK_PLANT");
    CHECK_RUN(r, 1);
    CHECK_MSG(strstr(r.err, "TIDAL_ENGINE_SELFCHECK_PLANT: '9:0' is not REQ:INDEX"), "stderr: %s", r.err);
    run_free(&r);
}

int main(void)
{
    tidal_bin = getenv("TIDAL_BIN");
    if (!tidal_bin || !*tidal_bin || access(tidal_bin, X_OK) != 0) {
        fprintf(stderr, "test_cli: set TIDAL_BIN to the built tidal binary (got %s)\n",
                tidal_bin ? tidal_bin : "nothing");
        return 1;
    }
    RUN(test_help_lists_every_command);
    RUN(test_help_for_one_command);
    RUN(test_version);
    RUN(test_unknown_or_missing_command);
    RUN(test_role_usage_errors);
    RUN(test_run_checks_paths_first);
    RUN(test_role_threading_line);
    RUN(test_dry_run);
    RUN(test_generate_tiny_model);
    RUN(test_bench_dispatch);
    RUN(test_bench_bus_reports);
    RUN(test_gpu_refusals);
    RUN(test_precision_and_check_modes);
    RUN(test_engine_gpu_refusals);
    return check_summary();
}
