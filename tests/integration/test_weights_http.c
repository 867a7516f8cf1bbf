/* weights.transport http (trainer/publish_http.h, rollout/fetch_http.h) against
 * real servers: a nats-server and the trainer's libmicrohttpd server. The
 * worker gets bit-identical parameters over HTTP; the server answers Range
 * requests (206, Content-Range, suffix ranges, 416), keeps the newest `keep`
 * versions (404 after), refuses a request without the token (401); a worker
 * with a bad token, and one whose server stops answering mid-transfer, take
 * the bus copy (counted as fallbacks); a range corrupted on arrival is asked
 * for again and verifies; a bind beyond loopback without a token is refused. */
#include <curl/curl.h>
#include <inttypes.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "harness/fixture.h"
#include "job/names.h"
#include "model/model.h"
#include "rollout/fetch_http.h"
#include "rollout/weights.h"
#include "trainer/publish.h"

static fixture F;

/* ~5 M parameters (20 MB, 5 ranges of 4 MiB). */
static const model_config LARGER = {.type = MODEL_LLAMA, .vocab_size = 4096, .hidden_size = 256, .num_layers = 4,
                                    .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 1024,
                                    .max_position_embeddings = 256, .rope_theta = 500000.0, .rms_norm_eps = 1e-5,
                                    .tie_word_embeddings = false, .bos_token_id = 1, .eos_token_id = 2};

static model *make_model(uint64_t seed)
{
    model *m = NULL;
    if (model_create(&LARGER, &m) != TIDAL_OK) {
        fprintf(stderr, "model_create: %s\n", tidal_errmsg());
        exit(1);
    }
    model_init_random(m, seed, 0.5f, true);
    return m;
}

static tidal_bus *connect_worker(void)
{
    tidal_bus *b = NULL;
    bus_opts bo = {.urls = tidal_server_url(F.srv), .name = "test-worker", .js_timeout_ms = 5000};
    if (bus_connect(&b, &bo) != TIDAL_OK) {
        fprintf(stderr, "connect: %s\n", tidal_errmsg());
        exit(1);
    }
    return b;
}

static bool same_params(model *a, model *b)
{
    size_t na = 0, nb = 0;
    const float *pa = model_params(a, &na), *pb = model_params(b, &nb);
    return na == nb && memcmp(pa, pb, na * sizeof *pa) == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One GET with libcurl's easy interface: status, body (malloc'd), Content-Range. */
typedef struct {
    long status;
    char *body;
    size_t len, cap;
    char content_range[128];
} reply;

static size_t on_body(char *d, size_t s, size_t n, void *arg)
{
    reply *r = arg;
    if (r->len + s * n + 1 > r->cap) { /* doubling: a 24 MB body in a few reallocs */
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + s * n + 1) cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) return 0;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, d, s * n);
    r->len += s * n;
    return s * n;
}

static size_t on_header(char *d, size_t s, size_t n, void *arg)
{
    reply *r = arg;
    if (s * n > 15 && !strncasecmp(d, "Content-Range: ", 15)) {
        size_t l = s * n - 15;
        while (l && (d[15 + l - 1] == '\r' || d[15 + l - 1] == '\n')) l--;
        snprintf(r->content_range, sizeof r->content_range, "%.*s", (int)l, d + 15);
    }
    return s * n;
}

static reply get(const char *url, const char *token, const char *range)
{
    reply r = {0};
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    char auth[256];
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        hd = curl_slist_append(hd, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    if (range) curl_easy_setopt(h, CURLOPT_RANGE, range);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 60000L);
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return r;
}

/* The worker's model of `version` within 20 s (NULL: none). */
static model *wait_model(weights_client *c, uint64_t version)
{
    model *m = NULL;
    uint64_t got = 0;
    if (weights_client_wait(c, version, 20000, &m, &got) != TIDAL_OK) {
        fprintf(stderr, "  wait v%" PRIu64 ": %s\n", version, tidal_errmsg());
        return NULL;
    }
    if (got != version) {
        model_free(m);
        return NULL;
    }
    return m;
}

/* The image over HTTP with the right token, and what the server answers to
 * ranges, a missing token, pruned versions. */
static void test_fetch_ranges_token_keep(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "httpok"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .keep = 2, .http = true, .http_token = "tok-right"};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    const weights_client_http wh = {.timeout_ms = 5000, .parallel = 3, .token = "tok-right"};
    CHECK_OK(weights_client_create_http(wb, &n, NULL, NULL, &wh, &c));

    model *src = make_model(7);
    CHECK_OK(weights_publish(p, src, 0));
    CHECK_OK(weights_publisher_flush(p, 30000));
    model *got = wait_model(c, 0);
    CHECK(got && same_params(got, src));
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.http_fetched == 1 && s.http_fallbacks == 0 && s.fetched == 1);
    model_free(got);

    char url[512];
    snprintf(url, sizeof url, "%s/weights/0", weights_http_base_url(weights_publisher_http(p)));
    reply r = get(url, NULL, NULL);
    CHECK(r.status == 401);
    free(r.body);
    r = get(url, "tok-wrong", "0-9");
    CHECK(r.status == 401);
    free(r.body);
    reply whole = get(url, "tok-right", NULL);
    CHECK(whole.status == 200 && whole.len > 20000000);
    r = get(url, "tok-right", "100-199");
    CHECK(r.status == 206 && r.len == 100 && whole.body && !memcmp(r.body, whole.body + 100, 100));
    char want[128];
    snprintf(want, sizeof want, "bytes 100-199/%zu", whole.len);
    CHECK(!strcmp(r.content_range, want));
    free(r.body);
    r = get(url, "tok-right", "-16"); /* the last 16 bytes */
    CHECK(r.status == 206 && r.len == 16 && whole.body && !memcmp(r.body, whole.body + whole.len - 16, 16));
    free(r.body);
    char past[64];
    snprintf(past, sizeof past, "%zu-", whole.len);
    r = get(url, "tok-right", past);
    CHECK(r.status == 416);
    free(r.body);
    free(whole.body);

    /* keep 2: after v1, v2 the first is gone */
    CHECK_OK(weights_publish(p, src, 1));
    CHECK_OK(weights_publisher_flush(p, 30000)); /* each served (not replaced while pending) */
    CHECK_OK(weights_publish(p, src, 2));
    CHECK_OK(weights_publisher_flush(p, 30000));
    r = get(url, "tok-right", "0-9");
    CHECK(r.status == 404);
    free(r.body);
    snprintf(url, sizeof url, "%s/weights/2", weights_http_base_url(weights_publisher_http(p)));
    r = get(url, "tok-right", "0-9");
    CHECK(r.status == 206 && r.len == 10);
    free(r.body);

    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(src);
}

