/* test_tokenizer.c - model/tokenizer and model/chat.
 *
 * The tokenizer.json files here are built by the test (a byte-level
 * vocabulary with id = byte, a dozen merges, added tokens, Qwen's Split
 * regex) and written to a temp dir, so every expected id can be worked out
 * by hand. Parity with real files is tests/parity/tokenizer_parity.js.
 *
 * With TIDAL_FUZZ_SEEDS_OUT=DIR set it writes the seeds of
 * tests/fuzz/fuzz_tokenizer.c instead (that is how
 * tests/fuzz/seeds/fuzz_tokenizer/ was made).
 */
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model/chat.h"
#include "model/tokenizer.h"

static const char qwen_regex[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                                 "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte -> character mapping, to write a byte-level vocabulary. */
static void byte_char(int b, char *out)
{
    int n = 0, cp = -1;
    for (int x = 0; x < 256; x++) {
        bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        int c = printable ? x : 256 + n++;
        if (x == b) cp = c;
    }
    if (cp < 0x80) { out[0] = (char)cp; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); out[2] = 0; }
}

/* Merges in rank order; the merged tokens get ids 256.. in this order. */
static const char *const merges[][2] = {
    {"h", "e"},      /* 256 he */
    {"l", "l"},      /* 257 ll */
    {"he", "ll"},    /* 258 hell */
    {"hell", "o"},   /* 259 hello */
    {"Ġ", "w"},      /* 260 Ġw */
    {"o", "r"},      /* 261 or */
    {"Ġw", "or"},    /* 262 Ġwor */
    {"Ġwor", "l"},   /* 263 Ġworl */
    {"Ġworl", "d"},  /* 264 Ġworld */
    {"a", "b"},      /* 265 ab */
    {"b", "c"},      /* 266 bc */
    {"1", "2"},      /* 267 12 */
    {"a", "-"},      /* 268 a- */
    {"-", "b"},      /* 269 -b */
    {"-", "-"},      /* 270 -- */
    {"-", "c"},      /* 271 -c */
};
#define N_MERGES (int)(sizeof merges / sizeof merges[0])
enum { HE = 256, LL = 257, HELL = 258, HELLO = 259, OR = 261, GWORLD = 264, AB = 265, BC = 266, A_DASH = 268,
       DASH_B = 269, DASH_DASH = 270, DASH_C = 271,
       END = 300, EOT = 301, FOOBAR = 302, BOS = 303, MASK = 304, ABC = 305 };

/* The test tokenizer: NFC, Qwen's Split regex + ByteLevel(use_regex false),
 * merges as "a b" strings (pairs: [a, b]), added tokens, a BOS template. */
