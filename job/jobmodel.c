/* jobmodel.c - the model, tokenizer and prompt format of a job (jobmodel.h). */
#include "job/jobmodel.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* model.init.tokenizer's two files: the tokenizer.json (the path itself, or
 * DIR/tokenizer.json) and the tokenizer_config.json beside it (which
 * tokenizer_load reads too). */
static void tokenizer_files(const char *path, char *json, size_t nj, char *config, size_t nc)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(json, nj, "%s/tokenizer.json", path);
        snprintf(config, nc, "%s/tokenizer_config.json", path);
        return;
    }
    snprintf(json, nj, "%s", path);
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(config, nc, "%.*s/tokenizer_config.json", (int)(slash - path), path);
    else snprintf(config, nc, "tokenizer_config.json");
}

/* The chat format model.init.tokenizer's tokenizer_config.json asks for, as
 * chat_format_of_model_dir reads a model directory's: its chat_template
 * recognised, else plain (no file, no template, neither marker). The
 * tokenizer.json must be readable (the workers load it). */
static tidal_status tokenizer_chat_format(const char *path, chat_format *out)
{
    char json[SPEC_STR + 32], config[SPEC_STR + 32];
    tokenizer_files(path, json, sizeof json, config, sizeof config);
    *out = CHAT_PLAIN;
    if (access(json, R_OK) != 0)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "model.init.tokenizer: %s: %s", json,
                          strerror(errno));
    json_error_t jerr;
    /* integers as reals: Llama-3 sets model_max_length to 1e30 as an integer */
    json_t *root = json_load_file(config, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root && access(config, F_OK) != 0 && errno == ENOENT) return TIDAL_OK; /* no config: no template */
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return tidal_fail(TIDAL_ERR_INVALID, "model.init.tokenizer: %s: not a JSON object (%s)", config,
                          root ? "another type" : jerr.text);
    }
    const char *tmpl = NULL;
    tidal_status st = chat_template_of_config(root, config, &tmpl);
    if (st == TIDAL_OK && tmpl && chat_format_detect(tmpl, out) != TIDAL_OK) { /* unrecognised: plain */
        *out = CHAT_PLAIN;
        tidal_clear();
    }
    json_decref(root);
    return st;
}

/* The tiny model's shape with tokenizer `tok` (NULL: the byte-level or
 * alphabet tokenizer, whose ids are fixed). A real tokenizer raises the
 * vocabulary to its size and gives eos / bos: tokenizer_config.json's, else
 * "<|endoftext|>" as eos when the vocabulary has it (a bare tokenizer.json),
 * else none (generation then stops at the chat format's end-of-turn token or
 * rollout.max_tokens). */
static tidal_status init_config(const job_spec *s, const tokenizer *tok, model_config *out)
{
    const int hd = s->model.init.hidden / s->model.init.heads;
    *out = (model_config){
        .type = strcmp(s->model.init.arch, "llama") == 0 ? MODEL_LLAMA : MODEL_QWEN2,
        .vocab_size = s->model.init.vocab,
        .hidden_size = s->model.init.hidden,
        .num_layers = s->model.init.layers,
        .num_heads = s->model.init.heads,
        .num_kv_heads = s->model.init.kv_heads,
        .head_dim = hd,
        .intermediate_size = s->model.init.ffn,
        .max_position_embeddings = 4096,
        .rope_theta = 10000.0,
        .rms_norm_eps = 1e-6,
        .tie_word_embeddings = true,
        .bos_token_id = -1,
        .eos_token_id = 256, /* the byte-level tokenizer's <|endoftext|> */
    };
    out->qkv_bias = out->type == MODEL_QWEN2;
    if (tok) {
        const int32_t n = tokenizer_vocab_size(tok);
        if (out->vocab_size < n) out->vocab_size = n; /* "unless given larger": room for ids added later */
        out->bos_token_id = tokenizer_bos_id(tok);
        out->eos_token_id = tokenizer_eos_id(tok);
        if (out->eos_token_id < 0) out->eos_token_id = tokenizer_token_id(tok, "<|endoftext|>");
        return model_config_validate(out, "model.init");
    }
    const int n_alpha = (int)strlen(s->model.init.alphabet);
    const int need = n_alpha ? n_alpha + 3 : TOKENIZER_BYTE_LEVEL_VOCAB;
    if (n_alpha) out->eos_token_id = n_alpha; /* the alphabet tokenizer's <|endoftext|> */
    if (out->vocab_size < need)
        return tidal_fail(TIDAL_ERR_INVALID, "model.init.vocab: %d cannot hold the %s tokenizer's %d ids",
                          out->vocab_size, n_alpha ? "alphabet" : "byte-level", need);
    return model_config_validate(out, "model.init");
}

