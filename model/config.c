/* config.c - Hugging Face config.json <-> model_config for Qwen2 and Llama
 * (see config.h).
 *
 * Parsing is strict about what changes the model's function and lenient
 * about the rest: the fields below are type-checked and range-checked,
 * settings tidal cannot honour are refused, and every other key (HF configs
 * carry dozens: initializer_range, transformers_version, use_cache, ...) is
 * ignored. A JSON null counts as absent, as transformers treats None.
 *
 * Defaults for absent fields (transformers' Qwen2Config / LlamaConfig where
 * they agree with tidal's needs; "required" where a silent default would
 * likely be wrong):
 *   vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
 *   intermediate_size, max_position_embeddings   required (both types)
 *   num_key_value_heads   num_attention_heads (multi-head attention)
 *   head_dim              hidden_size / num_attention_heads, which must divide
 *   rope_theta            qwen2: required (every Qwen2 release sets it, most
 *                         to 1e6: assuming 1e4 would silently break them);
 *                         llama: 10000 (LlamaConfig's default, Llama 1)
 *   rms_norm_eps          1e-6 (both Qwen2Config and LlamaConfig)
 *   tie_word_embeddings   false (both)
 *   attention_bias        llama: false -> no q/k/v/o bias; qwen2 ignores the
 *                         key: q/k/v always biased, o_proj never
 *   hidden_act            "silu" (the only value accepted)
 *   bos_token_id, eos_token_id   -1 (absent); a list of eos ids -> the first
 *
 * Refused, naming the field: another model_type; hidden_act other than silu;
 * llama mlp_bias true; qwen2 use_sliding_window true; a layer_types entry
 * other than "full_attention"; rope_scaling / rope_parameters with a rope_type
 * other than "default" (linear, dynamic, yarn, llama3, ...) or scaling keys
 * without a rope_type; partial_rotary_factor != 1; attention_dropout != 0
 * (tidal trains without dropout); rope_theta given in two places with
 * different values.
 *
 * Every error is TIDAL_ERR_INVALID "<name>: <field>: <what>".
 */
#include "base/json.h"
#include "model/config.h"

#include "kernels/cpu/ops.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Upper bounds of validate: far above any released model (Llama 3 405B has
 * hidden 16384, ffn 53248, 126 layers, vocab 128256), low enough that every
 * product later code forms (vocab x hidden, layers x ffn x hidden, ...) fits
 * comfortably in int64. */
#define MAX_VOCAB (1 << 24)
#define MAX_WIDTH (1 << 20)   /* hidden_size, intermediate_size, heads x head_dim */
#define MAX_LAYERS 4096
#define MAX_HEADS 4096
#define MAX_HEAD_DIM 4096

/* An integer field in [lo, INT_MAX]; `def` when absent unless required. */
static tidal_status get_int(const char *name, const json_t *root, const char *key, bool required,
                            int def, int lo, int *out)
{
    json_t *v = jv_get(root, key);
    if (!v) {
        if (required) return jv_bad(name, key, "missing (required)");
        *out = def;
        return TIDAL_OK;
    }
    char d[96];
    if (!json_is_integer(v)) {
        jv_describe(v, d, sizeof d);
        return jv_bad(name, key, "must be an integer, not %s", d);
    }
    json_int_t x = json_integer_value(v);
    if (x < lo) return jv_bad(name, key, "%" JSON_INTEGER_FORMAT " must be >= %d", x, lo);
    if (x > INT_MAX) return jv_bad(name, key, "%" JSON_INTEGER_FORMAT " is too large", x);
    *out = (int)x;
    return TIDAL_OK;
}