static json_t *base_json(bool pair_merges)
{
    json_t *vocab = json_object(), *m = json_array();
    char c[4];
    for (int b = 0; b < 256; b++) {
        byte_char(b, c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    for (int i = 0; i < N_MERGES; i++) {
        char cat[32], s[32];
        snprintf(cat, sizeof cat, "%s%s", merges[i][0], merges[i][1]);
        json_object_set_new(vocab, cat, json_integer(256 + i));
        snprintf(s, sizeof s, "%s %s", merges[i][0], merges[i][1]);
        json_array_append_new(m, pair_merges ? json_pack("[s,s]", merges[i][0], merges[i][1]) : json_string(s));
    }
    json_object_set_new(vocab, "abc", json_integer(ABC)); /* reachable only with ignore_merges */
    json_t *added = json_pack(
        "[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b, s:b, "
        "s:b}]",
        "id", END, "content", "<|end|>", "special", 1, "lstrip", 0, "rstrip", 0, "single_word", 0, "normalized", 0,
        "id", EOT, "content", "<|endoftext|>", "special", 1,
        "id", FOOBAR, "content", "foo bar", "special", 0,
        "id", BOS, "content", "<|bos|>", "special", 1,
        "id", MASK, "content", "<mask>", "special", 1, "lstrip", 1, "rstrip", 1);
    return json_pack(
        "{s:s, s:n, s:n, s:o, s:{s:s}, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}, "
        "s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], s:[s]}}}, s:{s:s, s:b, s:b, s:b}, "
        "s:{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added,
        "normalizer", "type", "NFC",
        "pre_tokenizer", "type", "Sequence", "pretokenizers",
            "type", "Split", "pattern", "Regex", qwen_regex, "behavior", "Isolated", "invert", 0,
            "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0,
        "post_processor", "type", "TemplateProcessing", "single",
            "SpecialToken", "id", "<|bos|>", "type_id", 0, "Sequence", "id", "A", "type_id", 0, "pair",
            "special_tokens", "<|bos|>", "id", "<|bos|>", "ids", BOS, "tokens", "<|bos|>",
        "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0, "use_regex", 0,
        "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "", "end_of_word_suffix", "",
            "fuse_unk", 0, "byte_fallback", 0, "vocab", vocab, "merges", m);
}

static tidal_status load_json(json_t *root, tokenizer **out)
{
    char *text = json_dumps(root, JSON_COMPACT);
    tidal_status st = tokenizer_load_buffer(text, strlen(text), NULL, 0, "test/tokenizer.json", out);
    free(text);
    return st;
}

/* Encode text, compare with want[0..n); print both on a mismatch. */
static bool ids_are(tokenizer *t, const char *text, size_t len, bool add_special, const int32_t *want, size_t n)
{
    tok_ids v = {0};
    tidal_status st = tokenizer_encode(t, text, len, add_special, &v);
    bool ok = st == TIDAL_OK && v.n == n && (n == 0 || memcmp(v.ids, want, n * sizeof *want) == 0);
    if (!ok) {
        fprintf(stderr, "  encode \"%.*s\": got", (int)len, text);
        for (size_t i = 0; i < v.n; i++) fprintf(stderr, " %d", v.ids[i]);
        fprintf(stderr, " (%s), want", st == TIDAL_OK ? "ok" : tidal_errmsg());
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", want[i]);
        fputc('\n', stderr);
    }
    tok_ids_free(&v);
    return ok;
}
#define IDS(t, text, ...)                                                                                \
    do {                                                                                                 \
        static const int32_t w_[] = {__VA_ARGS__};                                                       \
        CHECK(ids_are(t, text, sizeof(text) - 1, false, w_, sizeof w_ / sizeof w_[0]));                  \
    } while (0)

/* decode(encode(text)) == want */
static bool round_trip(tokenizer *t, const char *text, size_t len, const char *want, size_t want_len)
{
    tok_ids v = {0};
    tok_bytes b = {0};
    bool ok = tokenizer_encode(t, text, len, false, &v) == TIDAL_OK &&
              tokenizer_decode(t, v.ids, v.n, &b) == TIDAL_OK && b.len == want_len &&
              memcmp(b.data, want, want_len) == 0;
    if (!ok) fprintf(stderr, "  round trip of %zu bytes failed (%s)\n", len, tidal_errmsg());
    tok_ids_free(&v);
    tok_bytes_free(&b);
    return ok;
}

/* ------------------------------------------------------------------ byte-level */

/* A character-level tokenizer over a given alphabet (tiny models). */
static void test_alphabet(void)
{
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_alphabet("0123456789\n", &t));
    CHECK(tokenizer_vocab_size(t) == 14 && tokenizer_eos_id(t) == 11);
    CHECK(tokenizer_token_id(t, "\n") == 10 && tokenizer_token_id(t, "7") == 7 && tokenizer_token_id(t, "a") == -1);
    CHECK(tokenizer_token_id(t, "<|im_end|>") == 13 && tokenizer_is_special(t, 11));
    IDS(t, "925\n", 9, 2, 5, 10);
    IDS(t, "1<|endoftext|>", 1, 11);
    CHECK(round_trip(t, "0123\n987", 8, "0123\n987", 8));
    tok_ids ids = {0};
    CHECK_STATUS(tokenizer_encode(t, "12a", 3, false, &ids), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "byte 0x61 ('a') is not in the alphabet") && ids.n == 0);
    tok_ids_free(&ids);
    tokenizer_free(t);
    CHECK_STATUS(tokenizer_alphabet("0120", &t), TIDAL_ERR_INVALID);
    CHECK_STATUS(tokenizer_alphabet("", &t), TIDAL_ERR_INVALID);
}

static void test_byte_level(void)
{
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_byte_level(&t));
    CHECK(tokenizer_vocab_size(t) == TOKENIZER_BYTE_LEVEL_VOCAB);
    CHECK(tokenizer_token_id(t, "<|endoftext|>") == 256);
    CHECK(tokenizer_token_id(t, "<|im_start|>") == 257);
    CHECK(tokenizer_token_id(t, "<|im_end|>") == 258);
    CHECK(tokenizer_token_id(t, "A") == 'A');
    CHECK(tokenizer_token_id(t, "AB") == -1);
    CHECK(tokenizer_eos_id(t) == 256 && tokenizer_bos_id(t) == -1);
    CHECK(tokenizer_is_special(t, 258) && !tokenizer_is_special(t, 'x'));
    IDS(t, "hi", 'h', 'i');
    IDS(t, "<|im_start|>user\n<|im_end|>", 257, 'u', 's', 'e', 'r', '\n', 258);
    IDS(t, "<|im_end", '<', '|', 'i', 'm', '_', 'e', 'n', 'd');
    CHECK(ids_are(t, "", 0, false, NULL, 0));
    /* every byte, invalid UTF-8 and NULs included */
    char all[512];
    for (int i = 0; i < 512; i++) all[i] = (char)(i * 7 + 3);
    CHECK(round_trip(t, all, sizeof all, all, sizeof all));
    size_t len;
    const char *b = tokenizer_token_bytes(t, 258, &len);
    CHECK(b && len == 10 && !memcmp(b, "<|im_end|>", 10));
    CHECK(tokenizer_token_bytes(t, 259, &len) == NULL && len == 0);
    tok_bytes out = {0};
    int32_t bad_ids[] = {'a', 259};
    CHECK_STATUS(tokenizer_decode(t, bad_ids, 2, &out), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "ids[1] = 259"));
    tok_bytes_free(&out);
    tokenizer_free(t);
}

