/* test_config.c - Hugging Face config.json for Qwen2 / Llama (model/config.h):
 * the real Qwen2.5-0.5B and Llama-3.2-1B files (the latter refused for its
 * llama3 RoPE scaling, accepted with rope_scaling null), rope_theta where
 * newer files put it, defaults for absent fields, every refusal rule with a
 * message naming the field, save -> parse round trips, and parameter counts
 * against the published figures.
 *
 * Variants are made by editing the base files with jansson (set or delete
 * one key), so each rule is tested on an otherwise realistic config.
 *
 * With TIDAL_FUZZ_SEEDS_OUT=DIR set it writes the seeds of
 * tests/fuzz/fuzz_config.c instead (that is how tests/fuzz/seeds/fuzz_config/
 * was made).
 */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model/config.h"

/* Qwen/Qwen2.5-0.5B-Instruct's config.json. */
static const char qwen25_05b[] =
    "{\n"
    "  \"architectures\": [\n"
    "    \"Qwen2ForCausalLM\"\n"
    "  ],\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 151643,\n"
    "  \"eos_token_id\": 151645,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 896,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 4864,\n"
    "  \"max_position_embeddings\": 32768,\n"
    "  \"max_window_layers\": 21,\n"
    "  \"model_type\": \"qwen2\",\n"
    "  \"num_attention_heads\": 14,\n"
    "  \"num_hidden_layers\": 24,\n"
    "  \"num_key_value_heads\": 2,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": null,\n"
    "  \"rope_theta\": 1000000.0,\n"
    "  \"sliding_window\": 32768,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.43.1\",\n"
    "  \"use_cache\": true,\n"
    "  \"use_sliding_window\": false,\n"
    "  \"vocab_size\": 151936\n"
    "}\n";

/* meta-llama/Llama-3.2-1B's config.json: llama3 RoPE scaling. */
static const char llama32_1b[] =
    "{\n"
    "  \"architectures\": [\"LlamaForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 128000,\n"
    "  \"eos_token_id\": [128001, 128008, 128009],\n"
    "  \"head_dim\": 64,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 2048,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 8192,\n"
    "  \"max_position_embeddings\": 131072,\n"
    "  \"mlp_bias\": false,\n"
    "  \"model_type\": \"llama\",\n"
    "  \"num_attention_heads\": 32,\n"
    "  \"num_hidden_layers\": 16,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"pretraining_tp\": 1,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_scaling\": {\n"
    "    \"factor\": 32.0,\n"
    "    \"high_freq_factor\": 4.0,\n"
    "    \"low_freq_factor\": 1.0,\n"
    "    \"original_max_position_embeddings\": 8192,\n"
    "    \"rope_type\": \"llama3\"\n"
    "  },\n"
    "  \"rope_theta\": 500000.0,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.45.0.dev0\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 128256\n"
    "}\n";

/* A newer (transformers v5 style) file: rope_theta only in rope_parameters. */
static const char llama_rope_params[] =
    "{\"model_type\": \"llama\", \"vocab_size\": 32000, \"hidden_size\": 256, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"intermediate_size\": 688,"
    " \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-05,"
    " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 250000.0},"
    " \"dtype\": \"float32\", \"tie_word_embeddings\": false}";

/* Only the required fields of a llama: everything else defaults. */
static const char llama_minimal[] =
    "{\"model_type\":\"llama\",\"vocab_size\":1000,\"hidden_size\":64,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"intermediate_size\":128,\"max_position_embeddings\":512}";

/* ---------------------------------------------------------------- helpers */

/* base with key set to the JSON text `value`, or deleted when value is NULL;
 * nested keys as "outer.inner". A malloc'ed string. */
static char *variant(const char *base, const char *key, const char *value)
{
    json_error_t e;
    json_t *root = json_loads(base, 0, &e);
    if (!root) abort();
    json_t *obj = root;
    char k[128];
    snprintf(k, sizeof k, "%s", key);
    char *dot = strchr(k, '.');
    if (dot) {
        *dot = '\0';
        obj = json_object_get(root, k);
        if (!json_is_object(obj)) abort();
        memmove(k, dot + 1, strlen(dot + 1) + 1);
    }
    if (value) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, &e);
        if (!v) { fprintf(stderr, "bad test value %s: %s\n", value, e.text); abort(); }
        json_object_set_new(obj, k, v);
    } else {
        json_object_del(obj, k);
    }
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!s) abort();
    return s;
}

