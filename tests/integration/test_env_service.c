/* test_env_service.c - environments over a real nats-server: the service
 * (envs/service.h), the caller (envs/client.h) and `tidal env serve`.
 *
 * - `tidal env serve gsm8k` (a child process) scores for a client that knows
 *   only docs/protocol.md: the requests are protobuf bytes written here by
 *   hand from the field numbers, the answers read the same way;
 * - a slow request holds one handler thread, never the others;
 * - stopping drains: requests already received are answered;
 * - garbage, oversized, wrong-env and bad-op requests get error replies, and
 *   the service keeps serving;
 * - the caller: a timeout then a retry that succeeds, no responders, an
 *   error answer (TIDAL_ERR_REMOTE), an instance that dies holding a request
 *   (the retry reaches the other instance); its health (a run of failures
 *   from a missing env, "no responders on tidal.env.NAME", ended by the
 *   first answer once the env starts);
 * - `tidal env serve` exits 0 on SIGTERM, and 2 on an unknown env.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "envs/client.h"
#include "envs/service.h"
#include "harness/fixture.h"
#include "proto/codec.h"

static fixture F;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- a test env */

/* action "sleep:N" sleeps N ms, "fail" fails, "hang-once" sleeps 1.5 s on its
 * first call only; else reward = length of the action, done. */
static atomic_int slow_done, hang_calls;

static tidal_status test_handler(void *ctx, const env_call *c, env_result *out)
{
    (void)ctx;
    const char *a = c->action ? c->action : "";
    if (!strncmp(a, "sleep:", 6)) {
        usleep((useconds_t)atoi(a + 6) * 1000);
        atomic_store(&slow_done, 1);
    } else if (!strcmp(a, "fail")) {
        return tidal_fail(TIDAL_ERR_INVALID, "task_json.answer: missing");
    } else if (!strcmp(a, "hang-once") && atomic_fetch_add(&hang_calls, 1) == 0) {
        usleep(1500 * 1000);
    }
    out->reward = (double)strlen(a);
    out->done = true;
    return env_result_metric(out, "turn", (double)c->turn);
}

static env_service *start_test_env(const char *name, int concurrency)
{
    env_service *s = NULL;
    env_service_opts o = {.concurrency = concurrency, .max_request_bytes = 4096};
    if (env_service_start(F.bus, name, test_handler, NULL, &o, &s) != TIDAL_OK) {
        fprintf(stderr, "start %s: %s\n", name, tidal_errmsg());
        return NULL;
    }
    return s;
}

static env_client *client(const char *name, int timeout_ms, int retries)
{
    env_client *c = NULL;
    env_client_opts o = {.timeout_ms = timeout_ms, .retries = retries, .backoff_ms = 10};
    if (env_client_remote(F.bus, name, &o, &c) != TIDAL_OK) return NULL;
    return c;
}

static tidal_status step(env_client *c, const char *action, env_result *r)
{
    env_call call = {.op = ENV_OP_STEP, .task_json = "{}", .action = action, .turn = 1, .session = "s"};
    return env_client_call(c, &call, r);
}

/* ---------------------------------------------------------------- hand-written protobuf */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

static size_t put_str(uint8_t *p, int field, const char *s)
{
    size_t n = put_varint(p, (uint64_t)field << 3 | 2), len = strlen(s);
    n += put_varint(p + n, len);
    memcpy(p + n, s, len);
    return n + len;
}

/* EnvRequest{env, op, task_json, action_text, turn} from docs/protocol.md's field numbers. */
static size_t hand_request(uint8_t *p, const char *env, int op, const char *task, const char *action, int turn)
{
    size_t n = put_str(p, 1, env);
    n += put_varint(p + n, 3 << 3 | 0);
    n += put_varint(p + n, (uint64_t)op);
    n += put_str(p + n, 4, task);
    n += put_str(p + n, 5, action);
    n += put_varint(p + n, 7 << 3 | 0);
    n += put_varint(p + n, (uint64_t)turn);
    return n;
}

typedef struct hand_response {
    double reward;
    int done;
    char error[512];
    int n_metrics;
} hand_response;

