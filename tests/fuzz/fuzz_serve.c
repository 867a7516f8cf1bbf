/* fuzz_serve.c - libFuzzer target for the request parser of `tidal serve`
 * (serve/api.c): every request body is input from the network.
 *
 * The input's first byte picks the dialect (completions, chat, generate) and
 * the rest is the body. Checked on every input: serve_parse returns OK or
 * TIDAL_ERR_INVALID (never a crash, a leak or another status); on OK the
 * request keeps its limits (prompts, n, token ids, max_tokens), and every
 * response body built from it - whole, and as stream chunks - is valid JSON,
 * whatever bytes the samples' texts hold.
 *
 * Seeds: tests/fuzz/seeds/fuzz_serve/ (requests of each dialect, written by hand).
 * Run by hand: fuzz_serve -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_serve
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"

static void must_be_json(char *body)
{
    if (!body) abort();
    json_t *v = json_loads(body, JSON_ALLOW_NUL, NULL); /* "\u0000" is valid JSON */
    if (!v) abort();
    json_decref(v);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const serve_dialect d = (serve_dialect)(data[0] % 3);
    const serve_limits lim = {.vocab = 300, .max_n = 8, .max_sequences = 16, .max_tokens = 64};
    serve_request r;
    char param[64];
    tidal_status st = serve_parse(d, (const char *)data + 1, size - 1, &lim, &r, param, sizeof param);
    if (st != TIDAL_OK) {
        if (st != TIDAL_ERR_INVALID) abort();
        must_be_json(serve_error_body(400, tidal_errmsg(), param));
        return 0;
    }
    if (r.n < 1 || r.n > lim.max_n || r.max_tokens < 1 || r.max_tokens > lim.max_tokens) abort();
    if (d != SERVE_CHAT && (r.n_prompts < 1 || r.n_prompts * r.n > lim.max_sequences)) abort();
    if (d == SERVE_CHAT && r.n_messages < 1) abort();
    for (int i = 0; i < r.n_prompts; i++) {
        if (!r.prompts[i].ids == !r.prompts[i].text) abort();
        for (int k = 0; k < r.prompts[i].n; k++)
            if (r.prompts[i].ids[k] < 0 || r.prompts[i].ids[k] >= lim.vocab) abort();
    }
    /* samples whose texts are the body's own bytes: invalid UTF-8 and NULs included */
    const int n = (r.n_prompts ? r.n_prompts : 1) * r.n;
    serve_sample *s = calloc((size_t)n, sizeof *s);
    int32_t ids[4] = {1, 2, 3, 299};
    float lps[4] = {-0.5f, -1.0f, 0.0f, -9999.0f};
    const char *tt[4];
    size_t tl[4];
    for (int k = 0; k < 4; k++) {
        tt[k] = (const char *)data + (size > (size_t)k ? (size_t)k : 0);
        tl[k] = size > (size_t)k + 3 ? 3 : 0;
    }
    for (int i = 0; s && i < n; i++)
        s[i] = (serve_sample){.prompt_index = i / r.n, .sample_index = i % r.n, .ids = ids, .logprobs = lps, .n = 4,
                              .prompt_tokens = 5, .text = (const char *)data, .text_len = size, .token_texts = tt,
                              .token_text_lens = tl, .finish = i % 2 ? "stop" : "length",
                              .matched_stop = r.n_stop ? r.stop[0] : NULL, .matched_id = r.n_stop ? -1 : 3,
                              .weight_version = "0"};
    if (s) {
        if (d == SERVE_COMPLETIONS) must_be_json(serve_completions_body(&r, s, n, "cmpl-1", 1, "m"));
        else if (d == SERVE_CHAT) must_be_json(serve_chat_body(&r, s, n, "chatcmpl-1", 1, "m"));
        else must_be_json(serve_generate_body(&r, s, n, "g"));
        must_be_json(serve_chunk(&r, &s[0], size / 2, 2, true, false, "c", 1, "m"));
        must_be_json(serve_chunk(&r, &s[n - 1], size, 4, false, true, "c", 1, "m"));
    }
    char *msg = malloc(size + 1); /* an error message holding the body's bytes */
    if (msg) {
        memcpy(msg, data, size);
        msg[size] = '\0';
        must_be_json(serve_error_body(400, msg, param));
        free(msg);
    }
    free(s);
    serve_request_clear(&r);
    return 0;
}
