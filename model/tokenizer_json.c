/* tokenizer_json.c - loading a Hugging Face tokenizer: tokenizer.json (the
 * model's vocabulary and merges, added tokens, normalizer, pre-tokenizer,
 * post-processor, decoder) and tokenizer_config.json (bos, eos, the chat
 * template), into the tables bpe.c encodes with (see tokenizer.h for what is
 * read and what is refused).
 *
 * Every token's bytes are computed here once: a vocabulary token through the
 * inverse of GPT-2's byte-to-unicode mapping (a string holding a character
 * outside the mapping keeps its UTF-8 text, as Hugging Face's ByteLevel
 * decoder does), an added token as its content. Regexes are compiled with
 * PCRE2 (UTF + UCP) and JIT-compiled when the platform allows. Every error is
 * TIDAL_ERR_INVALID naming the file and the field (base/json.h's jv_bad).
 */
#include "model/tokenizer_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <sys/stat.h>

#include "base/json.h"
#include "model/chat.h"

#define MAX_VOCAB (1 << 24)      /* ids must be below this (Qwen: 151,669; Llama-3: 128,256) */
#define MAX_DEPTH 8              /* nesting of Sequence */
#define MAX_FILE (1u << 30)      /* tokenizer.json size cap (Qwen's is 11 MB) */

/* ------------------------------------------------------------------ fields */

/* obj[key] as a boolean (def when absent); an error naming path when it is
 * something else. */
static tidal_status get_bool(const char *name, const json_t *obj, const char *key, const char *path, bool def,
                             bool *out)
{
    json_t *v = jv_get(obj, key);
    if (!v) { *out = def; return TIDAL_OK; }
    if (!json_is_boolean(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return jv_bad(name, path, "must be true or false, not %s", d);
    }
    *out = json_is_true(v);
    return TIDAL_OK;
}

/* A "type" string; error naming path when missing or not a string. */
static tidal_status get_type(const char *name, const json_t *obj, const char *path, const char **out)
{
    json_t *v = jv_get(obj, "type");
    char field[256];
    snprintf(field, sizeof field, "%s.type", path);
    if (!json_is_object(obj)) {
        char d[96];
        jv_describe(obj, d, sizeof d);
        return jv_bad(name, path, "must be an object, not %s", d);
    }
    if (!json_is_string(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return jv_bad(name, field, "must be a string, not %s", d);
    }
    *out = json_string_value(v);
    return TIDAL_OK;
}

/* Write code point cp (<= U+10FFFF) as UTF-8 into out; returns its length. */
static size_t u8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Insert token id (TOKF_MAPPED, bytes set) into the vocabulary map, which
 * parse_model sized for every mapped token. */
static void vocab_insert(tokenizer *t, int32_t id)
{
    uint64_t h = hash_bytes(t->bytes + t->tb_off[id], t->tb_len[id]);
    uint32_t i = (uint32_t)h & t->vmask;
    while (t->vmap[i].id >= 0) i = (i + 1) & t->vmask;
    t->vmap[i].hash = (uint32_t)(h >> 32);
    t->vmap[i].id = id;
}

/* Record that a then b merge into id at rank (a repeated pair: the last). */
static void merge_put(tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = merge_key(a, b);
    uint64_t i = merge_index(t, key);
    while (t->mmap[i].key != UINT64_MAX && t->mmap[i].key != key) i = (i + 1) & t->mmask;
    t->mmap[i].key = key; /* a repeated pair keeps the last rank, as Hugging Face's map does */
    t->mmap[i].rank = rank;
    t->mmap[i].id = id;
}

/* ------------------------------------------------------------------ loading */

/* A JSON string's bytes and length. */
static const char *str_n(const json_t *v, size_t *n)
{
    *n = json_string_length(v);
    return json_string_value(v);
}

/* The raw bytes of a vocabulary token string (byte-level characters mapped
 * back); false when a character is outside the mapping (the bytes are then
 * the string itself). */
static bool token_to_bytes(const char *s, size_t n, char *out, size_t *out_n)
{
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = u8_char((const uint8_t *)s + i, n - i, &cp);
        if (!l || cp >= 324 || tok_cp_to_byte[cp] < 0) {
            memcpy(out, s, n);
            *out_n = n;
            return false;
        }
        out[k++] = (char)tok_cp_to_byte[cp];
        i += l;
    }
    *out_n = k;
    return true;
}

/* Compile pat[0..n) (UTF; UCP, or LITERAL for a Split's String) into
 * out->re and JIT-compile it when possible; an error naming field. */
static tidal_status compile_regex(const char *name, const char *field, const char *pat, size_t n, bool literal,
                                  split_step *out)
{
    int err;
    PCRE2_SIZE off;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    out->re = pcre2_compile((PCRE2_SPTR)pat, n, opt, &err, &off, NULL);
    if (!out->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return jv_bad(name, field, "cannot compile \"%.80s\" at offset %zu: %s", pat, (size_t)off, (const char *)msg);
    }
    out->jit = pcre2_jit_compile(out->re, PCRE2_JIT_COMPLETE) == 0;
    return TIDAL_OK;
}

/* Append the normalizer at path (a Sequence flattened, depth-limited) to
 * t->norm; types other than NFC, NFD, NFKC, NFKD are refused. */
static tidal_status parse_normalizer(tokenizer *t, const json_t *v, const char *path, int depth)
{
    const char *name = t->name;
    const char *type;
    if (depth > MAX_DEPTH) return jv_bad(name, path, "Sequence nested too deeply");
    TRY(get_type(name, v, path, &type));
    norm_kind k = 0;
    if (!strcmp(type, "Sequence")) {
        json_t *list = jv_get(v, "normalizers");
        char field[256];
        snprintf(field, sizeof field, "%s.normalizers", path);
        if (!json_is_array(list)) return jv_bad(name, field, "must be an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(field, sizeof field, "%s.normalizers[%zu]", path, i);
            TRY(parse_normalizer(t, json_array_get(list, i), field, depth + 1));
        }
        return TIDAL_OK;
    }
    if (!strcmp(type, "NFC")) k = NORM_NFC;
    else if (!strcmp(type, "NFD")) k = NORM_NFD;
    else if (!strcmp(type, "NFKC")) k = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) k = NORM_NFKD;
    else {
        char field[256];
        snprintf(field, sizeof field, "%s.type", path);
        return jv_bad(name, field, "\"%s\" is not supported (NFC, NFD, NFKC, NFKD and Sequence are)", type);
    }
    if (t->n_norm == MAX_STEPS) return jv_bad(name, path, "more than %d normalizers", MAX_STEPS);
    t->norm[t->n_norm++] = k;
    return TIDAL_OK;
}