/* model.init.tokenizer loaded; errors name the key. */
static tidal_status init_tokenizer(const job_spec *s, tokenizer **out)
{
    TRY_WRAP(tokenizer_load(s->model.init.tokenizer, out), "model.init.tokenizer");
    return TIDAL_OK;
}

tidal_status job_model_config(const job_spec *s, model_config *out)
{
    memset(out, 0, sizeof *out);
    if (!s->model.init.on) {
        char path[SPEC_STR + 16];
        snprintf(path, sizeof path, "%s/config.json", s->model.path);
        return model_config_load(path, out);
    }
    if (!s->model.init.tokenizer[0]) return init_config(s, NULL, out);
    tokenizer *tok = NULL;
    TRY(init_tokenizer(s, &tok));
    const tidal_status st = init_config(s, tok, out);
    tokenizer_free(tok);
    return st;
}

tidal_status job_model_config_of(const job_spec *s, const tokenizer *tok, model_config *out)
{
    memset(out, 0, sizeof *out);
    if (!s->model.init.on) return job_model_config(s, out);
    return init_config(s, s->model.init.tokenizer[0] ? tok : NULL, out);
}

tidal_status job_model_initial(const job_spec *s, model **out)
{
    *out = NULL;
    if (!s->model.init.on) return model_load(s->model.path, out);
    model_config c;
    TRY(job_model_config(s, &c));
    TRY(model_create(&c, out));
    model_init_random(*out, (uint64_t)s->model.init.seed, (float)s->model.init.std, false);
    return TIDAL_OK;
}

tidal_status job_tokenizer(const job_spec *s, tokenizer **out)
{
    if (s->model.init.on && s->model.init.tokenizer[0]) return init_tokenizer(s, out);
    if (s->model.init.on)
        return s->model.init.alphabet[0] ? tokenizer_alphabet(s->model.init.alphabet, out) : tokenizer_byte_level(out);
    return tokenizer_load(s->model.path, out);
}

const char *job_tokenizer_source(const job_spec *s)
{
    if (!s->model.init.on) return s->model.path;
    if (s->model.init.tokenizer[0]) return s->model.init.tokenizer;
    return NULL; /* the built-in byte-level or alphabet tokenizer */
}

tidal_status job_hf_files(const job_spec *s, hf_files *out)
{
    memset(out, 0, sizeof *out);
    model_config c;
    chat_format f;
    tokenizer *t = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(job_model_config(s, &c));
    TRY_GOTO(job_chat_format(s, &f));
    const char *source = job_tokenizer_source(s);
    if (source) {
        TRY_GOTO(hf_files_from_source(source, out));
        /* the tokenizer is loaded only when its files lack what the directory needs */
        if (!hf_files_find(out, "tokenizer_config.json") || !hf_files_find(out, "generation_config.json"))
            TRY_GOTO(tokenizer_load(source, &t));
    } else {
        TRY_GOTO(job_tokenizer(s, &t));
        /* the format the job renders prompts with, so --chat and apply_chat_template render them so too */
        TRY_GOTO(hf_files_from_tokenizer(t, c.max_position_embeddings, chat_format_jinja(f), out));
    }
    TRY_GOTO(hf_files_complete(out, t, &c, t ? job_stop_id(f, t) : -1));
cleanup:
    tokenizer_free(t);
    if (st != TIDAL_OK) hf_files_clear(out);
    return st;
}

tidal_status job_chat_format(const job_spec *s, chat_format *out)
{
    if (strcmp(s->data.template_, "auto") != 0) return chat_format_parse(s->data.template_, out);
    *out = CHAT_PLAIN; /* tidal's byte-level and alphabet tokenizers have no chat template */
    if (s->model.init.on && s->model.init.tokenizer[0]) return tokenizer_chat_format(s->model.init.tokenizer, out);
    if (s->model.init.on) return TIDAL_OK;
    return chat_format_of_model_dir(s->model.path, out);
}

tidal_status job_render_prompt(chat_format f, const char *text, char **out)
{
    chat_message msg = {.role = "user", .content = text};
    return chat_render(f, &msg, 1, true, out, NULL);
}

int32_t job_stop_id(chat_format f, const tokenizer *t)
{
    const char *eot = chat_end_of_turn(f);
    int32_t id = eot && *eot ? tokenizer_token_id(t, eot) : -1;
    return id >= 0 ? id : tokenizer_eos_id(t);
}