static tidal_status parse(const char *json, model_config *c)
{
    return model_config_parse(json, strlen(json), "m/config.json", c);
}

/* True when base with `key` = `value` (NULL: deleted) is refused with
 * TIDAL_ERR_INVALID and a message containing `want`. */
static bool refused(const char *base, const char *key, const char *value, const char *want)
{
    char *json = variant(base, key, value);
    model_config c;
    tidal_status st = parse(json, &c);
    free(json);
    bool ok = st == TIDAL_ERR_INVALID && strstr(tidal_errmsg(), want);
    if (!ok)
        fprintf(stderr, "  %s = %s: got %s (%s), want invalid with \"%s\"\n", key, value ? value : "(deleted)",
                tidal_status_name(st), tidal_errmsg(), want);
    return ok;
}

/* True when the variant parses; *c holds the result. */
static bool accepted(const char *base, const char *key, const char *value, model_config *c)
{
    char *json = variant(base, key, value);
    tidal_status st = parse(json, c);
    free(json);
    if (st != TIDAL_OK)
        fprintf(stderr, "  %s = %s: %s (%s)\n", key, value ? value : "(deleted)", tidal_status_name(st),
                tidal_errmsg());
    return st == TIDAL_OK;
}

static bool same_config(const model_config *a, const model_config *b)
{
    return a->type == b->type && a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->num_layers == b->num_layers && a->num_heads == b->num_heads &&
           a->num_kv_heads == b->num_kv_heads && a->head_dim == b->head_dim &&
           a->intermediate_size == b->intermediate_size &&
           a->max_position_embeddings == b->max_position_embeddings && a->rope_theta == b->rope_theta &&
           a->rms_norm_eps == b->rms_norm_eps && a->tie_word_embeddings == b->tie_word_embeddings &&
           a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias && a->bos_token_id == b->bos_token_id &&
           a->eos_token_id == b->eos_token_id;
}

static bool make_tmp(char *dir, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, cap, "%s/tidal-cfg-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(dir) != NULL;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 16);
    size_t n = buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
    fclose(f);
    if (buf && n == 0) { free(buf); buf = NULL; }
    return buf;
}

/* ---------------------------------------------------------------- real files */

static void test_qwen25_05b(void)
{
    model_config c;
    CHECK_OK(parse(qwen25_05b, &c));
    CHECK(c.type == MODEL_QWEN2);
    CHECK(c.vocab_size == 151936 && c.hidden_size == 896 && c.num_layers == 24);
    CHECK(c.num_heads == 14 && c.num_kv_heads == 2 && c.head_dim == 64);
    CHECK(c.intermediate_size == 4864 && c.max_position_embeddings == 32768);
    CHECK(c.rope_theta == 1000000.0 && c.rms_norm_eps == 1e-6);
    CHECK(c.tie_word_embeddings && c.qkv_bias && !c.o_bias);
    CHECK(c.bos_token_id == 151643 && c.eos_token_id == 151645);
    /* the published count: 494,032,768 with the embeddings tied */
    CHECK_MSG(model_config_num_params(&c) == 494032768u, "%zu", model_config_num_params(&c));
    /* untied, the lm_head adds vocab x hidden */
    c.tie_word_embeddings = false;
    CHECK(model_config_num_params(&c) == 494032768u + 151936u * 896u);
}