/* One Split pre-tokenizer step (before ByteLevel): its regex or literal,
 * delimiter behaviour and invert, appended to t->split. */
static tidal_status parse_split(tokenizer *t, const json_t *v, const char *path)
{
    const char *name = t->name;
    char field[256];
    if (t->bl_seen) return jv_bad(name, path, "a Split after ByteLevel is not supported");
    if (t->n_split == MAX_STEPS) return jv_bad(name, path, "more than %d Split steps", MAX_STEPS);
    split_step *sp = &t->split[t->n_split];
    json_t *pat = jv_get(v, "pattern");
    snprintf(field, sizeof field, "%s.pattern", path);
    if (!json_is_object(pat)) return jv_bad(name, field, "must be an object with \"Regex\" or \"String\"");
    json_t *re = jv_get(pat, "Regex"), *lit = jv_get(pat, "String");
    if (re && json_is_string(re)) {
        size_t n;
        const char *s = str_n(re, &n);
        snprintf(field, sizeof field, "%s.pattern.Regex", path);
        TRY(compile_regex(name, field, s, n, false, sp));
    } else if (lit && json_is_string(lit)) {
        size_t n;
        const char *s = str_n(lit, &n);
        snprintf(field, sizeof field, "%s.pattern.String", path);
        if (!n) return jv_bad(name, field, "must not be empty");
        TRY(compile_regex(name, field, s, n, true, sp));
    } else {
        return jv_bad(name, field, "must hold a \"Regex\" or \"String\" string");
    }
    t->n_split++; /* owned from here: freed by tokenizer_free */
    json_t *b = jv_get(v, "behavior");
    snprintf(field, sizeof field, "%s.behavior", path);
    if (!json_is_string(b)) return jv_bad(name, field, "must be a string");
    const char *bs = json_string_value(b);
    static const struct { const char *s; split_behavior b; } behaviors[] = {
        {"Isolated", SPLIT_ISOLATED}, {"Removed", SPLIT_REMOVED}, {"MergedWithPrevious", SPLIT_MERGED_PREVIOUS},
        {"MergedWithNext", SPLIT_MERGED_NEXT}, {"Contiguous", SPLIT_CONTIGUOUS},
    };
    size_t i = 0;
    while (i < sizeof behaviors / sizeof behaviors[0] && strcmp(behaviors[i].s, bs)) i++;
    if (i == sizeof behaviors / sizeof behaviors[0])
        return jv_bad(name, field, "\"%s\" is not one of Isolated, Removed, MergedWithPrevious, MergedWithNext, "
                                "Contiguous", bs);
    sp->behavior = behaviors[i].b;
    snprintf(field, sizeof field, "%s.invert", path);
    return get_bool(name, v, "invert", field, false, &sp->invert);
}

