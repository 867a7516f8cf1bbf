/* test_serve.c - `tidal serve` over real HTTP (libcurl against the server on a
 * loopback port): what it answers is what the engine computes, in the shapes
 * vLLM's and SGLang's clients read.
 *
 * The model is a tiny random one tidal writes itself, with a byte-level
 * tokenizer.json (256 byte tokens, no merges, three special tokens) and a
 * tokenizer_config.json whose chat template is ChatML, so text prompts, chat
 * and stop strings run the real paths. Greedy answers are compared with the
 * engine run in-process on the same weights; a weight reload is checked by
 * the ids it produces and the version each response names, with requests in
 * flight while it happens.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "harness/tiny_model.h"
#include "serve/serve.h"

static char dir1[64], dir2[64];
static char base_url[64];
static serve_server *srv;

/* ---------------------------------------------------------------- HTTP */

typedef struct reply {
    long status;
    char *body;
    size_t len;
} reply;

static size_t on_data(char *p, size_t size, size_t n, void *ctx)
{
    reply *r = ctx;
    char *b = realloc(r->body, r->len + size * n + 1);
    if (!b) return 0;
    memcpy(b + r->len, p, size * n);
    r->body = b;
    r->len += size * n;
    b[r->len] = '\0';
    return size * n;
}

/* POST body (or GET when body is NULL) to base_url + path. */
static reply http(const char *path, const char *body, const char *token)
{
    reply r = {0};
    CURL *c = curl_easy_init();
    char url[256], auth[128];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r.body) r.body = strdup("");
    return r;
}

static json_t *http_json(const char *path, const char *body, long *status)
{
    reply r = http(path, body, NULL);
    json_t *v = json_loads(r.body, 0, NULL);
    if (!v) fprintf(stderr, "not JSON (%ld): %s\n", r.status, r.body);
    *status = r.status;
    free(r.body);
    return v;
}

static int ids_of(json_t *a, int32_t *out, int cap)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(a) && n < cap; i++) out[n++] = (int32_t)json_integer_value(json_array_get(a, i));
    return n;
}

/* ---------------------------------------------------------------- tests */

static const int32_t P[] = {'9', '2', '5', '\n'};

static void test_routes(void)
{
    long st;
    json_t *v = http_json("/health", NULL, &st);
    CHECK(st == 200 && v);
    json_decref(v);
    v = http_json("/v1/models", NULL, &st);
    const char *id = json_string_value(json_object_get(json_array_get(json_object_get(v, "data"), 0), "id"));
    CHECK_MSG(st == 200 && id && !strcmp(id, strrchr(dir1, '/') + 1), "models: %ld %s", st, id ? id : "-");
    json_decref(v);
    v = http_json("/nope", NULL, &st);
    CHECK(st == 404 && json_object_get(v, "error"));
    json_decref(v);
}

/* Greedy ids equal the engine's in-process; n copies agree; logprobs and usage are there. */
static void test_completions_ids(void)
{
    int32_t want[64];
    int nw = greedy(dir1, P, 4, 12, want);
    CHECK(nw > 0);
    long st;
    json_t *v = http_json("/v1/completions", "{\"prompt\": [57, 50, 53, 10], \"max_tokens\": 12, \"temperature\": 0, "
                                             "\"n\": 2, \"logprobs\": 0, \"return_token_ids\": true}", &st);
    CHECK_MSG(st == 200 && v, "status %ld", st);
    json_t *choices = json_object_get(v, "choices");
    CHECK(json_array_size(choices) == 2);
    for (int k = 0; k < 2; k++) {
        json_t *c = json_array_get(choices, (size_t)k);
        int32_t got[64];
        int ng = ids_of(json_object_get(c, "token_ids"), got, 64);
        CHECK_MSG(ng == nw && !memcmp(got, want, (size_t)nw * sizeof *got), "choice %d: %d ids, engine %d", k, ng, nw);
        json_t *lps = json_object_get(json_object_get(c, "logprobs"), "token_logprobs");
        CHECK(json_array_size(lps) == (size_t)nw);
        for (size_t i = 0; i < json_array_size(lps); i++) CHECK(json_real_value(json_array_get(lps, i)) <= 0.0);
        const char *fin = json_string_value(json_object_get(c, "finish_reason"));
        CHECK(fin && !strcmp(fin, nw == 12 ? "length" : "stop"));
    }
    json_t *u = json_object_get(v, "usage");
    CHECK(json_integer_value(json_object_get(u, "prompt_tokens")) == 4);
    CHECK(json_integer_value(json_object_get(u, "completion_tokens")) == 2 * nw);
    json_decref(v);
}

