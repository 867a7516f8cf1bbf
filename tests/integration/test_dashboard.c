/* test_dashboard.c - the dashboard's parts without a browser: the request
 * parameters (dashboard/query.h), the samples record (job/samples.h: what it
 * writes, its bound), the API over a run directory (dashboard/rundir.h) with
 * files cut short, and the HTTP server (dashboard/dashboard.h) answering bad
 * requests with a status and a JSON error naming what - libcurl against the
 * real listener on a loopback port. The page in a real browser:
 * tests/e2e/dashboard_browser.py. */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fs.h"
#include "check.h"
#include "harness/http.h"
#include "dashboard/dashboard.h"
#include "dashboard/query.h"
#include "dashboard/rundir.h"
#include "job/samples.h"

static char dir[128];

static void write_text(const char *name, const char *text)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

static long file_size(const char *name)
{
    char path[300];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* ------------------------------------------------------------ query */

static void test_query(void)
{
    dash_query q;
    CHECK_OK(dash_query_parse("since=4&limit=7&reward_min=-0.5&reward_max=1e0&worker=w%201&version=3&eval", &q));
    CHECK(q.since == 4 && q.limit == 7 && q.reward_min == -0.5 && q.reward_max == 1.0);
    CHECK(!strcmp(q.worker, "w 1") && q.version == 3 && q.eval);
    CHECK_OK(dash_query_parse("worker=a+b&&token=t%2Bx&_=123&reward_min=", &q));
    CHECK(!strcmp(q.worker, "a b") && !strcmp(q.token, "t+x") && isinf(q.reward_min));
    CHECK_OK(dash_query_parse(NULL, &q));
    CHECK(q.since == -1 && q.limit == 20 && q.version == -1 && !q.eval);
    CHECK_OK(dash_query_parse("", &q));
    /* every bad value names its parameter */
    const char *bad[][2] = {{"limit=0", "limit"},          {"limit=1001", "limit"},     {"limit=x", "limit"},
                            {"since=-2", "since"},         {"reward_min=nan", "reward_min"}, {"reward_max=1x", "reward_max"},
                            {"version=-1", "version"},     {"eval=maybe", "eval"},      {"nope=1", "nope"},
                            {"worker=%zz", "%-escape"},    {"worker=%4", "%-escape"},   {"worker=%00", "%-escape"},
                            {"last=0", "last"},            {"since=99999999999999999999", "since"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(dash_query_parse(bad[i][0], &q) == TIDAL_ERR_INVALID, "%s parsed", bad[i][0]);
        CHECK_MSG(strstr(tidal_errmsg(), bad[i][1]) != NULL, "%s: %s", bad[i][0], tidal_errmsg());
    }
    char longw[300];
    memset(longw, 'w', sizeof longw - 1), longw[sizeof longw - 1] = 0;
    CHECK_STATUS(dash_query_set(&q, "worker", longw), TIDAL_ERR_INVALID);
    CHECK(dash_query_valid_id("g12-3") && dash_query_valid_id("eval0-1-0") && !dash_query_valid_id(""));
    CHECK(!dash_query_valid_id("a b") && !dash_query_valid_id("../x") && !dash_query_valid_id("a\"b"));
}

static void test_utf8(void)
{
    char *s = samples_utf8_clean("ab\xc3\xa9\xff" "c\xe2\x82", 8, 100);
    CHECK(s && !strcmp(s, "ab\xc3\xa9\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd"));
    free(s);
    s = samples_utf8_clean("abcdefgh", 8, 5);
    CHECK(s && !strcmp(s, "abcde..."));
    free(s);
}

/* ------------------------------------------------------------ samples.jsonl */

/* A group of n samples of `len` tokens over the alphabet "0123456789\n" plus
 * specials; sample i's last token an environment observation when env. */
typedef struct fake_group {
    Tidal__V1__Trajectory t[4], *p[4];
    Tidal__V1__Trajectory__RewardComponentsEntry comp[4], *compp[4];
    uint32_t prompt[3], ids[4][3];
    protobuf_c_boolean mask[4][3];
    uint64_t vv[4][2];
    uint32_t vr[4][2];
    char gid[32], tid[4][32];
} fake_group;

static void fake(fake_group *g, int k, const char *worker, uint64_t version, bool env)
{
    memset(g, 0, sizeof *g);
    snprintf(g->gid, sizeof g->gid, "g%d", k);
    for (int j = 0; j < 3; j++) g->prompt[j] = (uint32_t)(j + 1);
    for (int i = 0; i < 4; i++) {
        Tidal__V1__Trajectory *t = &g->t[i];
        tidal__v1__trajectory__init(t);
        snprintf(g->tid[i], sizeof g->tid[i], "g%d-%d", k, i);
        t->trajectory_id = g->tid[i], t->group_id = g->gid, t->prompt_id = g->gid, t->worker_id = (char *)worker;
        t->sample_index = (uint32_t)i, t->group_size = 4;
        t->n_prompt_token_ids = 3, t->prompt_token_ids = g->prompt;
        for (int j = 0; j < 3; j++) g->ids[i][j] = (uint32_t)(i + j), g->mask[i][j] = !(env && j == 2);
        t->n_completion_token_ids = 3, t->completion_token_ids = g->ids[i];
        t->n_loss_mask = 3, t->loss_mask = g->mask[i];
        g->vv[i][0] = version - 1, g->vv[i][1] = version, g->vr[i][0] = 1, g->vr[i][1] = 2;
        t->n_version_values = 2, t->version_values = g->vv[i], t->n_version_runs = 2, t->version_runs = g->vr[i];
        t->reward = i * 0.25;
        tidal__v1__trajectory__reward_components_entry__init(&g->comp[i]);
        g->comp[i].key = "exact", g->comp[i].value = i == 3;
        g->compp[i] = &g->comp[i];
        t->n_reward_components = 1, t->reward_components = &g->compp[i];
        t->finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_STOP;
        t->status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
        g->p[i] = t;
    }
}

/* Steps 1..steps, each 6 groups (4 written), into samples.jsonl. */
static tidal_status write_steps(int steps, size_t max, const tokenizer *tok)
{
    samples_log *l = NULL;
    TRY(samples_log_open(dir, "samples", tok, max, &l));
    static fake_group g[6];
    for (int s = 1; s <= steps; s++) {
        Tidal__V1__Trajectory **groups[6];
        int sizes[6];
        for (int k = 0; k < 6; k++) {
            fake(&g[k], s * 10 + k, k % 2 ? "w1" : "w0", (uint64_t)s, k == 0);
            groups[k] = g[k].p, sizes[k] = 4;
        }
        samples_log_step(l, (uint64_t)s, (uint64_t)s + 1, groups, sizes, 6, 0);
    }
    samples_log_close(l);
    return TIDAL_OK;
}

static void test_samples_log(void)
{
    tokenizer *tok = NULL;
    CHECK_OK(tokenizer_alphabet("0123456789\n", &tok));
    CHECK_OK(write_steps(3, 0, tok));
    tokenizer_free(tok);
    json_t *all = NULL;
    dash_query q;
    dash_query_init(&q);
    q.limit = 1000;
    CHECK_OK(dash_api_samples(dir, &q, &all));
    json_t *groups = json_object_get(all, "groups");
    CHECK_MSG(json_array_size(groups) == 12, "%zu groups (3 steps x 4 kept)", json_array_size(groups));
    json_t *g0 = json_array_get(groups, 0); /* newest first */
    CHECK(json_integer_value(json_object_get(g0, "step")) == 3);
    json_t *s3 = json_array_get(json_object_get(g0, "samples"), 3);
    CHECK(json_real_value(json_object_get(s3, "reward")) == 0.75);
    CHECK(json_real_value(json_object_get(json_object_get(s3, "components"), "exact")) == 1.0);
    CHECK(!strcmp(json_string_value(json_object_get(s3, "finish_reason")), "stop"));
    /* staleness at training time: policy 4 against the oldest token's version 2 */
    CHECK(json_integer_value(json_object_get(s3, "staleness")) == 2);
    CHECK(json_integer_value(json_array_get(json_array_get(json_object_get(s3, "versions"), 1), 1)) == 2);
    /* group 30 (k == 0, the first of step 3) has an env observation as its last token: its own segment */
    json_t *gk0 = json_array_get(groups, 0);
    CHECK(!strcmp(json_string_value(json_object_get(gk0, "group_id")), "g30"));
    json_t *segs = json_object_get(json_array_get(json_object_get(gk0, "samples"), 1), "segments");
    CHECK_MSG(json_array_size(segs) == 2, "%zu segments", json_array_size(segs));
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(segs, 0), "kind")), "gen"));
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(segs, 1), "kind")), "env"));
    CHECK(json_string_length(json_object_get(json_array_get(segs, 0), "text")) > 0);
    json_decref(all);
    /* filters */
    dash_query_parse("reward_min=0.5&worker=w1&limit=1000", &q);
    CHECK_OK(dash_api_samples(dir, &q, &all));
    size_t gi, si;
    json_t *g, *s;
    int n = 0;
    json_array_foreach(json_object_get(all, "groups"), gi, g) json_array_foreach(json_object_get(g, "samples"), si, s) {
        CHECK(json_real_value(json_object_get(s, "reward")) >= 0.5);
        CHECK(!strcmp(json_string_value(json_object_get(s, "worker_id")), "w1"));
        n++;
    }
    CHECK_MSG(n == 3 * 2 * 2, "%d samples of w1 with reward >= 0.5", n); /* 2 groups of w1 kept a step, 2 samples each */
    json_decref(all);
    dash_query_parse("version=1&limit=1000", &q); /* tokens of version 1: step 1's (2, 1) and step 2's (1, 2) */
    CHECK_OK(dash_api_samples(dir, &q, &all));
    CHECK(json_array_size(json_object_get(all, "groups")) == 8);
    json_decref(all);
    /* the staleness histogram of every sample of the last 2 steps (6 groups x 4 each) */
    dash_query_parse("last=2", &q);
    CHECK_OK(dash_api_staleness(dir, &q, &all));
    CHECK(json_integer_value(json_object_get(all, "steps")) == 2);
    CHECK(json_integer_value(json_array_get(json_object_get(all, "hist"), 2)) == 48);
    json_decref(all);
    /* a sample by id, and one that is not kept */
    CHECK_OK(dash_api_sample(dir, "g21-2", &all));
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(all, "sample"), "id")), "g21-2"));
    json_decref(all);
    CHECK_STATUS(dash_api_sample(dir, "g99-1", &all), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "g99-1") != NULL);
    CHECK_STATUS(dash_api_sample(dir, "../spec.json", &all), TIDAL_ERR_INVALID);
}