/* GPT-2's pre-tokenization regex (ByteLevel with use_regex true). */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* The pre-tokenizer at path: Split steps, then exactly one ByteLevel
 * (prefix space, GPT-2 regex); Sequences flattened. */
static tidal_status parse_pretok(tokenizer *t, const json_t *v, const char *path, int depth)
{
    const char *name = t->name;
    const char *type;
    char field[256];
    if (depth > MAX_DEPTH) return jv_bad(name, path, "Sequence nested too deeply");
    TRY(get_type(name, v, path, &type));
    if (!strcmp(type, "Sequence")) {
        json_t *list = jv_get(v, "pretokenizers");
        snprintf(field, sizeof field, "%s.pretokenizers", path);
        if (!json_is_array(list)) return jv_bad(name, field, "must be an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(field, sizeof field, "%s.pretokenizers[%zu]", path, i);
            TRY(parse_pretok(t, json_array_get(list, i), field, depth + 1));
        }
        return TIDAL_OK;
    }
    if (!strcmp(type, "Split")) return parse_split(t, v, path);
    if (!strcmp(type, "ByteLevel")) {
        if (t->bl_seen) return jv_bad(name, path, "ByteLevel appears twice");
        t->bl_seen = true;
        snprintf(field, sizeof field, "%s.add_prefix_space", path);
        TRY(get_bool(name, v, "add_prefix_space", field, true, &t->bl_prefix));
        snprintf(field, sizeof field, "%s.use_regex", path);
        TRY(get_bool(name, v, "use_regex", field, true, &t->bl_use_regex));
        if (t->bl_use_regex) {
            TRY(compile_regex(name, path, gpt2_regex, sizeof gpt2_regex - 1, false, &t->bl_regex));
            t->bl_regex.behavior = SPLIT_ISOLATED;
        }
        return TIDAL_OK;
    }
    snprintf(field, sizeof field, "%s.type", path);
    return jv_bad(name, field, "\"%s\" is not supported (byte-level BPE needs Split steps then ByteLevel)", type);
}

/* Check the decoder is ByteLevel (or a Sequence of them): decoding is the
 * tokens' bytes, so nothing is kept. */
static tidal_status parse_decoder(tokenizer *t, const json_t *v, const char *path, int depth)
{
    const char *type;
    char field[256];
    if (depth > MAX_DEPTH) return jv_bad(t->name, path, "Sequence nested too deeply");
    TRY(get_type(t->name, v, path, &type));
    if (!strcmp(type, "ByteLevel")) return TIDAL_OK;
    if (!strcmp(type, "Sequence")) {
        json_t *list = jv_get(v, "decoders");
        snprintf(field, sizeof field, "%s.decoders", path);
        if (!json_is_array(list)) return jv_bad(t->name, field, "must be an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(field, sizeof field, "%s.decoders[%zu]", path, i);
            TRY(parse_decoder(t, json_array_get(list, i), field, depth + 1));
        }
        return TIDAL_OK;
    }
    snprintf(field, sizeof field, "%s.type", path);
    return jv_bad(t->name, field, "\"%s\" is not supported (ByteLevel is)", type);
}

/* A token id named in the file: an integer naming an existing token. */
static tidal_status get_token_id(const tokenizer *t, const json_t *v, const char *field, int32_t *out)
{
    char d[96];
    if (!json_is_integer(v)) {
        jv_describe(v, d, sizeof d);
        return jv_bad(t->name, field, "must be a token id, not %s", d);
    }
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= t->n_ids || !(t->flags[x] & TOKF_EXISTS))
        return jv_bad(t->name, field, "%" JSON_INTEGER_FORMAT " is not a token id", x);
    *out = (int32_t)x;
    return TIDAL_OK;
}

