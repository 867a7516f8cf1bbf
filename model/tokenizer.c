/* tokenizer.c - Hugging Face byte-level BPE tokenizers and the byte-level
 * tokenizer of tiny models (see tokenizer.h).
 *
 * Encoding runs the steps of the Hugging Face `tokenizers` library:
 *   1. Added tokens. The raw text is cut at every added-token string, the
 *      leftmost match first and the longest of those (a byte trie); each
 *      match becomes its id (lstrip / rstrip swallow the whitespace beside
 *      it). Both special and non-special added tokens are matched on the raw
 *      text (Hugging Face matches `normalized: true` ones after normalizing;
 *      the families read here mark theirs `normalized: false`, or declare no
 *      normalizer).
 *   2. Each remaining section is cut into runs of valid UTF-8 and runs of
 *      invalid bytes. An invalid run skips 3 and 4 and is BPE-encoded as one
 *      piece of raw bytes, so every input round-trips.
 *   3. A valid run goes through the normalizers (NFC, NFD, NFKC, NFKD via
 *      utf8proc; NFC is skipped when a precomputed table says the text is
 *      already NFC) and the pre-tokenizer: Split steps in file order (the
 *      pattern compiled as written with PCRE2 UTF + UCP, JIT-compiled; every
 *      delimiter behaviour, invert), then ByteLevel (an optional prefix
 *      space, the GPT-2 regex when use_regex is true). Steps run
 *      depth-first over the pieces, so no piece list is ever built.
 *   4. Each piece's bytes are BPE-merged: byte ids from the GPT-2
 *      byte-to-unicode mapping, then repeatedly the adjacent pair of lowest
 *      merge rank, leftmost first (a linear scan for short words, a binary
 *      heap over a linked list for long ones). Ranks live in an
 *      open-addressing table keyed by (left id << 32 | right id); a
 *      duplicated merge keeps its last rank, as in Hugging Face. With
 *      ignore_merges a piece that is itself a vocabulary token is that
 *      token. Results for words up to CACHE_WORD_MAX bytes are cached.
 *   5. With add_special, the ids TemplateProcessing puts around a single
 *      sequence.
 *
 * Every token's exact bytes are computed at load time (the inverse
 * byte-to-unicode mapping; an added token is its content); decoding
 * concatenates them. A token string holding a character outside the mapping
 * decodes to its UTF-8 text, as Hugging Face's ByteLevel decoder does.
 *
 * Thread safety: the tokenizer is read-only after loading; per-call state
 * (PCRE2 match data and JIT stack, BPE arrays, the word cache) lives in
 * scratch blocks taken from and returned to a mutex-protected pool.
 */
#include "base/json.h"
#include "model/chat.h"
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#define MAX_VOCAB (1 << 24)      /* ids must be below this (Qwen: 151,669; Llama-3: 128,256) */
#define MAX_STEPS 16             /* normalizer / pre-tokenizer steps */
#define MAX_DEPTH 8              /* nesting of Sequence */
#define MAX_FILE (1u << 30)      /* tokenizer.json size cap (Qwen's is 11 MB) */
#define CACHE_WORD_MAX 64        /* longest word (bytes) the BPE cache keeps */
#define CACHE_SLOTS (1u << 16)   /* word cache slots per scratch block; cleared at half full */
#define BPE_SMALL 48             /* words up to this many bytes use the linear-scan merge */

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

typedef struct {
    uint64_t hash;
    uint32_t word_off, ids_off;
    uint16_t word_len; /* 0 when empty */
    uint16_t n_ids;
} cache_slot;

typedef struct scratch {
    struct scratch *next;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;
    /* BPE work arrays, cap entries each; heap has 3 * cap */
    size_t cap;
    int32_t *sym, *nxt, *prv, *mid;
    uint32_t *rnk;
    uint64_t *heap;
    /* prefix-space copies */
    char *buf;
    size_t buf_cap;
    /* word cache */
    cache_slot *slots;
    uint32_t used;
    char *cw;
    size_t cw_len, cw_cap;
    int32_t *ci;
    size_t ci_len, ci_cap;
} scratch;

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

/* ------------------------------------------------------------------ errors */

static tidal_status nomem(const char *name) { return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", name); }

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

/* ------------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

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

/* ------------------------------------------------------------------ UTF-8 */

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

/* Length of the longest valid UTF-8 prefix of s; *ascii says whether it is
 * all ASCII. */
static size_t u8_valid_prefix(const uint8_t *s, size_t n, bool *ascii)
{
    size_t i = 0;
    bool all_ascii = true;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!(v & 0x8080808080808080ull)) { i += 8; continue; }
        }
        if (s[i] < 0x80) { i++; continue; }
        uint32_t cp;
        size_t l = u8_char(s + i, n - i, &cp);
        if (!l) break;
        all_ascii = false;
        i += l;
    }
    *ascii = all_ascii;
    return i;
}

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

