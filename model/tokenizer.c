/* tokenizer.c - the tokenizer's public API (see tokenizer.h): encode,
 * decode, the vocabulary and special tokens, and a tokenizer's lifetime,
 * including the byte-level and alphabet tokenizers of tiny models.
 *
 * The work is split over three files that share tokenizer_internal.h:
 *   tokenizer.c       this file: the API, the token arena and the added-token
 *                     trie every constructor fills, and freeing;
 *   bpe.c             the encoding core (added tokens, normalization,
 *                     pre-tokenization, BPE; its top comment gives the steps);
 *   tokenizer_json.c  loading Hugging Face tokenizer.json and
 *                     tokenizer_config.json (tokenizer_load, _load_buffer).
 *
 * Every token's exact bytes are computed at load time (the inverse
 * byte-to-unicode mapping; an added token is its content); decoding
 * concatenates them. A token string holding a character outside the mapping
 * decodes to its UTF-8 text, as Hugging Face's ByteLevel decoder does.
 *
 * Thread safety: the tokenizer is read-only after loading; encode borrows a
 * scratch block from the tokenizer's mutex-protected pool (bpe.c) per call.
 */
#include "model/tokenizer_internal.h"

/* ------------------------------------------------------------------ tables */

/* Append bytes to the token arena; *off gets their offset. */
static bool arena_add(tokenizer *t, const void *p, size_t n, uint32_t *off)
{
    if (t->bytes_len + n + 1 > t->bytes_cap) {
        size_t cap = t->bytes_cap ? t->bytes_cap : 1 << 16;
        while (t->bytes_len + n + 1 > cap) cap *= 2;
        if (cap > UINT32_MAX) return false;
        char *nb = realloc(t->bytes, cap);
        if (!nb) return false;
        t->bytes = nb;
        t->bytes_cap = cap;
    }
    memcpy(t->bytes + t->bytes_len, p, n);
    *off = (uint32_t)t->bytes_len;
    t->bytes_len += n;
    return true;
}

/* Contract in tokenizer_internal.h. */
bool tok_trie_add(tokenizer *t, const uint8_t *s, size_t n, int32_t id)
{
    if (!t->trie) {
        t->trie_cap = 64;
        t->trie = calloc((size_t)t->trie_cap, sizeof *t->trie);
        if (!t->trie) return false;
        t->trie[0].id = -1;
        t->n_trie = 1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->trie[node].child;
        while (c && t->trie[c].byte != s[i]) c = t->trie[c].sibling;
        if (!c) {
            if (t->n_trie == t->trie_cap) {
                if (t->trie_cap > INT32_MAX / 2) return false;
                trie_node *nt = realloc(t->trie, 2 * (size_t)t->trie_cap * sizeof *nt);
                if (!nt) return false;
                t->trie = nt;
                t->trie_cap *= 2;
            }
            c = t->n_trie++;
            t->trie[c] = (trie_node){.child = 0, .sibling = t->trie[node].child, .id = -1, .byte = s[i]};
            t->trie[node].child = c;
        }
        node = c;
    }
    t->trie[node].id = id;
    if (!t->first_byte[s[0]]) {
        t->first_byte[s[0]] = true;
        t->n_first++;
        t->only_first = s[0];
    }
    return true;
}

/* ------------------------------------------------------------------ output */

