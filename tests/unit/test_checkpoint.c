/* test_checkpoint.c - trainer checkpoints (trainer/checkpoint.h): what is
 * saved comes back bit for bit (weights, AdamW moments and step, counts,
 * trained ids), only the newest `keep` stay, a half-written step-N.tmp is
 * never taken for a checkpoint, and damage is named. A checkpoint is a
 * complete Hugging Face directory: the job's tokenizer files (written for
 * the quickstart's alphabet tokenizer, copied from a model.path) load back
 * and give the ids the job's tokenizer gives, generation_config.json names
 * eos and pad. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/fs.h"
#include "job/jobmodel.h"
#include "trainer/checkpoint.h"

#include <jansson.h>

static const model_config CFG = {.type = MODEL_QWEN2, .vocab_size = 40, .hidden_size = 16, .num_layers = 1,
                                 .num_heads = 2, .num_kv_heads = 1, .head_dim = 8, .intermediate_size = 32,
                                 .max_position_embeddings = 64, .rope_theta = 10000.0, .rms_norm_eps = 1e-6,
                                 .tie_word_embeddings = true, .qkv_bias = true, .bos_token_id = -1,
                                 .eos_token_id = -1};

static char root[128];

static void setup(model **m, adamw **o, ckpt_state *s, uint64_t version)
{
    CHECK_OK(model_create(&CFG, m));
    model_init_random(*m, version + 7, 0.2f, true);
    size_t n = 0;
    model_params(*m, &n);
    adamw_cfg ac = adamw_defaults();
    CHECK_OK(adamw_create(n, &ac, o));
    for (size_t i = 0; i < n; i++) (*o)->m[i] = (float)i * 1e-3f, (*o)->v[i] = 1.0f / (float)(i + 1);
    (*o)->step = (long)version;
    (*o)->norm_mean = 0.125 + (double)version, (*o)->norms_seen = (long)version + 1; /* spike clipping's scale */
    memset(s, 0, sizeof *s);
    s->version = version;
    s->elapsed_s = 12.5;
    s->groups_trained = version * 4;
    s->groups_dropped[BUFFER_DROP_STALE] = 3;
    s->samples_dropped[BUFFER_DROP_DUPLICATE] = 5;
    s->rejected = 2;
    for (uint64_t i = 0; i < version * 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "g%llu-%llu", (unsigned long long)(i / 3), (unsigned long long)(i % 3));
        CHECK_OK(ckpt_state_add_trained(s, id));
    }
}

static void test_round_trip_and_keep(void)
{
    model *m[3];
    adamw *o[3];
    ckpt_state s[3];
    for (int i = 0; i < 3; i++) {
        setup(&m[i], &o[i], &s[i], (uint64_t)(i + 1) * 10);
        CHECK_OK(checkpoint_save(root, m[i], o[i], &s[i], 2, NULL));
    }
    char path[256];
    struct stat sb;
    snprintf(path, sizeof path, "%s/step-10", root);
    CHECK_MSG(stat(path, &sb) != 0, "step-10 should have been pruned (keep 2)");
    snprintf(path, sizeof path, "%s/step-20/model.safetensors", root);
    CHECK(stat(path, &sb) == 0);
    /* a torn later write is not a checkpoint */
    snprintf(path, sizeof path, "%s/step-99.tmp", root);
    CHECK_OK(fs_mkdirs(path));

    model *lm = NULL;
    adamw *lo = NULL;
    ckpt_state ls;
    CHECK_OK(checkpoint_load_latest(root, &lm, &lo, &ls));
    size_t n = 0, ln = 0;
    const float *p = model_params(m[2], &n), *lp = lm ? model_params(lm, &ln) : NULL;
    CHECK(lp && n == ln && !memcmp(p, lp, n * sizeof *p));
    CHECK(lo && !memcmp(lo->m, o[2]->m, n * sizeof(float)) && !memcmp(lo->v, o[2]->v, n * sizeof(float)));
    CHECK(lo && lo->step == 30);
    CHECK(lo && lo->norm_mean == 30.125 && lo->norms_seen == 31);
    CHECK(ls.version == 30 && ls.elapsed_s == 12.5 && ls.groups_trained == 120 && ls.rejected == 2);
    CHECK(ls.groups_dropped[BUFFER_DROP_STALE] == 3 && ls.samples_dropped[BUFFER_DROP_DUPLICATE] == 5);
    CHECK(ls.n_trained == 90 && !strcmp(ls.trained_ids[0], "g0-0") && !strcmp(ls.trained_ids[89], "g29-2"));
    model_free(lm), adamw_free(lo), ckpt_state_clear(&ls);
    for (int i = 0; i < 3; i++) model_free(m[i]), adamw_free(o[i]), ckpt_state_clear(&s[i]);
}

