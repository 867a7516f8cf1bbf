/* tokenize.c - `tidal tokenize`: text to token ids and back, one line each,
 * for people and for the tokenizer parity test.
 *
 * Encoding reads stdin line by line; the text of a line is its bytes without
 * the final "\n" (a "\r" before it stays part of the text). With --jsonl each
 * line is instead one JSON string, so texts may hold newlines, NULs or any
 * Unicode. Each text prints as one JSON array of ids. Special-token strings
 * in the text ("<|im_end|>") are matched; what the tokenizer's
 * post-processor adds (a BOS) only with --add-special.
 *
 * --decode reads one JSON array of ids per line and prints the text: raw
 * bytes and "\n" (exactly the tokens' bytes, which may be invalid UTF-8), or
 * with --jsonl one JSON string per line, where a byte that is not part of
 * valid UTF-8 prints as U+FFFD (JSON cannot hold it).
 *
 * --save DIR writes the tokenizer as Hugging Face files instead (tidal's
 * byte-level and alphabet tokenizers: model/tokenizer_save.c), what a
 * checkpoint of a model.init job carries; the parity test loads them into
 * Hugging Face's tokenizers.
 *
 * Exit status: 0 ok; 2 usage, an unreadable or unsupported tokenizer, or a
 * bad input line (the message names its number; nothing after it is read);
 * 1 any other failure.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"
#include "cli/commands.h"
#include "model/hfdir.h"
#include "model/tokenizer.h"

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fputs("usage: tidal tokenize --tokenizer PATH [--jsonl] [--decode] [--add-special]\n"
          "       tidal tokenize --tokenizer PATH --save DIR\n"
          "\n"
          "Read one text per line on stdin and print one JSON array of token ids per line;\n"
          "with --decode, read JSON arrays of ids and print the texts.\n"
          "  --tokenizer PATH  a tokenizer.json file, or a directory holding one (and\n"
          "                    optionally tokenizer_config.json); \"byte-level\" for the\n"
          "                    byte-level tokenizer of tiny models, \"alphabet:CHARS\" for\n"
          "                    the alphabet tokenizer of model.init.alphabet CHARS\n"
          "  --save DIR        write the tokenizer as DIR/tokenizer.json and\n"
          "                    DIR/tokenizer_config.json (Hugging Face files) and exit:\n"
          "                    the files a checkpoint of a model.init job carries\n"
          "  --jsonl           each input (encode) or output (decode) line is a JSON string,\n"
          "                    so texts may hold newlines\n"
          "  --decode          ids to text\n"
          "  --add-special     add what the tokenizer's post-processor adds (e.g. Llama-3's\n"
          "                    <|begin_of_text|>); special-token strings in the text are\n"
          "                    always matched\n",
          f);
}

/* Write s[0..n) as a JSON string; bytes outside valid UTF-8 become U+FFFD. */
static void put_json_string(FILE *out, const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    putc('"', out);
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            switch (c) {
            case '"': fputs("\\\"", out); break;
            case '\\': fputs("\\\\", out); break;
            case '\n': fputs("\\n", out); break;
            case '\r': fputs("\\r", out); break;
            case '\t': fputs("\\t", out); break;
            case '\b': fputs("\\b", out); break;
            case '\f': fputs("\\f", out); break;
            default:
                if (c < 0x20) fprintf(out, "\\u%04x", c);
                else putc(c, out);
            }
            i++;
            continue;
        }
        size_t l = 0;
        uint32_t cp = 0;
        if (c >= 0xC2 && c < 0xE0) { l = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c < 0xF0) { l = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c < 0xF5) { l = 4; cp = c & 0x07; }
        bool ok = l && i + l <= n;
        for (size_t k = 1; ok && k < l; k++) {
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
            else cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (ok && l == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
        if (ok && l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ok = false;
        if (ok) {
            fwrite(p + i, 1, l, out);
            i += l;
        } else {
            fputs("\xEF\xBF\xBD", out);
            i++;
        }
    }
    putc('"', out);
}

static void put_ids(FILE *out, const int32_t *ids, size_t n)
{
    char buf[16];
    putc('[', out);
    for (size_t i = 0; i < n; i++) {
        /* hand-rolled: printf per id dominates otherwise */
        int32_t v = ids[i];
        char *e = buf + sizeof buf, *q = e;
        uint32_t u = v < 0 ? (uint32_t)(-(int64_t)v) : (uint32_t)v;
        do { *--q = (char)('0' + u % 10); u /= 10; } while (u);
        if (v < 0) *--q = '-';
        if (i) putc(',', out);
        fwrite(q, 1, (size_t)(e - q), out);
    }
    fputs("]\n", out);
}

/* A line of --decode input: a JSON array of integer ids. */
static int parse_ids(const char *line, size_t len, long lineno, tok_ids *ids)
{
    json_error_t jerr;
    json_t *v = json_loadb(line, len, 0, &jerr);
    if (!json_is_array(v)) {
        if (v) fprintf(stderr, "tidal tokenize: stdin line %ld: not a JSON array of token ids\n", lineno);
        else fprintf(stderr, "tidal tokenize: stdin line %ld: column %d: %s\n", lineno, jerr.column, jerr.text);
        json_decref(v);
        return EXIT_USAGE;
    }
    ids->n = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) < INT32_MIN || json_integer_value(x) > INT32_MAX) {
            fprintf(stderr, "tidal tokenize: stdin line %ld: element %zu is not a token id\n", lineno, i);
            json_decref(v);
            return EXIT_USAGE;
        }
        if (ids->n == ids->cap) {
            size_t cap = ids->cap ? 2 * ids->cap : 64;
            int32_t *p = realloc(ids->ids, cap * sizeof *p);
            if (!p) { json_decref(v); fprintf(stderr, "tidal tokenize: out of memory\n"); return EXIT_FAIL; }
            ids->ids = p;
            ids->cap = cap;
        }
        ids->ids[ids->n++] = (int32_t)json_integer_value(x);
    }
    json_decref(v);
    return EXIT_OK;
}