/* TemplateProcessing's "single": the ids before and after $A. */
static tidal_status parse_template(tokenizer *t, const json_t *v, const char *path)
{
    char field[256];
    if (t->pp_ids) return jv_bad(t->name, path, "more than one TemplateProcessing");
    json_t *single = jv_get(v, "single"), *specials = jv_get(v, "special_tokens");
    snprintf(field, sizeof field, "%s.single", path);
    if (!json_is_array(single)) return jv_bad(t->name, field, "must be an array");
    if (specials && !json_is_object(specials)) {
        snprintf(field, sizeof field, "%s.special_tokens", path);
        return jv_bad(t->name, field, "must be an object");
    }
    int32_t buf[64];
    int n = 0, pre = -1;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *item = json_array_get(single, i), *x;
        snprintf(field, sizeof field, "%s.single[%zu]", path, i);
        if ((x = jv_get(item, "Sequence"))) {
            json_t *id = jv_get(x, "id");
            if (!json_is_string(id) || strcmp(json_string_value(id), "A"))
                return jv_bad(t->name, field, "a single-sequence template may only hold Sequence \"A\"");
            if (pre >= 0) return jv_bad(t->name, field, "Sequence \"A\" appears twice");
            pre = n;
        } else if ((x = jv_get(item, "SpecialToken"))) {
            json_t *id = jv_get(x, "id");
            if (!json_is_string(id)) return jv_bad(t->name, field, "SpecialToken.id must be a string");
            json_t *spec = specials ? jv_get(specials, json_string_value(id)) : NULL;
            json_t *ids = spec ? jv_get(spec, "ids") : NULL;
            if (!json_is_array(ids))
                return jv_bad(t->name, field, "special token \"%.60s\" has no ids in special_tokens",
                           json_string_value(id));
            for (size_t j = 0; j < json_array_size(ids); j++) {
                char f2[300];
                snprintf(f2, sizeof f2, "%s.special_tokens[\"%.60s\"].ids[%zu]", path, json_string_value(id), j);
                if (n == (int)(sizeof buf / sizeof buf[0])) return jv_bad(t->name, f2, "too many template ids");
                TRY(get_token_id(t, json_array_get(ids, j), f2, &buf[n]));
                n++;
            }
        } else {
            return jv_bad(t->name, field, "must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
        }
    }
    if (pre < 0) {
        snprintf(field, sizeof field, "%s.single", path);
        return jv_bad(t->name, field, "has no Sequence \"A\"");
    }
    t->pp_ids = malloc((size_t)(n ? n : 1) * sizeof *t->pp_ids);
    if (!t->pp_ids) return nomem(t->name);
    memcpy(t->pp_ids, buf, (size_t)n * sizeof *buf);
    t->n_pre = pre;
    t->n_post = n - pre;
    return TIDAL_OK;
}

/* The post-processor: ByteLevel (offsets only, ignored), at most one
 * TemplateProcessing, or a Sequence of those. */
static tidal_status parse_post(tokenizer *t, const json_t *v, const char *path, int depth)
{
    const char *type;
    char field[256];
    if (depth > MAX_DEPTH) return jv_bad(t->name, path, "Sequence nested too deeply");
    TRY(get_type(t->name, v, path, &type));
    if (!strcmp(type, "ByteLevel")) return TIDAL_OK; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) return parse_template(t, v, path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = jv_get(v, "processors");
        snprintf(field, sizeof field, "%s.processors", path);
        if (!json_is_array(list)) return jv_bad(t->name, field, "must be an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(field, sizeof field, "%s.processors[%zu]", path, i);
            TRY(parse_post(t, json_array_get(list, i), field, depth + 1));
        }
        return TIDAL_OK;
    }
    snprintf(field, sizeof field, "%s.type", path);
    return jv_bad(t->name, field, "\"%s\" is not supported (ByteLevel, TemplateProcessing and Sequence are)", type);
}

/* TIDAL_OK when every byte has a token; else the refusal naming the first
 * byte without one. */
static tidal_status missing_byte(const tokenizer *t)
{
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            char ch[5];
            ch[u8_encode(tok_byte_to_cp[b], ch)] = '\0';
            return jv_bad(t->name, "model.vocab",
                          "has no token for byte 0x%02x (\"%s\"): not a byte-level vocabulary (only a file without "
                          "merges, normalizer, Split steps or prefix space may leave bytes out)",
                          b, ch);
        }
    return TIDAL_OK;
}