static void test_damage_is_named(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/step-30/state.json", root);
    FILE *f = fopen(path, "w");
    fputs("{\"version\": 30, \"trained_ids\": [1]}", f);
    fclose(f);
    model *m = NULL;
    adamw *o = NULL;
    ckpt_state s;
    CHECK_STATUS(checkpoint_load_latest(root, &m, &o, &s), TIDAL_ERR_CORRUPT);
    CHECK(strstr(tidal_errmsg(), "step-30/state.json") && strstr(tidal_errmsg(), "trained_ids[0]"));
    CHECK(!m && !o);
    fs_remove_tree(root, "test");
    CHECK_STATUS(checkpoint_load_latest(root, &m, &o, &s), TIDAL_ERR_NOT_FOUND);
}

/* The ids of text under t, as a string "[1,2,3]" for comparing. */
static void ids_of(tokenizer *t, const char *text, char *out, size_t cap)
{
    tok_ids ids = {0};
    CHECK_OK(tokenizer_encode(t, text, strlen(text), false, &ids));
    size_t k = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < ids.n && k < cap; i++) k += (size_t)snprintf(out + k, cap - k, "%s%d", i ? "," : "", ids.ids[i]);
    if (k < cap) snprintf(out + k, cap - k, "]");
    tok_ids_free(&ids);
}

/* DIR/file parsed into *out (NULL, failing the check, when it is not JSON). */
static void load(const char *dir, const char *file, json_t **out)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_error_t e;
    *out = json_load_file(path, 0, &e);
    CHECK_MSG(*out, "%s: %s", path, e.text);
}

/* Save a checkpoint of job spec `yaml`'s model with the job's files; return
 * the checkpoint's directory in dir. */
static void save_job(const char *yaml, uint64_t version, char *dir, size_t cap, job_spec *spec)
{
    CHECK_OK(spec_parse(yaml, strlen(yaml), "job.yaml", NULL, 0, spec));
    model *m = NULL;
    adamw *o = NULL;
    ckpt_state s;
    hf_files hf = {0};
    CHECK_OK(job_model_initial(spec, &m));
    size_t n = 0;
    model_params(m, &n);
    const adamw_cfg ac = adamw_defaults();
    CHECK_OK(adamw_create(n, &ac, &o));
    memset(&s, 0, sizeof s);
    s.version = version;
    CHECK_OK(job_hf_files(spec, &hf));
    CHECK_OK(checkpoint_save(root, m, o, &s, 5, &hf));
    snprintf(dir, cap, "%s/step-%llu", root, (unsigned long long)version);
    hf_files_clear(&hf);
    model_free(m), adamw_free(o), ckpt_state_clear(&s);
}

