/* generate.c - `tidal generate`: the built-in engine for humans.
 *
 * Loads a Hugging Face model directory, generates one completion of a prompt
 * with the engine (rollout/engine.h) and streams it to stdout as tokens are
 * sampled. The prompt is text (--prompt, through the tokenizer, --chat for
 * the chat template) or token ids (--ids "1 2 3"). With text the completion
 * is streamed as text; with ids, one line per token: id, logprob, and "T"
 * where top-k/top-p/min-p truncated the distribution. A summary (finish
 * reason, tokens, tokens/s) goes to stderr.
 *
 * A text prompt loads the tokenizer from the model directory (tokenizer.json
 * and tokenizer_config.json); with --chat the chat format's end-of-turn token
 * also stops generation, and so do generation_config.json's eos_token_id
 * (one or a list, as transformers reads it: a checkpoint lists its job's end
 * of turn there).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "base/status.h"
#include "model/chat.h"
#include "model/tokenizer.h"
#include "rollout/engine.h"

const char generate_usage[] =
    "usage: tidal generate --model DIR (--prompt TEXT [--chat] | --ids \"ID ID ...\") [options]\n"
    "  --temperature X   sampling temperature, 0 = greedy (default 1)\n"
    "  --top-p X         nucleus sampling (default 1: off)\n"
    "  --top-k N         keep the N most likely tokens (default 0: off)\n"
    "  --min-p X         keep tokens with p >= X * p_max (default 0: off)\n"
    "  --max-tokens N    new tokens at most (default 256)\n"
    "  --seed N          sampling seed (default 0)\n"
    "  --stop-id N       stop at token N (repeatable; the model's eos_token_id always stops,\n"
    "                    and so do generation_config.json's)\n"
    "  --threads N       CPU threads (default: all cores)\n"
    "Streams the completion to stdout (with --ids: one \"id logprob\" line per token, \"T\"\n"
    "appended where the distribution was truncated); a summary goes to stderr.\n";

static void usage(FILE *f) { fputs(generate_usage, f); }

/* ---------------------------------------------------------------- tokenizer */

typedef struct tok_ctx {
    const char *model_dir;
    tokenizer *tokenizer;  /* loaded for a text prompt (NULL with --ids) */
    int32_t end_of_turn;   /* the chat format's end-of-turn token, or -1 */
} tok_ctx;

/* Text -> token ids in *ids (malloc'd, caller frees), *n of them. With `chat`
 * the text is one user message rendered with the chat format the tokenizer's
 * tokenizer_config.json names (chatml, llama3, else plain) and its generation
 * prompt. Special-token strings become their ids; no BOS is added beyond what
 * the template writes. */
static tidal_status encode_prompt(tok_ctx *tc, const char *text, bool chat, int32_t **ids, int *n)
{
    *ids = NULL;
    *n = 0;
    TRY_WRAP(tokenizer_load(tc->model_dir, &tc->tokenizer), "generate: text prompts need the model's tokenizer");
    tidal_status st = TIDAL_OK;
    char *rendered = NULL;
    tok_ids out = {0};
    size_t len = strlen(text);
    if (chat) {
        chat_format f = CHAT_PLAIN;
        const char *tmpl = tokenizer_chat_template(tc->tokenizer);
        if (!tmpl || chat_format_detect(tmpl, &f) != TIDAL_OK) f = CHAT_PLAIN; /* unknown template: plain */
        chat_message msg = {.role = "user", .content = text};
        TRY_GOTO(chat_render(f, &msg, 1, true, &rendered, &len));
        text = rendered;
        tc->end_of_turn = tokenizer_token_id(tc->tokenizer, chat_end_of_turn(f));
    }
    TRY_GOTO(tokenizer_encode(tc->tokenizer, text, len, false, &out));
    if (out.n == 0 || out.n > (size_t)INT32_MAX) {
        st = tidal_fail(TIDAL_ERR_INVALID, "generate: the prompt encodes to %zu tokens", out.n);
        goto cleanup;
    }
    *ids = out.ids;
    *n = (int)out.n;
    out.ids = NULL;
cleanup:
    free(rendered);
    tok_ids_free(&out);
    return st;
}

/* A token's bytes (engine_token_bytes_fn): for streaming and stop strings. */
static const char *token_bytes(void *ctx, int32_t id, size_t *len)
{
    tok_ctx *tc = ctx;
    return tokenizer_token_bytes(tc->tokenizer, id, len);
}

static void tok_release(tok_ctx *tc)
{
    tokenizer_free(tc->tokenizer);
    tc->tokenizer = NULL;
}

/* ---------------------------------------------------------------- streaming */

typedef struct stream {
    tok_ctx *tc;
    bool text;        /* print bytes (else id lines) */
} stream;

