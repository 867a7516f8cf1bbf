/* hfdir.h - the files that make a model directory tidal writes (a
 * checkpoint, `tidal debug fwdbwd --save-model`) a complete Hugging Face
 * directory besides config.json and the weights: the tokenizer's files and
 * generation_config.json, so transformers, vLLM and `tidal generate --prompt
 * TEXT` use it as it is.
 *
 * They are gathered once into memory (hf_files) and written into each
 * directory: copied from where the model's tokenizer came from
 * (hf_files_from_source), or written for tidal's own tokenizers
 * (hf_files_from_tokenizer); hf_files_complete adds what a source lacks.
 */
#ifndef TIDAL_MODEL_HFDIR_H
#define TIDAL_MODEL_HFDIR_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"
#include "model/config.h"
#include "model/tokenizer.h"

#define HF_FILES_MAX 8

typedef struct hf_file {
    char name[32]; /* "tokenizer.json" */
    char *data;    /* malloc'd */
    size_t len;
} hf_file;

/* A caller-owned set of files; start from {0}, release with hf_files_clear. */
typedef struct hf_files {
    hf_file f[HF_FILES_MAX];
    int n;
} hf_files;

/* The tokenizer files under source, as tokenizer_load takes it (a
 * tokenizer.json file, or a directory holding one): that tokenizer.json and,
 * from its directory when present, tokenizer_config.json,
 * special_tokens_map.json, chat_template.jinja, vocab.json, merges.txt and
 * generation_config.json. Appended to *out. TIDAL_ERR_NOT_FOUND naming the
 * file when there is no tokenizer.json; TIDAL_ERR_IO. */
tidal_status hf_files_from_source(const char *source, hf_files *out);

/* tokenizer.json and tokenizer_config.json (with chat_template when not
 * NULL) written from t (a tokenizer without merges: tokenizer_json_text),
 * appended to *out. */
tidal_status hf_files_from_tokenizer(const tokenizer *t, int model_max_length, const char *chat_template,
                                     hf_files *out);

/* Add what *out lacks: tokenizer_config.json from t (when t is not NULL),
 * and generation_config.json with c's bos_token_id (when it has one), the
 * eos_token_id - c's eos, and stop (the chat format's end of turn) too when
 * it is another token (-1: none) - and pad_token_id (eos). */
tidal_status hf_files_complete(hf_files *out, const tokenizer *t, const model_config *c, int32_t stop);

/* The file called name, or NULL. */
const hf_file *hf_files_find(const hf_files *f, const char *name);

/* Write every file into dir (which exists), each whole (base/fs.h). */
tidal_status hf_files_write(const hf_files *f, const char *dir);

void hf_files_clear(hf_files *f);

#endif
