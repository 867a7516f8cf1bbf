/* test_remote.c - the HTTP rollout backend (rollout/remote.h) against real
 * servers on loopback ports: `tidal serve` in-process for both dialects, and
 * a small libmicrohttpd server of the test's own that answers what a broken
 * server would (a 503, garbage, a vLLM without token_ids, an abort, a 400).
 *
 * Checked: the ids and log-probabilities that come back are the engine's own
 * for the same request (greedy and seeded); every token carries the version
 * the server held (SGLang's weight_version after a reload; vLLM's the
 * version the reload installed); a dead endpoint and an aborting or failing
 * server are retried on the next endpoint; what cannot succeed fails the step
 * naming the endpoint and why. Plus the response readers on documented
 * shapes of vLLM's and SGLang's answers.
 */
#include <curl/curl.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "harness/tiny_model.h"
#include "rollout/remote.h"
#include "serve/serve.h"

static char dir1[64], dir2[64];
static serve_server *srv;
static char url[64];

static const int32_t P[] = {'9', '2', '5', '\n'};

/* ---------------------------------------------------------------- readers */

static void test_parse_vllm(void)
{
    remote_reply r;
    const char *ok = "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"ab\","
                     "\"logprobs\":{\"tokens\":[\"token_id:97\",\"token_id:98\"],\"token_logprobs\":[-0.5,-9999.0],"
                     "\"top_logprobs\":null,\"text_offset\":[0,1]},\"finish_reason\":\"length\",\"stop_reason\":null,"
                     "\"token_ids\":[97,98],\"prompt_token_ids\":null}],\"usage\":{\"prompt_tokens\":3}}";
    CHECK_OK(remote_parse_vllm(ok, strlen(ok), V, &r));
    CHECK(r.n == 2 && r.ids[0] == 97 && r.ids[1] == 98 && r.logprobs[0] == -0.5f && r.logprobs[1] == -9999.0f);
    CHECK(r.finish == ENGINE_FINISH_LENGTH && !r.has_version);
    remote_reply_clear(&r);
    struct {
        const char *body, *want;
    } bad[] = {
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"text\":\"a\",\"logprobs\":{\"token_logprobs\":[-1]}}]}",
         "return_token_ids"},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"token_ids\":[1,2],\"logprobs\":{\"token_logprobs\":[-1]}}]}",
         "token_logprobs"},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"token_ids\":[1],\"logprobs\":{\"token_logprobs\":[null]}}]}",
         "token_logprobs[0]"},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"token_ids\":[1],\"logprobs\":{\"token_logprobs\":[0.5]}}]}",
         "log-probability"},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"token_ids\":[999],\"logprobs\":{\"token_logprobs\":[-1]}}]}",
         "token_ids[0]"},
        {"{\"choices\":[{\"finish_reason\":\"eos\",\"token_ids\":[],\"logprobs\":{\"token_logprobs\":[]}}]}",
         "finish_reason"},
        {"{\"error\":{\"message\":\"model not found\"}}", "model not found"},
        {"[1,", "not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(remote_parse_vllm(bad[i].body, strlen(bad[i].body), V, &r), TIDAL_ERR_INVALID);
        CHECK_MSG(strstr(tidal_errmsg(), bad[i].want), "case %zu: %s", i, tidal_errmsg());
    }
}

static void test_parse_sglang(void)
{
    remote_reply r;
    const char *ok = "{\"text\":\"ab\",\"output_ids\":[97,98],\"meta_info\":{\"id\":\"x\",\"finish_reason\":{\"type\":"
                     "\"stop\",\"matched\":98},\"prompt_tokens\":3,\"completion_tokens\":2,\"weight_version\":\"12\","
                     "\"output_token_logprobs\":[[-0.25,97,null],[-1.5,98,null]]}}";
    CHECK_OK(remote_parse_sglang(ok, strlen(ok), V, &r));
    CHECK(r.n == 2 && r.ids[1] == 98 && r.logprobs[0] == -0.25f && r.finish == ENGINE_FINISH_STOP);
    CHECK(r.has_version && r.version == 12);
    remote_reply_clear(&r);
    const char *list = "[{\"output_ids\":[],\"meta_info\":{\"finish_reason\":{\"type\":\"abort\"},"
                       "\"output_token_logprobs\":[],\"weight_version\":\"default\"}}]";
    CHECK_OK(remote_parse_sglang(list, strlen(list), V, &r));
    CHECK(r.n == 0 && r.finish == ENGINE_FINISH_ABORT && !r.has_version); /* a name, not a number: not a version */
    remote_reply_clear(&r);
    const char *mismatch = "{\"output_ids\":[97],\"meta_info\":{\"finish_reason\":{\"type\":\"stop\"},"
                           "\"output_token_logprobs\":[[-1.0,98,null]]}}";
    CHECK_STATUS(remote_parse_sglang(mismatch, strlen(mismatch), V, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "output_token_logprobs[0]"));
    const char *nolp = "{\"output_ids\":[97],\"meta_info\":{\"finish_reason\":{\"type\":\"stop\"}}}";
    CHECK_STATUS(remote_parse_sglang(nolp, strlen(nolp), V, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "return_logprob"));
}

