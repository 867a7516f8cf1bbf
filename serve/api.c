/* api.c - request parsing and response bodies of `tidal serve` (api.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "serve/api.h"

/* ---------------------------------------------------------------- parsing */

/* The parse's context: where to report which field failed. */
typedef struct parse_ctx {
    char *param;
    size_t cap;
} parse_ctx;

static tidal_status bad(parse_ctx *pc, const char *field, const json_t *v, const char *want)
{
    char what[96];
    jv_describe(v, what, sizeof what);
    if (pc->cap) snprintf(pc->param, pc->cap, "%s", field);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: must be %s, got %s", field, want, what);
}

static tidal_status bad_msg(parse_ctx *pc, const char *field, const char *msg)
{
    if (pc->cap) snprintf(pc->param, pc->cap, "%s", field);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: %s", field, msg);
}

/* obj[key] as an integer in [lo, hi] into *out; absent (or null) leaves *out. */
static tidal_status get_int(parse_ctx *pc, const json_t *obj, const char *key, const char *field, long long lo,
                            long long hi, long long *out)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    double d = json_is_integer(v) ? (double)json_integer_value(v) : json_is_real(v) ? json_real_value(v) : NAN;
    char want[96];
    snprintf(want, sizeof want, "an integer in [%lld, %lld]", lo, hi);
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) return bad(pc, field, v, want);
    *out = json_is_integer(v) ? json_integer_value(v) : (long long)d;
    return TIDAL_OK;
}

static tidal_status get_num(parse_ctx *pc, const json_t *obj, const char *key, const char *field, double lo,
                            double hi, float *out)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    char want[96];
    snprintf(want, sizeof want, "a number in [%g, %g]", lo, hi);
    if (!json_is_number(v)) return bad(pc, field, v, want);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return bad(pc, field, v, want);
    *out = (float)d;
    return TIDAL_OK;
}

static tidal_status get_bool(parse_ctx *pc, const json_t *obj, const char *key, const char *field, bool *out)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    if (!json_is_boolean(v)) return bad(pc, field, v, "true or false");
    *out = json_is_true(v);
    return TIDAL_OK;
}

static tidal_status get_str(parse_ctx *pc, const json_t *obj, const char *key, const char *field, char *out,
                            size_t cap)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    if (!json_is_string(v) || json_string_length(v) >= cap) return bad(pc, field, v, "a short string");
    snprintf(out, cap, "%s", json_string_value(v));
    return TIDAL_OK;
}

/* A JSON list of token ids into a heap array. */
static tidal_status ids_of(parse_ctx *pc, const json_t *v, const char *field, const serve_limits *lim, int32_t **ids,
                           int *n)
{
    *ids = NULL, *n = 0;
    size_t k = json_array_size(v);
    if (k == 0) return bad_msg(pc, field, "a prompt of token ids must hold at least one id");
    if (k > (size_t)1 << 24) return bad_msg(pc, field, "too many token ids");
    int32_t *a = malloc(k * sizeof *a);
    if (!a) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
    for (size_t i = 0; i < k; i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= lim->vocab) {
            free(a);
            char want[64];
            snprintf(want, sizeof want, "token ids in [0, %d)", lim->vocab);
            return bad(pc, field, x, want);
        }
        a[i] = (int32_t)json_integer_value(x);
    }
    *ids = a, *n = (int)k;
    return TIDAL_OK;
}

/* True when v is a non-empty list whose first element is an integer: one prompt of ids. */
static bool is_id_list(const json_t *v) { return json_is_array(v) && json_is_integer(json_array_get(v, 0)); }

/* The prompts of a completions `prompt` or a generate `text` / `input_ids`:
 * one (a string or a list of ids) or a batch (a list of them). */