static void test_tokenizer_files(void)
{
    /* the quickstart's model: tidal's alphabet tokenizer, written out */
    static const char quick[] = "job: {name: q}\n"
                                "model:\n  init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, vocab: 14,\n"
                                "         alphabet: \"0123456789\\n\"}\n"
                                "data: {generator: strings, template: none}\n"
                                "env: {name: strings}\n";
    char dir[512], want[256], got[256];
    job_spec spec;
    save_job(quick, 7, dir, sizeof dir, &spec);
    tokenizer *job_tok = NULL, *saved = NULL;
    CHECK_OK(job_tokenizer(&spec, &job_tok));
    CHECK_OK(tokenizer_load(dir, &saved)); /* tokenizer.json and tokenizer_config.json */
    static const char *const texts[] = {"925\n", "0123456789", "", "\n\n", "<|im_start|>12<|im_end|>",
                                        "7<|endoftext|>", "<|endoftext|><|endoftext|>9"};
    for (size_t i = 0; saved && job_tok && i < sizeof texts / sizeof texts[0]; i++) {
        ids_of(job_tok, texts[i], want, sizeof want);
        ids_of(saved, texts[i], got, sizeof got);
        CHECK_MSG(!strcmp(want, got), "text %zu: the saved tokenizer gives %s, the job's %s", i, got, want);
    }
    CHECK(saved && tokenizer_vocab_size(saved) == 14 && tokenizer_eos_id(saved) == 11 && tokenizer_bos_id(saved) == -1);
    tok_ids ids = {0};
    CHECK_STATUS(tokenizer_encode(saved, "12a", 3, false, &ids), TIDAL_ERR_INVALID); /* outside the alphabet */
    CHECK(strstr(tidal_errmsg(), "0x61"));
    tok_ids_free(&ids);
    json_t *g = NULL, *c = NULL;
    load(dir, "generation_config.json", &g);
    load(dir, "tokenizer_config.json", &c);
    const json_t *stops = json_object_get(g, "eos_token_id"); /* <|endoftext|>, and "\n" ends a turn of format none */
    CHECK(json_array_size(stops) == 2 && json_integer_value(json_array_get(stops, 0)) == 11 &&
          json_integer_value(json_array_get(stops, 1)) == 10);
    CHECK(json_integer_value(json_object_get(g, "pad_token_id")) == 11);
    CHECK(!json_object_get(g, "bos_token_id"));
    CHECK(!strcmp(json_string_value(json_object_get(c, "eos_token")), "<|endoftext|>"));
    CHECK(!strcmp(json_string_value(json_object_get(c, "pad_token")), "<|endoftext|>"));
    json_decref(g), json_decref(c);
    tokenizer_free(saved), tokenizer_free(job_tok);
    spec_release(&spec);

    /* the byte-level tokenizer with chatml: eos and the end of turn both end generation */
    static const char bytes[] = "job: {name: b}\n"
                                "model:\n  init: {layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32}\n"
                                "data: {generator: strings, template: chatml}\n"
                                "env: {name: strings}\n";
    save_job(bytes, 8, dir, sizeof dir, &spec);
    CHECK_OK(tokenizer_load(dir, &saved));
    CHECK(saved && tokenizer_vocab_size(saved) == TOKENIZER_BYTE_LEVEL_VOCAB);
    ids_of(saved, "h\xc3\xa9<|im_end|>", got, sizeof got);
    CHECK_MSG(!strcmp(got, "[104,195,169,258]"), "byte-level ids %s", got);
    load(dir, "generation_config.json", &g);
    json_t *eos = json_object_get(g, "eos_token_id");
    CHECK(json_array_size(eos) == 2 && json_integer_value(json_array_get(eos, 0)) == 256 &&
          json_integer_value(json_array_get(eos, 1)) == 258);
    json_decref(g);
    tokenizer_free(saved);
    spec_release(&spec);

    /* a model.path model: its own files are carried as they are */
    char src[512], yaml[1200], path[600];
    snprintf(src, sizeof src, "%s/source-model", root);
    CHECK_OK(fs_mkdirs(src));
    save_job(quick, 9, dir, sizeof dir, &spec); /* a directory with weights and tokenizer files */
    spec_release(&spec);
    snprintf(yaml, sizeof yaml, "job: {name: p}\nmodel: {path: %s}\ndata: {generator: strings}\nenv: {name: strings}\n",
             dir);
    static const char chat[] = "{\"eos_token\": \"<|endoftext|>\", \"chat_template\": \"{{ '<|im_start|>' }}\"}";
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK_OK(fs_write_file(path, chat, strlen(chat)));
    save_job(yaml, 10, src, sizeof src, &spec);
    json_t *copied = NULL;
    load(src, "tokenizer_config.json", &copied);
    CHECK(!strcmp(json_string_value(json_object_get(copied, "chat_template")), "{{ '<|im_start|>' }}"));
    json_decref(copied);
    CHECK_OK(tokenizer_load(src, &saved));
    CHECK(saved && tokenizer_vocab_size(saved) == 14);
    tokenizer_free(saved);
    spec_release(&spec);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/tidal-test-ckpt-%d", (int)getpid());
    RUN(test_round_trip_and_keep);
    RUN(test_damage_is_named);
    RUN(test_tokenizer_files);
    fs_remove_tree(root, "test");
    return check_summary();
}