/* ------------------------------------------------------------------ BPE */

static void test_merges(void)
{
    tokenizer *t = NULL;
    json_t *j = base_json(false);
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    CHECK(tokenizer_vocab_size(t) == ABC + 1);
    IDS(t, "hello", HELLO);
    IDS(t, "hello world", HELLO, GWORLD);
    IDS(t, "hell", HELL);
    IDS(t, "he", HE);
    IDS(t, "abc", AB, 'c');                /* "a b" ranks before "b c" */
    IDS(t, "123", '1', '2', '3');          /* the regex isolates each digit: "1 2" never applies */
    IDS(t, "  hello", ' ', ' ', HELLO);    /* pieces " " and " hello"; no "Ġ hello" merge */
    IDS(t, "Hello", 'H', 'e', LL, 'o');   /* no "H e" merge */
    IDS(t, "hello\r\n\r\nworld", HELLO, '\r', '\n', '\r', '\n', 'w', OR, 'l', 'd');
    IDS(t, "it'S", 'i', 't', '\'', 'S');
    /* a long word takes the heap merge; it must agree with the short one */
    char lw[5 * 40 + 1] = "";
    int32_t want[40];
    for (int i = 0; i < 40; i++) { strcat(lw, "hello"); want[i] = HELLO; }
    CHECK(ids_are(t, lw, strlen(lw), false, want, 40));
    CHECK(ids_are(t, lw, strlen(lw), false, want, 40));
    IDS(t, "hello hello hello", HELLO, ' ', HELLO, ' ', HELLO); /* the second and third from the word cache */
    /* token bytes and lookups */
    size_t len;
    const char *b = tokenizer_token_bytes(t, GWORLD, &len);
    CHECK(b && len == 6 && !memcmp(b, " world", 6));
    CHECK(tokenizer_token_id(t, " world") == GWORLD);
    CHECK(tokenizer_token_id(t, "<|end|>") == END);
    CHECK(tokenizer_token_id(t, "zzz") == -1);
    CHECK(tokenizer_bos_id(t) == -1 && tokenizer_eos_id(t) == -1 && tokenizer_chat_template(t) == NULL);
    tokenizer_free(t);

    /* the ranks decide: with "b c" first, "abc" -> a, bc */
    j = base_json(false);
    json_t *m = json_object_get(json_object_get(j, "model"), "merges");
    json_array_set_new(m, 9, json_string("b c"));
    json_array_set_new(m, 10, json_string("a b"));
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "abc", 'a', BC);
    tokenizer_free(t);

    /* the ["a", "b"] form reads the same as "a b" */
    j = base_json(true);
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "hello world", HELLO, GWORLD);
    IDS(t, "abc", AB, 'c');
    tokenizer_free(t);

    /* ignore_merges (Llama-3): a piece that is a vocabulary token is that token */
    j = base_json(false);
    json_object_set_new(json_object_get(j, "model"), "ignore_merges", json_true());
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "abc", ABC);
    IDS(t, "abcd", AB, 'c', 'd');
    tokenizer_free(t);
}

static void test_added_tokens(void)
{
    tokenizer *t = NULL;
    json_t *j = base_json(false);
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "<|endoftext|>", EOT);
    IDS(t, "<|end|>", END);
    IDS(t, "hello<|end|><|endoftext|>hello", HELLO, END, EOT, HELLO); /* leftmost, then longest */
    IDS(t, "<|end", '<', '|', 'e', 'n', 'd');
    IDS(t, "<<|end|>>", '<', END, '>');
    IDS(t, "foo bar", FOOBAR);                          /* non-special added tokens match too */
    IDS(t, "foo  bar", 'f', 'o', 'o', ' ', ' ', 'b', 'a', 'r');
    IDS(t, "hello <mask> world", HELLO, MASK, 'w', OR, 'l', 'd'); /* lstrip and rstrip eat the spaces */
    IDS(t, "hello world<|end|>", HELLO, GWORLD, END);
    CHECK(tokenizer_is_special(t, END) && tokenizer_is_special(t, EOT) && !tokenizer_is_special(t, FOOBAR) &&
          !tokenizer_is_special(t, HELLO));
    /* add_special: TemplateProcessing puts <|bos|> before the sequence */
    static const int32_t with_bos[] = {BOS, HELLO};
    CHECK(ids_are(t, "hello", 5, true, with_bos, 2));
    static const int32_t only_bos[] = {BOS};
    CHECK(ids_are(t, "", 0, true, only_bos, 1));
    /* encode appends */
    tok_ids v = {0};
    CHECK_OK(tokenizer_encode(t, "hello", 5, false, &v));
    CHECK_OK(tokenizer_encode(t, "<|end|>", 7, false, &v));
    CHECK(v.n == 2 && v.ids[0] == HELLO && v.ids[1] == END);
    tok_ids_free(&v);
    tokenizer_free(t);
}