int tokenize_main(int argc, char **argv)
{
    const char *path = NULL, *save = NULL;
    bool jsonl = false, decode = false, add_special = false;
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"jsonl", no_argument, NULL, 'j'},
        {"decode", no_argument, NULL, 'd'},          {"add-special", no_argument, NULL, 's'},
        {"save", required_argument, NULL, 'S'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': path = optarg; break;
        case 'j': jsonl = true; break;
        case 'd': decode = true; break;
        case 's': add_special = true; break;
        case 'S': save = optarg; break;
        case 'h': usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "tidal tokenize: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tidal tokenize: unexpected argument '%s' (texts come on stdin)\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!path) {
        fprintf(stderr, "tidal tokenize: --tokenizer PATH is required\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (decode && add_special) {
        fprintf(stderr, "tidal tokenize: --add-special is for encoding\n");
        return EXIT_USAGE;
    }

    tokenizer *tok = NULL;
    tidal_status st = strcmp(path, "byte-level") == 0      ? tokenizer_byte_level(&tok)
                      : strncmp(path, "alphabet:", 9) == 0 ? tokenizer_alphabet(path + 9, &tok)
                                                           : tokenizer_load(path, &tok);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal tokenize: %s\n", tidal_errmsg());
        return st == TIDAL_ERR_INVALID || st == TIDAL_ERR_NOT_FOUND ? EXIT_USAGE : EXIT_FAIL;
    }
    if (save) {
        hf_files f = {0};
        st = fs_mkdirs(save);
        if (st == TIDAL_OK) st = hf_files_from_tokenizer(tok, 0, NULL, &f);
        if (st == TIDAL_OK) st = hf_files_write(&f, save);
        hf_files_clear(&f);
        tokenizer_free(tok);
        if (st != TIDAL_OK) fprintf(stderr, "tidal tokenize: --save %s: %s\n", save, tidal_errmsg());
        return st == TIDAL_OK ? EXIT_OK : st == TIDAL_ERR_INVALID ? EXIT_USAGE : EXIT_FAIL;
    }

    int rc = EXIT_OK;
    char *line = NULL;
    size_t line_cap = 0;
    long lineno = 0;
    tok_ids ids = {0};
    tok_bytes text = {0};
    ssize_t got;
    while (rc == EXIT_OK && (got = getline(&line, &line_cap, stdin)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n') len--;
        if (decode) {
            if ((rc = parse_ids(line, len, lineno, &ids)) != EXIT_OK) break;
            text.len = 0;
            if (tokenizer_decode(tok, ids.ids, ids.n, &text) != TIDAL_OK) {
                fprintf(stderr, "tidal tokenize: stdin line %ld: %s\n", lineno, tidal_errmsg());
                rc = EXIT_USAGE;
                break;
            }
            if (jsonl) put_json_string(stdout, text.data, text.len);
            else fwrite(text.data, 1, text.len, stdout);
            putc('\n', stdout);
            continue;
        }
        const char *p = line;
        size_t n = len;
        json_t *js = NULL;
        if (jsonl) {
            json_error_t jerr;
            js = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            if (!json_is_string(js)) {
                if (js) fprintf(stderr, "tidal tokenize: stdin line %ld: not a JSON string\n", lineno);
                else fprintf(stderr, "tidal tokenize: stdin line %ld: column %d: %s\n", lineno, jerr.column, jerr.text);
                json_decref(js);
                rc = EXIT_USAGE;
                break;
            }
            p = json_string_value(js);
            n = json_string_length(js);
        }
        ids.n = 0;
        st = tokenizer_encode(tok, p, n, add_special, &ids);
        json_decref(js);
        if (st != TIDAL_OK) {
            fprintf(stderr, "tidal tokenize: stdin line %ld: %s\n", lineno, tidal_errmsg());
            rc = EXIT_FAIL;
            break;
        }
        put_ids(stdout, ids.ids, ids.n);
    }
    if (rc == EXIT_OK && ferror(stdin)) {
        fprintf(stderr, "tidal tokenize: reading stdin failed\n");
        rc = EXIT_FAIL;
    }
    if (fflush(stdout) != 0 && rc == EXIT_OK) {
        fprintf(stderr, "tidal tokenize: writing stdout failed\n");
        rc = EXIT_FAIL;
    }
    free(line);
    tok_ids_free(&ids);
    tok_bytes_free(&text);
    tokenizer_free(tok);
    return rc;
}