/* model: type, options, vocab; the per-id arrays are sized for max_id + 1. */
static tidal_status parse_model(tokenizer *t, const json_t *model, const json_t *added)
{
    const char *name = t->name;
    char d[96];
    if (!json_is_object(model)) {
        jv_describe(model, d, sizeof d);
        return jv_bad(name, "model", "must be an object, not %s", d);
    }
    json_t *type = jv_get(model, "type");
    if (type && !json_is_string(type)) return jv_bad(name, "model.type", "must be a string");
    if (type && strcmp(json_string_value(type), "BPE"))
        return jv_bad(name, "model.type", "\"%s\" is not supported: tidal reads byte-level BPE tokenizers "
                                       "(GPT-2, Llama-3, Qwen2/2.5/3)", json_string_value(type));
    if (!type && !jv_get(model, "merges")) return jv_bad(name, "model.type", "missing, and no merges: not a BPE model");
    bool fallback = false; /* initialised for gcc 12 -O3, as in parse_added */
    TRY(get_bool(name, model, "byte_fallback", "model.byte_fallback", false, &fallback));
    if (fallback)
        return jv_bad(name, "model.byte_fallback", "true (SentencePiece-style BPE) is not supported: tidal reads "
                                                "byte-level BPE tokenizers");
    json_t *drop = jv_get(model, "dropout");
    if (drop && (!json_is_number(drop) || json_number_value(drop) != 0.0))
        return jv_bad(name, "model.dropout", "BPE dropout is not supported (must be null or 0)");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        json_t *a = jv_get(model, affixes[i]);
        char f[64];
        snprintf(f, sizeof f, "model.%s", affixes[i]);
        if (a && (!json_is_string(a) || json_string_length(a) != 0))
            return jv_bad(name, f, "must be null or \"\" (subword affixes are not supported)");
    }
    TRY(get_bool(name, model, "ignore_merges", "model.ignore_merges", false, &t->ignore_merges));

    json_t *vocab = jv_get(model, "vocab");
    if (!json_is_object(vocab)) {
        jv_describe(vocab, d, sizeof d);
        return jv_bad(name, "model.vocab", "must be an object (token -> id), not %s", d);
    }
    /* the largest id among vocab and added tokens */
    json_int_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MAX_VOCAB) {
            jv_describe(val, d, sizeof d);
            return jv_bad(name, "model.vocab", "\"%.60s\": id must be an integer in [0, %d), not %s", key, MAX_VOCAB,
                       d);
        }
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
    }
    if (added) {
        if (!json_is_array(added)) return jv_bad(name, "added_tokens", "must be an array");
        for (size_t i = 0; i < json_array_size(added); i++) {
            json_t *id = jv_get(json_array_get(added, i), "id");
            if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MAX_VOCAB) {
                char f[64];
                snprintf(f, sizeof f, "added_tokens[%zu].id", i);
                jv_describe(id, d, sizeof d);
                return jv_bad(name, f, "must be an integer in [0, %d), not %s", MAX_VOCAB, d);
            }
            if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
        }
    }
    if (max_id < 0) return jv_bad(name, "model.vocab", "is empty");
    if (!tok_alloc_ids(t, (int32_t)max_id + 1)) return nomem(name);

    size_t mapped = 0;
    char *tmp = NULL;
    size_t tmp_cap = 0;
    void *iter = json_object_iter(vocab);
    while (iter) {
        const char *k = json_object_iter_key(iter);
        size_t kn = json_object_iter_key_len(iter);
        int32_t id = (int32_t)json_integer_value(json_object_iter_value(iter));
        if (t->flags[id] & TOKF_EXISTS) {
            free(tmp);
            return jv_bad(name, "model.vocab", "id %d is given to two tokens (\"%.40s\" is the second)", id, k);
        }
        if (kn + 1 > tmp_cap) {
            tmp_cap = 2 * (kn + 1);
            char *nt = realloc(tmp, tmp_cap);
            if (!nt) { free(tmp); return nomem(name); }
            tmp = nt;
        }
        size_t bn;
        bool m = token_to_bytes(k, kn, tmp, &bn);
        if (!tok_set_token(t, id, tmp, bn)) { free(tmp); return nomem(name); }
        t->flags[id] = TOKF_EXISTS | (m ? TOKF_MAPPED : 0);
        mapped += m;
        iter = json_object_iter_next(vocab, iter);
    }
    free(tmp);
    uint32_t cap = 16;
    while (cap < 2 * mapped + 16) cap *= 2;
    t->vmap = malloc(cap * sizeof *t->vmap);
    if (!t->vmap) return nomem(name);
    for (uint32_t i = 0; i < cap; i++) t->vmap[i].id = -1;
    t->vmask = cap - 1;
    for (int32_t id = 0; id < t->n_ids; id++)
        if ((t->flags[id] & TOKF_MAPPED) && vocab_find(t, t->bytes + t->tb_off[id], t->tb_len[id]) < 0)
            vocab_insert(t, id);
    for (int b = 0; b < 256; b++) { /* a byte without a token: see one_token_per_byte */
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = vocab_find(t, &c, 1);
    }
    /* with merges it cannot be one token per byte: say so before the merges name a missing token */
    return json_array_size(jv_get(model, "merges")) ? missing_byte(t) : TIDAL_OK;
}

/* A vocabulary that lacks a token for some byte is read only when the file
 * encodes one token per byte - no merges, no normalizer, no Split steps,
 * ByteLevel without a prefix space: tidal's alphabet tokenizer written out
 * (tokenizer_json_text). It then encodes as that tokenizer does, refusing a
 * byte outside the vocabulary (Hugging Face would drop it silently). Any
 * other file must hold every byte, named in the error otherwise. */