static void test_normalization_and_bytes(void)
{
    tokenizer *t = NULL;
    json_t *j = base_json(false);
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    /* NFC: e + combining acute is é (C3 A9) */
    IDS(t, "\xC3\xA9", 0xC3, 0xA9);
    IDS(t, "e\xCC\x81", 0xC3, 0xA9);
    CHECK(round_trip(t, "cafe\xCC\x81!", 7, "caf\xC3\xA9!", 6));
    CHECK(round_trip(t, "\xE2\x84\xAB", 3, "\xC3\x85", 2)); /* U+212B ANGSTROM SIGN -> U+00C5 */
    /* invalid UTF-8 bypasses the normalizer and the regex and round-trips */
    IDS(t, "a\xFF\xFE" "b", 'a', 0xFF, 0xFE, 'b');
    const char bad[] = "he\xE4\xBD llo \xC0\xAF\xED\xA0\x80 <|end|>\xF4\x90\x80\x80 e\xCC\x81";
    CHECK(round_trip(t, bad, sizeof bad - 1,
                     "he\xE4\xBD llo \xC0\xAF\xED\xA0\x80 <|end|>\xF4\x90\x80\x80 \xC3\xA9",
                     sizeof bad - 2));
    /* decode gives exact bytes: half a character stays half */
    int32_t half[] = {0xE4, 0xBD};
    tok_bytes out = {0};
    CHECK_OK(tokenizer_decode(t, half, 1, &out));
    CHECK(out.len == 1 && (unsigned char)out.data[0] == 0xE4 && out.data[1] == 0);
    CHECK_OK(tokenizer_decode(t, half + 1, 1, &out)); /* appends */
    CHECK(out.len == 2 && (unsigned char)out.data[1] == 0xBD);
    int32_t nul[] = {0, 'x'};
    out.len = 0;
    CHECK_OK(tokenizer_decode(t, nul, 2, &out));
    CHECK(out.len == 2 && out.data[0] == 0 && out.data[1] == 'x');
    tok_bytes_free(&out);
    /* whitespace runs, tabs, NUL, long inputs */
    static const char ws[] = "a  \t\t\n\n   b\r\n \x00 c";
    CHECK(round_trip(t, ws, sizeof ws - 1, ws, sizeof ws - 1));
    size_t big = 1 << 20;
    char *spaces = malloc(big);
    CHECK(spaces);
    memset(spaces, ' ', big);
    spaces[big - 1] = 'x';
    bool ok = round_trip(t, spaces, big, spaces, big);
    free(spaces);
    CHECK(ok);
    tokenizer_free(t);
}

/* Split behaviours (Hugging Face's "the-final--countdown" examples) seen
 * through merges across the delimiter: a- -b -- -c. */
static void test_split_behaviors(void)
{
    static const struct {
        const char *behavior;
        bool invert;
        int32_t want[8];
        size_t n;
    } cases[] = {
        {"Isolated", false, {'a', '-', 'b', '-', '-', 'c'}, 6},
        {"Removed", false, {'a', 'b', 'c'}, 3},
        {"MergedWithPrevious", false, {A_DASH, 'b', '-', '-', 'c'}, 5},
        {"MergedWithNext", false, {'a', DASH_B, '-', DASH_C}, 4},
        {"Contiguous", false, {'a', '-', 'b', DASH_DASH, 'c'}, 5},
        {"Removed", true, {'-', '-', '-'}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = base_json(false);
        json_object_set_new(j, "pre_tokenizer",
                            json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}", "type", "Sequence",
                                      "pretokenizers", "type", "Split", "pattern", "String", "-", "behavior",
                                      cases[i].behavior, "invert", cases[i].invert, "type", "ByteLevel",
                                      "add_prefix_space", 0, "use_regex", 0));
        tokenizer *t = NULL;
        CHECK_OK(load_json(j, &t));
        json_decref(j);
        bool ok = ids_are(t, "a-b--c", 6, false, cases[i].want, cases[i].n);
        tokenizer_free(t);
        CHECK_MSG(ok, "behavior %s invert %d", cases[i].behavior, cases[i].invert);
    }
    /* GPT-2 style: ByteLevel alone with its regex and a prefix space */
    json_t *j = base_json(false);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                                      "use_regex", 1));
    json_object_del(j, "normalizer");
    tokenizer *t = NULL;
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "hello world", ' ', HELLO, GWORLD);
    IDS(t, " world", GWORLD);
    tokenizer_free(t);
}

/* A Sequence normalizer, a NFKC one, and a Split that leaves pieces to the
 * ByteLevel regex. */