/* A number field (integer or real). *found says whether it was there. */
static tidal_status get_num(const char *name, const json_t *obj, const char *key, const char *field,
                            double *out, bool *found)
{
    json_t *v = jv_get(obj, key);
    *found = v != NULL;
    if (!v) return TIDAL_OK;
    if (!json_is_number(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return jv_bad(name, field, "must be a number, not %s", d);
    }
    *out = json_number_value(v);
    return TIDAL_OK;
}

static tidal_status get_bool(const char *name, const json_t *root, const char *key, bool def, bool *out)
{
    json_t *v = jv_get(root, key);
    if (!v) { *out = def; return TIDAL_OK; }
    if (!json_is_boolean(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return jv_bad(name, key, "must be true or false, not %s", d);
    }
    *out = json_is_true(v);
    return TIDAL_OK;
}

/* bos_token_id / eos_token_id: an integer >= 0, or a list of them (the
 * first is kept), or absent / null / [] (-1). */
static tidal_status get_token_id(const char *name, const json_t *root, const char *key, int *out)
{
    json_t *v = jv_get(root, key);
    *out = -1;
    if (!v) return TIDAL_OK;
    char d[96];
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT_MAX) {
                jv_describe(e, d, sizeof d);
                return jv_bad(name, key, "entry %zu must be a token id (an integer >= 0), not %s", i, d);
            }
            if (i == 0) *out = (int)json_integer_value(e);
        }
        return TIDAL_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX) {
        jv_describe(v, d, sizeof d);
        return jv_bad(name, key, "must be a token id (an integer >= 0) or a list of them, not %s", d);
    }
    *out = (int)json_integer_value(v);
    return TIDAL_OK;
}

/* A rope object ("rope_scaling" or "rope_parameters"): rope_type (or the
 * older "type") must be "default"; without one, only rope_theta and
 * partial_rotary_factor may be there (anything else is a scaling setting
 * whose kind we cannot tell). Its rope_theta, if any, goes to *theta. */
static tidal_status check_rope_object(const char *name, const json_t *root, const char *field,
                                      double *theta, bool *has_theta, double *prf, bool *has_prf)
{
    json_t *v = jv_get(root, field);
    *has_theta = *has_prf = false;
    if (!v) return TIDAL_OK;
    char d[96], f[64];
    if (!json_is_object(v)) {
        jv_describe(v, d, sizeof d);
        return jv_bad(name, field, "must be an object or null, not %s", d);
    }
    bool typed = false;
    static const char *const type_keys[2] = {"rope_type", "type"};
    for (int i = 0; i < 2; i++) {
        json_t *t = jv_get(v, type_keys[i]);
        if (!t) continue;
        typed = true;
        if (!json_is_string(t)) {
            jv_describe(t, d, sizeof d);
            return jv_bad(name, field, "%s must be a string, not %s", type_keys[i], d);
        }
        if (strcmp(json_string_value(t), "default") != 0)
            return jv_bad(name, field, "%s \"%.40s\" is not supported: tidal implements plain RoPE only "
                       "(rope_type \"default\", or %s null)", type_keys[i], json_string_value(t), field);
    }
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        if (!typed && !json_is_null(x) && strcmp(key, "rope_theta") && strcmp(key, "partial_rotary_factor"))
            return jv_bad(name, field, "has \"%.40s\" but no rope_type: RoPE scaling is not supported "
                       "(only rope_type \"default\")", key);
    }
    snprintf(f, sizeof f, "%s.rope_theta", field);
    TRY(get_num(name, v, "rope_theta", f, theta, has_theta));
    snprintf(f, sizeof f, "%s.partial_rotary_factor", field);
    TRY(get_num(name, v, "partial_rotary_factor", f, prf, has_prf));
    return TIDAL_OK;
}

/* rope_theta from the top level, rope_parameters or rope_scaling (they must
 * agree where several give it); partial_rotary_factor wherever it is must be 1. */
static tidal_status parse_rope(const char *name, const json_t *root, model_config *c)
{
    static const char *const where[3] = {"rope_theta", "rope_parameters", "rope_scaling"};
    double theta = 0, value = 0, prf = 1;
    bool have = false, found = false, has_prf = false;
    const char *from = NULL;
    for (int i = 0; i < 3; i++) {
        if (i == 0) {
            TRY(get_num(name, root, "rope_theta", "rope_theta", &value, &found));
            TRY(get_num(name, root, "partial_rotary_factor", "partial_rotary_factor", &prf, &has_prf));
        } else {
            TRY(check_rope_object(name, root, where[i], &value, &found, &prf, &has_prf));
        }
        if (has_prf && prf != 1.0)
            return jv_bad(name, i == 0 ? "partial_rotary_factor" : where[i],
                       "partial_rotary_factor %g is not supported (RoPE on the whole head only)", prf);
        if (!found) continue;
        if (have && value != theta)
            return jv_bad(name, "rope_theta", "%s gives %g but %s gives %g", from, theta,
                       i == 0 ? "the top level" : where[i], value);
        if (!have) { theta = value; from = i == 0 ? "the top level" : where[i]; have = true; }
    }
    if (!have) {
        if (c->type == MODEL_QWEN2)
            return jv_bad(name, "rope_theta", "missing (required for qwen2; also looked in rope_parameters and rope_scaling)");
        theta = 10000.0;
    }
    c->rope_theta = theta;
    return TIDAL_OK;
}

