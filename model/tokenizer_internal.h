/* tokenizer_internal.h - the tokenizer's private structures, shared by
 * model/tokenizer.c (the public API: encode, decode, special tokens,
 * lifetime), model/bpe.c (the encoding core: added-token matching,
 * normalization, pre-tokenization, BPE) and model/tokenizer_json.c (loading
 * Hugging Face tokenizer.json and tokenizer_config.json) - and by no other
 * file. Nothing outside those three includes it (docs/architecture.md).
 *
 * The helpers the encoding hot path calls across the files (hashing, UTF-8,
 * vocabulary and merge-table lookups, the added-token trie, appending ids)
 * are static inline here, so splitting the tokenizer into three files costs
 * no call the single file did not make.
 */
#ifndef TIDAL_MODEL_TOKENIZER_INTERNAL_H
#define TIDAL_MODEL_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "model/tokenizer.h"

#define MAX_STEPS 16 /* normalizer / pre-tokenizer steps */

#define TOKF_EXISTS 1u
#define TOKF_ADDED 2u
#define TOKF_SPECIAL 4u
#define TOKF_LSTRIP 8u
#define TOKF_RSTRIP 16u
#define TOKF_MAPPED 32u /* a model-vocabulary token made only of byte-level characters */

#define RANK_NONE UINT32_MAX

typedef enum { NORM_NFC = 1, NORM_NFD, NORM_NFKC, NORM_NFKD } norm_kind;

typedef enum {
    SPLIT_ISOLATED,
    SPLIT_REMOVED,
    SPLIT_MERGED_PREVIOUS,
    SPLIT_MERGED_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior;

typedef struct {
    pcre2_code *re;
    bool jit;
    split_behavior behavior;
    bool invert;
} split_step;

typedef struct {
    uint64_t key; /* (a << 32 | b); UINT64_MAX when empty */
    uint32_t rank;
    int32_t id;
} merge_slot;

typedef struct {
    uint32_t hash;
    int32_t id; /* -1 when empty */
} vocab_slot;

typedef struct {
    int32_t child, sibling; /* node indices; 0 = none (the root is never a child) */
    int32_t id;             /* the added token ending here, or -1 */
    uint8_t byte;
} trie_node;

/* scratch space of one encode call (PCRE2 match data, BPE arrays, word
 * cache); defined and managed in bpe.c */
typedef struct scratch scratch;

struct tokenizer {
    char *name;
    bool bpe; /* false: the byte-level tokenizer of tiny models */
    int32_t n_ids;
    uint32_t *tb_off, *tb_len; /* [n_ids] each token's bytes in `bytes` */
    char *bytes;
    size_t bytes_len, bytes_cap;
    uint8_t *flags; /* [n_ids] TOKF_* */
    int32_t byte_id[256];
    /* raw bytes -> id for TOKF_MAPPED tokens */
    vocab_slot *vmap;
    uint32_t vmask;
    /* merges */
    merge_slot *mmap;
    uint64_t mmask;
    int mshift;
    bool ignore_merges;
    /* added tokens */
    trie_node *trie;
    int32_t n_trie, trie_cap;
    bool first_byte[256];
    int n_first;       /* distinct first bytes of added tokens */
    uint8_t only_first; /* the first byte when n_first == 1 */
    /* normalizers and pre-tokenizer */
    int n_norm;
    norm_kind norm[MAX_STEPS];
    int n_split;
    split_step split[MAX_STEPS];
    bool bl_seen, bl_prefix, bl_use_regex;
    split_step bl_regex;
    /* post-processor (TemplateProcessing, single sequence) */
    int32_t *pp_ids;
    int n_pre, n_post;
    int32_t bos, eos;
    char *chat_template;
    pthread_mutex_t lock;
    scratch *pool;
};

/* ------------------------------------------------------------------ shared helpers */

/* Record and return TIDAL_ERR_NOMEM "NAME: out of memory". */
static inline tidal_status nomem(const char *name) { return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", name); }

/* A 64-bit finalizer (xor-shift-multiply) for hash_bytes. */
static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

/* A fast, non-cryptographic 64-bit hash of data[0..n), for the vocabulary
 * map and the word cache (same bytes, same hash, in every process). */
static inline uint64_t hash_bytes(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    h = (h ^ v) * 0x94d049bb133111ebull;
    return mix64(h);
}

/* Length of the valid UTF-8 character at s (n bytes available), or 0 when
 * the bytes there are not one (bad lead, truncated, overlong, surrogate,
 * above U+10FFFF) - the same rules PCRE2 checks. */
static inline size_t u8_char(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        uint32_t v = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return 0;
        *cp = v;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        uint32_t v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                     ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF) return 0;
        *cp = v;
        return 4;
    }
    return 0;
}