/* Unicode White_Space (Rust's char::is_whitespace), for lstrip / rstrip. */
static bool is_white_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* ------------------------------------------------------------------ byte-level mapping */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to U+0100.. in byte order. */
static uint32_t byte_to_cp[256];
static int16_t cp_to_byte[324]; /* -1: not a byte-level character */

/* NFC quick check (UAX #15): per code point its canonical combining class
 * and NFC_QC (Yes, Maybe: may compose with what precedes it, No: never in
 * NFC), derived from utf8proc at first use into a two-level table (blocks of
 * 256 code points; all-zero blocks share one). Text whose check says Yes is
 * already NFC and skips utf8proc; Maybe and No take the full normalization. */
#define QC_MAYBE 0x100u
#define QC_NO 0x200u
static uint16_t **nfc_table; /* [0x1100] blocks; entry = ccc | QC_* */
static uint16_t nfc_zero_block[256];

static uint16_t nfc_info_slow(uint32_t cp)
{
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2)) return QC_MAYBE; /* Hangul V, T */
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    uint16_t v = (uint16_t)(p->combining_class & 0xFF);
    if (p->comb_index != UINT16_MAX && p->comb_index >= 0x8000) v |= QC_MAYBE; /* second of a composition */
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) {
        utf8proc_uint8_t in[4], *o = NULL;
        utf8proc_ssize_t l = utf8proc_encode_char((utf8proc_int32_t)cp, in);
        utf8proc_ssize_t r = utf8proc_map(in, l, &o, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r != l || memcmp(o, in, (size_t)l) != 0) v |= QC_NO;
        free(o);
    }
    return v;
}

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void build_tables(void)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
    for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp[b]] = (int16_t)b;

    uint16_t **tab = calloc(0x1100, sizeof *tab);
    if (!tab) return; /* every non-ASCII text then takes the full NFC */
    uint16_t block[256];
    for (uint32_t hi = 0; hi < 0x1100; hi++) {
        bool any = false;
        for (uint32_t lo = 0; lo < 256; lo++) {
            block[lo] = nfc_info_slow(hi << 8 | lo);
            any |= block[lo] != 0;
        }
        if (!any) { tab[hi] = nfc_zero_block; continue; }
        tab[hi] = malloc(sizeof block);
        if (!tab[hi]) {
            for (uint32_t k = 0; k < hi; k++) if (tab[k] != nfc_zero_block) free(tab[k]);
            free(tab);
            return;
        }
        memcpy(tab[hi], block, sizeof block);
    }
    nfc_table = tab;
}

/* NFC of valid UTF-8 p[0..n). *out stays NULL when the quick check finds
 * the text already NFC (the common case); otherwise *out is a malloc'd
 * normalized copy of *out_n bytes in which only the stretches around the
 * flagged code points went through utf8proc: a stretch runs from the last
 * safe boundary before the code point to the first one after it, a safe
 * boundary being a code point of class 0 with NFC_QC Yes (nothing before it
 * combines with it, so NFC of the whole is NFC of the stretches). Returns 0
 * or a (negative) utf8proc error. */
static utf8proc_ssize_t nfc_fast(const char *p, size_t n, char **out, size_t *out_n)
{
    const uint8_t *s = (const uint8_t *)p;
    *out = NULL;
    if (!nfc_table) {
        utf8proc_uint8_t *o = NULL;
        utf8proc_ssize_t r = utf8proc_map(s, (utf8proc_ssize_t)n, &o, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) return r;
        *out = (char *)o;
        *out_n = (size_t)r;
        return 0;
    }
    char *o = NULL;
    size_t on = 0, ocap = 0, i = 0, copied = 0, boundary = 0;
    unsigned last = 0;
    while (i < n) {
        if (s[i] < 0x80) { boundary = i++; last = 0; continue; }
        uint32_t cp = 0;
        size_t l = u8_char(s + i, n - i, &cp);
        uint16_t v = nfc_table[cp >> 8][cp & 0xFF];
        if (!v) { boundary = i; i += l; last = 0; continue; }
        unsigned ccc = v & 0xFF;
        if (!(v & (QC_MAYBE | QC_NO)) && !(ccc && last > ccc)) { last = ccc; i += l; continue; }
        size_t j = i + l;
        while (j < n && s[j] >= 0x80) {
            size_t l2 = u8_char(s + j, n - j, &cp);
            if (!nfc_table[cp >> 8][cp & 0xFF]) break;
            j += l2;
        }
        utf8proc_uint8_t *nf = NULL;
        utf8proc_ssize_t r =
            utf8proc_map(s + boundary, (utf8proc_ssize_t)(j - boundary), &nf, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) { free(o); return r; }
        size_t need = on + (boundary - copied) + (size_t)r + (n - j);
        if (need > ocap) {
            size_t cap = ocap ? ocap : n + 64;
            while (cap < need) cap *= 2;
            char *no = realloc(o, cap);
            if (!no) { free(nf); free(o); return UTF8PROC_ERROR_NOMEM; }
            o = no;
            ocap = cap;
        }
        memcpy(o + on, p + copied, boundary - copied);
        on += boundary - copied;
        memcpy(o + on, nf, (size_t)r);
        on += (size_t)r;
        free(nf);
        copied = boundary = i = j;
        last = 0;
    }
    if (!o) return 0;
    memcpy(o + on, p + copied, n - copied); /* room reserved above */
    on += n - copied;
    *out = o;
    *out_n = on;
    return 0;
}