static void on_token(void *ctx, const engine_token_event *ev)
{
    stream *st = ctx;
    if (st->text) {
        size_t len = 0;
        const char *b = token_bytes(st->tc, ev->token, &len);
        if (b && len) fwrite(b, 1, len, stdout);
    } else {
        printf("%d %.6f%s\n", ev->token, (double)ev->logprob, ev->truncated ? " T" : "");
    }
    fflush(stdout);
}

/* "1 2, 3" -> ids; TIDAL_ERR_INVALID naming the bad piece. */
static tidal_status parse_ids(const char *s, int V, int32_t **ids, int *n)
{
    int cap = 16, k = 0;
    int32_t *a = malloc((size_t)cap * sizeof *a);
    if (!a) return tidal_fail(TIDAL_ERR_NOMEM, "generate: out of memory");
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= V) {
            free(a);
            return tidal_fail(TIDAL_ERR_INVALID, "generate: --ids: \"%.20s\" is not a token id in [0, %d)", p, V);
        }
        if (k == cap) {
            int32_t *b = realloc(a, (size_t)(cap *= 2) * sizeof *a);
            if (!b) {
                free(a);
                return tidal_fail(TIDAL_ERR_NOMEM, "generate: out of memory");
            }
            a = b;
        }
        a[k++] = (int32_t)v;
        p = end;
    }
    if (k == 0) {
        free(a);
        return tidal_fail(TIDAL_ERR_INVALID, "generate: --ids holds no token id");
    }
    *ids = a;
    *n = k;
    return TIDAL_OK;
}

static bool parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* A decimal integer in [lo, hi]. */
static bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

#define GEN_CONFIG_STOPS 8 /* eos ids read from generation_config.json, at most */

/* generation_config.json's eos_token_id (an id or a list of ids) in DIR,
 * appended to stop[*n] (room for GEN_CONFIG_STOPS more): what transformers
 * stops at too - a checkpoint of a job lists the chat format's end of turn
 * there. No file: nothing; a malformed one: TIDAL_ERR_INVALID naming it. */
static tidal_status generation_config_stops(const char *dir, int32_t *stop, int *n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return TIDAL_OK;
    json_error_t e;
    json_t *o = json_loadf(f, 0, &e);
    fclose(f);
    if (!json_is_object(o)) {
        const bool parsed = o != NULL;
        json_decref(o);
        return parsed ? tidal_fail(TIDAL_ERR_INVALID, "generate: %s: not a JSON object", path)
                      : tidal_fail(TIDAL_ERR_INVALID, "generate: %s: line %d: %s", path, e.line, e.text);
    }
    json_t *eos = json_object_get(o, "eos_token_id"), *one = json_array();
    if (json_is_integer(eos)) json_array_append(one, eos);
    json_t *list = json_is_array(eos) ? eos : one;
    tidal_status st = TIDAL_OK;
    for (size_t i = 0; i < json_array_size(list) && st == TIDAL_OK; i++) {
        json_t *v = json_array_get(list, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX || i >= GEN_CONFIG_STOPS)
            st = tidal_fail(TIDAL_ERR_INVALID, "generate: %s: eos_token_id[%zu] is not a token id (or more than %d)",
                            path, i, GEN_CONFIG_STOPS);
        else stop[(*n)++] = (int32_t)json_integer_value(v);
    }
    if (st == TIDAL_OK && eos && !json_is_null(eos) && !json_is_integer(eos) && !json_is_array(eos))
        st = tidal_fail(TIDAL_ERR_INVALID, "generate: %s: eos_token_id must be an id or a list of ids", path);
    json_decref(one);
    json_decref(o);
    return st;
}