static void test_llama32_1b(void)
{
    model_config c;
    /* as published: llama3 RoPE scaling, which tidal does not implement */
    CHECK_STATUS(parse(llama32_1b, &c), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "m/config.json: rope_scaling: rope_type \"llama3\" is not supported"),
              "%s", tidal_errmsg());
    /* the same with rope_scaling null is the plain model */
    CHECK(accepted(llama32_1b, "rope_scaling", "null", &c));
    CHECK(c.type == MODEL_LLAMA && c.vocab_size == 128256 && c.hidden_size == 2048 && c.num_layers == 16);
    CHECK(c.num_heads == 32 && c.num_kv_heads == 8 && c.head_dim == 64 && c.intermediate_size == 8192);
    CHECK(c.max_position_embeddings == 131072 && c.rope_theta == 500000.0 && c.rms_norm_eps == 1e-5);
    CHECK(c.tie_word_embeddings && !c.qkv_bias && !c.o_bias);
    CHECK(c.bos_token_id == 128000 && c.eos_token_id == 128001); /* the first of the list */
    /* the published count: 1,235,814,400 */
    CHECK_MSG(model_config_num_params(&c) == 1235814400u, "%zu", model_config_num_params(&c));
    /* rope_scaling deleted, or rope_type "default" (or the older "type"), is the same model */
    model_config d;
    CHECK(accepted(llama32_1b, "rope_scaling", NULL, &d) && same_config(&c, &d));
    CHECK(accepted(llama32_1b, "rope_scaling", "{\"rope_type\": \"default\"}", &d) && same_config(&c, &d));
    CHECK(accepted(llama32_1b, "rope_scaling", "{\"type\": \"default\", \"rope_theta\": 500000}", &d) &&
          same_config(&c, &d));
}

static void test_rope_parameters(void)
{
    model_config c;
    CHECK_OK(parse(llama_rope_params, &c));
    CHECK(c.rope_theta == 250000.0 && c.head_dim == 32 && c.num_kv_heads == 4 && !c.tie_word_embeddings);
    /* the same value at the top level too is fine; a different one is not */
    CHECK(accepted(llama_rope_params, "rope_theta", "250000", &c) && c.rope_theta == 250000.0);
    CHECK(refused(llama_rope_params, "rope_theta", "10000.0", "rope_theta: the top level gives 10000 but rope_parameters gives 250000"));
    /* inside rope_scaling (some files put it there) */
    char *moved = variant(qwen25_05b, "rope_theta", NULL);
    CHECK(refused(moved, "rope_theta", NULL, "rope_theta: missing (required for qwen2"));
    CHECK(accepted(moved, "rope_scaling", "{\"rope_type\": \"default\", \"rope_theta\": 1000000.0}", &c));
    free(moved);
    CHECK(c.rope_theta == 1e6);
    /* a scaled rope_parameters is refused like rope_scaling */
    CHECK(refused(llama_rope_params, "rope_parameters",
                  "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"rope_theta\": 10000.0}",
                  "m/config.json: rope_parameters: rope_type \"yarn\" is not supported"));
    CHECK(refused(llama_rope_params, "rope_parameters.partial_rotary_factor", "0.5",
                  "rope_parameters: partial_rotary_factor 0.5 is not supported"));
    CHECK(refused(llama_rope_params, "rope_parameters.rope_theta", "\"big\"",
                  "rope_parameters.rope_theta: must be a number, not a string"));
    CHECK(refused(llama_rope_params, "rope_parameters.rope_theta", "-1", "rope_theta: -1 must be a positive finite number"));
}

static void test_defaults(void)
{
    model_config c;
    CHECK_OK(parse(llama_minimal, &c));
    CHECK(c.type == MODEL_LLAMA && c.num_kv_heads == 4 && c.head_dim == 16);
    CHECK(c.rope_theta == 10000.0 && c.rms_norm_eps == 1e-6 && !c.tie_word_embeddings);
    CHECK(!c.qkv_bias && !c.o_bias && c.bos_token_id == -1 && c.eos_token_id == -1);
    /* llama attention_bias biases q, k, v and o */
    CHECK(accepted(llama_minimal, "attention_bias", "true", &c) && c.qkv_bias && c.o_bias);
    /* qwen2 ignores attention_bias: q/k/v biased, o never */
    CHECK(accepted(qwen25_05b, "attention_bias", "false", &c) && c.qkv_bias && !c.o_bias);
    /* null reads as absent */
    CHECK(accepted(qwen25_05b, "num_key_value_heads", "null", &c) && c.num_kv_heads == 14);
    CHECK(accepted(qwen25_05b, "head_dim", "null", &c) && c.head_dim == 64);
    CHECK(accepted(qwen25_05b, "bos_token_id", "null", &c) && c.bos_token_id == -1);
    CHECK(accepted(qwen25_05b, "eos_token_id", "[]", &c) && c.eos_token_id == -1);
    CHECK(accepted(qwen25_05b, "hidden_act", NULL, &c));
    CHECK(accepted(qwen25_05b, "rms_norm_eps", NULL, &c) && c.rms_norm_eps == 1e-6);
    CHECK(accepted(qwen25_05b, "tie_word_embeddings", NULL, &c) && !c.tie_word_embeddings);
    CHECK(accepted(qwen25_05b, "use_sliding_window", NULL, &c));
    /* an explicit head_dim need not be hidden / heads */
    CHECK(accepted(qwen25_05b, "head_dim", "128", &c) && c.head_dim == 128);
    /* integer-valued numbers for reals */
    CHECK(accepted(qwen25_05b, "rope_theta", "10000", &c) && c.rope_theta == 10000.0);
    /* every layer full attention is fine */
    char layers[24 * 20 + 8] = "[";
    for (int i = 0; i < 24; i++) strcat(layers, i ? ",\"full_attention\"" : "\"full_attention\"");
    strcat(layers, "]");
    CHECK(accepted(qwen25_05b, "layer_types", layers, &c));
    /* unknown keys are ignored */
    CHECK(accepted(qwen25_05b, "quantization_config_x", "{\"anything\": [1, 2]}", &c));
}