static tidal_status prompts_of(parse_ctx *pc, const json_t *v, const char *field, const serve_limits *lim,
                               serve_request *r)
{
    const bool one = json_is_string(v) || is_id_list(v);
    if (!one && !(json_is_array(v) && json_array_size(v) > 0))
        return bad(pc, field, v, "a string, a list of token ids, or a non-empty list of either");
    size_t k = one ? 1 : json_array_size(v);
    if (k > (size_t)lim->max_sequences) return bad_msg(pc, field, "too many prompts in one request");
    r->prompts = calloc(k, sizeof *r->prompts);
    if (!r->prompts) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
    r->batched = !one;
    for (size_t i = 0; i < k; i++) {
        const json_t *p = one ? v : json_array_get(v, i);
        r->n_prompts = (int)i + 1;
        if (json_is_string(p)) {
            if (json_string_length(p) == 0) return bad_msg(pc, field, "an empty prompt");
            if (strlen(json_string_value(p)) != json_string_length(p)) return bad_msg(pc, field, "a prompt holds a NUL");
            if (!(r->prompts[i].text = strdup(json_string_value(p))))
                return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
        } else if (json_is_array(p)) {
            TRY(ids_of(pc, p, field, lim, &r->prompts[i].ids, &r->prompts[i].n));
        } else {
            return bad(pc, field, p, "a string or a list of token ids");
        }
    }
    return TIDAL_OK;
}

/* `stop`: a string or a list of strings (empty ones are refused: they would match at once). */
static tidal_status stop_of(parse_ctx *pc, const json_t *obj, const char *key, const char *field, serve_request *r)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    const bool one = json_is_string(v);
    if (!one && !json_is_array(v)) return bad(pc, field, v, "a string or a list of strings");
    size_t k = one ? 1 : json_array_size(v);
    if (k > 16) return bad_msg(pc, field, "at most 16 stop strings");
    if (k == 0) return TIDAL_OK;
    r->stop = calloc(k, sizeof *r->stop);
    if (!r->stop) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
    for (size_t i = 0; i < k; i++) {
        const json_t *s = one ? v : json_array_get(v, i);
        if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) > 1024 ||
            strlen(json_string_value(s)) != json_string_length(s))
            return bad(pc, field, s, "non-empty strings of at most 1024 bytes");
        if (!(r->stop[i] = strdup(json_string_value(s)))) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
        r->n_stop = (int)i + 1;
    }
    return TIDAL_OK;
}

static tidal_status stop_ids_of(parse_ctx *pc, const json_t *obj, const char *key, const char *field,
                                const serve_limits *lim, serve_request *r)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    if (!json_is_array(v) || json_array_size(v) > 64) return bad(pc, field, v, "a list of at most 64 token ids");
    if (json_array_size(v) == 0) return TIDAL_OK;
    return ids_of(pc, v, field, lim, &r->stop_ids, &r->n_stop_ids);
}

/* The sampling fields every dialect shares, read from obj (the body, or
 * generate's sampling_params). */
static tidal_status sampling_of(parse_ctx *pc, const json_t *obj, const char *prefix, const serve_limits *lim,
                                serve_request *r)
{
    char f[96];
#define FIELD(name) (snprintf(f, sizeof f, "%s%s", prefix, name), f)
    TRY(get_num(pc, obj, "temperature", FIELD("temperature"), 0, 100, &r->temperature));
    TRY(get_num(pc, obj, "top_p", FIELD("top_p"), 0, 1, &r->top_p));
    TRY(get_num(pc, obj, "min_p", FIELD("min_p"), 0, 1, &r->min_p));
    long long x = r->top_k;
    TRY(get_int(pc, obj, "top_k", FIELD("top_k"), -1, 1 << 30, &x));
    r->top_k = x < 0 ? 0 : (int)x; /* -1 is vLLM's and SGLang's "off" */
    x = r->n;
    TRY(get_int(pc, obj, "n", FIELD("n"), 1, lim->max_n, &x));
    r->n = (int)x;
    TRY(stop_of(pc, obj, "stop", FIELD("stop"), r));
    TRY(stop_ids_of(pc, obj, "stop_token_ids", FIELD("stop_token_ids"), lim, r));
    TRY(get_bool(pc, obj, "ignore_eos", FIELD("ignore_eos"), &r->ignore_eos));
    TRY(get_bool(pc, obj, "skip_special_tokens", FIELD("skip_special_tokens"), &r->skip_special));
#undef FIELD
    return TIDAL_OK;
}