void tok_ids_free(tok_ids *v)
{
    if (!v) return;
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

void tok_bytes_free(tok_bytes *b)
{
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Append p[0..n) to *b, keeping it NUL-terminated; false when memory is
 * short (*b unchanged). */
static bool bytes_append(tok_bytes *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return false;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

/* ------------------------------------------------------------------ encoding */

/* The encoding core is bpe.c's; this adds what the post-processor puts
 * around a single sequence (step 5) and owns the scratch block. */
tidal_status tokenizer_encode(tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *out)
{
    if (!t || !out || (!text && len)) return tidal_fail(TIDAL_ERR_INVALID, "tokenizer_encode: NULL argument");
    if (len > INT32_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: encode: a text of %zu bytes (2 GB at most)", t->name, len);
    scratch *s = tok_scratch_get(t);
    if (!s) return nomem(t->name);
    size_t n0 = out->n;
    tidal_status st = TIDAL_OK;
    if (add_special && t->n_pre) {
        if (!ids_reserve(out, (size_t)t->n_pre)) st = nomem(t->name);
        else for (int i = 0; i < t->n_pre; i++) out->ids[out->n++] = t->pp_ids[i];
    }
    if (st == TIDAL_OK && len) st = tok_encode_text(t, s, text, len, out);
    if (st == TIDAL_OK && add_special && t->n_post) {
        if (!ids_reserve(out, (size_t)t->n_post)) st = nomem(t->name);
        else for (int i = 0; i < t->n_post; i++) out->ids[out->n++] = t->pp_ids[t->n_pre + i];
    }
    tok_scratch_put(t, s);
    if (st != TIDAL_OK) out->n = n0;
    return st;
}

/* ------------------------------------------------------------------ decoding and queries */

tidal_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, tok_bytes *out)
{
    if (!t || !out || (!ids && n)) return tidal_fail(TIDAL_ERR_INVALID, "tokenizer_decode: NULL argument");
    size_t len0 = out->len;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !(t->flags[id] & TOKF_EXISTS)) {
            out->len = len0;
            if (out->data) out->data[len0] = '\0';
            return tidal_fail(TIDAL_ERR_INVALID, "%s: decode: ids[%zu] = %d is not a token (vocab size %d)",
                              t->name, i, id, t->n_ids);
        }
        total += t->tb_len[id];
    }
    if (!bytes_append(out, NULL, 0)) return nomem(t->name);
    if (out->len + total + 1 > out->cap) {
        size_t cap = out->cap;
        while (cap < out->len + total + 1) cap *= 2;
        char *d = realloc(out->data, cap);
        if (!d) return nomem(t->name);
        out->data = d;
        out->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(out->data + out->len, t->bytes + t->tb_off[ids[i]], t->tb_len[ids[i]]);
        out->len += t->tb_len[ids[i]];
    }
    out->data[out->len] = '\0';
    return TIDAL_OK;
}

const char *tokenizer_token_bytes(const tokenizer *t, int32_t id, size_t *len)
{
    if (!t || id < 0 || id >= t->n_ids || !(t->flags[id] & TOKF_EXISTS)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->tb_len[id];
    return t->bytes + t->tb_off[id];
}

int32_t tokenizer_vocab_size(const tokenizer *t) { return t ? t->n_ids : 0; }

int32_t tokenizer_token_id(const tokenizer *t, const char *text)
{
    if (!t || !text) return -1;
    size_t n = strlen(text);
    if (n && t->trie) {
        int32_t id = -1;
        if (trie_match(t, (const uint8_t *)text, n, &id) == n) return id;
    }
    if (!t->bpe) return n == 1 ? t->byte_id[(uint8_t)text[0]] : -1;
    return vocab_find(t, text, n);
}

bool tokenizer_is_special(const tokenizer *t, int32_t id)
{
    return t && id >= 0 && id < t->n_ids && (t->flags[id] & TOKF_SPECIAL);
}

int32_t tokenizer_bos_id(const tokenizer *t) { return t ? t->bos : -1; }
int32_t tokenizer_eos_id(const tokenizer *t) { return t ? t->eos : -1; }
const char *tokenizer_chat_template(const tokenizer *t) { return t ? t->chat_template : NULL; }
const char *tokenizer_name(const tokenizer *t) { return t ? t->name : ""; }

/* ------------------------------------------------------------------ lifetime */

/* Contract in tokenizer_internal.h. */
tokenizer *tok_new(const char *name)
{
    tok_tables_init();
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->name = strdup(name ? name : "tokenizer.json");
    if (!t->name) { free(t); return NULL; }
    t->bos = t->eos = -1;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    tok_scratch_pool_free(t);
    for (int i = 0; i < t->n_split; i++) pcre2_code_free(t->split[i].re);
    pcre2_code_free(t->bl_regex.re);
    pthread_mutex_destroy(&t->lock);
    free(t->name);
    free(t->tb_off);
    free(t->tb_len);
    free(t->bytes);
    free(t->flags);
    free(t->vmap);
    free(t->mmap);
    free(t->trie);
    free(t->pp_ids);
    free(t->chat_template);
    free(t);
}

/* Room for ids [0, n) in the per-id arrays (contract in tokenizer_internal.h). */
bool tok_alloc_ids(tokenizer *t, int32_t n)
{
    t->n_ids = n;
    t->tb_off = calloc((size_t)n, sizeof *t->tb_off);
    t->tb_len = calloc((size_t)n, sizeof *t->tb_len);
    t->flags = calloc((size_t)n, 1);
    return t->tb_off && t->tb_len && t->flags;
}

/* Contract in tokenizer_internal.h. */
bool tok_set_token(tokenizer *t, int32_t id, const void *p, size_t n)
{
    uint32_t off;
    if (!arena_add(t, p, n, &off)) return false;
    t->tb_off[id] = off;
    t->tb_len[id] = (uint32_t)n;
    return true;
}

/* The special tokens of the tiny models' tokenizers, after their bytes. */
static const char *const byte_level_specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

tidal_status tokenizer_byte_level(tokenizer **out)
{
    *out = NULL;
    tokenizer *t = tok_new("byte-level");
    if (!t || !tok_alloc_ids(t, TOKENIZER_BYTE_LEVEL_VOCAB)) { tokenizer_free(t); return nomem("byte-level"); }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        if (!tok_set_token(t, b, &c, 1)) { tokenizer_free(t); return nomem("byte-level"); }
        t->flags[b] = TOKF_EXISTS;
        t->byte_id[b] = b;
    }
    for (int i = 0; i < 3; i++) {
        const char *s = byte_level_specials[i];
        if (!tok_set_token(t, 256 + i, s, strlen(s)) || !tok_trie_add(t, (const uint8_t *)s, strlen(s), 256 + i)) {
            tokenizer_free(t);
            return nomem("byte-level");
        }
        t->flags[256 + i] = TOKF_EXISTS | TOKF_ADDED | TOKF_SPECIAL;
    }
    t->eos = 256;
    *out = t;
    return TIDAL_OK;
}

tidal_status tokenizer_alphabet(const char *alphabet, tokenizer **out)
{
    *out = NULL;
    bool seen[256] = {false};
    int n = 0;
    for (const uint8_t *c = (const uint8_t *)alphabet; *c; c++) {
        if (seen[*c]) return tidal_fail(TIDAL_ERR_INVALID, "alphabet tokenizer: byte 0x%02x twice", *c);
        seen[*c] = true, n++;
    }
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "alphabet tokenizer: the alphabet is empty");
    tokenizer *t = tok_new("alphabet");
    if (!t || !tok_alloc_ids(t, n + 3)) { tokenizer_free(t); return nomem("alphabet"); }
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    int id = 0;
    for (const uint8_t *c = (const uint8_t *)alphabet; *c; c++, id++) {
        if (!tok_set_token(t, id, c, 1)) { tokenizer_free(t); return nomem("alphabet"); }
        t->flags[id] = TOKF_EXISTS;
        t->byte_id[*c] = id;
    }
    for (int i = 0; i < 3; i++) {
        const char *sp = byte_level_specials[i];
        if (!tok_set_token(t, n + i, sp, strlen(sp)) || !tok_trie_add(t, (const uint8_t *)sp, strlen(sp), n + i)) {
            tokenizer_free(t);
            return nomem("alphabet");
        }
        t->flags[n + i] = TOKF_EXISTS | TOKF_ADDED | TOKF_SPECIAL;
    }
    t->eos = n;
    *out = t;
    return TIDAL_OK;
}
