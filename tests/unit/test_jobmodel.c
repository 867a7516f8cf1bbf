/* test_jobmodel.c - a tiny model.init with a real tokenizer
 * (model.init.tokenizer, job/jobmodel.h): the vocabulary, eos and bos come
 * from the tokenizer's files, the chat format from its tokenizer_config.json,
 * the trainer's copy puts both files into a checkpoint; a directory or the
 * tokenizer.json itself may be named, and a bad file fails naming the key. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "job/jobmodel.h"

static char dir[64];

/* GPT-2's bytes_to_unicode: the character that stands for byte b in a byte-level BPE vocabulary. */
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

/* A byte-level BPE tokenizer.json without merges: the 256 bytes, then
 * <|endoftext|> 256, <|im_start|> 257, <|im_end|> 258, <|bos|> 300 (the
 * vocabulary is the largest id + 1 = 301). */
static void write_text(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

static void write_tokenizer(void)
{
    json_t *vocab = json_object();
    char c[4];
    for (int b = 0; b < 256; b++) {
        byte_char(b, c);
        json_object_set_new(vocab, c, json_integer(b));
    }
    json_t *added = json_pack("[{s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b}]", "id", 256,
                              "content", "<|endoftext|>", "special", 1, "id", 257, "content", "<|im_start|>", "special",
                              1, "id", 258, "content", "<|im_end|>", "special", 1, "id", 300, "content", "<|bos|>",
                              "special", 1);
    json_t *j = json_pack("{s:s, s:o, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:o, s:[]}}", "version",
                          "1.0", "added_tokens", added, "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                          "trim_offsets", 0, "use_regex", 0, "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                          "trim_offsets", 0, "use_regex", 0, "model", "type", "BPE", "vocab", vocab, "merges");
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    write_text("tokenizer.json", text);
    free(text);
}

static tidal_status spec_with(const char *tokenizer_path, const char *extra, job_spec *s)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "job: {name: t}\nenv: {name: gsm8k}\ndata: {path: /d.jsonl}\n"
             "model: {init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, tokenizer: \"%s\"%s}}\n",
             tokenizer_path, extra);
    return spec_parse(yaml, strlen(yaml), "job.yaml", NULL, 0, s);
}

/* A directory with tokenizer_config.json: its eos, bos and chat template. */
static void test_directory_with_config(void)
{
    write_text("tokenizer_config.json", "{\"eos_token\": \"<|im_end|>\", \"bos_token\": \"<|bos|>\", "
                                        "\"chat_template\": \"{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}\"}");
    job_spec s;
    CHECK_OK(spec_with(dir, "", &s));
    model_config c;
    CHECK_OK(job_model_config(&s, &c));
    CHECK_MSG(c.vocab_size == 301 && c.eos_token_id == 258 && c.bos_token_id == 300, "vocab %d eos %d bos %d",
              c.vocab_size, c.eos_token_id, c.bos_token_id);
    tokenizer *t = NULL;
    CHECK_OK(job_tokenizer(&s, &t));
    model_config c2;
    CHECK_OK(job_model_config_of(&s, t, &c2));
    CHECK(!memcmp(&c, &c2, sizeof c)); /* the worker's way, with the tokenizer it holds, agrees */
    chat_format f;
    CHECK_OK(job_chat_format(&s, &f));
    CHECK_MSG(f == CHAT_CHATML, "data.template auto: %s, want chatml", chat_format_name(f));
    CHECK(job_stop_id(f, t) == 258);
    tokenizer_free(t);
    /* the checkpoint's copy: both files, as they are */
    char ck[128], cmd[512];
    snprintf(ck, sizeof ck, "%s/ckpt", dir);
    CHECK(mkdir(ck, 0755) == 0);
    hf_files hf = {0};
    CHECK_OK(job_hf_files(&s, &hf)); /* what a checkpoint carries: model.init.tokenizer's files, as they are */
    CHECK_OK(hf_files_write(&hf, ck));
    hf_files_clear(&hf);
    snprintf(cmd, sizeof cmd, "cmp -s %s/tokenizer.json %s/tokenizer.json && cmp -s %s/tokenizer_config.json "
             "%s/tokenizer_config.json", dir, ck, dir, ck);
    CHECK_MSG(system(cmd) == 0, "the checkpoint's tokenizer files differ");
    spec_release(&s);
    /* model.init.vocab larger than the tokenizer's stays: room for ids added later */
    CHECK_OK(spec_with(dir, ", vocab: 512", &s));
    CHECK_OK(job_model_config(&s, &c));
    CHECK(c.vocab_size == 512);
    spec_release(&s);
}

/* The tokenizer.json itself, with no tokenizer_config.json beside it: eos is <|endoftext|>, no bos, plain. */
static void test_bare_file(void)
{
    char path[160];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    job_spec s;
    CHECK_OK(spec_with(path, "", &s));
    model_config c;
    CHECK_OK(job_model_config(&s, &c));
    CHECK_MSG(c.vocab_size == 301 && c.eos_token_id == 256 && c.bos_token_id == -1, "vocab %d eos %d bos %d",
              c.vocab_size, c.eos_token_id, c.bos_token_id);
    chat_format f;
    CHECK_OK(job_chat_format(&s, &f));
    CHECK(f == CHAT_PLAIN);
    char ck[96];
    snprintf(ck, sizeof ck, "%s/ckpt2", dir);
    CHECK(mkdir(ck, 0755) == 0);
    hf_files hf = {0};
    CHECK_OK(job_hf_files(&s, &hf));
    CHECK_OK(hf_files_write(&hf, ck));
    hf_files_clear(&hf);
    /* the checkpoint completes what the bare file lacks: it loads with the same eos */
    tokenizer *t = NULL;
    CHECK_OK(tokenizer_load(ck, &t));
    CHECK(tokenizer_eos_id(t) == 256);
    tokenizer_free(t);
    spec_release(&s);
}

/* Bad files fail naming the key; the other specs copy nothing. */
static void test_errors(void)
{
    job_spec s;
    CHECK_OK(spec_with("/nonexistent/tok", "", &s));
    model_config c;
    CHECK_STATUS(job_model_config(&s, &c), TIDAL_ERR_NOT_FOUND);
    CHECK_MSG(strstr(tidal_errmsg(), "model.init.tokenizer") && strstr(tidal_errmsg(), "/nonexistent/tok"), "%s",
              tidal_errmsg());
    chat_format f;
    CHECK_STATUS(job_chat_format(&s, &f), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "model.init.tokenizer"));
    spec_release(&s);
    write_text("broken.json", "{\"model\": ");
    char path[128];
    snprintf(path, sizeof path, "%s/broken.json", dir);
    CHECK_OK(spec_with(path, "", &s));
    CHECK_STATUS(job_model_config(&s, &c), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "model.init.tokenizer") && strstr(tidal_errmsg(), "broken.json"), "%s",
              tidal_errmsg());
    spec_release(&s);
    const char *plain = "job: {name: t}\nenv: {name: gsm8k}\ndata: {path: /d.jsonl}\nmodel: {init: {layers: 1}}\n";
    CHECK_OK(spec_parse(plain, strlen(plain), "job.yaml", NULL, 0, &s));
    CHECK(job_tokenizer_source(&s) == NULL); /* the built-in tokenizer: written, not copied */
    spec_release(&s);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/tidal-test-jobmodel-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    write_tokenizer();
    RUN(test_directory_with_config);
    RUN(test_bare_file);
    RUN(test_errors);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
    return check_summary();
}