/* Seeds are unsigned 64-bit on the engine; JSON gives signed ones. */
static tidal_status seed_of(parse_ctx *pc, const json_t *obj, const char *key, const char *field, serve_request *r)
{
    json_t *v = jv_get(obj, key);
    if (!v) return TIDAL_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0) return bad(pc, field, v, "a non-negative integer");
    r->has_seed = true;
    r->seed = (uint64_t)json_integer_value(v);
    return TIDAL_OK;
}

static tidal_status parse_completions(parse_ctx *pc, const json_t *root, const serve_limits *lim, serve_request *r)
{
    json_t *p = jv_get(root, "prompt");
    if (!p) return bad_msg(pc, "prompt", "missing (a string, a list of token ids, or a list of either)");
    TRY(prompts_of(pc, p, "prompt", lim, r));
    long long x = lim->max_tokens < 16 ? lim->max_tokens : 16; /* OpenAI's and vLLM's default */
    TRY(get_int(pc, root, "max_tokens", "max_tokens", 1, lim->max_tokens, &x));
    r->max_tokens = (int)x;
    TRY(sampling_of(pc, root, "", lim, r));
    TRY(seed_of(pc, root, "seed", "seed", r));
    json_t *lp = jv_get(root, "logprobs");
    if (lp) {
        if (!json_is_integer(lp) || json_integer_value(lp) != 0)
            return bad(pc, "logprobs", lp, "0 or null (the sampled token's log-probability; top logprobs are not "
                                           "computed)");
        r->logprobs = true;
    }
    bool echo = false;
    TRY(get_bool(pc, root, "echo", "echo", &echo));
    if (echo) return bad_msg(pc, "echo", "true is not supported (the prompt is not repeated)");
    TRY(get_bool(pc, root, "stream", "stream", &r->stream));
    TRY(get_bool(pc, root, "return_token_ids", "return_token_ids", &r->return_token_ids));
    TRY(get_bool(pc, root, "return_tokens_as_token_ids", "return_tokens_as_token_ids", &r->tokens_as_ids));
    TRY(get_bool(pc, root, "include_stop_str_in_output", "include_stop_str_in_output", &r->keep_stop_str));
    return get_str(pc, root, "model", "model", r->model, sizeof r->model);
}

/* content: a string, or a list of parts of which the {type: text} ones are joined. */
static tidal_status content_of(parse_ctx *pc, const json_t *v, const char *field, char **out)
{
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v)) return bad_msg(pc, field, "holds a NUL");
        *out = strdup(json_string_value(v));
        return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
    }
    if (!json_is_array(v)) return bad(pc, field, v, "a string or a list of text parts");
    size_t total = 1;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *part = json_array_get(v, i), *type = jv_get(part, "type"), *text = jv_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text) || strlen(json_string_value(text)) != json_string_length(text))
            return bad(pc, field, part, "parts of {\"type\": \"text\", \"text\": STRING} (only text is served)");
        total += json_string_length(text);
    }
    char *s = malloc(total);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", field);
    size_t at = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *text = jv_get(json_array_get(v, i), "text");
        memcpy(s + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    s[at] = '\0';
    *out = s;
    return TIDAL_OK;
}