/* ------------------------------------------------------------------ tables */

static int32_t vocab_find(const tokenizer *t, const void *p, size_t n)
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

static void vocab_insert(tokenizer *t, int32_t id)
{
    uint64_t h = hash_bytes(t->bytes + t->tb_off[id], t->tb_len[id]);
    uint32_t i = (uint32_t)h & t->vmask;
    while (t->vmap[i].id >= 0) i = (i + 1) & t->vmask;
    t->vmap[i].hash = (uint32_t)(h >> 32);
    t->vmap[i].id = id;
}

static inline uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static inline uint64_t merge_index(const tokenizer *t, uint64_t key)
{
    return (key * 0x9e3779b97f4a7c15ull) >> t->mshift;
}

/* The rank and result of merging a then b; RANK_NONE when they do not merge. */
static inline uint32_t merge_get(const tokenizer *t, int32_t a, int32_t b, int32_t *id)
{
    uint64_t key = merge_key(a, b);
    for (uint64_t i = merge_index(t, key);; i = (i + 1) & t->mmask) {
        const merge_slot *s = &t->mmap[i];
        if (s->key == key) { *id = s->id; return s->rank; }
        if (s->key == UINT64_MAX) return RANK_NONE;
    }
}

static void merge_put(tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = merge_key(a, b);
    uint64_t i = merge_index(t, key);
    while (t->mmap[i].key != UINT64_MAX && t->mmap[i].key != key) i = (i + 1) & t->mmask;
    t->mmap[i].key = key; /* a repeated pair keeps the last rank, as Hugging Face's map does */
    t->mmap[i].rank = rank;
    t->mmap[i].id = id;
}

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

/* Insert an added token's bytes into the trie (a later duplicate wins). */
static bool trie_add(tokenizer *t, const uint8_t *s, size_t n, int32_t id)
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

/* The longest added token at s; its length (0: none) and *id. */
static size_t trie_match(const tokenizer *t, const uint8_t *s, size_t n, int32_t *id)
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

/* ------------------------------------------------------------------ scratch */

static void scratch_free(scratch *s)
{
    if (!s) return;
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jstack);
    free(s->sym); free(s->nxt); free(s->prv); free(s->mid); free(s->rnk); free(s->heap);
    free(s->buf);
    free(s->slots); free(s->cw); free(s->ci);
    free(s);
}

static scratch *scratch_get(tokenizer *t)
{
    pthread_mutex_lock(&t->lock);
    scratch *s = t->pool;
    if (s) t->pool = s->next;
    pthread_mutex_unlock(&t->lock);
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->md = pcre2_match_data_create(1, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    /* the JIT stack grows on demand up to 8 MB (long whitespace runs backtrack) */
    s->jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!s->md || !s->mctx || !s->jstack) { scratch_free(s); return NULL; }
    pcre2_jit_stack_assign(s->mctx, NULL, s->jstack);
    return s;
}

static void scratch_put(tokenizer *t, scratch *s)
{
    pthread_mutex_lock(&t->lock);
    s->next = t->pool;
    t->pool = s;
    pthread_mutex_unlock(&t->lock);
}

