/* test_checkpoint.c - trainer checkpoints (trainer/checkpoint.h): what is
 * saved comes back bit for bit (weights, AdamW moments and step, counts,
 * trained ids), only the newest `keep` stay, a half-written step-N.tmp is
 * never taken for a checkpoint, and damage is named. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/fs.h"
#include "trainer/checkpoint.h"

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
        CHECK_OK(checkpoint_save(root, m[i], o[i], &s[i], 2));
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

int main(void)
{
    snprintf(root, sizeof root, "/tmp/tidal-test-ckpt-%d", (int)getpid());
    RUN(test_round_trip_and_keep);
    RUN(test_damage_is_named);
    fs_remove_tree(root, "test");
    return check_summary();
}