/* ---------------------------------------------------------------- refusals */

static void test_types_and_ranges(void)
{
    const char *q = qwen25_05b;
    CHECK(refused(q, "hidden_size", "\"896\"", "m/config.json: hidden_size: must be an integer, not a string (\"896\")"));
    CHECK(refused(q, "hidden_size", "896.0", "hidden_size: must be an integer, not a real number"));
    CHECK(refused(q, "hidden_size", "0", "hidden_size: 0 must be >= 1"));
    CHECK(refused(q, "num_hidden_layers", "-24", "num_hidden_layers: -24 must be >= 1"));
    CHECK(refused(q, "vocab_size", "4294967296", "vocab_size: 4294967296 is too large"));
    CHECK(refused(q, "vocab_size", "33554432", "vocab_size: 33554432 is larger than tidal allows"));
    CHECK(refused(q, "vocab_size", NULL, "vocab_size: missing (required)"));
    CHECK(refused(q, "hidden_size", NULL, "hidden_size: missing (required)"));
    CHECK(refused(q, "num_hidden_layers", NULL, "num_hidden_layers: missing (required)"));
    CHECK(refused(q, "num_attention_heads", NULL, "num_attention_heads: missing (required)"));
    CHECK(refused(q, "intermediate_size", NULL, "intermediate_size: missing (required)"));
    CHECK(refused(q, "max_position_embeddings", NULL, "max_position_embeddings: missing (required)"));
    CHECK(refused(q, "num_key_value_heads", "3", "num_key_value_heads: 3 does not divide num_attention_heads = 14"));
    CHECK(refused(q, "num_key_value_heads", "0", "num_key_value_heads: 0 must be >= 1"));
    CHECK(refused(q, "num_attention_heads", "15", "hidden_size: 896 is not a multiple of num_attention_heads = 15"));
    CHECK(refused(q, "head_dim", "63", "head_dim: 63 is odd"));
    CHECK(refused(q, "head_dim", "\"64\"", "head_dim: must be an integer"));
    CHECK(refused(q, "rope_theta", "0", "rope_theta: 0 must be a positive finite number"));
    CHECK(refused(q, "rope_theta", "-10000.0", "rope_theta: -10000 must be a positive finite number"));
    CHECK(refused(q, "rope_theta", "\"1e6\"", "rope_theta: must be a number, not a string"));
    CHECK(refused(q, "rms_norm_eps", "0", "rms_norm_eps: 0 must be a positive finite number"));
    CHECK(refused(q, "rms_norm_eps", "-1e-6", "rms_norm_eps: -1e-06 must be a positive finite number"));
    CHECK(refused(q, "rms_norm_eps", "true", "rms_norm_eps: must be a number, not true"));
    CHECK(refused(q, "tie_word_embeddings", "\"true\"", "tie_word_embeddings: must be true or false, not a string"));
    CHECK(refused(q, "tie_word_embeddings", "1", "tie_word_embeddings: must be true or false, not an integer"));
    CHECK(refused(llama_minimal, "attention_bias", "0", "attention_bias: must be true or false"));
    CHECK(refused(q, "bos_token_id", "151936", "bos_token_id: 151936 is outside the vocabulary (vocab_size = 151936)"));
    CHECK(refused(q, "bos_token_id", "-1", "bos_token_id: must be a token id"));
    CHECK(refused(q, "eos_token_id", "[151645, \"x\"]", "eos_token_id: entry 1 must be a token id"));
    CHECK(refused(q, "eos_token_id", "\"<|im_end|>\"", "eos_token_id: must be a token id (an integer >= 0) or a list"));
    CHECK(refused(q, "eos_token_id", "[200000]", "eos_token_id: 200000 is outside the vocabulary"));
}

