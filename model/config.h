/* config.h - a Qwen2 / Llama model's shape, from and to Hugging Face config.json.
 *
 * Only what tidal can honour is accepted: model_type qwen2 or llama, SiLU,
 * RoPE without scaling (or rope_type "default"), no sliding window. Anything
 * else is refused with a message naming the file and the field - never
 * silently ignored.
 */
#ifndef TIDAL_MODEL_CONFIG_H
#define TIDAL_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"

typedef enum { MODEL_QWEN2 = 1, MODEL_LLAMA = 2 } model_type;

/* config.json's model_type for t: "qwen2", "llama"; "unknown" otherwise. */
const char *model_type_name(model_type t);

typedef struct model_config {
    model_type type;
    int vocab_size;
    int hidden_size;             /* C */
    int num_layers;              /* L */
    int num_heads;               /* NH */
    int num_kv_heads;            /* NKV (divides NH) */
    int head_dim;                /* HD (config's head_dim, else hidden_size / num_heads) */
    int intermediate_size;       /* FFN */
    int max_position_embeddings;
    double rope_theta;           /* top level, or rope_parameters / rope_scaling .rope_theta */
    double rms_norm_eps;
    bool tie_word_embeddings;
    bool qkv_bias;               /* qwen2: always; llama: attention_bias */
    bool o_bias;                 /* llama attention_bias also biases o_proj; qwen2 never */
    int bos_token_id;            /* -1 when absent */
    int eos_token_id;            /* the first when a list; -1 when absent */
} model_config;

/* Parse config.json text. `name` (the file name) prefixes every error:
 * "DIR/config.json: num_key_value_heads = 3 does not divide num_attention_heads = 14". */
tidal_status model_config_parse(const char *json, size_t len, const char *name, model_config *out);

/* Read and parse a config.json file. */
tidal_status model_config_load(const char *path, model_config *out);

/* Check a config built in code (the tiny models of a job spec) by the same rules. */
tidal_status model_config_validate(const model_config *c, const char *name);

/* Write a Hugging Face config.json (architectures Qwen2ForCausalLM or
 * LlamaForCausalLM, torch_dtype `dtype` such as "float32" or "bfloat16") that
 * transformers and vLLM load. */
tidal_status model_config_save(const model_config *c, const char *path, const char *dtype);

/* The text model_config_save writes (without its final newline), as a
 * malloc'd NUL-terminated string in *out (the caller frees it): what a
 * WeightsManifest carries as model_config_json. `name` (NULL: "config.json")
 * prefixes errors. */
tidal_status model_config_to_json(const model_config *c, const char *dtype, const char *name, char **out);

/* Number of parameters of the model the config describes. */
size_t model_config_num_params(const model_config *c);

#endif