static bool scratch_reserve(scratch *s, size_t n)
{
    if (n <= s->cap) return true;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(s->sym, cap * sizeof *a);
    if (a) s->sym = a;
    int32_t *b = realloc(s->nxt, cap * sizeof *b);
    if (b) s->nxt = b;
    int32_t *c = realloc(s->prv, cap * sizeof *c);
    if (c) s->prv = c;
    int32_t *d = realloc(s->mid, cap * sizeof *d);
    if (d) s->mid = d;
    uint32_t *e = realloc(s->rnk, cap * sizeof *e);
    if (e) s->rnk = e;
    uint64_t *h = realloc(s->heap, 3 * cap * sizeof *h);
    if (h) s->heap = h;
    if (!a || !b || !c || !d || !e || !h) return false;
    s->cap = cap;
    return true;
}

/* ------------------------------------------------------------------ output */

static bool ids_reserve(tok_ids *v, size_t extra)
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

static inline bool ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap && !ids_reserve(v, 1)) return false;
    v->ids[v->n++] = id;
    return true;
}

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

/* ------------------------------------------------------------------ BPE */

typedef struct {
    tokenizer *t;
    scratch *s;
    tok_ids *out;
} enc;

/* Merge sym[0..n) in place by the linear scan; returns the new count. */
static size_t bpe_small(const tokenizer *t, scratch *s, size_t n)
{
    int32_t *sym = s->sym, *mid = s->mid;
    uint32_t *rk = s->rnk;
    for (size_t i = 0; i + 1 < n; i++) rk[i] = merge_get(t, sym[i], sym[i + 1], &mid[i]);
    while (n > 1) {
        uint32_t best = RANK_NONE;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rk[i] < best) { best = rk[i]; bi = i; }
        if (best == RANK_NONE) break;
        sym[bi] = mid[bi];
        size_t tail = n - bi - 2; /* symbols after the removed one */
        memmove(sym + bi + 1, sym + bi + 2, tail * sizeof *sym);
        memmove(rk + bi, rk + bi + 1, tail * sizeof *rk);
        memmove(mid + bi, mid + bi + 1, tail * sizeof *mid);
        n--;
        if (bi > 0) rk[bi - 1] = merge_get(t, sym[bi - 1], sym[bi], &mid[bi - 1]);
        if (bi + 1 < n) rk[bi] = merge_get(t, sym[bi], sym[bi + 1], &mid[bi]);
    }
    return n;
}

static inline void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

/* Merge sym[0..n) with a heap of (rank, position) over a linked list - the
 * same lowest-rank, leftmost-first order as bpe_small in O(n log n). The
 * result is compacted into sym; returns the count. */
static size_t bpe_large(const tokenizer *t, scratch *s, size_t n)
{
    int32_t *sym = s->sym, *nx = s->nxt, *pv = s->prv;
    uint64_t *h = s->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        nx[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        pv[i] = (int32_t)i - 1;
    }
    int32_t id;
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r = merge_get(t, sym[i], sym[i + 1], &id);
        if (r != RANK_NONE) heap_push(h, &hn, ((uint64_t)r << 32) | i);
    }
    while (hn) {
        uint64_t top = heap_pop(h, &hn);
        uint32_t r = (uint32_t)(top >> 32);
        int32_t p = (int32_t)(uint32_t)top;
        if (sym[p] < 0) continue;
        int32_t q = nx[p];
        if (q < 0) continue;
        if (merge_get(t, sym[p], sym[q], &id) != r) continue; /* stale entry */
        sym[p] = id;
        sym[q] = -1;
        nx[p] = nx[q];
        if (nx[q] >= 0) pv[nx[q]] = p;
        int32_t m;
        if (pv[p] >= 0) {
            uint32_t r2 = merge_get(t, sym[pv[p]], sym[p], &m);
            if (r2 != RANK_NONE) heap_push(h, &hn, ((uint64_t)r2 << 32) | (uint32_t)pv[p]);
        }
        if (nx[p] >= 0) {
            uint32_t r2 = merge_get(t, sym[p], sym[nx[p]], &m);
            if (r2 != RANK_NONE) heap_push(h, &hn, ((uint64_t)r2 << 32) | (uint32_t)p);
        }
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = nx[i]) sym[k++] = sym[i];
    return k;
}

static void cache_clear(scratch *s)
{
    memset(s->slots, 0, CACHE_SLOTS * sizeof *s->slots);
    s->used = 0;
    s->cw_len = s->ci_len = 0;
}

static const cache_slot *cache_find(scratch *s, uint64_t h, const uint8_t *w, size_t n)
{
    for (uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *c = &s->slots[i];
        if (!c->word_len) return NULL;
        if (c->hash == h && c->word_len == n && memcmp(s->cw + c->word_off, w, n) == 0) return c;
    }
}