static void test_unsupported(void)
{
    const char *q = qwen25_05b, *l = llama32_1b;
    CHECK(refused(q, "model_type", "\"mistral\"", "m/config.json: model_type: \"mistral\" is not supported (qwen2 or llama)"));
    CHECK(refused(q, "model_type", "\"qwen2_moe\"", "model_type: \"qwen2_moe\" is not supported"));
    CHECK(refused(q, "model_type", NULL, "model_type: missing"));
    CHECK(refused(q, "model_type", "2", "model_type: must be a string, not an integer"));
    CHECK(refused(q, "hidden_act", "\"gelu\"", "hidden_act: a string (\"gelu\") is not supported (only \"silu\""));
    CHECK(refused(q, "use_sliding_window", "true", "use_sliding_window: true is not supported"));
    CHECK(refused(q, "use_sliding_window", "\"no\"", "use_sliding_window: must be true or false"));
    char *plain = variant(l, "rope_scaling", "null");
    CHECK(refused(plain, "mlp_bias", "true", "mlp_bias: true is not supported"));
    CHECK(refused(plain, "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}",
                  "rope_scaling: type \"linear\" is not supported"));
    CHECK(refused(plain, "rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2.0}",
                  "rope_scaling: type \"dynamic\" is not supported"));
    CHECK(refused(plain, "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}",
                  "rope_scaling: rope_type \"yarn\" is not supported"));
    CHECK(refused(plain, "rope_scaling", "{\"rope_type\": \"default\", \"type\": \"linear\"}",
                  "rope_scaling: type \"linear\" is not supported"));
    CHECK(refused(plain, "rope_scaling", "{\"factor\": 2.0}", "rope_scaling: has \"factor\" but no rope_type"));
    CHECK(refused(plain, "rope_scaling", "\"linear\"", "rope_scaling: must be an object or null, not a string"));
    CHECK(refused(plain, "rope_scaling", "{\"rope_type\": 3}", "rope_scaling: rope_type must be a string"));
    CHECK(refused(plain, "partial_rotary_factor", "0.5", "partial_rotary_factor: partial_rotary_factor 0.5 is not supported"));
    CHECK(refused(plain, "attention_dropout", "0.1", "attention_dropout: 0.1 is not supported"));
    free(plain);
    char layers[24 * 21 + 8] = "[";
    for (int i = 0; i < 24; i++) strcat(layers, i == 23 ? ",\"sliding_attention\"" : i ? ",\"full_attention\"" : "\"full_attention\"");
    strcat(layers, "]");
    CHECK(refused(q, "layer_types", layers, "layer_types: entry 23 is a string (\"sliding_attention\"); only \"full_attention\""));
    CHECK(refused(q, "layer_types", "[\"full_attention\"]", "layer_types: has 1 entries for num_hidden_layers = 24"));
}

static void test_bad_json(void)
{
    model_config c;
    CHECK_STATUS(model_config_parse("{\"model_type\": \"qwen2\",", 24, "x.json", &c), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "x.json: JSON at line 1"));
    const char dup[] = "{\"model_type\": \"qwen2\", \"hidden_size\": 896, \"hidden_size\": 1024}";
    CHECK_STATUS(model_config_parse(dup, strlen(dup), "x.json", &c), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "duplicate object key"));
    CHECK_STATUS(model_config_parse("[1]", 3, "x.json", &c), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "x.json: is an array, not a JSON object"));
    CHECK_STATUS(model_config_parse("", 0, "x.json", &c), TIDAL_ERR_INVALID);
    /* the length is honoured: no terminating NUL needed */
    char buf[sizeof qwen25_05b + 16];
    memcpy(buf, qwen25_05b, sizeof qwen25_05b - 1);
    memset(buf + sizeof qwen25_05b - 1, 'x', 17);
    CHECK_OK(model_config_parse(buf, sizeof qwen25_05b - 1, "x.json", &c));
}

