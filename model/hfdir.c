/* hfdir.c - a model directory's Hugging Face files besides the weights
 * (hfdir.h). */
#include "model/hfdir.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/fs.h"

#define HF_FILE_MAX_BYTES (1u << 30) /* Qwen's tokenizer.json is 11 MB */

const hf_file *hf_files_find(const hf_files *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->f[i].name, name)) return &f->f[i];
    return NULL;
}

/* Take data (malloc'd, len bytes) as file `name` of *out. */
static tidal_status add(hf_files *out, const char *name, char *data, size_t len)
{
    if (out->n == HF_FILES_MAX) {
        free(data);
        return tidal_fail(TIDAL_ERR_INVALID, "model directory files: more than %d", HF_FILES_MAX);
    }
    hf_file *f = &out->f[out->n++];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->data = data, f->len = len;
    return TIDAL_OK;
}

/* Read PATH whole into a malloc'd buffer. TIDAL_ERR_NOT_FOUND when absent. */
static tidal_status read_whole(const char *path, char **data, size_t *len)
{
    *data = NULL, *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: %s", path, strerror(errno));
    tidal_status st = TIDAL_OK;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
        st = tidal_fail(TIDAL_ERR_IO, "%s: cannot find its size", path);
    else if ((unsigned long)n > HF_FILE_MAX_BYTES)
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: %ld bytes (1 GB at most)", path, n);
    else if (!(*data = malloc((size_t)n + 1)))
        st = tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", path);
    else if (fread(*data, 1, (size_t)n, fp) != (size_t)n)
        st = tidal_fail(TIDAL_ERR_IO, "%s: read error", path);
    fclose(fp);
    if (st != TIDAL_OK) {
        free(*data);
        *data = NULL;
        return st;
    }
    *len = (size_t)n;
    return TIDAL_OK;
}

tidal_status hf_files_from_source(const char *source, hf_files *out)
{
    char dir[4096], file[4200];
    struct stat sb;
    if (stat(source, &sb) != 0)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: %s", source, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        snprintf(dir, sizeof dir, "%s", source);
        snprintf(file, sizeof file, "%s/tokenizer.json", dir);
    } else {
        snprintf(file, sizeof file, "%s", source);
        const char *slash = strrchr(source, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - source) : 1, slash ? source : ".");
    }
    char *data = NULL;
    size_t len = 0;
    TRY(read_whole(file, &data, &len));
    TRY(add(out, "tokenizer.json", data, len));
    /* what transformers reads beside it, when the source has it */
    static const char *const beside[] = {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                                         "vocab.json", "merges.txt", "generation_config.json"};
    for (size_t i = 0; i < sizeof beside / sizeof beside[0]; i++) {
        snprintf(file, sizeof file, "%s/%s", dir, beside[i]);
        const tidal_status st = read_whole(file, &data, &len);
        if (st == TIDAL_ERR_NOT_FOUND) { /* optional: absent is fine */
            tidal_clear();
            continue;
        }
        TRY(st);
        TRY(add(out, beside[i], data, len));
    }
    return TIDAL_OK;
}

tidal_status hf_files_from_tokenizer(const tokenizer *t, int model_max_length, const char *chat_template,
                                     hf_files *out)
{
    char *text = NULL;
    TRY(tokenizer_json_text(t, &text));
    TRY(add(out, "tokenizer.json", text, strlen(text)));
    TRY(tokenizer_config_text(t, model_max_length, chat_template, &text));
    return add(out, "tokenizer_config.json", text, strlen(text));
}

/* generation_config.json for c: bos, eos (with stop when another token), pad. */
static tidal_status generation_config(const model_config *c, int32_t stop, hf_files *out)
{
    json_t *o = json_object();
    if (c->bos_token_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) {
        json_object_set_new(o, "eos_token_id",
                            stop >= 0 && stop != c->eos_token_id ? json_pack("[i, i]", c->eos_token_id, (int)stop)
                                                                 : json_integer(c->eos_token_id));
        json_object_set_new(o, "pad_token_id", json_integer(c->eos_token_id));
    }
    char *text = json_dumps(o, JSON_INDENT(2)), *line = text ? realloc(text, strlen(text) + 2) : NULL;
    json_decref(o);
    if (!line) {
        free(text);
        return tidal_fail(TIDAL_ERR_NOMEM, "generation_config.json: out of memory");
    }
    strcat(line, "\n");
    return add(out, "generation_config.json", line, strlen(line));
}

tidal_status hf_files_complete(hf_files *out, const tokenizer *t, const model_config *c, int32_t stop)
{
    if (t && !hf_files_find(out, "tokenizer_config.json")) {
        char *text = NULL;
        TRY(tokenizer_config_text(t, c->max_position_embeddings, NULL, &text));
        size_t len = 0;
        const char *eos = tokenizer_eos_id(t) < 0 && c->eos_token_id >= 0
                              ? tokenizer_token_bytes(t, c->eos_token_id, &len) : NULL;
        if (eos) { /* a bare tokenizer.json: the model's eos (the job chose it) goes in, so the files agree */
            json_t *o = json_loads(text, 0, NULL);
            json_t *tok = json_stringn(eos, len);
            free(text);
            text = o && tok ? (json_object_set(o, "eos_token", tok), json_object_set(o, "pad_token", tok),
                               json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER))
                            : NULL;
            json_decref(tok);
            json_decref(o);
            if (!text) return tidal_fail(TIDAL_ERR_NOMEM, "tokenizer_config.json: out of memory");
        }
        TRY(add(out, "tokenizer_config.json", text, strlen(text)));
    }
    if (!hf_files_find(out, "generation_config.json")) TRY(generation_config(c, stop, out));
    return TIDAL_OK;
}

tidal_status hf_files_write(const hf_files *f, const char *dir)
{
    char path[4200];
    for (int i = 0; i < f->n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, f->f[i].name);
        TRY(fs_write_file(path, f->f[i].data, f->f[i].len));
    }
    return TIDAL_OK;
}

void hf_files_clear(hf_files *f)
{
    for (int i = 0; i < f->n; i++) free(f->f[i].data);
    memset(f, 0, sizeof *f);
}