static tidal_status parse_chat(parse_ctx *pc, const json_t *root, const serve_limits *lim, serve_request *r)
{
    json_t *m = jv_get(root, "messages");
    if (!json_is_array(m) || json_array_size(m) == 0 || json_array_size(m) > 4096)
        return bad(pc, "messages", m, "a non-empty list of messages");
    size_t k = json_array_size(m);
    r->messages = calloc(k, sizeof *r->messages);
    if (!r->messages) return tidal_fail(TIDAL_ERR_NOMEM, "messages: out of memory");
    for (size_t i = 0; i < k; i++) {
        json_t *msg = json_array_get(m, i), *role = jv_get(msg, "role");
        char field[64];
        snprintf(field, sizeof field, "messages[%zu].role", i);
        if (!json_is_string(role) || (strcmp(json_string_value(role), "system") && strcmp(json_string_value(role), "user") &&
                                      strcmp(json_string_value(role), "assistant")))
            return bad(pc, field, role, "\"system\", \"user\" or \"assistant\"");
        r->n_messages = (int)i + 1;
        if (!(r->messages[i].role = strdup(json_string_value(role))))
            return tidal_fail(TIDAL_ERR_NOMEM, "messages: out of memory");
        snprintf(field, sizeof field, "messages[%zu].content", i);
        json_t *c = jv_get(msg, "content");
        if (!c) return bad_msg(pc, field, "missing");
        TRY(content_of(pc, c, field, &r->messages[i].content));
    }
    long long x = lim->max_tokens; /* the rest of the context, as vLLM does without max_tokens */
    TRY(get_int(pc, root, "max_completion_tokens", "max_completion_tokens", 1, lim->max_tokens, &x));
    TRY(get_int(pc, root, "max_tokens", "max_tokens", 1, lim->max_tokens, &x));
    r->max_tokens = (int)x;
    TRY(sampling_of(pc, root, "", lim, r));
    TRY(seed_of(pc, root, "seed", "seed", r));
    TRY(get_bool(pc, root, "logprobs", "logprobs", &r->logprobs));
    long long top = 0;
    TRY(get_int(pc, root, "top_logprobs", "top_logprobs", 0, 0, &top));
    TRY(get_bool(pc, root, "stream", "stream", &r->stream));
    TRY(get_bool(pc, root, "return_token_ids", "return_token_ids", &r->return_token_ids));
    TRY(get_bool(pc, root, "include_stop_str_in_output", "include_stop_str_in_output", &r->keep_stop_str));
    return get_str(pc, root, "model", "model", r->model, sizeof r->model);
}

static tidal_status parse_generate(parse_ctx *pc, const json_t *root, const serve_limits *lim, serve_request *r)
{
    json_t *text = jv_get(root, "text"), *ids = jv_get(root, "input_ids");
    if (!text == !ids) return bad_msg(pc, ids ? "input_ids" : "text", "give exactly one of text and input_ids");
    if (text && !json_is_string(text) && !(json_is_array(text) && json_is_string(json_array_get(text, 0))))
        return bad(pc, "text", text, "a string or a list of strings");
    if (ids && !json_is_array(ids)) return bad(pc, "input_ids", ids, "a list of token ids or a list of such lists");
    TRY(prompts_of(pc, text ? text : ids, text ? "text" : "input_ids", lim, r));
    json_t *sp = jv_get(root, "sampling_params");
    if (sp && !json_is_object(sp)) return bad(pc, "sampling_params", sp, "an object");
    long long x = lim->max_tokens < 128 ? lim->max_tokens : 128; /* SGLang's default */
    TRY(get_int(pc, sp, "max_new_tokens", "sampling_params.max_new_tokens", 1, lim->max_tokens, &x));
    r->max_tokens = (int)x;
    TRY(sampling_of(pc, sp, "sampling_params.", lim, r));
    TRY(seed_of(pc, sp, "sampling_seed", "sampling_params.sampling_seed", r));
    TRY(get_bool(pc, sp, "no_stop_trim", "sampling_params.no_stop_trim", &r->keep_stop_str));
    TRY(get_bool(pc, root, "return_logprob", "return_logprob", &r->logprobs));
    long long top = 0;
    TRY(get_int(pc, root, "top_logprobs_num", "top_logprobs_num", 0, 0, &top));
    TRY(get_bool(pc, root, "stream", "stream", &r->stream));
    r->return_token_ids = true; /* output_ids are always there */
    json_t *rid = jv_get(root, "rid");
    if (rid && json_is_string(rid)) snprintf(r->rid, sizeof r->rid, "%s", json_string_value(rid));
    return TIDAL_OK;
}