/* ---------------------------------------------------------------- against tidal serve */

/* Run requests rq[0..n) through g to the end; results by submission order into res. */
static tidal_status run_all(generator *g, const engine_request *rq, int n, engine_result **res)
{
    uint64_t ids[16];
    for (int i = 0; i < n; i++) TRY(generator_submit(g, &rq[i], &ids[i]));
    while (generator_busy(g)) TRY(generator_step(g));
    for (engine_result *r; (r = generator_next_result(g));)
        for (int i = 0; i < n; i++)
            if (r->id == ids[i]) res[i] = r;
    return TIDAL_OK;
}

static void free_all(engine_result **res, int n)
{
    for (int i = 0; i < n; i++) engine_result_free(res[i]), res[i] = NULL;
}

/* Both dialects give back what the engine computes in-process: greedy ids,
 * and for a seeded sample the same tokens and log-probabilities. */
static void test_dialects_match_the_engine(void)
{
    int32_t want[32];
    int nw = greedy(dir1, P, 4, 12, want);
    CHECK(nw > 0);
    /* the seeded sample, in-process */
    model *m = NULL;
    engine *e = NULL;
    CHECK_OK(model_load(dir1, &m));
    engine_options eo = {.slots = 2, .max_len = 256};
    CHECK_OK(engine_create(m, 0, &eo, &e));
    int32_t stop = 258;
    engine_request seeded = {.prompt = P, .prompt_len = 4, .max_new_tokens = 10, .stop_ids = &stop, .n_stop_ids = 1,
                             .sampling = {.temperature = 1.0f, .seed = 42}};
    CHECK_OK(engine_submit(e, &seeded, NULL));
    while (engine_busy(e)) CHECK_OK(engine_step(e));
    engine_result *local = engine_next_result(e);
    engine_free(e);
    model_free(m);
    CHECK(local != NULL);
    for (int d = 0; d < 2; d++) {
        remote *rm = NULL;
        remote_opts o = {.dialect = d ? REMOTE_SGLANG : REMOTE_VLLM, .endpoints = url, .vocab = V, .retries = 0};
        CHECK_OK(remote_create(&o, &rm));
        CHECK_OK(remote_check(rm));
        remote_set_version(rm, 3);
        generator g = remote_generator(rm);
        engine_request rq[2] = {{.prompt = P, .prompt_len = 4, .max_new_tokens = 12, .stop_ids = &stop,
                                 .n_stop_ids = 1},
                                seeded};
        engine_result *res[2] = {0};
        tidal_status st = run_all(&g, rq, 2, res);
        const bool ok = st == TIDAL_OK && res[0] && res[1] && res[0]->n == nw &&
                        !memcmp(res[0]->ids, want, (size_t)nw * sizeof *want) && res[1]->n == local->n &&
                        !memcmp(res[1]->ids, local->ids, (size_t)local->n * sizeof *local->ids);
        bool lp = ok;
        for (int i = 0; lp && i < local->n; i++) lp = fabsf(res[1]->logprobs[i] - local->logprobs[i]) < 1e-5f;
        /* SGLang's answers name the server's version ("0"); vLLM's carry the reload's (3) */
        const uint64_t v = d ? 0 : 3;
        bool ver = ok;
        for (int i = 0; ver && i < res[1]->n; i++) ver = res[1]->versions[i] == v;
        free_all(res, 2);
        remote_free(rm);
        CHECK_MSG(ok && lp && ver, "%s: %s (ok %d, logprobs %d, versions %d)", d ? "sglang" : "vllm",
                  st == TIDAL_OK ? "different answers" : tidal_errmsg(), ok, lp, ver);
    }
    engine_result_free(local);
}

/* A reload through each dialect: the weights change (greedy ids of dir2),
 * every token carries the new version. */
