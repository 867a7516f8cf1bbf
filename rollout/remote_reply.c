/* remote_reply.c - the readers of vLLM's and SGLang's generation answers
 * (remote.h): pure functions over a response body, apart from the client so
 * the fuzz target links them alone. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "rollout/remote.h"

void remote_reply_clear(remote_reply *r)
{
    free(r->ids);
    free(r->logprobs);
    memset(r, 0, sizeof *r);
}

static tidal_status reply_alloc(remote_reply *out, size_t n)
{
    out->ids = malloc((n ? n : 1) * sizeof *out->ids);
    out->logprobs = malloc((n ? n : 1) * sizeof *out->logprobs);
    if (!out->ids || !out->logprobs) return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    out->n = (int)n;
    return TIDAL_OK;
}

static tidal_status finish_of(const char *field, const char *s, engine_finish *out)
{
    if (s && !strcmp(s, "stop")) *out = ENGINE_FINISH_STOP;
    else if (s && !strcmp(s, "length")) *out = ENGINE_FINISH_LENGTH;
    else if (s && !strcmp(s, "abort")) *out = ENGINE_FINISH_ABORT;
    else return jv_bad("response", field, "must be stop, length or abort, not %s", s ? s : "missing");
    return TIDAL_OK;
}

static tidal_status id_of(const json_t *v, const char *field, size_t i, int vocab, int32_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return tidal_fail(TIDAL_ERR_INVALID, "response: %s[%zu]: must be a token id in [0, %d), not %s", field, i,
                          vocab, d);
    }
    *out = (int32_t)json_integer_value(v);
    return TIDAL_OK;
}

static tidal_status logprob_of(const json_t *v, const char *field, size_t i, float *out)
{
    const double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x <= 0.0 && x >= -1e30)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return tidal_fail(TIDAL_ERR_INVALID, "response: %s[%zu]: must be a log-probability <= 0, not %s", field, i, d);
    }
    *out = (float)x;
    return TIDAL_OK;
}

static json_t *load(const char *body, size_t len)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!root) tidal_fail(TIDAL_ERR_INVALID, "response: not JSON: %s (line %d)", je.text, je.line);
    return root;
}

tidal_status remote_parse_vllm(const char *body, size_t len, int vocab, remote_reply *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = load(body, len);
    if (!root) return TIDAL_ERR_INVALID;
    tidal_status st = TIDAL_OK;
    json_t *c = json_array_get(jv_get(root, "choices"), 0);
    if (!json_is_object(c)) {
        json_t *err = jv_get(root, "error");
        const char *m = json_string_value(json_is_object(err) ? jv_get(err, "message") : err);
        st = m ? tidal_fail(TIDAL_ERR_INVALID, "response: error: %s", m)
               : tidal_fail(TIDAL_ERR_INVALID, "response: choices[0]: missing");
        goto cleanup;
    }
    TRY_GOTO(finish_of("choices[0].finish_reason", json_string_value(jv_get(c, "finish_reason")), &out->finish));
    json_t *ids = jv_get(c, "token_ids");
    if (!json_is_array(ids)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "response: choices[0].token_ids: missing: the server must return the "
                        "sampled token ids (vLLM 0.10.2 or newer with \"return_token_ids\": true, which tidal sends); "
                        "tidal never re-tokenises text");
        goto cleanup;
    }
    json_t *lps = jv_get(jv_get(c, "logprobs"), "token_logprobs");
    if (!json_is_array(lps) || json_array_size(lps) != json_array_size(ids)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "response: choices[0].logprobs.token_logprobs: want one per token id "
                        "(%zu), got %s", json_array_size(ids), json_is_array(lps) ? "another count" : "none");
        goto cleanup;
    }
    TRY_GOTO(reply_alloc(out, json_array_size(ids)));
    for (size_t i = 0; i < json_array_size(ids); i++) {
        TRY_GOTO(id_of(json_array_get(ids, i), "choices[0].token_ids", i, vocab, &out->ids[i]));
        TRY_GOTO(logprob_of(json_array_get(lps, i), "choices[0].logprobs.token_logprobs", i, &out->logprobs[i]));
    }
cleanup:
    json_decref(root);
    if (st != TIDAL_OK) remote_reply_clear(out);
    return st;
}

tidal_status remote_parse_sglang(const char *body, size_t len, int vocab, remote_reply *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = load(body, len);
    if (!root) return TIDAL_ERR_INVALID;
    tidal_status st = TIDAL_OK;
    json_t *g = json_is_array(root) ? json_array_get(root, 0) : root; /* n > 1 or a batch: a list */
    json_t *meta = jv_get(g, "meta_info"), *ids = jv_get(g, "output_ids");
    if (!json_is_object(meta)) {
        json_t *err = jv_get(root, "error");
        const char *m = json_string_value(json_is_object(err) ? jv_get(err, "message") : err);
        st = m ? tidal_fail(TIDAL_ERR_INVALID, "response: error: %s", m)
               : tidal_fail(TIDAL_ERR_INVALID, "response: meta_info: missing");
        goto cleanup;
    }
    json_t *reason = jv_get(meta, "finish_reason");
    TRY_GOTO(finish_of("meta_info.finish_reason.type", json_string_value(jv_get(reason, "type")), &out->finish));
    json_t *lps = jv_get(meta, "output_token_logprobs");
    if (!json_is_array(ids) || !json_is_array(lps) || json_array_size(lps) != json_array_size(ids)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "response: output_ids and meta_info.output_token_logprobs: want one "
                        "log-probability per id (tidal sends \"return_logprob\": true)");
        goto cleanup;
    }
    TRY_GOTO(reply_alloc(out, json_array_size(ids)));
    for (size_t i = 0; i < json_array_size(ids); i++) {
        TRY_GOTO(id_of(json_array_get(ids, i), "output_ids", i, vocab, &out->ids[i]));
        json_t *e = json_array_get(lps, i); /* [logprob, id, text or null] */
        TRY_GOTO(logprob_of(json_array_get(e, 0), "meta_info.output_token_logprobs", i, &out->logprobs[i]));
        json_t *eid = json_array_get(e, 1);
        if (eid && json_integer_value(eid) != out->ids[i]) {
            st = tidal_fail(TIDAL_ERR_INVALID, "response: meta_info.output_token_logprobs[%zu]: id %lld, but "
                            "output_ids[%zu] is %d", i, (long long)json_integer_value(eid), i, out->ids[i]);
            goto cleanup;
        }
    }
    json_t *wv = jv_get(meta, "weight_version");
    if (json_is_string(wv)) {
        char *end;
        unsigned long long v = strtoull(json_string_value(wv), &end, 10);
        if (end != json_string_value(wv) && *end == '\0') out->has_version = true, out->version = v;
    } else if (json_is_integer(wv) && json_integer_value(wv) >= 0) {
        out->has_version = true, out->version = (uint64_t)json_integer_value(wv);
    }
cleanup:
    json_decref(root);
    if (st != TIDAL_OK) remote_reply_clear(out);
    return st;
}