static void test_samples_bound(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/samples.jsonl", dir), unlink(path);
    snprintf(path, sizeof path, "%s/samples.1.jsonl", dir), unlink(path);
    CHECK_OK(write_steps(40, 20000, NULL)); /* no tokenizer: token ids shown */
    const long a = file_size("samples.jsonl"), b = file_size("samples.1.jsonl");
    CHECK_MSG(a > 0 && a <= 20000 && b > 0 && b <= 20000, "samples.jsonl %ld, samples.1.jsonl %ld bytes", a, b);
    /* the newest step is in the current file, and the API reads both */
    json_t *all = NULL;
    dash_query q;
    dash_query_parse("limit=1", &q);
    CHECK_OK(dash_api_samples(dir, &q, &all));
    json_t *g0 = json_array_get(json_object_get(all, "groups"), 0);
    CHECK(json_integer_value(json_object_get(g0, "step")) == 40);
    CHECK(!strcmp(json_string_value(json_object_get(g0, "prompt")), "[1 2 3]"));
    json_decref(all);
}

/* ------------------------------------------------------------ run directory */

static void test_rundir(void)
{
    CHECK_STATUS(dash_run_dir_check("/nonexistent/run"), TIDAL_ERR_NOT_FOUND);
    CHECK_STATUS(dash_run_dir_check(dir), TIDAL_ERR_INVALID); /* samples only: not a run */
    CHECK(strstr(tidal_errmsg(), "spec.json") != NULL);
    /* metrics.jsonl with a bad line and a last line cut short (its writer mid-line) */
    write_text("metrics.jsonl", "{\"step\":1,\"reward_mean\":0.5}\nnot json\n{\"step\":2,\"reward_mean\":0.25}\n{\"step\":3,\"rew");
    CHECK_OK(dash_run_dir_check(dir));
    json_t *o = NULL;
    dash_query q;
    dash_query_init(&q);
    CHECK_OK(dash_api_metrics(dir, &q, &o));
    CHECK(json_array_size(json_object_get(o, "rows")) == 2);
    CHECK(json_integer_value(json_object_get(o, "bad_lines")) == 2);
    json_decref(o);
    q.since = 1;
    CHECK_OK(dash_api_metrics(dir, &q, &o));
    CHECK(json_array_size(json_object_get(o, "rows")) == 1);
    json_decref(o);
    /* summary.json not there yet, then cut short */
    CHECK_STATUS(dash_api_file(dir, "summary.json", &o), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "summary.json") != NULL);
    write_text("summary.json", "{\"job\": \"q\", \"steps\"");
    CHECK_STATUS(dash_api_file(dir, "summary.json", &o), TIDAL_ERR_CORRUPT);
    CHECK(strstr(tidal_errmsg(), "summary.json") != NULL);
    write_text("spec.json", "{\"job\": {\"name\": \"q\"}, \"trainer\": {\"steps\": 3}}");
    CHECK_OK(dash_api_info(dir, &o));
    CHECK(!strcmp(json_string_value(json_object_get(o, "job")), "q"));
    CHECK(json_is_true(json_object_get(o, "finished")));
    json_decref(o);
    CHECK_OK(dash_api_eval(dir, &o)); /* no eval.jsonl: no rows */
    CHECK(json_array_size(json_object_get(o, "rows")) == 0);
    json_decref(o);
}