tidal_status serve_parse(serve_dialect dialect, const char *body, size_t len, const serve_limits *lim,
                         serve_request *out, char *param, size_t param_cap)
{
    memset(out, 0, sizeof *out);
    if (param_cap) param[0] = '\0';
    out->dialect = dialect;
    out->n = 1;
    out->temperature = 1.0f, out->top_p = 1.0f;
    out->skip_special = true;
    parse_ctx pc = {.param = param, .cap = param_cap};
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return tidal_fail(TIDAL_ERR_INVALID, "the body is not JSON: %s (line %d, column %d)", je.text, je.line,
                                 je.column);
    tidal_status st = TIDAL_OK;
    if (!json_is_object(root)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "the body must be a JSON object");
        goto cleanup;
    }
    if (dialect == SERVE_COMPLETIONS) TRY_GOTO(parse_completions(&pc, root, lim, out));
    else if (dialect == SERVE_CHAT) TRY_GOTO(parse_chat(&pc, root, lim, out));
    else TRY_GOTO(parse_generate(&pc, root, lim, out));
    if ((long long)(out->n_prompts ? out->n_prompts : 1) * out->n > lim->max_sequences) {
        st = bad_msg(&pc, "n", "too many sequences in one request (prompts x n)");
        goto cleanup;
    }
cleanup:
    json_decref(root);
    if (st != TIDAL_OK) serve_request_clear(out);
    return st;
}

void serve_request_clear(serve_request *r)
{
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].ids);
        free(r->prompts[i].text);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
    }
    free(r->messages);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_ids);
    serve_dialect d = r->dialect;
    memset(r, 0, sizeof *r);
    r->dialect = d;
}

/* ---------------------------------------------------------------- responses */

/* Text that may hold invalid UTF-8 (a token holding part of a character) as
 * a JSON string: jansson refuses invalid UTF-8, so such bytes become U+FFFD,
 * as the servers' detokenizers do. */
static json_t *text_json(const char *s, size_t len)
{
    json_t *v = json_stringn(s, len);
    if (v) return v;
    char *fixed = malloc(len * 3 + 1);
    if (!fixed) return NULL;
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        int need = u[i] < 0x80 ? 1 : (u[i] >> 5) == 6 ? 2 : (u[i] >> 4) == 14 ? 3 : (u[i] >> 3) == 30 ? 4 : 0;
        bool ok = need > 0 && i + (size_t)need <= len && (need == 1 || u[i] != 0xC0);
        for (int k = 1; ok && k < need; k++) ok = (u[i + k] & 0xC0) == 0x80;
        if (ok) { /* overlong forms and surrogates are refused by jansson too */
            json_t *probe = json_stringn((const char *)u + i, (size_t)need);
            ok = probe != NULL;
            json_decref(probe);
        }
        if (ok) {
            memcpy(fixed + o, u + i, (size_t)need);
            o += (size_t)need, i += (size_t)need;
        } else {
            memcpy(fixed + o, "\xEF\xBF\xBD", 3);
            o += 3, i++;
        }
    }
    v = json_stringn(fixed, o);
    free(fixed);
    return v;
}