/* A worker whose token the server refuses takes the bus copy. */
static void test_bad_token_falls_back(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "httptok"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .http = true, .http_token = "tok-right"};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    const weights_client_http wh = {.timeout_ms = 5000, .token = "tok-wrong"};
    CHECK_OK(weights_client_create_http(wb, &n, NULL, NULL, &wh, &c));
    model *src = make_model(8);
    CHECK_OK(weights_publish(p, src, 0));
    CHECK_OK(weights_publisher_flush(p, 30000));
    model *got = wait_model(c, 0);
    CHECK(got && same_params(got, src));
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.http_fetched == 0 && s.http_fallbacks == 1 && s.fetched == 1);
    model_free(got);
    weights_client_free(c);
    bus_close(wb);
    weights_publisher_free(p);
    model_free(src);
}

/* The server sends 1 MiB of each range, then nothing: after the stall
 * timeout the worker takes the bus copy; a chunk flipped on arrival is asked
 * for again on its own and the fetch stays on HTTP. */
static void test_stall_falls_back_and_corrupt_chunk_refetched(void)
{
    job_names n;
    CHECK_OK(job_names_init(&n, "httpstall"));
    weights_publisher *p = NULL;
    weights_publisher_opts o = {.bus = F.bus, .names = &n, .http = true};
    CHECK_OK(weights_publisher_create(&o, &p));
    tidal_bus *wb = connect_worker();
    weights_client *c = NULL;
    const weights_client_http wh = {.timeout_ms = 700, .parallel = 2};
    CHECK_OK(weights_client_create_http(wb, &n, NULL, NULL, &wh, &c));

    model *src = make_model(9);
    weights_http_test_stall(weights_publisher_http(p), 1u << 20);
    const double t0 = now_s();
    CHECK_OK(weights_publish(p, src, 0));
    CHECK_OK(weights_publisher_flush(p, 30000));
    model *got = wait_model(c, 0);
    const double took = now_s() - t0;
    CHECK(got && same_params(got, src));
    weights_stats s;
    weights_client_stats(c, &s);
    CHECK(s.http_fetched == 0 && s.http_fallbacks == 1);
    CHECK(took >= 0.7 && took < 15); /* waited out the stall, not the 120 s connection timeout */
    model_free(got);

    weights_http_test_stall(weights_publisher_http(p), UINT64_MAX);
    fetch_http_test_corrupt_chunk(1);
    model *src2 = make_model(10);
    CHECK_OK(weights_publish(p, src2, 1));
    CHECK_OK(weights_publisher_flush(p, 30000));
    got = wait_model(c, 1);
    CHECK(got && same_params(got, src2));
    weights_client_stats(c, &s);
    CHECK(s.http_fetched == 1 && s.http_fallbacks == 1 && s.fetched == 2);
    CHECK(fetch_http_test_corrupt_chunk(-1) == -1); /* chunk 1 (inside the first request's run) was flipped */
    model_free(got);

    weights_client_free(c); /* the stalled connections end with the server */
    bus_close(wb);
    weights_publisher_free(p);
    model_free(src);
    model_free(src2);
}

/* Serving beyond loopback needs a token; a bad bind is named. */
static void test_bind_rules(void)
{
    weights_http *h = NULL;
    weights_http_opts o = {.bind = "0.0.0.0:0", .keep = 1};
    CHECK_STATUS(weights_http_start(&o, &h), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "TIDAL_WEIGHTS_HTTP_TOKEN") != NULL);
    o.bind = "localhost:80";
    CHECK_STATUS(weights_http_start(&o, &h), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "weights.http_bind") != NULL);
    o.bind = "0.0.0.0:0";
    o.token = "t";
    CHECK_OK(weights_http_start(&o, &h));
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    CHECK(strstr(weights_http_base_url(h), host) != NULL); /* 0.0.0.0: the workers get this host's name */
    weights_http_stop(h);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    fixture_start(&F);
    RUN(test_fetch_ranges_token_keep);
    RUN(test_bad_token_falls_back);
    RUN(test_stall_falls_back_and_corrupt_chunk_refetched);
    RUN(test_bind_rules);
    fixture_stop(&F);
    nats_Close();
    curl_global_cleanup();
    return check_summary();
}