/* Text in, text out: the prompt goes through the tokenizer; the text is the
 * decode of the ids, specials left out; a seed makes sampling repeatable,
 * sample j using seed + j. */
static void test_completions_text_and_seed(void)
{
    long st;
    const char *body = "{\"prompt\": \"925\\n\", \"max_tokens\": 8, \"temperature\": 1.0, \"seed\": 7, \"n\": 3, "
                       "\"return_token_ids\": true}";
    json_t *a = http_json("/v1/completions", body, &st), *b = http_json("/v1/completions", body, &st);
    json_t *c = http_json("/v1/completions", "{\"prompt\": \"925\\n\", \"max_tokens\": 8, \"temperature\": 1.0, "
                                             "\"seed\": 8, \"return_token_ids\": true}", &st);
    CHECK(st == 200 && a && b && c);
    json_t *ca = json_object_get(a, "choices"), *cb = json_object_get(b, "choices");
    CHECK(json_equal(ca, cb));
    /* choice 1 of seed 7 is seed 8's choice 0 */
    CHECK(json_equal(json_object_get(json_array_get(ca, 1), "token_ids"),
                     json_object_get(json_array_get(json_object_get(c, "choices"), 0), "token_ids")));
    CHECK(json_integer_value(json_object_get(json_object_get(a, "usage"), "prompt_tokens")) == 4);
    for (size_t k = 0; k < 3; k++) {
        json_t *ch = json_array_get(ca, k);
        int32_t ids[16];
        int n = ids_of(json_object_get(ch, "token_ids"), ids, 16);
        char want[64];
        size_t w = 0;
        bool ascii = true;
        for (int i = 0; i < n; i++)
            if (ids[i] < 256) {
                ascii = ascii && ids[i] >= 0x20 && ids[i] < 0x7F;
                want[w++] = (char)ids[i];
            }
        want[w] = '\0';
        const char *text = json_string_value(json_object_get(ch, "text"));
        if (ascii) CHECK_MSG(text && !strcmp(text, want), "text '%s', ids give '%s'", text ? text : "-", want);
    }
    json_decref(a), json_decref(b), json_decref(c);
}

/* stop_token_ids end at the token (kept in the ids); a stop string cuts the text before it. */
static void test_stops(void)
{
    int32_t want[64];
    int nw = greedy(dir1, P, 4, 20, want);
    CHECK(nw >= 4);
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\": [57, 50, 53, 10], \"max_tokens\": 20, \"temperature\": 0, "
                                "\"stop_token_ids\": [%d], \"return_token_ids\": true}", want[2]);
    long st;
    json_t *v = http_json("/v1/completions", body, &st);
    json_t *c = json_array_get(json_object_get(v, "choices"), 0);
    int first = 0; /* the stop id may come earlier than position 2 */
    while (want[first] != want[2]) first++;
    CHECK_MSG(st == 200 && json_array_size(json_object_get(c, "token_ids")) == (size_t)first + 1,
              "%zu ids, want %d", json_array_size(json_object_get(c, "token_ids")), first + 1);
    CHECK(!strcmp(json_string_value(json_object_get(c, "finish_reason")), "stop"));
    CHECK(json_integer_value(json_object_get(c, "stop_reason")) == want[2]);
    json_decref(v);
    /* a printable byte the model writes, as a stop string */
    int at = -1;
    for (int i = 1; i < nw && at < 0; i++)
        if (want[i] > 0x20 && want[i] < 0x7F && want[i] != '"' && want[i] != '\\') at = i;
    if (at < 0) return; /* this model wrote no printable byte: nothing to cut on */
    int k = 0;
    while (want[k] != want[at]) k++;
    snprintf(body, sizeof body, "{\"prompt\": [57, 50, 53, 10], \"max_tokens\": 20, \"temperature\": 0, "
                                "\"stop\": [\"%c\"], \"return_token_ids\": true}", (char)want[at]);
    v = http_json("/v1/completions", body, &st);
    c = json_array_get(json_object_get(v, "choices"), 0);
    CHECK(st == 200 && !strcmp(json_string_value(json_object_get(c, "finish_reason")), "stop"));
    CHECK(json_array_size(json_object_get(c, "token_ids")) == (size_t)k + 1);
    const char *text = json_string_value(json_object_get(c, "text"));
    CHECK(text && !strchr(text, (char)want[at]));
    json_decref(v);
}