static tidal_status one_token_per_byte(tokenizer *t, const json_t *model)
{
    bool every_byte = true;
    for (int b = 0; b < 256; b++) every_byte = every_byte && t->byte_id[b] >= 0;
    if (every_byte) return TIDAL_OK;
    const json_t *merges = jv_get(model, "merges");
    if (json_array_size(merges) == 0 && t->n_norm == 0 && t->n_split == 0 && !t->bl_prefix && !t->ignore_merges) {
        t->bpe = false;
        return TIDAL_OK;
    }
    return missing_byte(t);
}

/* The vocabulary id of token s[0..n), named in merge i; an error when the
 * vocabulary has no such token. */
static tidal_status vocab_id_of(const tokenizer *t, const json_t *vocab, const char *s, size_t n, size_t i,
                                int32_t *out)
{
    json_t *v = json_object_getn(vocab, s, n);
    if (!v) {
        char f[64];
        snprintf(f, sizeof f, "model.merges[%zu]", i);
        return jv_bad(t->name, f, "\"%.*s\" is not in the vocabulary", (int)(n > 60 ? 60 : n), s);
    }
    *out = (int32_t)json_integer_value(v);
    return TIDAL_OK;
}

/* model.merges ("a b" strings or [a, b] pairs) into the merge table, rank
 * = position; both parts and their concatenation must be tokens. */
static tidal_status parse_merges(tokenizer *t, const json_t *model)
{
    const char *name = t->name;
    json_t *merges = jv_get(model, "merges");
    json_t *vocab = jv_get(model, "vocab");
    if (merges && !json_is_array(merges)) return jv_bad(name, "model.merges", "must be an array");
    size_t n = merges ? json_array_size(merges) : 0;
    if (n >= RANK_NONE) return jv_bad(name, "model.merges", "too many merges");
    int bits = 4;
    while (((uint64_t)1 << bits) < 2 * (uint64_t)n + 16) bits++;
    t->mmask = ((uint64_t)1 << bits) - 1;
    t->mshift = 64 - bits;
    t->mmap = malloc(((size_t)t->mmask + 1) * sizeof *t->mmap);
    if (!t->mmap) return nomem(name);
    for (uint64_t i = 0; i <= t->mmask; i++) t->mmap[i].key = UINT64_MAX;
    char *cat = NULL;
    size_t cat_cap = 0;
    tidal_status st = TIDAL_OK;
    for (size_t i = 0; i < n && st == TIDAL_OK; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t an, bn;
        char f[64];
        snprintf(f, sizeof f, "model.merges[%zu]", i);
        if (json_is_string(m)) {
            a = str_n(m, &an);
            const char *sp = memchr(a, ' ', an);
            if (!sp || memchr(sp + 1, ' ', an - (size_t)(sp - a) - 1)) {
                st = jv_bad(name, f, "\"%.60s\" is not two tokens separated by one space", a);
                break;
            }
            b = sp + 1;
            bn = an - (size_t)(b - a);
            an = (size_t)(sp - a);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = str_n(json_array_get(m, 0), &an);
            b = str_n(json_array_get(m, 1), &bn);
        } else {
            st = jv_bad(name, f, "must be \"a b\" or [\"a\", \"b\"]");
            break;
        }
        if (!an || !bn) { st = jv_bad(name, f, "has an empty token"); break; }
        int32_t ia = 0, ib = 0, ic;
        if ((st = vocab_id_of(t, vocab, a, an, i, &ia)) != TIDAL_OK) break;
        if ((st = vocab_id_of(t, vocab, b, bn, i, &ib)) != TIDAL_OK) break;
        if (an + bn > cat_cap) {
            cat_cap = 2 * (an + bn);
            char *nc = realloc(cat, cat_cap);
            if (!nc) { st = nomem(name); break; }
            cat = nc;
        }
        memcpy(cat, a, an);
        memcpy(cat + an, b, bn);
        json_t *c = json_object_getn(vocab, cat, an + bn);
        if (!c) {
            st = jv_bad(name, f, "the merged token \"%.*s\" is not in the vocabulary", (int)(an + bn > 60 ? 60 : an + bn),
                     cat);
            break;
        }
        ic = (int32_t)json_integer_value(c);
        merge_put(t, ia, ib, (uint32_t)i, ic);
    }
    free(cat);
    return st;
}

/* added_tokens: each content becomes its id's bytes (a vocabulary token of
 * the same id must hold the same text), its flags, and a trie entry. */