static void test_validate(void)
{
    model_config c;
    CHECK_OK(parse(qwen25_05b, &c));
    CHECK_OK(model_config_validate(&c, "tiny"));
    model_config b = c;
    b.o_bias = true;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: attention_bias: qwen2 has q/k/v biases and no o_proj bias"));
    b = c;
    b.qkv_bias = false;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    b = c;
    b.type = MODEL_LLAMA;
    b.qkv_bias = true;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "llama biases all of q/k/v/o or none"));
    b = c;
    b.type = (model_type)0;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: model_type"));
    b = c;
    b.num_kv_heads = 0;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: num_key_value_heads: 0 must be positive"));
    b = c;
    b.rope_theta = NAN;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: rope_theta"));
    b = c;
    b.rms_norm_eps = INFINITY;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: rms_norm_eps"));
    b = c;
    b.eos_token_id = -2;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: eos_token_id"));
    b = c;
    b.num_heads = 4096;
    b.num_kv_heads = 2;
    b.head_dim = 4096;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "num_attention_heads x head_dim"));
    b = c;
    b.num_heads = 128; /* 128 query heads on one kv head: past the attention's group limit */
    b.num_kv_heads = 1;
    b.head_dim = 8;
    CHECK_STATUS(model_config_validate(&b, "tiny"), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tiny: num_key_value_heads") && strstr(tidal_errmsg(), "128 query heads per kv head"));
}

/* ---------------------------------------------------------------- save and load */

static void test_save_round_trip(void)
{
    char dir[256], path[320], tmp[330];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    model_config q, l, t, back;
    bool ok = parse(qwen25_05b, &q) == TIDAL_OK;
    char *plain = variant(llama32_1b, "rope_scaling", "null");
    ok = ok && parse(plain, &l) == TIDAL_OK;
    free(plain);
    /* a tiny model built in code: biased llama, odd numbers, no special tokens */
    t = (model_config){.type = MODEL_LLAMA, .vocab_size = 97, .hidden_size = 48, .num_layers = 3,
                       .num_heads = 6, .num_kv_heads = 3, .head_dim = 10, .intermediate_size = 136,
                       .max_position_embeddings = 256, .rope_theta = 12345.678, .rms_norm_eps = 3.3e-7,
                       .tie_word_embeddings = false, .qkv_bias = true, .o_bias = true,
                       .bos_token_id = -1, .eos_token_id = -1};
    const model_config *all[3] = {&q, &l, &t};
    for (int i = 0; ok && i < 3; i++) {
        tidal_status st = model_config_save(all[i], path, i == 0 ? "bfloat16" : "float32");
        ok = st == TIDAL_OK && model_config_load(path, &back) == TIDAL_OK && same_config(all[i], &back) &&
             access(tmp, F_OK) != 0;
        if (!ok) fprintf(stderr, "  config %d: %s\n", i, tidal_errmsg());
    }
    /* the file is what transformers writes: indented, sorted keys, plain numbers
     * (jansson may drop the exponent's leading zero: 1e-6 for Python's 1e-06) */
    char *text = ok ? slurp(path) : NULL;
    bool tiny_text = text && strstr(text, "\"architectures\": [\n    \"LlamaForCausalLM\"\n  ]") &&
                     strstr(text, "\"attention_bias\": true") && strstr(text, "\"mlp_bias\": false") &&
                     strstr(text, "\"bos_token_id\": null") && strstr(text, "\"rope_theta\": 12345.678") &&
                     (strstr(text, "\"rms_norm_eps\": 3.3e-07") || strstr(text, "\"rms_norm_eps\": 3.3e-7")) && strstr(text, "\"head_dim\": 10") &&
                     strstr(text, "\"hidden_act\": \"silu\"") && strstr(text, "\"use_cache\": true") &&
                     strstr(text, "\"torch_dtype\": \"float32\"") && !strstr(text, "use_sliding_window");
    if (text && !tiny_text) fprintf(stderr, "%s\n", text);
    free(text);
    ok = ok && model_config_save(&q, path, "bfloat16") == TIDAL_OK;
    text = ok ? slurp(path) : NULL;
    bool qwen_text = text && strstr(text, "\"Qwen2ForCausalLM\"") && strstr(text, "\"model_type\": \"qwen2\"") &&
                     strstr(text, "\"rope_theta\": 1000000.0") && (strstr(text, "\"rms_norm_eps\": 1e-06") || strstr(text, "\"rms_norm_eps\": 1e-6")) &&
                     strstr(text, "\"use_sliding_window\": false") && strstr(text, "\"tie_word_embeddings\": true") &&
                     strstr(text, "\"torch_dtype\": \"bfloat16\"") && strstr(text, "\"eos_token_id\": 151645") &&
                     strstr(text, "\"attention_dropout\": 0.0") && !strstr(text, "attention_bias");
    if (text && !qwen_text) fprintf(stderr, "%s\n", text);
    free(text);
    /* Python's json (what transformers uses) reads it */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); "
             "assert c[\"rope_theta\"]==1e6 and c[\"rms_norm_eps\"]==1e-6 and c[\"num_key_value_heads\"]==2' '%s'",
             path);
    int py = access("/usr/bin/python3", X_OK) == 0 ? system(cmd) : 0;

    /* refusals: invalid config, unknown dtype, unwritable place */
    tidal_status bad_cfg, bad_dtype, bad_dir;
    char m1[256], m2[256], m3[256];
    model_config b = q;
    b.num_kv_heads = 3;
    bad_cfg = model_config_save(&b, path, "float32");
    snprintf(m1, sizeof m1, "%s", tidal_errmsg());
    bad_dtype = model_config_save(&q, path, "int8");
    snprintf(m2, sizeof m2, "%s", tidal_errmsg());
    bad_dir = model_config_save(&q, "/nonexistent/tidal/config.json", "float32");
    snprintf(m3, sizeof m3, "%s", tidal_errmsg());
    unlink(path);
    rmdir(dir);
    CHECK(ok);
    CHECK(tiny_text);
    CHECK(qwen_text);
    CHECK_MSG(py == 0, "python3 could not read the saved config.json");
    CHECK(bad_cfg == TIDAL_ERR_INVALID && strstr(m1, "num_key_value_heads: 3 does not divide"));
    CHECK(bad_dtype == TIDAL_ERR_INVALID && strstr(m2, "torch_dtype: \"int8\" is not"));
    CHECK(bad_dir == TIDAL_ERR_IO && strstr(m3, "/nonexistent/tidal/config.json.tmp"));
}

