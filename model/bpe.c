/* bpe.c - the tokenizer's encoding core: added tokens, normalization,
 * pre-tokenization and byte-level BPE. tokenizer_encode (tokenizer.c) calls
 * it through tok_encode_text; the vocabulary, merge and added-token tables it
 * reads were filled by tokenizer_json.c (or tokenizer.c for the tokenizers of
 * tiny models, which have no merges).
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
 *
 * (Step 5, the ids TemplateProcessing puts around a single sequence, is
 * tokenizer_encode's.)
 *
 * Thread safety: the tokenizer is read-only after loading; per-call state
 * (PCRE2 match data and JIT stack, BPE arrays, the word cache) lives in
 * scratch blocks taken from and returned to a mutex-protected pool.
 */
#include "model/tokenizer_internal.h"

#include <utf8proc.h>

#define CACHE_WORD_MAX 64        /* longest word (bytes) the BPE cache keeps */
#define CACHE_SLOTS (1u << 16)   /* word cache slots per scratch block; cleared at half full */
#define BPE_SMALL 48             /* words up to this many bytes use the linear-scan merge */

typedef struct {
    uint64_t hash;
    uint32_t word_off, ids_off;
    uint16_t word_len; /* 0 when empty */
    uint16_t n_ids;
} cache_slot;

/* Per-call working memory (the scratch typedef is tokenizer_internal.h's). */
struct scratch {
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
};

/* ------------------------------------------------------------------ UTF-8 */

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
uint32_t tok_byte_to_cp[256];
int16_t tok_cp_to_byte[324]; /* -1: not a byte-level character */

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
        tok_byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
    for (int i = 0; i < 324; i++) tok_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) tok_cp_to_byte[tok_byte_to_cp[b]] = (int16_t)b;

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

/* Contract in tokenizer_internal.h. */
void tok_tables_init(void) { pthread_once(&tables_once, build_tables); }

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

/* ------------------------------------------------------------------ merges */

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

/* Contract in tokenizer_internal.h. */
scratch *tok_scratch_get(tokenizer *t)
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

/* Contract in tokenizer_internal.h. */
void tok_scratch_put(tokenizer *t, scratch *s)
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

/* Free every block in t's pool (tokenizer_free: no encode is running). */
void tok_scratch_pool_free(tokenizer *t)
{
    while (t->pool) {
        scratch *s = t->pool;
        t->pool = s->next;
        scratch_free(s);
    }
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

/* Contract in tokenizer_internal.h. */
tidal_status tok_encode_text(tokenizer *t, scratch *s, const char *p, size_t n, tok_ids *out)
{
    enc e = {.t = t, .s = s, .out = out};
    return encode_text(&e, p, n);
}