static void test_chat_and_generate(void)
{
    long st;
    json_t *v = http_json("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                                                  "\"max_tokens\": 6, \"temperature\": 0, \"logprobs\": true}", &st);
    json_t *c = json_array_get(json_object_get(v, "choices"), 0);
    CHECK_MSG(st == 200 && json_is_string(json_object_get(json_object_get(c, "message"), "content")), "chat: %ld", st);
    /* "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": 1 + 5 + 2 + 1 + 1 + 1 + 10 tokens */
    CHECK(json_integer_value(json_object_get(json_object_get(v, "usage"), "prompt_tokens")) == 21);
    CHECK(json_array_size(json_object_get(json_object_get(c, "logprobs"), "content")) ==
          (size_t)json_integer_value(json_object_get(json_object_get(v, "usage"), "completion_tokens")));
    json_decref(v);
    /* SGLang: a batch of two prompts is answered with a list, each with its meta_info */
    v = http_json("/generate", "{\"input_ids\": [[57, 50, 53, 10], [49, 10]], \"return_logprob\": true, "
                               "\"sampling_params\": {\"max_new_tokens\": 5, \"temperature\": 0}}", &st);
    CHECK(st == 200 && json_array_size(v) == 2);
    int32_t want[16], got[16];
    int nw = greedy(dir1, P, 4, 5, want);
    json_t *g = json_array_get(v, 0), *meta = json_object_get(g, "meta_info");
    int ng = ids_of(json_object_get(g, "output_ids"), got, 16);
    CHECK(ng == nw && !memcmp(got, want, (size_t)nw * sizeof *got));
    CHECK(json_array_size(json_object_get(meta, "output_token_logprobs")) == (size_t)nw);
    CHECK(!strcmp(json_string_value(json_object_get(meta, "weight_version")), "0"));
    CHECK(json_integer_value(json_array_get(json_array_get(json_object_get(meta, "output_token_logprobs"), 0), 1)) ==
          want[0]);
    json_decref(v);
}

/* The stream's chunks add up to the answer without streaming. */
static void test_stream(void)
{
    const char *base = "{\"prompt\": [57, 50, 53, 10], \"max_tokens\": 10, \"temperature\": 1.0, \"seed\": 3, "
                       "\"return_token_ids\": true";
    char body[256];
    snprintf(body, sizeof body, "%s}", base);
    long st;
    json_t *whole = http_json("/v1/completions", body, &st);
    snprintf(body, sizeof body, "%s, \"stream\": true}", base);
    reply r = http("/v1/completions", body, NULL);
    CHECK(r.status == 200);
    json_t *ids = json_array();
    int chunks = 0;
    bool done = false;
    const char *fin = NULL;
    for (char *p = r.body; (p = strstr(p, "data: ")); p += 6) {
        if (!strncmp(p + 6, "[DONE]", 6)) {
            done = true;
            break;
        }
        json_error_t je;
        json_t *ch = json_loadb(p + 6, strcspn(p + 6, "\n"), 0, &je);
        json_t *c = json_array_get(json_object_get(ch, "choices"), 0);
        json_array_extend(ids, json_object_get(c, "token_ids"));
        if (json_is_string(json_object_get(c, "finish_reason"))) fin = "set";
        chunks++;
        json_decref(ch);
    }
    json_t *want = json_object_get(json_array_get(json_object_get(whole, "choices"), 0), "token_ids");
    CHECK_MSG(done && chunks >= 1 && fin && json_equal(ids, want), "done %d, %d chunks, body: %.300s", done, chunks,
              r.body);
    json_decref(ids);
    json_decref(whole);
    free(r.body);
}