int generate_main(int argc, char **argv)
{
    const char *dir = NULL, *prompt = NULL, *ids_arg = NULL;
    bool chat = false;
    double temperature = 1.0, top_p = 1.0, min_p = 0.0;
    long long x = 0;
    int top_k = 0, max_tokens = 256, threads = 0, n_stop = 0;
    uint64_t seed = 0;
    int32_t stop_ids[34 + GEN_CONFIG_STOPS]; /* 32 from --stop-id, eos, end of turn, generation_config.json's */
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"ids", required_argument, 0, 'i'},
                                         {"chat", no_argument, 0, 'c'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"top-k", required_argument, 0, 'k'},
                                         {"min-p", required_argument, 0, 'M'},
                                         {"max-tokens", required_argument, 0, 'n'},
                                         {"seed", required_argument, 0, 's'},
                                         {"stop-id", required_argument, 0, 'S'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    int li = -1;
    for (int c; (c = getopt_long(argc, argv, "m:p:i:ct:P:k:M:n:s:S:j:h", opts, &li)) != -1; li = -1) {
        bool ok = true;
        switch (c) {
        case 'm': dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'i': ids_arg = optarg; break;
        case 'c': chat = true; break;
        case 't': ok = parse_num(optarg, 0, 1e6, &temperature); break;
        case 'P': ok = parse_num(optarg, 0, 1, &top_p); break;
        case 'M': ok = parse_num(optarg, 0, 1, &min_p); break;
        case 'k': if ((ok = parse_int(optarg, 0, 1 << 30, &x))) top_k = (int)x; break;
        case 'n': if ((ok = parse_int(optarg, 1, 1 << 30, &x))) max_tokens = (int)x; break;
        case 's': if ((ok = parse_int(optarg, 0, INT64_MAX, &x))) seed = (uint64_t)x; break;
        case 'S': if ((ok = n_stop < 32 && parse_int(optarg, 0, 1 << 30, &x))) stop_ids[n_stop++] = (int32_t)x; break;
        case 'j': if ((ok = parse_int(optarg, 0, 4096, &x))) threads = (int)x; break;
        case 'h': usage(stdout); return 0;
        default: ok = false;
        }
        if (!ok) {
            if (c != '?' && li >= 0) fprintf(stderr, "tidal generate: bad value for --%s: %s\n", opts[li].name, optarg);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !dir || (!prompt == !ids_arg) || (chat && !prompt)) {
        fprintf(stderr, "tidal generate: need --model and exactly one of --prompt or --ids (--chat goes with --prompt)\n");
        usage(stderr);
        return 2;
    }
    cpu_set_threads(threads);

    model *m = NULL;
    engine *e = NULL;
    engine_result *r = NULL;
    int32_t *ids = NULL;
    int n_ids = 0, rc = 1;
    tok_ctx tc = {.model_dir = dir, .end_of_turn = -1};
    /* exit 2 for bad input (the model directory, --ids, the request), 1 for other failures */
    tidal_status st = model_load(dir, &m);
    if (st != TIDAL_OK) {
        rc = 2; /* a bad model directory is bad input */
        goto cleanup;
    }
    const model_config *cfg = model_cfg(m);
    if (ids_arg) {
        st = parse_ids(ids_arg, cfg->vocab_size, &ids, &n_ids);
        if (st != TIDAL_OK) {
            rc = 2;
            goto cleanup;
        }
    } else {
        st = encode_prompt(&tc, prompt, chat, &ids, &n_ids);
        if (st != TIDAL_OK) { /* no tokenizer, or a text it refuses: bad input */
            rc = st == TIDAL_ERR_INVALID || st == TIDAL_ERR_NOT_FOUND ? 2 : 1;
            goto cleanup;
        }
    }
    if (cfg->eos_token_id >= 0 && n_stop < 34) stop_ids[n_stop++] = cfg->eos_token_id;
    if (tc.end_of_turn >= 0 && n_stop < 34) stop_ids[n_stop++] = tc.end_of_turn;
    st = generation_config_stops(dir, stop_ids, &n_stop);
    if (st != TIDAL_OK) {
        rc = 2;
        goto cleanup;
    }
    for (int i = 0; i < n_stop; i++)
        if (stop_ids[i] >= cfg->vocab_size) {
            st = tidal_fail(TIDAL_ERR_INVALID, "generate: --stop-id %d is not below the vocabulary size %d", stop_ids[i],
                            cfg->vocab_size);
            rc = 2;
            goto cleanup;
        }
    if (n_ids >= cfg->max_position_embeddings) {
        st = tidal_fail(TIDAL_ERR_INVALID, "generate: the prompt has %d tokens, the model takes %d", n_ids,
                        cfg->max_position_embeddings);
        rc = 2;
        goto cleanup;
    }
    long max_len = (long)n_ids + max_tokens;
    if (max_len > cfg->max_position_embeddings) max_len = cfg->max_position_embeddings;

    stream sm = {.tc = &tc, .text = prompt != NULL};
    engine_options o = {.slots = 1, .max_len = (int)max_len, .on_token = on_token, .on_token_ctx = &sm,
                        .token_bytes = tc.tokenizer ? token_bytes : NULL, .token_bytes_ctx = &tc};
    TRY_GOTO(engine_create(m, 0, &o, &e));
    engine_request rq = {.prompt = ids, .prompt_len = n_ids, .max_new_tokens = max_tokens, .stop_ids = stop_ids,
                         .n_stop_ids = n_stop,
                         .sampling = {.temperature = (float)temperature, .top_p = (float)top_p, .top_k = top_k,
                                      .min_p = (float)min_p, .seed = seed}};
    st = engine_submit(e, &rq, NULL);
    if (st != TIDAL_OK) {
        rc = 2;
        goto cleanup;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (engine_busy(e)) TRY_GOTO(engine_step(e));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r = engine_next_result(e);
    if (sm.text) putchar('\n');
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    fprintf(stderr, "[%s: %d prompt tokens, %d generated in %.2f s, %.1f tokens/s]\n",
            r ? engine_finish_name(r->finish) : "?", n_ids, r ? r->n : 0, secs, r && secs > 0 ? r->n / secs : 0.0);
    rc = 0;
cleanup:
    if (rc) fprintf(stderr, "tidal generate: %s\n", tidal_errmsg());
    engine_result_free(r);
    engine_free(e);
    model_free(m);
    tok_release(&tc);
    free(ids);
    return rc;
}