static tidal_status parse_added(tokenizer *t, const json_t *added)
{
    const char *name = t->name;
    for (size_t i = 0; added && i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        char f[96];
        snprintf(f, sizeof f, "added_tokens[%zu]", i);
        if (!json_is_object(a)) return jv_bad(name, f, "must be an object");
        int32_t id = (int32_t)json_integer_value(jv_get(a, "id")); /* range checked by parse_model */
        json_t *content = jv_get(a, "content");
        snprintf(f, sizeof f, "added_tokens[%zu].content", i);
        if (!json_is_string(content) || json_string_length(content) == 0)
            return jv_bad(name, f, "must be a non-empty string");
        size_t cn;
        const char *c = str_n(content, &cn);
        /* initialised: gcc 12 -O3 cannot see through TRY that get_bool sets them */
        bool special = false, lstrip = false, rstrip = false, single = false;
        snprintf(f, sizeof f, "added_tokens[%zu].special", i);
        TRY(get_bool(name, a, "special", f, false, &special));
        snprintf(f, sizeof f, "added_tokens[%zu].lstrip", i);
        TRY(get_bool(name, a, "lstrip", f, false, &lstrip));
        snprintf(f, sizeof f, "added_tokens[%zu].rstrip", i);
        TRY(get_bool(name, a, "rstrip", f, false, &rstrip));
        snprintf(f, sizeof f, "added_tokens[%zu].single_word", i);
        TRY(get_bool(name, a, "single_word", f, false, &single));
        if (single) return jv_bad(name, f, "true is not supported");
        snprintf(f, sizeof f, "added_tokens[%zu]", i);
        if (t->flags[id] & TOKF_EXISTS) {
            /* also a vocabulary token (GPT-2's <|endoftext|>): must be the same text */
            bool same = t->tb_len[id] == cn && memcmp(t->bytes + t->tb_off[id], c, cn) == 0;
            if (!same && !(t->flags[id] & TOKF_ADDED))
                return jv_bad(name, f, "id %d is the vocabulary token \"%.*s\", not \"%.40s\"", id,
                           (int)(t->tb_len[id] > 40 ? 40 : t->tb_len[id]), t->bytes + t->tb_off[id], c);
            if (!same && !tok_set_token(t, id, c, cn)) return nomem(name);
        } else if (!tok_set_token(t, id, c, cn)) {
            return nomem(name);
        }
        t->flags[id] = (uint8_t)((t->flags[id] & TOKF_MAPPED) | TOKF_EXISTS | TOKF_ADDED |
                                 (special ? TOKF_SPECIAL : 0) | (lstrip ? TOKF_LSTRIP : 0) |
                                 (rstrip ? TOKF_RSTRIP : 0));
        if (!tok_trie_add(t, (const uint8_t *)c, cn, id)) return nomem(name);
    }
    return TIDAL_OK;
}

/* bos_token / eos_token of tokenizer_config.json: a string, or an object
 * with "content" (the AddedToken form); null or absent: -1. */
static tidal_status config_token(const tokenizer *t, const char *cname, const json_t *root, const char *key,
                                 int32_t *out)
{
    json_t *v = jv_get(root, key);
    *out = -1;
    if (!v) return TIDAL_OK;
    if (json_is_object(v)) v = jv_get(v, "content");
    if (!json_is_string(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return jv_bad(cname, key, "must be a token string or {\"content\": ...}, not %s", d);
    }
    int32_t id = tokenizer_token_id(t, json_string_value(v));
    if (id < 0 || strlen(json_string_value(v)) != json_string_length(v))
        return jv_bad(cname, key, "\"%.60s\" is not a token of %s", json_string_value(v), t->name);
    *out = id;
    return TIDAL_OK;
}

/* tokenizer_config.json text (cname labels errors): bos_token, eos_token
 * and chat_template (read by chat_template_of_config, model/chat.h). */
static tidal_status parse_config(tokenizer *t, const char *json, size_t len, const char *cname)
{
    json_error_t jerr;
    /* integers as reals: Llama-3 sets model_max_length to 1e30 as an integer */
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: JSON at line %d column %d: %s", cname, jerr.line, jerr.column,
                          jerr.text);
    tidal_status st = TIDAL_OK;
    if (!json_is_object(root)) st = jv_bad(cname, "(top level)", "must be an object");
    if (st == TIDAL_OK) st = config_token(t, cname, root, "bos_token", &t->bos);
    if (st == TIDAL_OK) st = config_token(t, cname, root, "eos_token", &t->eos);
    const char *tpl = NULL;
    if (st == TIDAL_OK) st = chat_template_of_config(root, cname, &tpl);
    if (st == TIDAL_OK && tpl) {
        t->chat_template = strdup(tpl);
        if (!t->chat_template) st = nomem(cname);
    }
    json_decref(root);
    return st;
}

/* The whole tokenizer.json object, in dependency order: model and added
 * ids first (they size the tables), then merges, added tokens, normalizer,
 * pre-tokenizer, post-processor and decoder. */