static void test_other_pipelines(void)
{
    json_t *j = base_json(false);
    json_object_set_new(j, "normalizer", json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "normalizers", "type",
                                                   "NFKC"));
    tokenizer *t = NULL;
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "\xEF\xAC\x81", 'f', 'i'); /* U+FB01 LATIN SMALL LIGATURE FI -> fi */
    tokenizer_free(t);

    j = base_json(false);
    json_object_set_new(j, "normalizer", json_null());
    json_object_set_new(j, "post_processor", json_null());
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    IDS(t, "e\xCC\x81", 'e', 0xCC, 0x81); /* no normalizer: kept as is */
    static const int32_t hello[] = {HELLO};
    CHECK(ids_are(t, "hello", 5, true, hello, 1)); /* no post-processor: nothing added */
    tokenizer_free(t);
}

/* ------------------------------------------------------------------ refusals */

static void expect_refusal(json_t *j, const char *needle1, const char *needle2, int line)
{
    tokenizer *t = NULL;
    tidal_status st = load_json(j, &t);
    json_decref(j);
    if (st != TIDAL_ERR_INVALID || !strstr(tidal_errmsg(), needle1) || (needle2 && !strstr(tidal_errmsg(), needle2))) {
        fprintf(stderr, "%s:%d: want a refusal naming \"%s\"%s%s, got %s: %s\n", __FILE__, line, needle1,
                needle2 ? " and " : "", needle2 ? needle2 : "", tidal_status_name(st), tidal_errmsg());
        check_cur_failed_ = 1;
    }
    tokenizer_free(t);
}
#define REFUSE(j, a, b)                          \
    do {                                         \
        expect_refusal(j, a, b, __LINE__);       \
        if (check_cur_failed_) return;           \
    } while (0)

static json_t *with(const char *key, json_t *v)
{
    json_t *j = base_json(false);
    json_object_set_new(j, key, v);
    return j;
}

static json_t *with_model(const char *key, json_t *v)
{
    json_t *j = base_json(false);
    json_object_set_new(json_object_get(j, "model"), key, v);
    return j;
}

static void test_refusals(void)
{
    REFUSE(with_model("type", json_string("WordPiece")), "test/tokenizer.json: model.type", "WordPiece");
    REFUSE(with_model("type", json_string("Unigram")), "model.type", "Unigram");
    REFUSE(with_model("byte_fallback", json_true()), "model.byte_fallback", "SentencePiece");
    REFUSE(with_model("dropout", json_real(0.1)), "model.dropout", NULL);
    REFUSE(with_model("continuing_subword_prefix", json_string("##")), "model.continuing_subword_prefix", NULL);
    REFUSE(with_model("vocab", json_pack("{s:i}", "a", 0)), "model.vocab", "no token for byte");
    /* without merges too, while a normalizer and a Split step make it more than one token per byte
       (tidal's alphabet tokenizer, written out, has neither: test_checkpoint loads one) */
    json_t *partial = with_model("vocab", json_pack("{s:i}", "a", 0));
    json_object_set_new(json_object_get(partial, "model"), "merges", json_array());
    REFUSE(partial, "model.vocab", "no token for byte 0x00");
    REFUSE(with_model("vocab", json_pack("{s:s}", "a", "zero")), "model.vocab", "id must be an integer");
    REFUSE(with_model("merges", json_pack("[s]", "h zz")), "model.merges[0]", "\"zz\" is not in the vocabulary");
    REFUSE(with_model("merges", json_pack("[s]", "h q")), "model.merges[0]", "merged token \"hq\"");
    REFUSE(with_model("merges", json_pack("[s]", "h e x")), "model.merges[0]", "two tokens");
    REFUSE(with_model("merges", json_pack("[[s]]", "h")), "model.merges[0]", NULL);
    REFUSE(with("normalizer", json_pack("{s:s}", "type", "Lowercase")), "normalizer.type", "Lowercase");
    REFUSE(with("normalizer", json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers", "type", "NFC",
                                        "type", "Replace")),
           "normalizer.normalizers[1].type", "Replace");
    REFUSE(with("pre_tokenizer", json_pack("{s:s}", "type", "Metaspace")), "pre_tokenizer.type", "Metaspace");
    REFUSE(with("pre_tokenizer", json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "pretokenizers", "type",
                                           "Whitespace")),
           "pre_tokenizer.pretokenizers[0].type", "Whitespace");
    REFUSE(with("pre_tokenizer", json_null()), "pre_tokenizer", "ByteLevel");
    REFUSE(with("pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex", "\\s+",
                                           "behavior", "Isolated")),
           "pre_tokenizer", "no ByteLevel");
    REFUSE(with("pre_tokenizer", json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}]}", "type", "Sequence",
                                           "pretokenizers", "type", "Split", "pattern", "Regex", "(unclosed",
                                           "behavior", "Isolated", "type", "ByteLevel")),
           "pre_tokenizer.pretokenizers[0].pattern.Regex", "cannot compile");
    REFUSE(with("pre_tokenizer", json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}]}", "type", "Sequence",
                                           "pretokenizers", "type", "Split", "pattern", "Regex", "x", "behavior",
                                           "Sideways", "type", "ByteLevel")),
           "pre_tokenizer.pretokenizers[0].behavior", "Sideways");
    REFUSE(with("decoder", json_pack("{s:s}", "type", "Metaspace")), "decoder.type", "Metaspace");
    REFUSE(with("post_processor", json_pack("{s:s}", "type", "RobertaProcessing")), "post_processor.type",
           "RobertaProcessing");
    json_t *j = base_json(false);
    json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 0), "single_word", json_true());
    REFUSE(j, "added_tokens[0].single_word", NULL);
    j = base_json(false);
    json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 0), "id", json_integer(HELLO));
    REFUSE(j, "added_tokens[0]", "vocabulary token \"hello\"");
    j = base_json(false);
    json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 0), "id", json_integer(-3));
    REFUSE(j, "added_tokens[0].id", NULL);

    tokenizer *t = NULL;
    CHECK_STATUS(tokenizer_load_buffer("{\"model\": ", 10, NULL, 0, "x.json", &t), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "x.json: JSON at line 1"));
    CHECK_STATUS(tokenizer_load_buffer("[]", 2, NULL, 0, "x.json", &t), TIDAL_ERR_INVALID);
    CHECK(t == NULL);
}