/* The id of the model-vocabulary token (TOKF_MAPPED) whose raw bytes are
 * p[0..n); -1 when none, or before the vocabulary is loaded. */
static inline int32_t vocab_find(const tokenizer *t, const void *p, size_t n)
{
    if (!t->vmap) return -1;
    uint64_t h = hash_bytes(p, n);
    uint32_t h32 = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->vmask;; i = (i + 1) & t->vmask) {
        const vocab_slot *s = &t->vmap[i];
        if (s->id < 0) return -1;
        if (s->hash == h32 && t->tb_len[s->id] == n && memcmp(t->bytes + t->tb_off[s->id], p, n) == 0)
            return s->id;
    }
}

/* The merge table's key of the pair (a, b), and its first probe slot. */
static inline uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static inline uint64_t merge_index(const tokenizer *t, uint64_t key)
{
    return (key * 0x9e3779b97f4a7c15ull) >> t->mshift;
}

/* The longest added token at s; its length (0: none) and *id. */
static inline size_t trie_match(const tokenizer *t, const uint8_t *s, size_t n, int32_t *id)
{
    size_t best = 0;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->trie[node].child;
        while (c && t->trie[c].byte != s[i]) c = t->trie[c].sibling;
        if (!c) break;
        node = c;
        if (t->trie[node].id >= 0) { best = i + 1; *id = t->trie[node].id; }
    }
    return best;
}

/* Room for `extra` more ids in *v (grown by doubling); false when memory
 * is short (*v unchanged). */
static inline bool ids_reserve(tok_ids *v, size_t extra)
{
    if (v->n + extra <= v->cap) return true;
    size_t cap = v->cap ? v->cap : 64;
    while (cap < v->n + extra) cap *= 2;
    int32_t *p = realloc(v->ids, cap * sizeof *p);
    if (!p) return false;
    v->ids = p;
    v->cap = cap;
    return true;
}

/* Append one id; false when memory is short. */
static inline bool ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap && !ids_reserve(v, 1)) return false;
    v->ids[v->n++] = id;
    return true;
}

/* ------------------------------------------------------------------ bpe.c */

/* GPT-2's bytes_to_unicode and its inverse (-1: not a byte-level
 * character), filled by tok_tables_init. */
extern uint32_t tok_byte_to_cp[256];
extern int16_t tok_cp_to_byte[324];

/* Build the byte-level mapping and the NFC quick-check table, once per
 * process (pthread_once); every constructor calls it first. */
void tok_tables_init(void);

/* A scratch block from t's pool, or a new one; NULL when memory is short.
 * Give it back with tok_scratch_put; tokenizer_free frees the pool with
 * tok_scratch_pool_free. */
scratch *tok_scratch_get(tokenizer *t);
void tok_scratch_put(tokenizer *t, scratch *s);
void tok_scratch_pool_free(tokenizer *t);

/* Encode text p[0..n) (steps 1-4 of bpe.c's comment: added tokens, then
 * normalize, pre-tokenize and BPE-merge what lies between them), appending
 * the ids to *out with s as working memory. On error *out may hold part of
 * the ids; the caller restores its length. */
tidal_status tok_encode_text(tokenizer *t, scratch *s, const char *p, size_t n, tok_ids *out);

/* ------------------------------------------------------------------ tokenizer.c */

/* A tokenizer with nothing loaded: name (NULL: "tokenizer.json"), no bos or
 * eos, an empty pool; NULL when memory is short. Free with tokenizer_free. */
tokenizer *tok_new(const char *name);

/* Room for ids [0, n) in the per-id arrays (zeroed: no token exists yet);
 * false when memory is short. */
bool tok_alloc_ids(tokenizer *t, int32_t n);

/* Make id's bytes p[0..n) (copied into the token arena); false when memory
 * is short or the arena would pass 4 GB. */
bool tok_set_token(tokenizer *t, int32_t id, const void *p, size_t n);

/* Insert an added token's bytes s[0..n) (n >= 1) into the trie the encoder
 * matches first (a later duplicate wins); false when memory is short. */
bool tok_trie_add(tokenizer *t, const uint8_t *s, size_t n, int32_t id);

#endif
