/* tiny_model.h - a tiny random model tidal writes itself, with a byte-level
 * tokenizer.json (256 byte tokens, no merges, <|endoftext|> <|im_start|>
 * <|im_end|>) and a ChatML tokenizer_config.json, and the engine's greedy
 * answer on it: what the HTTP tests (test_serve, test_remote) serve and
 * compare against. Static functions: include it in one test file. */
#ifndef TIDAL_TESTS_TINY_MODEL_H
#define TIDAL_TESTS_TINY_MODEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "rollout/engine.h"
#include "serve/serve.h"

#define V 259 /* 256 bytes + <|endoftext|> <|im_start|> <|im_end|> */


/* GPT-2's byte-to-unicode character for byte b, as UTF-8. */
static void byte_char(int b, char out[4])
{
    int n = 0, cp = 0;
    for (int x = 0; x < 256; x++) {
        bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        int c = printable ? x : 256 + n++;
        if (x == b) cp = c;
    }
    if (cp < 0x80) out[0] = (char)cp, out[1] = 0;
    else out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void write_tokenizer(const char *dir)
{
    json_t *vocab = json_object();
    char c[4];
    for (int b = 0; b < 256; b++) {
        byte_char(b, c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    json_t *tj = json_pack("{s:s, s:[{s:i,s:s,s:b}, {s:i,s:s,s:b}, {s:i,s:s,s:b}], s:{s:s,s:b,s:b,s:b}, "
                           "s:{s:s,s:b,s:b,s:b}, s:{s:s,s:o,s:[]}}",
                           "version", "1.0", "added_tokens", "id", 256, "content", "<|endoftext|>", "special", 1, "id",
                           257, "content", "<|im_start|>", "special", 1, "id", 258, "content", "<|im_end|>", "special",
                           1, "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                           "use_regex", 0, "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                           "use_regex", 0, "model", "type", "BPE", "vocab", vocab, "merges");
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_dump_file(tj, path, JSON_COMPACT);
    json_decref(tj);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    write_text(path, "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{% for m in messages %}<|im_start|>{{ "
                     "m.role }}\\n{{ m.content }}<|im_end|>\\n{% endfor %}<|im_start|>assistant\\n\"}");
}

static model_config tiny_config(void)
{
    return (model_config){.type = MODEL_QWEN2, .vocab_size = V, .hidden_size = 16, .num_layers = 1, .num_heads = 2,
                          .num_kv_heads = 1, .head_dim = 8, .intermediate_size = 24,
                          .max_position_embeddings = 256, .rope_theta = 1e4, .rms_norm_eps = 1e-6,
                          .tie_word_embeddings = true, .qkv_bias = true, .bos_token_id = -1, .eos_token_id = 258};
}

static tidal_status write_model(const char *dir, uint64_t seed)
{
    model_config c = tiny_config();
    model *m = NULL;
    TRY(model_create(&c, &m));
    model_init_random(m, seed, 0.5f, true);
    tidal_status st = model_save(m, dir, ST_F32);
    model_free(m);
    write_tokenizer(dir);
    return st;
}

/* Greedy ids of the model in dir for prompt, by the engine in-process (stops at eos 258). */
static int greedy(const char *dir, const int32_t *prompt, int n, int max_new, int32_t *out)
{
    model *m = NULL;
    engine *e = NULL;
    int got = -1;
    if (model_load(dir, &m) != TIDAL_OK) return -1;
    engine_options o = {.slots = 1, .max_len = 256};
    int32_t stop = 258;
    engine_request rq = {.prompt = prompt, .prompt_len = n, .max_new_tokens = max_new, .stop_ids = &stop,
                         .n_stop_ids = 1};
    if (engine_create(m, 0, &o, &e) == TIDAL_OK && engine_submit(e, &rq, NULL) == TIDAL_OK) {
        while (engine_busy(e))
            if (engine_step(e) != TIDAL_OK) break;
        engine_result *r = engine_next_result(e);
        if (r) {
            memcpy(out, r->ids, (size_t)r->n * sizeof *out);
            got = r->n;
        }
        engine_result_free(r);
    }
    engine_free(e);
    model_free(m);
    return got;
}

/* Two tiny models in fresh directories PREFIX-XXXXXX and PREFIX2-XXXXXX
 * (seeds seed and seed + 1) and `tidal serve` on the first at a free port,
 * its base URL in url. 0, or 1 after saying why on stderr. */
static int tiny_models_serve(const char *prefix, uint64_t seed, char dir1[64], char dir2[64], serve_server **srv,
                             char *url, size_t cap)
{
    snprintf(dir1, 64, "%s-XXXXXX", prefix);
    snprintf(dir2, 64, "%s2-XXXXXX", prefix);
    if (!mkdtemp(dir1) || !mkdtemp(dir2) || write_model(dir1, seed) != TIDAL_OK || write_model(dir2, seed + 1) != TIDAL_OK) {
        fprintf(stderr, "cannot write the test models: %s\n", tidal_errmsg());
        return 1;
    }
    serve_opts o = {.model_dir = dir1, .port = 0, .slots = 4};
    if (serve_start(&o, srv) != TIDAL_OK) {
        fprintf(stderr, "serve_start: %s\n", tidal_errmsg());
        return 1;
    }
    snprintf(url, cap, "http://127.0.0.1:%d", serve_port(*srv));
    return 0;
}

/* Stop the server and remove both directories. */
static void tiny_models_stop(serve_server *srv, const char *dir1, const char *dir2)
{
    serve_stop(srv);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir1, dir2);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir1);
}

#endif