static void test_reload(void)
{
    int32_t w2[32];
    int n2 = greedy(dir2, P, 4, 12, w2);
    int32_t stop = 258;
    engine_request rq = {.prompt = P, .prompt_len = 4, .max_new_tokens = 12, .stop_ids = &stop, .n_stop_ids = 1};
    for (int d = 0; d < 2; d++) {
        remote *rm = NULL;
        remote_opts o = {.dialect = d ? REMOTE_SGLANG : REMOTE_VLLM, .endpoints = url, .vocab = V};
        CHECK_OK(remote_create(&o, &rm));
        CHECK_OK(remote_check(rm));
        CHECK_OK(remote_reload(rm, d ? dir2 : dir1, d ? 8 : 7));
        CHECK(remote_version(rm) == (uint64_t)(d ? 8 : 7));
        generator g = remote_generator(rm);
        engine_result *res[1] = {0};
        CHECK_OK(run_all(&g, &rq, 1, res));
        if (d) CHECK(res[0]->n == n2 && !memcmp(res[0]->ids, w2, (size_t)n2 * sizeof *w2));
        for (int i = 0; i < res[0]->n; i++) CHECK(res[0]->versions[i] == (uint64_t)(d ? 8 : 7));
        /* a directory the server cannot load: the version stays */
        CHECK_STATUS(remote_reload(rm, "/nonexistent/step_9", 9), TIDAL_ERR_REMOTE);
        CHECK_MSG(strstr(tidal_errmsg(), "/nonexistent/step_9") && strstr(tidal_errmsg(), url), "%s", tidal_errmsg());
        CHECK(remote_version(rm) == (uint64_t)(d ? 8 : 7));
        free_all(res, 1);
        remote_free(rm);
    }
    /* back to dir1 for the tests after */
    remote *rm = NULL;
    remote_opts o = {.dialect = REMOTE_SGLANG, .endpoints = url, .vocab = V};
    CHECK_OK(remote_create(&o, &rm));
    CHECK_OK(remote_reload(rm, dir1, 0));
    remote_free(rm);
}

/* ---------------------------------------------------------------- faults */

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
    (void)p, (void)ctx;
    return size * n;
}

typedef struct fault_server {
    struct MHD_Daemon *d;
    const char *mode; /* what every /generate answer is */
    int calls;
    pthread_mutex_t mu;
} fault_server;

static enum MHD_Result on_fault(void *cls, struct MHD_Connection *c, const char *u, const char *method,
                                const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)u, (void)method, (void)version, (void)upload;
    fault_server *f = cls;
    if (!*con_cls) {
        *con_cls = f;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&f->mu);
    f->calls++;
    pthread_mutex_unlock(&f->mu);
    unsigned status = 200;
    const char *body = "{}";
    if (!strcmp(f->mode, "503")) status = 503, body = "{\"error\":\"overloaded\"}";
    else if (!strcmp(f->mode, "garbage")) body = "<html>not json";
    else if (!strcmp(f->mode, "400")) status = 400, body = "{\"error\":{\"message\":\"max_tokens is too large\"}}";
    else if (!strcmp(f->mode, "abort"))
        body = "{\"output_ids\":[],\"meta_info\":{\"finish_reason\":{\"type\":\"abort\"},\"output_token_logprobs\":[]}}";
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static int fault_start(fault_server *f, const char *mode)
{
    memset(f, 0, sizeof *f);
    f->mode = mode;
    pthread_mutex_init(&f->mu, NULL);
    f->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, on_fault,
                            f, MHD_OPTION_END);
    const union MHD_DaemonInfo *i = f->d ? MHD_get_daemon_info(f->d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    return i ? (int)i->port : -1;
}

static void fault_stop(fault_server *f)
{
    if (f->d) MHD_stop_daemon(f->d);
    pthread_mutex_destroy(&f->mu);
}

/* What no retry fixes fails the step naming the endpoint and the reason;
 * what a retry may fix is retried on the next endpoint, and succeeds when
 * that one answers. */