/* The checks of settings that change what the model computes and that
 * tidal does not implement. */
static tidal_status refuse_unsupported(const char *name, const json_t *root, const model_config *c)
{
    char d[96];
    json_t *v = jv_get(root, "hidden_act");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)) {
        jv_describe(v, d, sizeof d);
        return jv_bad(name, "hidden_act", "%s is not supported (only \"silu\": SwiGLU)", d);
    }
    if (c->type == MODEL_LLAMA) {
        bool mlp_bias = false;
        TRY(get_bool(name, root, "mlp_bias", false, &mlp_bias));
        if (mlp_bias) return jv_bad(name, "mlp_bias", "true is not supported (gate/up/down without bias only)");
    } else {
        bool sliding = false;
        TRY(get_bool(name, root, "use_sliding_window", false, &sliding));
        if (sliding)
            return jv_bad(name, "use_sliding_window", "true is not supported (full causal attention only)");
    }
    v = jv_get(root, "layer_types");
    if (v) {
        if (!json_is_array(v)) {
            jv_describe(v, d, sizeof d);
            return jv_bad(name, "layer_types", "must be a list, not %s", d);
        }
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_string(e) || strcmp(json_string_value(e), "full_attention") != 0) {
                jv_describe(e, d, sizeof d);
                return jv_bad(name, "layer_types", "entry %zu is %s; only \"full_attention\" is supported", i, d);
            }
        }
        if (json_array_size(v) != (size_t)c->num_layers)
            return jv_bad(name, "layer_types", "has %zu entries for num_hidden_layers = %d", json_array_size(v),
                       c->num_layers);
    }
    double dropout = 0;
    bool found;
    TRY(get_num(name, root, "attention_dropout", "attention_dropout", &dropout, &found));
    if (found && dropout != 0.0)
        return jv_bad(name, "attention_dropout", "%g is not supported (tidal trains without dropout)", dropout);
    return TIDAL_OK;
}

static tidal_status parse_root(const char *name, const json_t *root, model_config *c)
{
    char d[96];
    if (!json_is_object(root)) {
        jv_describe(root, d, sizeof d);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: is %s, not a JSON object", name, d);
    }
    memset(c, 0, sizeof *c);
    json_t *mt = jv_get(root, "model_type");
    if (!mt) return jv_bad(name, "model_type", "missing (required: qwen2 or llama)");
    if (!json_is_string(mt)) {
        jv_describe(mt, d, sizeof d);
        return jv_bad(name, "model_type", "must be a string, not %s", d);
    }
    if (!strcmp(json_string_value(mt), "qwen2")) c->type = MODEL_QWEN2;
    else if (!strcmp(json_string_value(mt), "llama")) c->type = MODEL_LLAMA;
    else
        return jv_bad(name, "model_type", "\"%.40s\" is not supported (qwen2 or llama)", json_string_value(mt));

    TRY(get_int(name, root, "vocab_size", true, 0, 1, &c->vocab_size));
    TRY(get_int(name, root, "hidden_size", true, 0, 1, &c->hidden_size));
    TRY(get_int(name, root, "num_hidden_layers", true, 0, 1, &c->num_layers));
    TRY(get_int(name, root, "num_attention_heads", true, 0, 1, &c->num_heads));
    TRY(get_int(name, root, "num_key_value_heads", false, c->num_heads, 1, &c->num_kv_heads));
    TRY(get_int(name, root, "intermediate_size", true, 0, 1, &c->intermediate_size));
    TRY(get_int(name, root, "max_position_embeddings", true, 0, 1, &c->max_position_embeddings));
    if (jv_get(root, "head_dim")) {
        TRY(get_int(name, root, "head_dim", true, 0, 1, &c->head_dim));
    } else {
        if (c->hidden_size % c->num_heads != 0)
            return jv_bad(name, "hidden_size", "%d is not a multiple of num_attention_heads = %d (and head_dim is not given)",
                       c->hidden_size, c->num_heads);
        c->head_dim = c->hidden_size / c->num_heads;
    }
    TRY(parse_rope(name, root, c));
    bool found;
    c->rms_norm_eps = 1e-6;
    TRY(get_num(name, root, "rms_norm_eps", "rms_norm_eps", &c->rms_norm_eps, &found));
    TRY(get_bool(name, root, "tie_word_embeddings", false, &c->tie_word_embeddings));
    if (c->type == MODEL_QWEN2) {
        c->qkv_bias = true;
        c->o_bias = false;
    } else {
        bool ab = false;
        TRY(get_bool(name, root, "attention_bias", false, &ab));
        c->qkv_bias = c->o_bias = ab;
    }
    TRY(get_token_id(name, root, "bos_token_id", &c->bos_token_id));
    TRY(get_token_id(name, root, "eos_token_id", &c->eos_token_id));
    TRY(refuse_unsupported(name, root, c));
    return model_config_validate(c, name);
}