static int get_varint(const uint8_t *p, size_t len, size_t *at, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *at < len && shift < 64; shift += 7) {
        uint8_t b = p[(*at)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 1;
    }
    return 0;
}

/* Read EnvResponse fields 2 (reward, double), 3 (done), 4 (error), 5 (metrics), skipping others. */
static int hand_parse(const uint8_t *p, size_t len, hand_response *r)
{
    memset(r, 0, sizeof *r);
    size_t at = 0;
    while (at < len) {
        uint64_t key, v;
        if (!get_varint(p, len, &at, &key)) return 0;
        const int field = (int)(key >> 3), wt = (int)(key & 7);
        if (wt == 1) { /* 64-bit */
            if (at + 8 > len) return 0;
            if (field == 2) memcpy(&r->reward, p + at, 8);
            at += 8;
        } else if (wt == 0) {
            if (!get_varint(p, len, &at, &v)) return 0;
            if (field == 3) r->done = (int)v;
        } else if (wt == 2) {
            if (!get_varint(p, len, &at, &v) || at + v > len) return 0;
            if (field == 4) snprintf(r->error, sizeof r->error, "%.*s", (int)v, (const char *)p + at);
            if (field == 5) r->n_metrics++;
            at += v;
        } else if (wt == 5) {
            at += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int hand_call(const char *env, int op, const char *task, const char *action, hand_response *r)
{
    uint8_t buf[4096];
    size_t n = hand_request(buf, env, op, task, action, op == 1 ? 0 : 1);
    char subject[160];
    snprintf(subject, sizeof subject, "tidal.env.%s", env);
    bus_msg *m = NULL;
    if (bus_request(F.bus, subject, buf, (int)n, 5000, &m) != TIDAL_OK) return 0;
    int ok = hand_parse(bus_msg_data(m), (size_t)bus_msg_len(m), r);
    bus_msg_destroy(m);
    return ok;
}

/* ---------------------------------------------------------------- tidal env serve */

static pid_t spawn_serve(const char *name, const char *extra)
{
    const char *bin = getenv("TIDAL_BIN");
    if (!bin) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (extra)
            execl(bin, bin, "env", "serve", name, "--bus", tidal_server_url(F.srv), "--config", extra, (char *)NULL);
        else
            execl(bin, bin, "env", "serve", name, "--bus", tidal_server_url(F.srv), (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Wait until something answers on tidal.env.<name> (RESET), at most ms. */
static int wait_serving(const char *name, int ms)
{
    for (int64_t end = now_ms() + ms; now_ms() < end;) {
        hand_response r;
        if (hand_call(name, 1, "{}", "", &r)) return 1;
        usleep(50 * 1000);
    }
    return 0;
}

static int wait_exit(pid_t pid, int ms, int *status)
{
    for (int64_t end = now_ms() + ms; now_ms() < end;) {
        if (waitpid(pid, status, WNOHANG) == pid) return 1;
        usleep(20 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, status, 0);
    return 0;
}

static void test_serve_gsm8k_for_a_protocol_only_client(void)
{
    pid_t pid = spawn_serve("gsm8k", NULL);
    CHECK_MSG(pid > 0, "TIDAL_BIN is not set");
    int ok = wait_serving("gsm8k", 10000);
    hand_response r;
    static const struct {
        const char *task, *action;
        double reward;
    } cases[] = {
        {"{\"answer\": \"Natalia sold 48/2 = 24 clips in May.\\n#### 72\"}", "She sold 48 + 24 = 72 clips.\n#### 72", 1},
        {"{\"answer\": \"#### 72\"}", "The answer is \\boxed{72}.", 1},
        {"{\"answer\": \"#### 1,000\"}", "So it costs $1,000.00 in total.", 1},
        {"{\"answer\": \"72\"}", "I think it is 71.", 0},
        {"{\"answer\": \"#### -3\"}", "#### -3", 1},
    };
    for (size_t i = 0; ok && i < sizeof cases / sizeof cases[0]; i++) {
        ok = hand_call("gsm8k", 2, cases[i].task, cases[i].action, &r) && !r.error[0] && r.done &&
             r.reward == cases[i].reward;
        if (!ok) fprintf(stderr, "  case %zu: reward %g done %d error '%s'\n", i, r.reward, r.done, r.error);
    }
    /* a task without its answer: an error reply naming the field, and the service goes on */
    int err_ok = ok && hand_call("gsm8k", 2, "{\"question\": \"?\"}", "72", &r) && strstr(r.error, "answer");
    int still = err_ok && hand_call("gsm8k", 2, "{\"answer\": \"5\"}", "5", &r) && r.reward == 1.0;
    kill(pid, SIGTERM);
    int status = 0, exited = wait_exit(pid, 10000, &status);
    CHECK_MSG(ok, "tidal env serve gsm8k did not score as expected");
    CHECK_MSG(err_ok, "a task without `answer` got: error '%s'", r.error);
    CHECK(still);
    CHECK_MSG(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit after SIGTERM: status %d", status);
}

static void test_serve_unknown_env(void)
{
    pid_t pid = spawn_serve("no-such-env", NULL);
    CHECK(pid > 0);
    int status = 0;
    CHECK(wait_exit(pid, 10000, &status));
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 2, "status %d", status);
}

/* ---------------------------------------------------------------- the service */

typedef struct bg_call {
    env_client *c;
    const char *action;
    tidal_status st;
    env_result r;
    int64_t done_ms;
} bg_call;

static void *bg(void *arg)
{
    bg_call *b = arg;
    b->st = step(b->c, b->action, &b->r);
    b->done_ms = now_ms();
    return NULL;
}

static void test_slow_request_blocks_nothing(void)
{
    env_service *s = start_test_env("slowfast", 2);
    CHECK(s);
    env_client *c = client("slowfast", 5000, 0);
    atomic_store(&slow_done, 0);
    bg_call slow = {.c = c, .action = "sleep:1500"};
    pthread_t t;
    pthread_create(&t, NULL, bg, &slow);
    usleep(100 * 1000); /* the slow one is in its handler */
    env_result r = {0};
    tidal_status st = step(c, "abc", &r);
    const int slow_was_done = atomic_load(&slow_done);
    pthread_join(t, NULL);
    env_service_stop(s, 5000);
    env_client_free(c);
    CHECK_STATUS(st, TIDAL_OK);
    CHECK(r.reward == 3.0 && r.done && r.n_metrics == 1 && !strcmp(r.metrics[0].name, "turn"));
    CHECK_MSG(!slow_was_done, "the fast request waited for the slow one");
    CHECK_STATUS(slow.st, TIDAL_OK);
    env_result_clear(&r);
    env_result_clear(&slow.r);
}

static void test_stop_drains(void)
{
    env_service *s = start_test_env("drain", 4);
    CHECK(s);
    env_client *c = client("drain", 5000, 0);
    bg_call calls[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        calls[i] = (bg_call){.c = c, .action = "sleep:400"};
        pthread_create(&t[i], NULL, bg, &calls[i]);
    }
    usleep(150 * 1000); /* all three are in the service's hands */
    env_service_stop(s, 5000);
    int answered = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        answered += calls[i].st == TIDAL_OK && calls[i].r.reward == 9.0;
        env_result_clear(&calls[i].r);
    }
    env_client_free(c);
    CHECK_MSG(answered == 3, "%d of 3 in-flight requests answered across the stop", answered);
}

static void test_bad_requests_get_error_replies(void)
{
    env_service *s = start_test_env("garbage", 2);
    CHECK(s);
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 11);
    bus_msg *m = NULL;
    Tidal__V1__EnvResponse *rsp = NULL;
    int ok = bus_request(F.bus, "tidal.env.garbage", junk, sizeof junk, 5000, &m) == TIDAL_OK &&
             codec_decode_env_response(bus_msg_data(m), (size_t)bus_msg_len(m), &rsp) == TIDAL_OK &&
             strstr(rsp->error, "does not decode");
    if (rsp) tidal__v1__env_response__free_unpacked(rsp, NULL);
    bus_msg_destroy(m);
    hand_response r;
    uint8_t big[8192];
    memset(big, 'x', sizeof big);
    big[0] = 0x0a; /* field 1, length-delimited: a long string */
    size_t n = 1 + put_varint(big + 1, sizeof big - 8);
    (void)n;
    int oversized = bus_request(F.bus, "tidal.env.garbage", big, sizeof big, 5000, &m) == TIDAL_OK &&
                    hand_parse(bus_msg_data(m), (size_t)bus_msg_len(m), &r) && strstr(r.error, "8192 bytes");
    bus_msg_destroy(m);
    int wrong_env = hand_call("garbage", 2, "{}", "x", &r) && !r.error[0]; /* the right name works */
    uint8_t buf[512];
    size_t len = hand_request(buf, "other", 2, "{}", "x", 1);
    wrong_env = wrong_env && bus_request(F.bus, "tidal.env.garbage", buf, (int)len, 5000, &m) == TIDAL_OK &&
                hand_parse(bus_msg_data(m), (size_t)bus_msg_len(m), &r) && strstr(r.error, "names env \"other\"");
    bus_msg_destroy(m);
    int bad_op = hand_call("garbage", 7, "{}", "x", &r) && strstr(r.error, "op 7");
    int failing = hand_call("garbage", 2, "{}", "fail", &r) && strstr(r.error, "task_json.answer: missing");
    int still = hand_call("garbage", 2, "{}", "four", &r) && !r.error[0] && r.reward == 4.0 && r.n_metrics == 1;
    uint64_t served = 0, failed = 0;
    env_service_stats(s, &served, &failed);
    env_service_stop(s, 5000);
    CHECK_MSG(ok, "garbage did not get a 'does not decode' error reply");
    CHECK_MSG(oversized, "an oversized request: '%s'", r.error);
    CHECK(wrong_env && bad_op && failing && still);
    CHECK_MSG(served == 7 && failed == 5, "served %llu failed %llu", (unsigned long long)served,
              (unsigned long long)failed);
}

/* ---------------------------------------------------------------- the caller */

static void test_timeout_then_retry(void)
{
    env_service *s = start_test_env("hang", 2);
    CHECK(s);
    atomic_store(&hang_calls, 0);
    env_client *c = client("hang", 400, 2);
    env_result r = {0};
    tidal_status st = step(c, "hang-once", &r);
    uint64_t calls = 0, retries = 0;
    env_client_stats(c, &calls, &retries);
    env_client_free(c);
    /* no retries: the hung first attempt is a timeout */
    atomic_store(&hang_calls, 0);
    c = client("hang", 400, 0);
    env_result r2 = {0};
    tidal_status st2 = step(c, "hang-once", &r2);
    env_client_free(c);
    env_service_stop(s, 5000);
    CHECK_STATUS(st, TIDAL_OK);
    CHECK(r.reward == 9.0 && retries >= 1);
    CHECK_STATUS(st2, TIDAL_ERR_TIMEOUT);
    env_result_clear(&r);
}

static void test_no_responders_and_remote_errors(void)
{
    env_client *c = client("nobody-serves-this", 2000, 1);
    env_result r = {0};
    int64_t t0 = now_ms();
    tidal_status st = step(c, "x", &r);
    int64_t took = now_ms() - t0;
    env_client_free(c);
    CHECK_STATUS(st, TIDAL_ERR_TIMEOUT);
    CHECK_MSG(strstr(tidal_errmsg(), "no responders"), "%s", tidal_errmsg());
    CHECK_MSG(took < 1500, "no responders took %lld ms (should be immediate)", (long long)took);

    env_service *s = start_test_env("failing", 1);
    CHECK(s);
    c = client("failing", 2000, 1);
    st = step(c, "fail", &r);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    env_client_free(c);
    env_service_stop(s, 5000);
    CHECK_STATUS(st, TIDAL_ERR_REMOTE);
    CHECK_MSG(strstr(msg, "task_json.answer: missing") && strstr(msg, "2 attempts"), "%s", msg);
}

/* The client's health (what the worker's log and heartbeat report): a
 * missing env fails with "no responders" naming the subject and starts a run
 * of failures; once an instance serves it, the next call ends the run; an
 * env's own error starts another. */
static void test_health_of_a_missing_then_started_env(void)
{
    env_client *c = client("late", 2000, 1);
    CHECK(c);
    if (!c) return;
    env_client_health h;
    env_client_health_get(c, &h);
    CHECK(!h.failing && h.failed == 0 && h.answered == 0 && h.failing_since_unix_ms == 0 && !h.last_error[0]);
    env_result r = {0};
    const uint64_t t0 = tidal_unix_ms();
    CHECK_STATUS(step(c, "x", &r), TIDAL_ERR_TIMEOUT);
    CHECK_STATUS(step(c, "x", &r), TIDAL_ERR_TIMEOUT);
    env_client_health_get(c, &h);
    CHECK(h.failing && h.failed == 2 && h.failed_in_run == 2 && h.answered == 0);
    CHECK(h.failing_since_unix_ms >= t0 && h.failing_since_unix_ms <= tidal_unix_ms());
    CHECK_MSG(strstr(h.last_error, "no responders on tidal.env.late"), "last error: %s", h.last_error);
    env_service *s = start_test_env("late", 1);
    CHECK(s);
    CHECK_OK(step(c, "abc", &r));
    env_result_clear(&r);
    env_client_health_get(c, &h);
    CHECK(!h.failing && h.failed == 2 && h.failed_in_run == 0 && h.answered == 1 && h.failing_since_unix_ms == 0);
    CHECK_STATUS(step(c, "fail", &r), TIDAL_ERR_REMOTE);
    env_client_health_get(c, &h);
    CHECK(h.failing && h.failed == 3 && h.failed_in_run == 1);
    CHECK_MSG(strstr(h.last_error, "task_json.answer: missing"), "last error: %s", h.last_error);
    env_client_free(c);
    env_service_stop(s, 5000);
}

/* An instance that takes a request and dies with it (gone from the queue
 * group after one message, which it never answers): the caller's retry must
 * reach the live instance. Repeated until the dying one has been hit three
 * times (the queue group picks either at random). */
typedef struct black_hole {
    bus_sub *sub;
    atomic_int hits;
} black_hole;

static void swallow(tidal_bus *b, bus_msg *m, void *closure)
{
    (void)b;
    black_hole *h = closure;
    atomic_fetch_add(&h->hits, 1);
    bus_msg_destroy(m);
}

static void test_crashed_instance_retry_reaches_another(void)
{
    env_service *live = start_test_env("crashy", 2);
    CHECK(live);
    int hit_rounds = 0, ok_rounds = 0, rounds = 0;
    for (; rounds < 40 && hit_rounds < 3; rounds++) {
        black_hole h = {0};
        if (bus_subscribe(F.bus, "tidal.env.crashy", "tidal.env.crashy", swallow, &h, &h.sub) != TIDAL_OK) break;
        bus_sub_limit(h.sub, 1); /* it takes one request and is gone */
        bus_flush(F.bus, 2000);
        env_client *c = client("crashy", 300, 3);
        env_result r = {0};
        /* the first request that reaches the black hole "kills" it */
        tidal_status st = step(c, "abcd", &r);
        bus_unsubscribe(h.sub);
        if (atomic_load(&h.hits) > 0) {
            hit_rounds++;
            ok_rounds += st == TIDAL_OK && r.reward == 4.0;
        }
        env_result_clear(&r);
        env_client_free(c);
    }
    env_service_stop(live, 5000);
    CHECK_MSG(hit_rounds > 0, "the dying instance was never picked in %d rounds", rounds);
    CHECK_MSG(ok_rounds == hit_rounds, "%d of %d calls that hit the dead instance were saved by a retry", ok_rounds,
              hit_rounds);
}

int main(void)
{
    fixture_start(&F);
    RUN(test_serve_gsm8k_for_a_protocol_only_client);
    RUN(test_serve_unknown_env);
    RUN(test_slow_request_blocks_nothing);
    RUN(test_stop_drains);
    RUN(test_bad_requests_get_error_replies);
    RUN(test_timeout_then_retry);
    RUN(test_no_responders_and_remote_errors);
    RUN(test_health_of_a_missing_then_started_env);
    RUN(test_crashed_instance_retry_reaches_another);
    fixture_stop(&F);
    return check_summary();
}