static void test_load(void)
{
    model_config c;
    CHECK_STATUS(model_config_load("/nonexistent/tidal/config.json", &c), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "/nonexistent/tidal/config.json"));
    char dir[256], path[320];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    bool wrote = f && fputs(llama32_1b, f) >= 0;
    if (f) fclose(f);
    tidal_status st = model_config_load(path, &c);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    unlink(path);
    rmdir(dir);
    CHECK(wrote);
    /* errors start with the file's path */
    CHECK(st == TIDAL_ERR_INVALID && strstr(msg, "/config.json: rope_scaling: rope_type \"llama3\"") &&
          !strncmp(msg, dir, strlen(dir)));
}

/* ---------------------------------------------------------------- fuzz seeds */

static int write_seeds(const char *dir)
{
    char *plain = variant(llama32_1b, "rope_scaling", "null");
    const struct {
        const char *file, *text;
    } seeds[] = {
        {"qwen2.5-0.5b.json", qwen25_05b},
        {"llama-3.2-1b.json", llama32_1b},
        {"llama-3.2-1b-plain.json", plain},
        {"llama-rope-parameters.json", llama_rope_params},
        {"llama-minimal.json", llama_minimal},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, seeds[i].file);
        FILE *f = fopen(path, "wb");
        bool ok = f && fputs(seeds[i].text, f) >= 0;
        if (f && fclose(f) != 0) ok = false;
        if (!ok) { fprintf(stderr, "cannot write %s\n", path); rc = 1; }
    }
    free(plain);
    if (rc == 0) printf("wrote the fuzz_config seeds to %s\n", dir);
    return rc;
}

int main(void)
{
    const char *seeds = getenv("TIDAL_FUZZ_SEEDS_OUT");
    if (seeds) return write_seeds(seeds);

    RUN(test_qwen25_05b);
    RUN(test_llama32_1b);
    RUN(test_rope_parameters);
    RUN(test_defaults);
    RUN(test_types_and_ranges);
    RUN(test_unsupported);
    RUN(test_bad_json);
    RUN(test_validate);
    RUN(test_save_round_trip);
    RUN(test_load);
    return check_summary();
}