static json_t *ids_json(const int32_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static char *dump(json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return s;
}

static json_t *usage_json(const serve_sample *s, int n_samples)
{
    long long prompt = 0, completion = 0;
    for (int i = 0; i < n_samples; i++) {
        if (s[i].sample_index == 0) prompt += s[i].prompt_tokens; /* a prompt counts once, as vLLM does */
        completion += s[i].n;
    }
    return json_pack("{sIsIsI}", "prompt_tokens", prompt, "completion_tokens", completion, "total_tokens",
                     prompt + completion);
}

/* completions' logprobs object for tokens from..n of s. */
static json_t *completion_logprobs(const serve_request *r, const serve_sample *s, int from, size_t text_base)
{
    json_t *tokens = json_array(), *lps = json_array(), *offsets = json_array();
    size_t at = text_base;
    for (int i = from; i < s->n; i++) {
        if (r->tokens_as_ids) {
            char t[32];
            snprintf(t, sizeof t, "token_id:%d", s->ids[i]);
            json_array_append_new(tokens, json_string(t));
        } else {
            json_array_append_new(tokens, text_json(s->token_texts[i], s->token_text_lens[i]));
        }
        json_array_append_new(lps, json_real(s->logprobs[i]));
        json_array_append_new(offsets, json_integer((json_int_t)at));
        at += s->token_text_lens[i];
    }
    return json_pack("{sososnso}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", "text_offset", offsets);
}

static json_t *completion_choice(const serve_request *r, const serve_sample *s, int index)
{
    json_t *c = json_pack("{sisosn}", "index", index, "text", text_json(s->text, s->text_len), "logprobs");
    if (!c) return NULL;
    json_object_set_new(c, "finish_reason", json_string(s->finish));
    json_object_set_new(c, "stop_reason", s->matched_stop ? json_string(s->matched_stop)
                                          : s->matched_id >= 0 ? json_integer(s->matched_id) : json_null());
    if (r->logprobs) json_object_set_new(c, "logprobs", completion_logprobs(r, s, 0, 0));
    if (r->return_token_ids) json_object_set_new(c, "token_ids", ids_json(s->ids, s->n));
    return c;
}

char *serve_completions_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id,
                             long long created, const char *model)
{
    json_t *choices = json_array();
    for (int i = 0; choices && i < n_samples; i++) json_array_append_new(choices, completion_choice(r, &s[i], i));
    return dump(json_pack("{sssssIssso so}", "id", id, "object", "text_completion", "created", (json_int_t)created,
                          "model", model, "choices", choices, "usage", usage_json(s, n_samples)));
}

/* chat's logprobs.content entries for tokens from..n. */
static json_t *chat_logprobs(const serve_sample *s, int from)
{
    json_t *content = json_array();
    for (int i = from; content && i < s->n; i++) {
        json_t *bytes = json_array();
        const unsigned char *b = (const unsigned char *)s->token_texts[i];
        for (size_t k = 0; bytes && k < s->token_text_lens[i]; k++) json_array_append_new(bytes, json_integer(b[k]));
        json_array_append_new(content,
                              json_pack("{sosfsos[]}", "token", text_json(s->token_texts[i], s->token_text_lens[i]),
                                        "logprob", (double)s->logprobs[i], "bytes", bytes, "top_logprobs"));
    }
    return json_pack("{so}", "content", content);
}

char *serve_chat_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id,
                      long long created, const char *model)
{
    json_t *choices = json_array();
    for (int i = 0; choices && i < n_samples; i++) {
        json_t *msg = json_pack("{ssso}", "role", "assistant", "content", text_json(s[i].text, s[i].text_len));
        json_t *c = json_pack("{si so ss sn sn}", "index", i, "message", msg, "finish_reason", s[i].finish,
                              "stop_reason", "logprobs");
        if (!c) continue;
        json_object_set_new(c, "stop_reason", s[i].matched_stop ? json_string(s[i].matched_stop)
                                              : s[i].matched_id >= 0 ? json_integer(s[i].matched_id) : json_null());
        if (r->logprobs) json_object_set_new(c, "logprobs", chat_logprobs(&s[i], 0));
        if (r->return_token_ids) json_object_set_new(c, "token_ids", ids_json(s[i].ids, s[i].n));
        json_array_append_new(choices, c);
    }
    return dump(json_pack("{sssssIssso so}", "id", id, "object", "chat.completion", "created", (json_int_t)created,
                          "model", model, "choices", choices, "usage", usage_json(s, n_samples)));
}