static void test_errors(void)
{
    struct {
        const char *path, *body, *param;
        long status;
    } cases[] = {
        {"/v1/completions", "not json", NULL, 400},
        {"/v1/completions", "[1]", NULL, 400},
        {"/v1/completions", "{}", "prompt", 400},
        {"/v1/completions", "{\"prompt\": [259]}", "prompt", 400},
        {"/v1/completions", "{\"prompt\": [1], \"logprobs\": 5}", "logprobs", 400},
        {"/v1/completions", "{\"prompt\": [1], \"temperature\": -1}", "temperature", 400},
        {"/v1/completions", "{\"prompt\": [1], \"n\": 100000}", "n", 400},
        {"/v1/completions", "{\"prompt\": [1], \"echo\": true}", "echo", 400},
        {"/v1/chat/completions", "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "messages[0].role", 400},
        {"/generate", "{\"text\": \"a\", \"input_ids\": [1]}", NULL, 400},
        {"/generate", "{\"input_ids\": [1], \"sampling_params\": {\"max_new_tokens\": 0}}",
         "sampling_params.max_new_tokens", 400},
        {"/update_weights_from_disk", "{\"model_path\": \"/nonexistent/dir\"}", NULL, 400},
        {"/collective_rpc", "{\"method\": \"sleep\"}", "method", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long st;
        json_t *v = http_json(cases[i].path, cases[i].body, &st);
        json_t *e = json_object_get(v, "error");
        const char *param = json_string_value(json_object_get(e, "param"));
        bool ok = st == cases[i].status && v;
        if (!strcmp(cases[i].path, "/update_weights_from_disk"))
            ok = ok && json_is_false(json_object_get(v, "success")) && strstr(json_string_value(json_object_get(v, "message")), "/nonexistent/dir");
        else
            ok = ok && json_is_string(json_object_get(e, "message")) &&
                 (!cases[i].param || (param && !strcmp(param, cases[i].param)));
        char *text = v ? json_dumps(v, 0) : NULL;
        CHECK_MSG(ok, "case %zu %s %s: %ld %s", i, cases[i].path, cases[i].body, st, text ? text : "-");
        free(text);
        json_decref(v);
    }
}

typedef struct inflight {
    int32_t ids[16];
    int n;
    char version[16];
} inflight;

static void *one_request(void *arg)
{
    inflight *f = arg;
    long st;
    json_t *v = http_json("/generate", "{\"input_ids\": [57, 50, 53, 10], \"sampling_params\": {\"max_new_tokens\": "
                                       "12, \"temperature\": 0}}", &st);
    f->n = ids_of(json_object_get(v, "output_ids"), f->ids, 16);
    const char *ver = json_string_value(json_object_get(json_object_get(v, "meta_info"), "weight_version"));
    snprintf(f->version, sizeof f->version, "%s", ver ? ver : "?");
    json_decref(v);
    return NULL;
}

/* A reload with requests in flight: every response's ids are the greedy ids
 * of the version it names - no sample mixes two versions. */
static void test_reload(void)
{
    int32_t w1[16], w2[16];
    int n1 = greedy(dir1, P, 4, 12, w1), n2 = greedy(dir2, P, 4, 12, w2);
    CHECK(n1 > 0 && n2 > 0 && (n1 != n2 || memcmp(w1, w2, (size_t)n1 * sizeof *w1) != 0));
    enum { K = 12 };
    inflight f[K];
    pthread_t th[K];
    memset(f, 0, sizeof f);
    for (int i = 0; i < K / 2; i++) pthread_create(&th[i], NULL, one_request, &f[i]);
    char body[160];
    snprintf(body, sizeof body, "{\"model_path\": \"%s\", \"weight_version\": \"7\"}", dir2);
    long st;
    json_t *v = http_json("/update_weights_from_disk", body, &st);
    CHECK_MSG(st == 200 && json_is_true(json_object_get(v, "success")), "reload: %ld", st);
    json_decref(v);
    for (int i = K / 2; i < K; i++) pthread_create(&th[i], NULL, one_request, &f[i]);
    for (int i = 0; i < K; i++) pthread_join(th[i], NULL);
    int on7 = 0;
    for (int i = 0; i < K; i++) {
        const bool v7 = !strcmp(f[i].version, "7");
        const int32_t *w = v7 ? w2 : w1;
        const int n = v7 ? n2 : n1;
        on7 += v7;
        CHECK_MSG((v7 || !strcmp(f[i].version, "0")) && f[i].n == n && !memcmp(f[i].ids, w, (size_t)n * sizeof *w),
                  "request %d: version %s, %d ids", i, f[i].version, f[i].n);
    }
    CHECK(on7 >= K / 2); /* every request sent after the reload answered */
    v = http_json("/get_model_info", NULL, &st);
    CHECK(!strcmp(json_string_value(json_object_get(v, "weight_version")), "7"));
    json_decref(v);
    /* a failed reload keeps the weights and the version */
    v = http_json("/update_weights_from_disk", "{\"model_path\": \"/nonexistent\", \"weight_version\": \"8\"}", &st);
    json_decref(v);
    inflight g = {0};
    one_request(&g);
    CHECK(!strcmp(g.version, "7") && g.n == n2 && !memcmp(g.ids, w2, (size_t)n2 * sizeof *w2));
    /* vLLM's sequence: pause, reload, resume */
    v = http_json("/pause?mode=wait", "{}", &st);
    CHECK(st == 200);
    json_decref(v);
    v = http_json("/is_paused", NULL, &st);
    CHECK(json_is_true(json_object_get(v, "is_paused")));
    json_decref(v);
    snprintf(body, sizeof body, "{\"method\": \"reload_weights\", \"kwargs\": {\"weights_path\": \"%s\"}}", dir1);
    v = http_json("/collective_rpc", body, &st);
    CHECK(st == 200);
    json_decref(v);
    v = http_json("/update_weight_version", "{\"version\": \"9\"}", &st);
    json_decref(v);
    v = http_json("/resume", "{}", &st);
    json_decref(v);
    one_request(&g);
    CHECK_MSG(!strcmp(g.version, "9") && g.n == n1 && !memcmp(g.ids, w1, (size_t)n1 * sizeof *w1), "after vLLM reload: %s",
              g.version);
}

static void test_token(void)
{
    serve_opts o = {.model_dir = dir1, .port = 0, .token = "s3cret", .slots = 2};
    serve_server *s2 = NULL;
    CHECK_OK(serve_start(&o, &s2));
    char saved[64];
    snprintf(saved, sizeof saved, "%s", base_url);
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", serve_port(s2));
    reply a = http("/v1/models", NULL, NULL), b = http("/v1/models", NULL, "wrong"), c = http("/v1/models", NULL, "s3cret");
    snprintf(base_url, sizeof base_url, "%s", saved);
    serve_stop(s2);
    CHECK_MSG(a.status == 401 && b.status == 401 && c.status == 200, "%ld %ld %ld", a.status, b.status, c.status);
    free(a.body), free(b.body), free(c.body);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    if (tiny_models_serve("/tmp/tidal-serve", 11, dir1, dir2, &srv, base_url, sizeof base_url)) return 1;
    RUN(test_routes);
    RUN(test_completions_ids);
    RUN(test_completions_text_and_seed);
    RUN(test_stops);
    RUN(test_chat_and_generate);
    RUN(test_stream);
    RUN(test_errors);
    RUN(test_reload);
    RUN(test_token);
    tiny_models_stop(srv, dir1, dir2);
    curl_global_cleanup();
    return check_summary();
}