/* Remember word -> ids; silently skipped when memory is short. */
static void cache_put(scratch *s, uint64_t h, const uint8_t *w, size_t n, const int32_t *ids, size_t k)
{
    if (s->used >= CACHE_SLOTS / 2) cache_clear(s);
    if (s->cw_len + n > s->cw_cap) {
        size_t cap = s->cw_cap ? 2 * s->cw_cap : 1 << 18;
        char *p = realloc(s->cw, cap);
        if (!p) return;
        s->cw = p;
        s->cw_cap = cap;
    }
    if (s->ci_len + k > s->ci_cap) {
        size_t cap = s->ci_cap ? 2 * s->ci_cap : 1 << 16;
        while (cap < s->ci_len + k) cap *= 2;
        int32_t *p = realloc(s->ci, cap * sizeof *p);
        if (!p) return;
        s->ci = p;
        s->ci_cap = cap;
    }
    uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);
    while (s->slots[i].word_len) i = (i + 1) & (CACHE_SLOTS - 1);
    cache_slot *c = &s->slots[i];
    c->hash = h;
    c->word_off = (uint32_t)s->cw_len;
    c->word_len = (uint16_t)n;
    c->ids_off = (uint32_t)s->ci_len;
    c->n_ids = (uint16_t)k;
    memcpy(s->cw + s->cw_len, w, n);
    s->cw_len += n;
    memcpy(s->ci + s->ci_len, ids, k * sizeof *ids);
    s->ci_len += k;
    s->used++;
}

/* BPE-encode one pre-tokenized piece (raw bytes) and append its ids. */
static tidal_status bpe_piece(enc *e, const uint8_t *w, size_t n)
{
    const tokenizer *t = e->t;
    scratch *s = e->s;
    if (n == 0) return TIDAL_OK;
    if (n == 1) return ids_push(e->out, t->byte_id[w[0]]) ? TIDAL_OK : nomem(t->name);
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, w, n);
        if (id >= 0) return ids_push(e->out, id) ? TIDAL_OK : nomem(t->name);
    }
    uint64_t h = 0;
    bool cacheable = n <= CACHE_WORD_MAX;
    if (cacheable) {
        if (!s->slots) {
            s->slots = calloc(CACHE_SLOTS, sizeof *s->slots);
            if (!s->slots) cacheable = false;
        }
    }
    if (cacheable) {
        h = hash_bytes(w, n);
        const cache_slot *c = cache_find(s, h, w, n);
        if (c) {
            if (!ids_reserve(e->out, c->n_ids)) return nomem(t->name);
            memcpy(e->out->ids + e->out->n, s->ci + c->ids_off, c->n_ids * sizeof(int32_t));
            e->out->n += c->n_ids;
            return TIDAL_OK;
        }
    }
    if (!scratch_reserve(s, n)) return nomem(t->name);
    for (size_t i = 0; i < n; i++) s->sym[i] = t->byte_id[w[i]];
    size_t k = n <= BPE_SMALL ? bpe_small(t, s, n) : bpe_large(t, s, n);
    if (!ids_reserve(e->out, k)) return nomem(t->name);
    memcpy(e->out->ids + e->out->n, s->sym, k * sizeof(int32_t));
    e->out->n += k;
    if (cacheable) cache_put(s, h, w, n, s->sym, k);
    return TIDAL_OK;
}

/* ------------------------------------------------------------------ pre-tokenization */

static tidal_status stage(enc *e, int st, const char *p, size_t n);

/* One regex match at or after `from` in s[0..n): 1 with [*ms, *me), 0 when
 * none. */