static json_t *generate_one(const serve_request *r, const serve_sample *s, const char *id, int upto)
{
    json_t *reason = json_pack("{ss}", "type", s->finish);
    if (reason && s->matched_stop) json_object_set_new(reason, "matched", json_string(s->matched_stop));
    else if (reason && s->matched_id >= 0) json_object_set_new(reason, "matched", json_integer(s->matched_id));
    json_t *meta = json_pack("{sssosisiss}", "id", id, "finish_reason", reason, "prompt_tokens", s->prompt_tokens,
                             "completion_tokens", upto, "weight_version", s->weight_version);
    if (meta && r->logprobs) {
        json_t *lps = json_array();
        for (int i = 0; lps && i < upto; i++)
            json_array_append_new(lps, json_pack("[fin]", (double)s->logprobs[i], s->ids[i]));
        json_object_set_new(meta, "output_token_logprobs", lps);
    }
    return json_pack("{sosos o}", "text", text_json(s->text, s->text_len), "output_ids", ids_json(s->ids, upto),
                     "meta_info", meta);
}

char *serve_generate_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id)
{
    if (n_samples == 1 && !r->batched) return dump(generate_one(r, &s[0], id, s[0].n));
    json_t *a = json_array();
    for (int i = 0; a && i < n_samples; i++) {
        char sid[160];
        snprintf(sid, sizeof sid, "%s-%d", id, i);
        json_array_append_new(a, generate_one(r, &s[i], sid, s[i].n));
    }
    return dump(a);
}

char *serve_chunk(const serve_request *r, const serve_sample *s, size_t text_from, int tok_from, bool first,
                  bool last, const char *id, long long created, const char *model)
{
    if (text_from > s->text_len) text_from = s->text_len;
    if (tok_from > s->n) tok_from = s->n;
    const int index = s->prompt_index * r->n + s->sample_index;
    if (r->dialect == SERVE_GENERATE) {
        json_t *g = generate_one(r, s, id, s->n);
        if (g && r->batched) json_object_set_new(g, "index", json_integer(index));
        if (g && !last) json_object_set(json_object_get(g, "meta_info"), "finish_reason", json_null());
        return dump(g);
    }
    json_t *c;
    const char *object;
    if (r->dialect == SERVE_CHAT) {
        object = "chat.completion.chunk";
        json_t *delta = json_pack("{so}", "content", text_json(s->text + text_from, s->text_len - text_from));
        if (delta && first) json_object_set_new(delta, "role", json_string("assistant"));
        c = json_pack("{siso}", "index", index, "delta", delta);
        if (c && r->logprobs) json_object_set_new(c, "logprobs", chat_logprobs(s, tok_from));
    } else {
        object = "text_completion";
        c = json_pack("{siso}", "index", index, "text", text_json(s->text + text_from, s->text_len - text_from));
        if (c && r->logprobs) json_object_set_new(c, "logprobs", completion_logprobs(r, s, tok_from, text_from));
    }
    if (!c) return NULL;
    json_object_set_new(c, "finish_reason", last ? json_string(s->finish) : json_null());
    if (r->return_token_ids) json_object_set_new(c, "token_ids", ids_json(s->ids + tok_from, s->n - tok_from));
    return dump(json_pack("{sssssIsss[o]}", "id", id, "object", object, "created", (json_int_t)created, "model", model,
                          "choices", c));
}

char *serve_error_body(int http_status, const char *message, const char *param)
{
    const char *type = http_status == 401 ? "authentication_error"
                       : http_status == 404 ? "not_found_error"
                       : http_status >= 500 ? "server_error"
                                            : "invalid_request_error";
    json_t *e = json_pack("{sossso si}", "message", text_json(message, strlen(message)), "type", type, "param",
                          param && *param ? json_string(param) : json_null(), "code", http_status);
    return dump(json_pack("{so}", "error", e));
}