tidal_status model_config_parse(const char *json, size_t len, const char *name, model_config *out)
{
    if (!name) name = "config.json";
    if (!json || !out) return tidal_fail(TIDAL_ERR_INVALID, "%s: NULL argument", name);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: JSON at line %d column %d: %s", name, jerr.line,
                          jerr.column, jerr.text);
    model_config c;
    tidal_status st = parse_root(name, root, &c);
    json_decref(root);
    if (st == TIDAL_OK) *out = c;
    return st;
}

tidal_status model_config_load(const char *path, model_config *out)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: open: %s", path,
                          strerror(errno));
    /* a config.json is a few KB; 16 MB is a generous cap against mistakes */
    size_t cap = 1 << 24, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) { fclose(fp); return tidal_fail(TIDAL_ERR_NOMEM, "%s: read", path); }
    n = fread(buf, 1, cap + 1, fp);
    bool err = ferror(fp);
    fclose(fp);
    tidal_status st;
    if (err) st = tidal_fail(TIDAL_ERR_IO, "%s: read error", path);
    else if (n > cap) st = tidal_fail(TIDAL_ERR_INVALID, "%s: larger than %zu bytes", path, cap);
    else st = model_config_parse(buf, n, path, out);
    free(buf);
    return st;
}

tidal_status model_config_validate(const model_config *c, const char *name)
{
    if (!name) name = "model config";
    if (!c) return tidal_fail(TIDAL_ERR_INVALID, "%s: NULL config", name);
    if (c->type != MODEL_QWEN2 && c->type != MODEL_LLAMA)
        return jv_bad(name, "model_type", "%d is not qwen2 or llama", (int)c->type);
    static const struct {
        const char *field;
        size_t offset;
        int max;
    } sizes[] = {
        {"vocab_size", offsetof(model_config, vocab_size), MAX_VOCAB},
        {"hidden_size", offsetof(model_config, hidden_size), MAX_WIDTH},
        {"num_hidden_layers", offsetof(model_config, num_layers), MAX_LAYERS},
        {"num_attention_heads", offsetof(model_config, num_heads), MAX_HEADS},
        {"num_key_value_heads", offsetof(model_config, num_kv_heads), MAX_HEADS},
        {"head_dim", offsetof(model_config, head_dim), MAX_HEAD_DIM},
        {"intermediate_size", offsetof(model_config, intermediate_size), MAX_WIDTH},
        {"max_position_embeddings", offsetof(model_config, max_position_embeddings), INT_MAX},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int v = *(const int *)((const char *)c + sizes[i].offset);
        if (v < 1) return jv_bad(name, sizes[i].field, "%d must be positive", v);
        if (v > sizes[i].max) return jv_bad(name, sizes[i].field, "%d is larger than tidal allows (%d)", v, sizes[i].max);
    }
    if (c->num_heads % c->num_kv_heads != 0)
        return jv_bad(name, "num_key_value_heads", "%d does not divide num_attention_heads = %d", c->num_kv_heads,
                   c->num_heads);
    if (c->head_dim % 2 != 0)
        return jv_bad(name, "head_dim", "%d is odd; RoPE rotates pairs, so it must be even", c->head_dim);
    if ((int64_t)c->num_heads * c->head_dim > MAX_WIDTH)
        return jv_bad(name, "head_dim", "num_attention_heads x head_dim = %lld is larger than tidal allows (%d)",
                   (long long)c->num_heads * c->head_dim, MAX_WIDTH);
    const int group = c->num_heads / c->num_kv_heads;
    if (group > CPU_ATT_MAX_GROUP || (int64_t)group * c->head_dim > CPU_ATT_MAX_GROUP_WIDTH)
        return jv_bad(name, "num_key_value_heads",
                   "%d query heads per kv head x head_dim %d is more than tidal's attention handles (%d heads, %d wide)",
                   group, c->head_dim, CPU_ATT_MAX_GROUP, CPU_ATT_MAX_GROUP_WIDTH);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return jv_bad(name, "rope_theta", "%g must be a positive finite number", c->rope_theta);
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        return jv_bad(name, "rms_norm_eps", "%g must be a positive finite number", c->rms_norm_eps);
    if (c->type == MODEL_QWEN2 && (!c->qkv_bias || c->o_bias))
        return jv_bad(name, "attention_bias", "qwen2 has q/k/v biases and no o_proj bias (got qkv_bias %s, o_bias %s)",
                   c->qkv_bias ? "true" : "false", c->o_bias ? "true" : "false");
    if (c->type == MODEL_LLAMA && c->qkv_bias != c->o_bias)
        return jv_bad(name, "attention_bias", "llama biases all of q/k/v/o or none (got qkv_bias %s, o_bias %s)",
                   c->qkv_bias ? "true" : "false", c->o_bias ? "true" : "false");
    if (c->bos_token_id < -1 || c->bos_token_id >= c->vocab_size)
        return jv_bad(name, "bos_token_id", "%d is outside the vocabulary (vocab_size = %d)", c->bos_token_id, c->vocab_size);
    if (c->eos_token_id < -1 || c->eos_token_id >= c->vocab_size)
        return jv_bad(name, "eos_token_id", "%d is outside the vocabulary (vocab_size = %d)", c->eos_token_id, c->vocab_size);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- writing */

/* Significant digits (%.Ng) for x to read back exactly, and at least its
 * integer digits, so 1000000.0 prints as "1000000.0" rather than "1e+06". */
static int real_digits(double x)
{
    int p = 1;
    for (; p < 17; p++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    double a = fabs(x);
    if (a >= 1 && a < 1e17) {
        int digits = (int)floor(log10(a)) + 1;
        if (digits > p) p = digits;
    }
    return p;
}

tidal_status model_config_to_json(const model_config *c, const char *dtype, const char *name, char **out)
{
    *out = NULL;
    if (!name) name = "config.json";
    TRY(model_config_validate(c, name));
    if (!dtype) dtype = "float32";
    if (strcmp(dtype, "float32") && strcmp(dtype, "bfloat16") && strcmp(dtype, "float16"))
        return jv_bad(name, "torch_dtype", "\"%.40s\" is not float32, bfloat16 or float16", dtype);
    bool qwen = c->type == MODEL_QWEN2;
    /* keys in alphabetical order, as transformers writes them */
    json_t *o = json_object();
    int bad_ = !o;
    if (o) {
        bad_ |= json_object_set_new(o, "architectures",
                                    json_pack("[s]", qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
        if (!qwen) bad_ |= json_object_set_new(o, "attention_bias", json_boolean(c->qkv_bias));
        bad_ |= json_object_set_new(o, "attention_dropout", json_real(0.0));
        bad_ |= json_object_set_new(o, "bos_token_id", c->bos_token_id >= 0 ? json_integer(c->bos_token_id) : json_null());
        bad_ |= json_object_set_new(o, "eos_token_id", c->eos_token_id >= 0 ? json_integer(c->eos_token_id) : json_null());
        bad_ |= json_object_set_new(o, "head_dim", json_integer(c->head_dim));
        bad_ |= json_object_set_new(o, "hidden_act", json_string("silu"));
        bad_ |= json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
        bad_ |= json_object_set_new(o, "intermediate_size", json_integer(c->intermediate_size));
        bad_ |= json_object_set_new(o, "max_position_embeddings", json_integer(c->max_position_embeddings));
        if (!qwen) bad_ |= json_object_set_new(o, "mlp_bias", json_false());
        bad_ |= json_object_set_new(o, "model_type", json_string(qwen ? "qwen2" : "llama"));
        bad_ |= json_object_set_new(o, "num_attention_heads", json_integer(c->num_heads));
        bad_ |= json_object_set_new(o, "num_hidden_layers", json_integer(c->num_layers));
        bad_ |= json_object_set_new(o, "num_key_value_heads", json_integer(c->num_kv_heads));
        bad_ |= json_object_set_new(o, "rms_norm_eps", json_real(c->rms_norm_eps));
        bad_ |= json_object_set_new(o, "rope_scaling", json_null());
        bad_ |= json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
        bad_ |= json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
        bad_ |= json_object_set_new(o, "torch_dtype", json_string(dtype));
        bad_ |= json_object_set_new(o, "use_cache", json_true());
        if (qwen) bad_ |= json_object_set_new(o, "use_sliding_window", json_false());
        bad_ |= json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    }
    int p = real_digits(c->rms_norm_eps), q = real_digits(c->rope_theta);
    char *text = bad_ ? NULL : json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(p > q ? p : q));
    json_decref(o);
    if (!text) return tidal_fail(TIDAL_ERR_NOMEM, "%s: config JSON", name);
    *out = text;
    return TIDAL_OK;
}

tidal_status model_config_save(const model_config *c, const char *path, const char *dtype)
{
    if (!path) return tidal_fail(TIDAL_ERR_INVALID, "model_config_save: NULL path");
    char *text = NULL;
    TRY(model_config_to_json(c, dtype, path, &text));

    size_t tl = strlen(path) + 5;
    char *tmp = malloc(tl);
    tidal_status st = TIDAL_OK;
    if (!tmp) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "%s: save", path);
    } else {
        snprintf(tmp, tl, "%s.tmp", path);
        FILE *fp = fopen(tmp, "wb");
        if (!fp) {
            st = tidal_fail(TIDAL_ERR_IO, "%s: create: %s", tmp, strerror(errno));
        } else {
            size_t n = strlen(text);
            if (fwrite(text, 1, n, fp) != n || fputc('\n', fp) == EOF || fflush(fp) != 0 ||
                fsync(fileno(fp)) != 0)
                st = tidal_fail(TIDAL_ERR_IO, "%s: write: %s", tmp, strerror(errno));
            if (fclose(fp) != 0 && st == TIDAL_OK) st = tidal_fail(TIDAL_ERR_IO, "%s: close: %s", tmp, strerror(errno));
            if (st == TIDAL_OK && rename(tmp, path) != 0)
                st = tidal_fail(TIDAL_ERR_IO, "%s: rename to %s: %s", tmp, path, strerror(errno));
            if (st != TIDAL_OK) unlink(tmp);
        }
    }
    free(tmp);
    free(text);
    return st;
}

size_t model_config_num_params(const model_config *c)
{
    if (!c) return 0;
    uint64_t V = (uint64_t)c->vocab_size, C = (uint64_t)c->hidden_size, L = (uint64_t)c->num_layers;
    uint64_t Q = (uint64_t)c->num_heads * (uint64_t)c->head_dim;     /* q_proj out */
    uint64_t KV = (uint64_t)c->num_kv_heads * (uint64_t)c->head_dim; /* k_proj / v_proj out */
    uint64_t F = (uint64_t)c->intermediate_size;
    uint64_t layer = C * Q + 2 * C * KV + Q * C  /* q, k, v, o weights */
                     + (c->qkv_bias ? Q + 2 * KV : 0) + (c->o_bias ? C : 0)
                     + 3 * C * F                  /* gate, up, down */
                     + 2 * C;                     /* input_layernorm, post_attention_layernorm */
    uint64_t n = V * C                            /* embed_tokens */
                 + (c->tie_word_embeddings ? 0 : V * C) /* lm_head */
                 + L * layer + C;                 /* layers, final norm */
    return (size_t)n;
}

const char *model_type_name(model_type t)
{
    return t == MODEL_QWEN2 ? "qwen2" : t == MODEL_LLAMA ? "llama" : "unknown";
}