/* ------------------------------------------------------------ HTTP */

/* GET (or `method`) path; the status, the body parsed as JSON when it is (else NULL). */
static long request(int port, const char *method, const char *path, const char *auth, json_t **body, char **raw)
{
    char url[600];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    char *b = NULL;
    const long status = harness_http(method, url, auth, &b);
    *body = b ? json_loads(b, 0, NULL) : NULL;
    if (raw) *raw = b;
    else free(b);
    return status;
}

/* An error answer: `code`, JSON {"error": "... want ..."}. */
#define CHECK_ERROR(port, path, code, want)                                                                   \
    do {                                                                                                      \
        json_t *e_ = NULL;                                                                                    \
        const long s_ = request(port, NULL, path, NULL, &e_, NULL);                                           \
        const char *m_ = json_string_value(json_object_get(e_, "error"));                                    \
        CHECK_MSG(s_ == (code) && m_ && strstr(m_, want), "%s: %ld %s", path, s_, m_ ? m_ : "(no JSON error)"); \
        json_decref(e_);                                                                                      \
    } while (0)

static void test_http(void)
{
    dashboard *d = NULL;
    const dashboard_opts o = {.run_dir = dir, .port = 0};
    CHECK_OK(dashboard_start(&o, &d));
    const int port = dashboard_port(d);
    json_t *j = NULL;
    char *raw = NULL;
    CHECK(request(port, NULL, "/", NULL, &j, &raw) == 200);
    CHECK(raw && strstr(raw, "<canvas") == NULL && strstr(raw, "tidal dashboard") != NULL); /* canvases come from JS */
    CHECK(strstr(raw, "http://") == NULL && strstr(raw, "https://") == NULL);                 /* nothing external */
    free(raw);
    CHECK(request(port, NULL, "/api/metrics?since=1", NULL, &j, NULL) == 200);
    CHECK(json_array_size(json_object_get(j, "rows")) == 1);
    json_decref(j);
    CHECK(request(port, NULL, "/api/sample/g400-1", NULL, &j, NULL) == 200);
    json_decref(j);
    CHECK(request(port, NULL, "/api/workers", NULL, &j, NULL) == 200);
    CHECK(json_is_false(json_object_get(j, "live")));
    json_decref(j);
    CHECK_ERROR(port, "/api/sample/g99-1", 404, "g99-1");
    CHECK_ERROR(port, "/api/sample/a%22b", 400, "not a trajectory id");
    CHECK_ERROR(port, "/api/sample/", 400, "not a trajectory id");
    CHECK_ERROR(port, "/api/samples?limit=-3", 400, "limit");
    CHECK_ERROR(port, "/api/samples?reward_min=abc", 400, "reward_min");
    CHECK_ERROR(port, "/api/samples?wat=1", 400, "wat");
    CHECK_ERROR(port, "/api/metrics?since=%zz", 400, "since");
    CHECK_ERROR(port, "/api/summary", 422, "summary.json");
    CHECK_ERROR(port, "/api/../../etc/passwd", 404, "no such page");
    CHECK_ERROR(port, "/nothing", 404, "no such page");
    CHECK(request(port, "POST", "/api/info", NULL, &j, NULL) == 405);
    CHECK(json_is_string(json_object_get(j, "error")));
    json_decref(j);
    dashboard_stop(d);

    /* with a token: refused without it, in the header or the query */
    const dashboard_opts ot = {.run_dir = dir, .port = 0, .token = "s3cret"};
    CHECK_OK(dashboard_start(&ot, &d));
    const int pt = dashboard_port(d);
    CHECK_ERROR(pt, "/api/info", 401, "token");
    CHECK_ERROR(pt, "/", 401, "token");
    CHECK_ERROR(pt, "/api/info?token=s3cre", 401, "token");
    CHECK(request(pt, NULL, "/api/info?token=s3cret", NULL, &j, NULL) == 200);
    json_decref(j);
    CHECK(request(pt, NULL, "/api/info", "Authorization: Bearer s3cret", &j, NULL) == 200);
    json_decref(j);
    CHECK(request(pt, NULL, "/api/info", "Authorization: Bearer nope", &j, NULL) == 401);
    json_decref(j);
    /* the port is taken: an error naming the address */
    dashboard *d2 = NULL;
    const dashboard_opts busy = {.run_dir = dir, .port = pt};
    CHECK_STATUS(dashboard_start(&busy, &d2), TIDAL_ERR_IO);
    CHECK(strstr(tidal_errmsg(), "127.0.0.1:") != NULL);
    const dashboard_opts badaddr = {.run_dir = dir, .bind = "localhost", .port = 0};
    CHECK_STATUS(dashboard_start(&badaddr, &d2), TIDAL_ERR_INVALID);
    dashboard_stop(d);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/tidal-test-dashboard-%d", (int)getpid());
    if (fs_mkdirs(dir) != TIDAL_OK) return 1;
    curl_global_init(CURL_GLOBAL_ALL);
    RUN(test_query);
    RUN(test_utf8);
    RUN(test_samples_log);
    RUN(test_samples_bound);
    RUN(test_rundir);
    RUN(test_http);
    curl_global_cleanup();
    fs_remove_tree(dir, "test_dashboard");
    return check_summary();
}