/* ------------------------------------------------------------------ files */

static char tmpdir[64];

static bool write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static void test_load_files(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tidal-test-tok-XXXXXX");
    CHECK(mkdtemp(tmpdir));
    json_t *j = base_json(false);
    char *text = json_dumps(j, JSON_INDENT(1));
    json_decref(j);
    bool ok = write_file(tmpdir, "tokenizer.json", text);
    free(text);
    CHECK(ok);
    CHECK(write_file(tmpdir, "tokenizer_config.json",
                     "{\"bos_token\": {\"content\": \"<|bos|>\", \"__type\": \"AddedToken\"}, \"eos_token\": "
                     "\"<|end|>\", \"chat_template\": \"{% for m in messages %}<|im_start|>{{ m.role }}...\"}"));
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_load(tmpdir, &t)); /* the directory */
    CHECK(tokenizer_bos_id(t) == BOS && tokenizer_eos_id(t) == END);
    chat_format f = CHAT_PLAIN;
    CHECK_OK(chat_format_detect(tokenizer_chat_template(t), &f));
    CHECK(f == CHAT_CHATML);
    IDS(t, "hello world", HELLO, GWORLD);
    tokenizer_free(t);

    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    CHECK_OK(tokenizer_load(path, &t)); /* the file, config beside it */
    CHECK(tokenizer_eos_id(t) == END);
    CHECK(strstr(tokenizer_name(t), "tokenizer.json"));
    tokenizer_free(t);

    /* the format from the directory's files alone, as the loaded tokenizer's template says */
    f = CHAT_PLAIN;
    CHECK_OK(chat_format_of_model_dir(tmpdir, &f));
    CHECK(f == CHAT_CHATML);
    CHECK(write_file(tmpdir, "tokenizer_config.json",
                     "{\"model_max_length\": 1000000000000000019884624838656, \"chat_template\": [{\"name\": \"tool_use\", "
                     "\"template\": \"<|im_start|>\"}, {\"name\": \"default\", \"template\": \"<|start_header_id|>\"}]}"));
    CHECK_OK(chat_format_of_model_dir(tmpdir, &f));
    CHECK(f == CHAT_LLAMA3);
    CHECK(write_file(tmpdir, "tokenizer_config.json", "{\"chat_template\": \"{{ bos_token }}[INST]\"}"));
    CHECK_OK(chat_format_of_model_dir(tmpdir, &f)); /* unrecognised: plain */
    CHECK(f == CHAT_PLAIN);
    CHECK(write_file(tmpdir, "tokenizer_config.json", "{\"chat_template\": 3}"));
    CHECK_STATUS(chat_format_of_model_dir(tmpdir, &f), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tokenizer_config.json: chat_template"));
    CHECK(write_file(tmpdir, "tokenizer_config.json", "{\"chat_template\": "));
    CHECK_STATUS(chat_format_of_model_dir(tmpdir, &f), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tokenizer_config.json: JSON at line 1"));
    CHECK(write_file(tmpdir, "tokenizer_config.json", "{\"chat_template\": [{\"name\": \"default\"}]}"));
    CHECK_STATUS(tokenizer_load(tmpdir, &t), TIDAL_ERR_INVALID); /* the tokenizer reads the template the same way */
    CHECK(strstr(tidal_errmsg(), "chat_template") && strstr(tidal_errmsg(), "\"template\" string"));

    CHECK(write_file(tmpdir, "tokenizer_config.json", "{\"eos_token\": \"<|nope|>\"}"));
    CHECK_STATUS(tokenizer_load(tmpdir, &t), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "tokenizer_config.json: eos_token") && strstr(tidal_errmsg(), "<|nope|>"));

    char missing[128];
    snprintf(missing, sizeof missing, "%s/nothing", tmpdir);
    CHECK_STATUS(tokenizer_load(missing, &t), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), missing));
    CHECK_STATUS(chat_format_of_model_dir(missing, &f), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), missing));

    unlink(path); /* a model directory without its tokenizer fails naming the file */
    CHECK_STATUS(chat_format_of_model_dir(tmpdir, &f), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "tokenizer.json: open"));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir);
    unlink(path); /* neither file: only the tokenizer is missing */
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    CHECK(write_file(tmpdir, "tokenizer.json", "{}"));
    f = CHAT_LLAMA3;
    CHECK_OK(chat_format_of_model_dir(tmpdir, &f)); /* no tokenizer_config.json: plain */
    CHECK(f == CHAT_PLAIN);

    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir);
    unlink(path);
    rmdir(tmpdir);
}

