/* tokenizer_save.c - tidal's own tokenizers written as Hugging Face files
 * (tokenizer.h: tokenizer_json_text, tokenizer_config_text), so a model
 * directory tidal writes for a tiny model carries a tokenizer that
 * transformers, vLLM and tidal itself load.
 *
 * The byte-level and alphabet tokenizers have no merges: every ordinary
 * token is one byte. Written as a byte-level BPE with an empty merge list:
 * the vocabulary maps each byte's GPT-2 byte-to-unicode character to its id,
 * the special tokens are added tokens, the pre-tokenizer and decoder are
 * ByteLevel without a prefix space. Hugging Face then encodes byte by byte
 * exactly as tidal does; an alphabet's vocabulary leaves the other bytes out
 * (tokenizer_json.c reads such a file as one token per byte). Only the
 * public API is used: what is written is what any caller sees.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

/* GPT-2's bytes_to_unicode: the code point that stands for byte b in a
 * byte-level vocabulary (printable Latin-1 bytes stand for themselves, the
 * rest for 256, 257, ... in byte order). */
static uint32_t byte_char(uint8_t b)
{
    const bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    if (self) return b;
    uint32_t n = 0;
    for (int x = 0; x < b; x++) {
        const bool s = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE);
        if (!s) n++;
    }
    return 256 + n;
}

/* The UTF-8 of code point cp (< 0x800 here) into out, NUL-terminated. */
static void utf8_of(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

/* {"type": "ByteLevel", ...} without a prefix space: pre-tokenizer and decoder. */
static json_t *byte_level_step(void)
{
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                     "use_regex", 1);
}

/* One added token, as tokenizer.json and tokenizer_config.json's
 * added_tokens_decoder write it (with_id: tokenizer.json's form). */
static json_t *added_token(const tokenizer *t, int32_t id, bool with_id)
{
    size_t n = 0;
    const char *p = tokenizer_token_bytes(t, id, &n);
    json_t *o = json_object();
    if (with_id) json_object_set_new(o, "id", json_integer(id));
    json_object_set_new(o, "content", json_stringn(p, n));
    json_object_set_new(o, "single_word", json_false());
    json_object_set_new(o, "lstrip", json_false());
    json_object_set_new(o, "rstrip", json_false());
    json_object_set_new(o, "normalized", json_false());
    json_object_set_new(o, "special", json_true());
    return o;
}

/* Dump o (stolen) to a malloc'd string ending in a newline. */
static tidal_status dump(json_t *o, const char *what, char **out)
{
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    *out = text ? realloc(text, strlen(text) + 2) : NULL;
    if (!*out) {
        free(text);
        return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", what);
    }
    strcat(*out, "\n");
    return TIDAL_OK;
}

tidal_status tokenizer_json_text(const tokenizer *t, char **out)
{
    *out = NULL;
    const int32_t v = tokenizer_vocab_size(t);
    for (int32_t id = 0; id < v; id++) { /* check first: nothing half-built to free */
        size_t n = 0;
        const char *p = tokenizer_token_bytes(t, id, &n);
        if (!p) return tidal_fail(TIDAL_ERR_INVALID, "%s: tokenizer.json: id %d is not a token", tokenizer_name(t), id);
        json_t *text = tokenizer_is_special(t, id) ? json_stringn(p, n) : NULL;
        const bool utf8 = !tokenizer_is_special(t, id) || text;
        json_decref(text);
        if (!utf8)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: tokenizer.json: special token %d is not valid UTF-8",
                              tokenizer_name(t), id);
        if (!tokenizer_is_special(t, id) && n != 1)
            return tidal_fail(TIDAL_ERR_INVALID,
                              "%s: tokenizer.json: token %d is %zu bytes: only a tokenizer without merges (tidal's "
                              "byte-level and alphabet tokenizers) is written; a loaded tokenizer's files are copied",
                              tokenizer_name(t), id, n);
    }
    json_t *vocab = json_object(), *added = json_array();
    for (int32_t id = 0; id < v; id++) {
        if (tokenizer_is_special(t, id)) {
            json_array_append_new(added, added_token(t, id, true));
            continue;
        }
        size_t n = 0;
        const char *p = tokenizer_token_bytes(t, id, &n);
        char ch[4];
        utf8_of(byte_char((uint8_t)p[0]), ch);
        json_object_set_new(vocab, ch, json_integer(id));
    }
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:[]}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                              "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
    json_t *root = json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:n, s:o, s:o}", "version", "1.0", "truncation",
                             "padding", "added_tokens", added, "normalizer", "pre_tokenizer", byte_level_step(),
                             "post_processor", "decoder", byte_level_step(), "model", model);
    return dump(root, "tokenizer.json", out);
}

/* Token id's text as a JSON string; null for -1 (none). */
static json_t *token_or_null(const tokenizer *t, int32_t id)
{
    size_t n = 0;
    const char *p = id >= 0 ? tokenizer_token_bytes(t, id, &n) : NULL;
    json_t *s = p ? json_stringn(p, n) : NULL;
    return s ? s : json_null();
}

tidal_status tokenizer_config_text(const tokenizer *t, int model_max_length, const char *chat_template, char **out)
{
    *out = NULL;
    json_t *o = json_object(), *dec = json_object();
    const int32_t v = tokenizer_vocab_size(t);
    for (int32_t id = 0; id < v; id++)
        if (tokenizer_is_special(t, id)) {
            char key[16];
            snprintf(key, sizeof key, "%d", id);
            json_object_set_new(dec, key, added_token(t, id, false));
        }
    json_object_set_new(o, "added_tokens_decoder", dec);
    const int32_t bos = tokenizer_bos_id(t), eos = tokenizer_eos_id(t);
    json_object_set_new(o, "bos_token", token_or_null(t, bos));
    json_object_set_new(o, "eos_token", token_or_null(t, eos));
    json_object_set_new(o, "pad_token", token_or_null(t, eos)); /* eos, as Qwen's files do: pads are masked out */
    json_object_set_new(o, "unk_token", json_null());
    json_object_set_new(o, "add_bos_token", json_false());
    json_object_set_new(o, "add_prefix_space", json_false());
    json_object_set_new(o, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(o, "split_special_tokens", json_false());
    if (model_max_length > 0) json_object_set_new(o, "model_max_length", json_integer(model_max_length));
    if (!chat_template) chat_template = tokenizer_chat_template(t);
    if (chat_template) json_object_set_new(o, "chat_template", json_string(chat_template));
    json_object_set_new(o, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    return dump(o, "tokenizer_config.json", out);
}