static tidal_status re_match(enc *e, const split_step *sp, const char *s, size_t n, size_t from, size_t *ms,
                             size_t *me, int *found)
{
    int rc;
    if (sp->jit) {
        rc = pcre2_jit_match(sp->re, (PCRE2_SPTR)s, n, from, 0, e->s->md, e->s->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(sp->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, e->s->md,
                             e->s->mctx);
    } else {
        rc = pcre2_match(sp->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, e->s->md, e->s->mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) { *found = 0; return TIDAL_OK; }
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: pre-tokenizer regex failed on a %zu-byte piece: %s", e->t->name,
                          n, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->s->md);
    *ms = ov[0];
    *me = ov[1];
    *found = 1;
    return TIDAL_OK;
}

/* Delimiter-behaviour state of one Split over one piece. */
typedef struct {
    split_behavior b;
    size_t pend;        /* MergedWith*: start of the piece being built */
    size_t rs, re;      /* Contiguous: the pending run */
    int rkind;          /* Contiguous: -1 none, 0 text, 1 delimiter */
} span_state;

static tidal_status span(enc *e, int next, const char *s, span_state *st, size_t a, size_t b, bool delim)
{
    if (a == b) return TIDAL_OK;
    switch (st->b) {
    case SPLIT_ISOLATED:
        return stage(e, next, s + a, b - a);
    case SPLIT_REMOVED:
        return delim ? TIDAL_OK : stage(e, next, s + a, b - a);
    case SPLIT_MERGED_PREVIOUS:
        if (delim) {
            tidal_status r = stage(e, next, s + st->pend, b - st->pend);
            st->pend = b;
            return r;
        }
        return TIDAL_OK;
    case SPLIT_MERGED_NEXT:
        if (delim) {
            tidal_status r = a > st->pend ? stage(e, next, s + st->pend, a - st->pend) : TIDAL_OK;
            st->pend = a;
            return r;
        }
        return TIDAL_OK;
    case SPLIT_CONTIGUOUS:
        if (st->rkind == 1 && delim && st->re == a) { st->re = b; return TIDAL_OK; }
        if (st->rkind >= 0) TRY(stage(e, next, s + st->rs, st->re - st->rs));
        st->rs = a;
        st->re = b;
        st->rkind = delim;
        return TIDAL_OK;
    }
    return TIDAL_OK;
}

/* Split s[0..n) by sp's regex; hand each resulting piece to stage `next`. */
static tidal_status split_run(enc *e, const split_step *sp, int next, const char *s, size_t n)
{
    span_state st = {.b = sp->behavior, .pend = 0, .rkind = -1};
    size_t pos = 0, from = 0;
    while (from < n) {
        size_t ms = 0, me = 0;
        int found = 0;
        TRY(re_match(e, sp, s, n, from, &ms, &me, &found));
        if (!found) break;
        if (me == ms) { /* an empty match splits nothing: look again one character on */
            uint32_t cp;
            size_t l = u8_char((const uint8_t *)s + ms, n - ms, &cp);
            from = ms + (l ? l : 1);
            continue;
        }
        TRY(span(e, next, s, &st, pos, ms, sp->invert));
        TRY(span(e, next, s, &st, ms, me, !sp->invert));
        pos = from = me;
    }
    TRY(span(e, next, s, &st, pos, n, sp->invert));
    switch (st.b) {
    case SPLIT_MERGED_PREVIOUS:
    case SPLIT_MERGED_NEXT:
        if (n > st.pend) TRY(stage(e, next, s + st.pend, n - st.pend));
        break;
    case SPLIT_CONTIGUOUS:
        if (st.rkind >= 0) TRY(stage(e, next, s + st.rs, st.re - st.rs));
        break;
    default:
        break;
    }
    return TIDAL_OK;
}

/* Stages: 0..n_split-1 the Split steps, n_split ByteLevel, n_split+1 BPE. */
static tidal_status stage(enc *e, int st, const char *p, size_t n)
{
    const tokenizer *t = e->t;
    if (n == 0) return TIDAL_OK;
    if (st < t->n_split) return split_run(e, &t->split[st], st + 1, p, n);
    if (st > t->n_split) return bpe_piece(e, (const uint8_t *)p, n);
    /* ByteLevel */
    if (t->bl_prefix && p[0] != ' ') {
        scratch *s = e->s;
        if (n + 1 > s->buf_cap) {
            size_t cap = s->buf_cap ? s->buf_cap : 256;
            while (cap < n + 1) cap *= 2;
            char *b = realloc(s->buf, cap);
            if (!b) return nomem(t->name);
            s->buf = b;
            s->buf_cap = cap;
        }
        s->buf[0] = ' ';
        memcpy(s->buf + 1, p, n);
        p = s->buf;
        n++;
    }
    if (t->bl_use_regex) return split_run(e, &t->bl_regex, st + 1, p, n);
    return bpe_piece(e, (const uint8_t *)p, n);
}

/* A run of valid UTF-8: normalize, pre-tokenize, BPE. */
static tidal_status encode_valid(enc *e, const char *p, size_t n, bool ascii)
{
    const tokenizer *t = e->t;
    char *owned = NULL;
    if (!ascii) { /* every normalization form leaves ASCII as it is */
        for (int i = 0; i < t->n_norm; i++) {
            utf8proc_ssize_t r;
            char *o = NULL;
            size_t on = 0;
            if (t->norm[i] == NORM_NFC) {
                r = nfc_fast(p, n, &o, &on);
                if (r == 0 && !o) continue; /* already NFC */
            } else {
                int opt = UTF8PROC_STABLE;
                switch (t->norm[i]) {
                case NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
                case NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
                default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
                }
                utf8proc_uint8_t *u = NULL;
                r = utf8proc_map((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)n, &u, (utf8proc_option_t)opt);
                o = (char *)u;
                on = r > 0 ? (size_t)r : 0;
            }
            if (r < 0) {
                free(owned);
                return r == UTF8PROC_ERROR_NOMEM ? nomem(t->name)
                                                 : tidal_fail(TIDAL_ERR_INVALID, "%s: normalizer: %s", t->name,
                                                              utf8proc_errmsg(r));
            }
            free(owned);
            owned = o;
            p = owned;
            n = on;
        }
    }
    tidal_status st = stage(e, 0, p, n);
    free(owned);
    return st;
}

/* Text between added tokens. */
static tidal_status encode_section(enc *e, const char *p, size_t n)
{
    const tokenizer *t = e->t;
    if (!t->bpe) { /* one token per byte: the byte-level or an alphabet tokenizer */
        if (!ids_reserve(e->out, n)) return nomem(t->name);
        for (size_t i = 0; i < n; i++) {
            const int32_t id = t->byte_id[(uint8_t)p[i]];
            if (id < 0)
                return tidal_fail(TIDAL_ERR_INVALID, "%s: byte 0x%02x ('%c') is not in the alphabet", t->name,
                                  (uint8_t)p[i], p[i] >= 32 && p[i] < 127 ? p[i] : '?');
            e->out->ids[e->out->n++] = id;
        }
        return TIDAL_OK;
    }
    size_t i = 0;
    while (i < n) {
        bool ascii;
        size_t v = u8_valid_prefix((const uint8_t *)p + i, n - i, &ascii);
        if (v) {
            TRY(encode_valid(e, p + i, v, ascii));
            i += v;
            continue;
        }
        size_t j = i + 1; /* a run of bytes that start no valid character */
        uint32_t cp;
        while (j < n && !u8_char((const uint8_t *)p + j, n - j, &cp)) j++;
        TRY(bpe_piece(e, (const uint8_t *)p + i, j - i));
        i = j;
    }
    return TIDAL_OK;
}

/* Length of the whitespace that ends p[lo..hi). */
static size_t white_before(const char *p, size_t lo, size_t hi)
{
    size_t k = hi;
    while (k > lo) {
        size_t b = k - 1;
        while (b > lo && ((uint8_t)p[b] & 0xC0) == 0x80 && k - b < 4) b--;
        uint32_t cp = 0;
        if (u8_char((const uint8_t *)p + b, k - b, &cp) != k - b || !is_white_space(cp)) break;
        k = b;
    }
    return hi - k;
}

static size_t white_after(const char *p, size_t lo, size_t hi)
{
    size_t k = lo;
    while (k < hi) {
        uint32_t cp;
        size_t l = u8_char((const uint8_t *)p + k, hi - k, &cp);
        if (!l || !is_white_space(cp)) break;
        k += l;
    }
    return k - lo;
}

static tidal_status encode_text(enc *e, const char *p, size_t n)
{
    const tokenizer *t = e->t;
    if (!t->trie) return encode_section(e, p, n);
    size_t seg = 0, i = 0;
    while (i < n) {
        if (t->n_first == 1) {
            const char *c = memchr(p + i, t->only_first, n - i);
            if (!c) break;
            i = (size_t)(c - p);
        } else if (!t->first_byte[(uint8_t)p[i]]) {
            i++;
            continue;
        }
        int32_t id = -1;
        size_t m = trie_match(t, (const uint8_t *)p + i, n - i, &id);
        if (!m) { i++; continue; }
        size_t end = i;
        if (t->flags[id] & TOKF_LSTRIP) end -= white_before(p, seg, i);
        TRY(encode_section(e, p + seg, end - seg));
        if (!ids_push(e->out, id)) return nomem(t->name);
        i += m;
        if (t->flags[id] & TOKF_RSTRIP) i += white_after(p, i, n);
        seg = i;
    }
    return encode_section(e, p + seg, n - seg);
}

tidal_status tokenizer_encode(tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *out)
{
    if (!t || !out || (!text && len)) return tidal_fail(TIDAL_ERR_INVALID, "tokenizer_encode: NULL argument");
    if (len > INT32_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: encode: a text of %zu bytes (2 GB at most)", t->name, len);
    scratch *s = scratch_get(t);
    if (!s) return nomem(t->name);
    enc e = {.t = t, .s = s, .out = out};
    size_t n0 = out->n;
    tidal_status st = TIDAL_OK;
    if (add_special && t->n_pre) {
        if (!ids_reserve(out, (size_t)t->n_pre)) st = nomem(t->name);
        else for (int i = 0; i < t->n_pre; i++) out->ids[out->n++] = t->pp_ids[i];
    }
    if (st == TIDAL_OK && len) st = encode_text(&e, text, len);
    if (st == TIDAL_OK && add_special && t->n_post) {
        if (!ids_reserve(out, (size_t)t->n_post)) st = nomem(t->name);
        else for (int i = 0; i < t->n_post; i++) out->ids[out->n++] = t->pp_ids[t->n_pre + i];
    }
    scratch_put(t, s);
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

static tokenizer *tokenizer_new(const char *name)
{
    pthread_once(&tables_once, build_tables);
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
    while (t->pool) {
        scratch *s = t->pool;
        t->pool = s->next;
        scratch_free(s);
    }
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

/* Room for ids [0, n) in the per-id arrays. */
static bool alloc_ids(tokenizer *t, int32_t n)
{
    t->n_ids = n;
    t->tb_off = calloc((size_t)n, sizeof *t->tb_off);
    t->tb_len = calloc((size_t)n, sizeof *t->tb_len);
    t->flags = calloc((size_t)n, 1);
    return t->tb_off && t->tb_len && t->flags;
}

static bool set_token(tokenizer *t, int32_t id, const void *p, size_t n)
{
    uint32_t off;
    if (!arena_add(t, p, n, &off)) return false;
    t->tb_off[id] = off;
    t->tb_len[id] = (uint32_t)n;
    return true;
}

static const char *const byte_level_specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

tidal_status tokenizer_byte_level(tokenizer **out)
{
    *out = NULL;
    tokenizer *t = tokenizer_new("byte-level");
    if (!t || !alloc_ids(t, TOKENIZER_BYTE_LEVEL_VOCAB)) { tokenizer_free(t); return nomem("byte-level"); }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        if (!set_token(t, b, &c, 1)) { tokenizer_free(t); return nomem("byte-level"); }
        t->flags[b] = TOKF_EXISTS;
        t->byte_id[b] = b;
    }
    for (int i = 0; i < 3; i++) {
        const char *s = byte_level_specials[i];
        if (!set_token(t, 256 + i, s, strlen(s)) || !trie_add(t, (const uint8_t *)s, strlen(s), 256 + i)) {
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
    tokenizer *t = tokenizer_new("alphabet");
    if (!t || !alloc_ids(t, n + 3)) { tokenizer_free(t); return nomem("alphabet"); }
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    int id = 0;
    for (const uint8_t *c = (const uint8_t *)alphabet; *c; c++, id++) {
        if (!set_token(t, id, c, 1)) { tokenizer_free(t); return nomem("alphabet"); }
        t->flags[id] = TOKF_EXISTS;
        t->byte_id[*c] = id;
    }
    for (int i = 0; i < 3; i++) {
        const char *sp = byte_level_specials[i];
        if (!set_token(t, n + i, sp, strlen(sp)) || !trie_add(t, (const uint8_t *)sp, strlen(sp), n + i)) {
            tokenizer_free(t);
            return nomem("alphabet");
        }
        t->flags[n + i] = TOKF_EXISTS | TOKF_ADDED | TOKF_SPECIAL;
    }
    t->eos = n;
    *out = t;
    return TIDAL_OK;
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
        if (!l || cp >= 324 || cp_to_byte[cp] < 0) {
            memcpy(out, s, n);
            *out_n = n;
            return false;
        }
        out[k++] = (char)cp_to_byte[cp];
        i += l;
    }
    *out_n = k;
    return true;
}

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
    bool fallback;
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
    if (!alloc_ids(t, (int32_t)max_id + 1)) return nomem(name);

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
        if (!set_token(t, id, tmp, bn)) { free(tmp); return nomem(name); }
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
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = vocab_find(t, &c, 1);
        if (t->byte_id[b] < 0) {
            char ch[5];
            ch[u8_encode(byte_to_cp[b], ch)] = '\0';
            return jv_bad(name, "model.vocab", "has no token for byte 0x%02x (\"%s\"): not a byte-level vocabulary", b,
                       ch);
        }
    }
    return TIDAL_OK;
}

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
        bool special, lstrip, rstrip, single;
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
            if (!same && !set_token(t, id, c, cn)) return nomem(name);
        } else if (!set_token(t, id, c, cn)) {
            return nomem(name);
        }
        t->flags[id] = (uint8_t)((t->flags[id] & TOKF_MAPPED) | TOKF_EXISTS | TOKF_ADDED |
                                 (special ? TOKF_SPECIAL : 0) | (lstrip ? TOKF_LSTRIP : 0) |
                                 (rstrip ? TOKF_RSTRIP : 0));
        if (!trie_add(t, (const uint8_t *)c, cn, id)) return nomem(name);
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
    return TIDAL_OK;
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
    tokenizer *t = tokenizer_new(name);
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