/* ------------------------------------------------------------------ threads */

typedef struct {
    tokenizer *t;
    bool ok;
} thread_arg;

static void *encode_many(void *p)
{
    thread_arg *a = p;
    static const char text[] = "hello world <|end|> abc 123 e\xCC\x81 foo bar\n";
    static const int32_t want[] = {HELLO, GWORLD, ' ', END, ' ', AB, 'c', ' ', '1', '2', '3', ' ', 0xC3, 0xA9,
                                   ' ', FOOBAR, '\n'};
    a->ok = true;
    for (int i = 0; i < 2000 && a->ok; i++)
        a->ok = ids_are(a->t, text, sizeof text - 1, false, want, sizeof want / sizeof want[0]);
    return NULL;
}

static void test_threads(void)
{
    tokenizer *t = NULL;
    json_t *j = base_json(false);
    CHECK_OK(load_json(j, &t));
    json_decref(j);
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){.t = t, .ok = false};
        pthread_create(&th[i], NULL, encode_many, &args[i]);
    }
    bool ok = true;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok = ok && args[i].ok;
    }
    tokenizer_free(t);
    CHECK(ok);
}

/* ------------------------------------------------------------------ chat */

static bool rendered(chat_format f, const chat_message *m, size_t n, bool gen, const char *want)
{
    char *out = NULL;
    size_t len = 0;
    tidal_status st = chat_render(f, m, n, gen, &out, &len);
    bool ok = st == TIDAL_OK && len == strlen(want) && !strcmp(out, want);
    if (!ok)
        fprintf(stderr, "  %s rendered \"%s\" (%s), want \"%s\"\n", chat_format_name(f), out ? out : "",
                tidal_errmsg(), want);
    free(out);
    return ok;
}