static void test_faults(void)
{
    int32_t stop = 258;
    engine_request rq = {.prompt = P, .prompt_len = 4, .max_new_tokens = 4, .stop_ids = &stop, .n_stop_ids = 1};
    struct {
        const char *mode, *want;
        int calls;        /* requests the broken server got (1 + retries when retried) */
        bool with_good;   /* a good endpoint after it: the request succeeds there */
    } cases[] = {
        {"503", "HTTP 503", 3, false},       {"garbage", "not JSON", 1, false},
        {"400", "max_tokens is too large", 1, false}, {"abort", "aborted", 3, false},
        {"503", NULL, 1, true},              {"abort", NULL, 1, true},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fault_server f;
        int port = fault_start(&f, cases[k].mode);
        CHECK(port > 0);
        char eps[200];
        if (cases[k].with_good) snprintf(eps, sizeof eps, "http://127.0.0.1:%d,%s", port, url);
        else snprintf(eps, sizeof eps, "http://127.0.0.1:%d", port);
        remote *rm = NULL;
        remote_opts o = {.dialect = REMOTE_SGLANG, .endpoints = eps, .vocab = V, .retries = 2};
        CHECK_OK(remote_create(&o, &rm));
        generator g = remote_generator(rm);
        engine_result *res[1] = {0};
        tidal_status st = run_all(&g, &rq, 1, res);
        const bool ok = cases[k].want ? st != TIDAL_OK && strstr(tidal_errmsg(), cases[k].want) &&
                                            strstr(tidal_errmsg(), "127.0.0.1")
                                      : st == TIDAL_OK && res[0] && res[0]->n > 0;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", st == TIDAL_OK ? "ok" : tidal_errmsg());
        free_all(res, 1);
        remote_free(rm);
        fault_stop(&f);
        CHECK_MSG(ok && f.calls == cases[k].calls, "case %zu (%s): %s; the server got %d requests, want %d", k,
                  cases[k].mode, msg, f.calls, cases[k].calls);
    }
    /* nothing listens: a connection error, retried, then named */
    remote *rm = NULL;
    remote_opts o = {.dialect = REMOTE_VLLM, .endpoints = "http://127.0.0.1:9", .vocab = V, .retries = 1,
                     .connect_timeout_ms = 500};
    CHECK_OK(remote_create(&o, &rm));
    CHECK_STATUS(remote_check(rm), TIDAL_ERR_UNAVAILABLE);
    CHECK(strstr(tidal_errmsg(), "127.0.0.1:9"));
    generator g = remote_generator(rm);
    engine_result *res[1] = {0};
    CHECK_STATUS(run_all(&g, &rq, 1, res), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "retries exhausted"), "%s", tidal_errmsg());
    remote_free(rm);
    /* a bad endpoint list is refused at once */
    CHECK_STATUS(remote_create(&(remote_opts){.endpoints = "ftp://x", .vocab = V}, &rm), TIDAL_ERR_INVALID);
    CHECK_STATUS(remote_create(&(remote_opts){.endpoints = " , ", .vocab = V}, &rm), TIDAL_ERR_INVALID);
}

/* A server that goes away with the request on it (paused, so the request is
 * surely in flight, then stopped): the request is retried on the next
 * endpoint and succeeds there with that server's answer. */
static void test_server_killed_mid_request(void)
{
    serve_opts so = {.model_dir = dir1, .port = 0, .slots = 2};
    serve_server *doomed = NULL;
    CHECK_OK(serve_start(&so, &doomed));
    char eps[200], pause[200];
    snprintf(eps, sizeof eps, "http://127.0.0.1:%d,%s", serve_port(doomed), url);
    snprintf(pause, sizeof pause, "http://127.0.0.1:%d/pause_generation", serve_port(doomed));
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, pause);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{\"mode\": \"in_place\"}");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    CHECK(curl_easy_perform(h) == CURLE_OK);
    curl_easy_cleanup(h);
    remote *rm = NULL;
    remote_opts o = {.dialect = REMOTE_SGLANG, .endpoints = eps, .vocab = V, .retries = 2};
    CHECK_OK(remote_create(&o, &rm));
    generator g = remote_generator(rm);
    int32_t stop = 258, want[32];
    const int nw = greedy(dir1, P, 4, 12, want);
    engine_request rq = {.prompt = P, .prompt_len = 4, .max_new_tokens = 12, .stop_ids = &stop, .n_stop_ids = 1};
    uint64_t id = 0;
    CHECK_OK(generator_submit(&g, &rq, &id));
    for (int i = 0; i < 5; i++) CHECK_OK(generator_step(&g)); /* on the wire to the paused server */
    CHECK(generator_busy(&g));
    serve_stop(doomed); /* its sequences end aborted; its socket closes */
    tidal_status st = TIDAL_OK;
    while (generator_busy(&g) && st == TIDAL_OK) st = generator_step(&g);
    engine_result *r = generator_next_result(&g);
    const remote_stats rs = remote_get_stats(rm);
    CHECK_MSG(st == TIDAL_OK && r && r->n == nw && !memcmp(r->ids, want, (size_t)nw * sizeof *want) && rs.retries >= 1,
              "%s; retries %llu", st == TIDAL_OK ? "wrong answer" : tidal_errmsg(), (unsigned long long)rs.retries);
    engine_result_free(r);
    remote_free(rm);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    if (tiny_models_serve("/tmp/tidal-remote", 21, dir1, dir2, &srv, url, sizeof url)) return 1;
    RUN(test_parse_vllm);
    RUN(test_parse_sglang);
    RUN(test_dialects_match_the_engine);
    RUN(test_reload);
    RUN(test_faults);
    RUN(test_server_killed_mid_request);
    tiny_models_stop(srv, dir1, dir2);
    curl_global_cleanup();
    return check_summary();
}