static tidal_status parse_root(tokenizer *t, const json_t *root)
{
    const char *name = t->name;
    if (!json_is_object(root)) return jv_bad(name, "(top level)", "must be an object");
    json_t *model = jv_get(root, "model"), *added = jv_get(root, "added_tokens");
    TRY(parse_model(t, model, added));
    TRY(parse_merges(t, model));
    TRY(parse_added(t, added));
    json_t *norm = jv_get(root, "normalizer");
    if (norm) TRY(parse_normalizer(t, norm, "normalizer", 0));
    json_t *pre = jv_get(root, "pre_tokenizer");
    if (!pre) return jv_bad(name, "pre_tokenizer", "missing: a byte-level BPE needs a ByteLevel pre-tokenizer");
    TRY(parse_pretok(t, pre, "pre_tokenizer", 0));
    if (!t->bl_seen) return jv_bad(name, "pre_tokenizer", "has no ByteLevel step: not a byte-level BPE tokenizer");
    json_t *post = jv_get(root, "post_processor");
    if (post) TRY(parse_post(t, post, "post_processor", 0));
    json_t *dec = jv_get(root, "decoder");
    if (dec) TRY(parse_decoder(t, dec, "decoder", 0));
    t->bpe = true;
    return one_token_per_byte(t, model);
}

tidal_status tokenizer_load_buffer(const char *json, size_t len, const char *config, size_t config_len,
                                   const char *name, tokenizer **out)
{
    *out = NULL;
    if (!name) name = "tokenizer.json";
    if (!json) return tidal_fail(TIDAL_ERR_INVALID, "%s: no text", name);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: JSON at line %d column %d: %s", name, jerr.line, jerr.column,
                          jerr.text);
    tokenizer *t = tok_new(name);
    if (!t) { json_decref(root); return nomem(name); }
    tidal_status st = parse_root(t, root);
    json_decref(root);
    if (st == TIDAL_OK && config) {
        char cname[1024];
        const char *slash = strrchr(name, '/');
        snprintf(cname, sizeof cname, "%.*stokenizer_config.json", slash ? (int)(slash - name + 1) : 0, name);
        st = parse_config(t, config, config_len, cname);
    }
    if (st != TIDAL_OK) { tokenizer_free(t); return st; }
    *out = t;
    return TIDAL_OK;
}

/* Read a whole file; NOT_FOUND when absent. */
static tidal_status read_file(const char *path, char **buf, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: open: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, fp);
        if (n < cap) break;
        if (cap >= MAX_FILE) {
            free(b);
            fclose(fp);
            return tidal_fail(TIDAL_ERR_INVALID, "%s: larger than 1 GB", path);
        }
        char *nb = realloc(b, cap * 2);
        if (!nb) { free(b); b = NULL; break; }
        b = nb;
        cap *= 2;
    }
    bool err = ferror(fp);
    fclose(fp);
    if (!b) return tidal_fail(TIDAL_ERR_NOMEM, "%s: read: out of memory", path);
    if (err) { free(b); return tidal_fail(TIDAL_ERR_IO, "%s: read error", path); }
    *buf = b;
    *len = n;
    return TIDAL_OK;
}

tidal_status tokenizer_load(const char *path, tokenizer **out)
{
    *out = NULL;
    if (!path) return tidal_fail(TIDAL_ERR_INVALID, "tokenizer_load: NULL path");
    struct stat sb;
    char file[4200], dir[4096];
    if (stat(path, &sb) != 0)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        size_t pl = strlen(path);
        while (pl > 1 && path[pl - 1] == '/') pl--;
        if (pl >= sizeof dir - 1) return tidal_fail(TIDAL_ERR_INVALID, "%s: path too long", path);
        snprintf(dir, sizeof dir, "%.*s", (int)pl, path);
        snprintf(file, sizeof file, "%s/tokenizer.json", dir);
    } else {
        snprintf(file, sizeof file, "%s", path);
        const char *slash = strrchr(path, '/');
        if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
        else snprintf(dir, sizeof dir, ".");
    }
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    TRY(read_file(file, &json, &len));
    char cfg_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", dir);
    tidal_status st = read_file(cfg_path, &cfg, &cfg_len);
    if (st == TIDAL_ERR_NOT_FOUND) { cfg = NULL; st = TIDAL_OK; tidal_clear(); }
    if (st == TIDAL_OK) {
        tokenizer *t = NULL;
        st = tokenizer_load_buffer(json, len, NULL, 0, file, &t);
        if (st == TIDAL_OK && cfg) {
            st = parse_config(t, cfg, cfg_len, cfg_path);
            if (st != TIDAL_OK) { tokenizer_free(t); t = NULL; }
        }
        *out = t;
    }
    free(json);
    free(cfg);
    return st;
}