static void test_chat(void)
{
    static const chat_message conv[] = {
        {"system", "You are terse."}, {"user", "What is 2+2?"}, {"assistant", "4"}, {"user", "And 3+3?"}};
    CHECK(rendered(CHAT_CHATML, conv, 4, true,
                   "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
                   "<|im_start|>assistant\n"));
    CHECK(rendered(CHAT_CHATML, conv + 1, 1, false, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"));
    CHECK(rendered(CHAT_LLAMA3, conv, 3, true,
                   "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"));
    static const chat_message padded[] = {{"user", " \n\t hi there \xE3\x80\x80\n"}};
    CHECK(rendered(CHAT_LLAMA3, padded, 1, false,
                   "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"));
    CHECK(rendered(CHAT_LLAMA3, NULL, 0, true, "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    CHECK(rendered(CHAT_PLAIN, conv, 3, true, "system: You are terse.\nuser: What is 2+2?\nassistant: 4\nassistant:"));
    CHECK(rendered(CHAT_PLAIN, NULL, 0, false, ""));
    CHECK(rendered(CHAT_NONE, conv, 2, true, "You are terse.\nWhat is 2+2?\n"));

    chat_format f;
    CHECK_OK(chat_format_parse("llama3", &f));
    CHECK(f == CHAT_LLAMA3 && !strcmp(chat_format_name(f), "llama3"));
    CHECK_STATUS(chat_format_parse("alpaca", &f), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "chatml, llama3, plain, none"));
    CHECK_OK(chat_format_parse("none", &f));
    CHECK(f == CHAT_NONE && !strcmp(chat_end_of_turn(f), "\n"));
    CHECK_OK(chat_format_detect("{%- for m in messages %}{{ '<|start_header_id|>' + m['role'] }}", &f));
    CHECK(f == CHAT_LLAMA3);
    CHECK_STATUS(chat_format_detect("{{ bos_token }}[INST]", &f), TIDAL_ERR_NOT_FOUND);
    CHECK_STATUS(chat_format_detect(NULL, &f), TIDAL_ERR_NOT_FOUND);
    CHECK(!strcmp(chat_end_of_turn(CHAT_CHATML), "<|im_end|>") && !strcmp(chat_end_of_turn(CHAT_LLAMA3), "<|eot_id|>"));

    static const chat_message tool[] = {{"user", "x"}, {"tool", "y"}};
    char *out = NULL;
    CHECK_STATUS(chat_render(CHAT_CHATML, tool, 2, false, &out, NULL), TIDAL_ERR_INVALID);
    CHECK(out == NULL && strstr(tidal_errmsg(), "messages[1].role"));

    /* rendered chatml through the byte-level tokenizer: specials become their ids */
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_byte_level(&t));
    size_t len;
    CHECK_OK(chat_render(CHAT_CHATML, conv + 2, 1, true, &out, &len));
    tok_ids v = {0};
    tidal_status st = tokenizer_encode(t, out, len, false, &v);
    free(out);
    static const int32_t want[] = {257, 'a', 's', 's', 'i', 's', 't', 'a', 'n', 't', '\n', '4', 258, '\n',
                                   257, 'a', 's', 's', 'i', 's', 't', 'a', 'n', 't', '\n'};
    bool ok = st == TIDAL_OK && v.n == sizeof want / sizeof want[0] && !memcmp(v.ids, want, sizeof want);
    tok_ids_free(&v);
    tokenizer_free(t);
    CHECK(ok);
}

/* ------------------------------------------------------------------ fuzz seeds */

static int write_seeds(const char *dir)
{
    mkdir(dir, 0755);
    json_t *j = base_json(false);
    char *a = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    j = base_json(true);
    json_object_set_new(json_object_get(j, "model"), "ignore_merges", json_true());
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                                      "use_regex", 1));
    char *b = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    /* other pipelines: Split behaviours, Sequence normalizer / post-processor / decoder */
    j = base_json(false);
    json_object_set_new(j, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}",
                                  "type", "Sequence", "pretokenizers", "type", "Split", "pattern", "String", "-",
                                  "behavior", "MergedWithNext", "invert", 0, "type", "Split", "pattern", "Regex",
                                  "\\s+", "behavior", "Contiguous", "invert", 1, "type", "ByteLevel",
                                  "add_prefix_space", 1, "use_regex", 1));
    json_object_set_new(j, "normalizer", json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers",
                                                   "type", "NFKC", "type", "NFD"));
    json_object_set_new(j, "post_processor",
                        json_pack("{s:s, s:[{s:s}, {s:s, s:[{s:{s:s}}, {s:{s:s}}], s:{s:{s:[i]}}}]}", "type",
                                  "Sequence", "processors", "type", "ByteLevel", "type", "TemplateProcessing", "single",
                                  "Sequence", "id", "A", "SpecialToken", "id", "<|end|>", "special_tokens", "<|end|>",
                                  "ids", END));
    json_object_set_new(j, "decoder", json_pack("{s:s, s:[{s:s}]}", "type", "Sequence", "decoders", "type",
                                                "ByteLevel"));
    char *c = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    j = with_model("type", json_string("WordPiece"));
    char *d = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    /* the quickstart's alphabet tokenizer as a checkpoint carries it: one token per byte, other bytes refused */
    tokenizer *alpha = NULL;
    char *e = NULL;
    if (tokenizer_alphabet("0123456789\n", &alpha) != TIDAL_OK || tokenizer_json_text(alpha, &e) != TIDAL_OK) return 1;
    tokenizer_free(alpha);
    struct { const char *name; const char *text; } seeds[] = {
        {"bpe.json", a},
        {"bpe-pairs-gpt2.json", b},
        {"pipelines.json", c},
        {"wordpiece.json", d},
        {"alphabet.json", e},
        {"text-mixed.txt",
         "Hello, world! <|endoftext|> caf\xC3\xA9 e\xCC\x81 \xE4\xBD\xA0\xE5\xA5\xBD 123 \xF0\x9F\x98\x80"},
        {"text-invalid.txt", "ab\xFF\xFE\xE4\xBD <|im_end|>\xC0\xAF \n\r\n\t  x"},
        {"text-code.txt", "def f(x):\n    return x ** 2  # it's ok\n\tDON'T   \n"},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
        if (!write_file(dir, seeds[i].name, seeds[i].text)) { perror(seeds[i].name); return 1; }
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    printf("wrote %zu seeds to %s\n", sizeof seeds / sizeof seeds[0], dir);
    return 0;
}

int main(void)
{
    const char *seeds = getenv("TIDAL_FUZZ_SEEDS_OUT");
    if (seeds) return write_seeds(seeds);

    RUN(test_byte_level);
    RUN(test_alphabet);
    RUN(test_merges);
    RUN(test_added_tokens);
    RUN(test_normalization_and_bytes);
    RUN(test_split_behaviors);
    RUN(test_other_pipelines);
    RUN(test_refusals);
    RUN(test_load_files);
    RUN(test_threads);
    RUN(test_chat);
    return check_summary();
}
