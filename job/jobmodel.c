/* jobmodel.c - the model, tokenizer and prompt format of a job (jobmodel.h). */
#include "job/jobmodel.h"

#include <stdio.h>
#include <string.h>

tidal_status job_model_config(const job_spec *s, model_config *out)
{
    memset(out, 0, sizeof *out);
    if (!s->model.init.on) {
        char path[SPEC_STR + 16];
        snprintf(path, sizeof path, "%s/config.json", s->model.path);
        return model_config_load(path, out);
    }
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
    const int n_alpha = (int)strlen(s->model.init.alphabet);
    const int need = n_alpha ? n_alpha + 3 : TOKENIZER_BYTE_LEVEL_VOCAB;
    if (n_alpha) out->eos_token_id = n_alpha; /* the alphabet tokenizer's <|endoftext|> */
    if (out->vocab_size < need)
        return tidal_fail(TIDAL_ERR_INVALID, "model.init.vocab: %d cannot hold the %s tokenizer's %d ids",
                          out->vocab_size, n_alpha ? "alphabet" : "byte-level", need);
    return model_config_validate(out, "model.init");
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
    if (s->model.init.on)
        return s->model.init.alphabet[0] ? tokenizer_alphabet(s->model.init.alphabet, out) : tokenizer_byte_level(out);
    return tokenizer_load(s->model.path, out);
}

const char *job_tokenizer_source(const job_spec *s)
{
    if (!s->model.init.on) return s->model.path;
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
