/* test_episode.c - groups of episodes (rollout/episode.h) with a tiny random
 * model, the byte tokenizer and real built-in envs in-process: every
 * trajectory decodes and validates (codec), carries masks, logprobs and
 * versions that line up, rewards from the env; a multi-turn env's tokens are
 * masked out with log-prob 0; an env error becomes the sample's status; each
 * output's id and token count are the encoded trajectory's. An episode_batch
 * of several groups on one engine gives each group what it gives alone
 * (greedy and seeded sampling, multi-turn, one group dropped midway), and
 * tokens carry the version that sampled them across a weight swap. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "proto/codec.h"
#include "rollout/episode.h"

static const model_config CFG = {.type = MODEL_QWEN2, .vocab_size = TOKENIZER_BYTE_LEVEL_VOCAB, .hidden_size = 32,
                                 .num_layers = 1, .num_heads = 4, .num_kv_heads = 2, .head_dim = 8,
                                 .intermediate_size = 64, .max_position_embeddings = 512, .rope_theta = 10000.0,
                                 .rms_norm_eps = 1e-6, .tie_word_embeddings = true, .qkv_bias = true,
                                 .bos_token_id = -1, .eos_token_id = 256};

static model *M;
static engine *E;
static generator GEN; /* over E */
static tokenizer *TOK;

/* Run a group of 4 and decode the results. */
static tidal_status run(const char *env_name, const char *config, const char *task, const char *prompt_text,
                        int max_tokens, int max_turns, int turn_tokens, Tidal__V1__Trajectory **t)
{
    env_client *c = NULL;
    tidal_status st = env_client_local(env_name, config, &c);
    tok_ids ids = {0};
    if (st == TIDAL_OK) st = tokenizer_encode(TOK, prompt_text, strlen(prompt_text), false, &ids);
    episode_group g = {.prompt_id = "p1", .group_id = "grp", .worker_id = "w", .task_json = task,
                       .prompt = ids.ids, .prompt_len = (int)ids.n, .group_size = 4, .max_tokens = max_tokens,
                       .max_turns = max_turns, .max_turn_tokens = turn_tokens, .sampling = {.temperature = 1.0f, .seed = 11}, .stop_id = 256};
    episode_out out[4];
    if (st == TIDAL_OK) st = episode_run_group(&GEN, TOK, c, &g, out);
    for (int i = 0; st == TIDAL_OK && i < 4; i++) {
        st = codec_decode_trajectory(out[i].data, out[i].len, &t[i]);
        free(out[i].data);
        /* what the worker publishes by, without decoding: the same id and length as inside */
        if (st == TIDAL_OK && (strcmp(out[i].trajectory_id, t[i]->trajectory_id) != 0 ||
                               out[i].completion_tokens != t[i]->n_completion_token_ids))
            st = tidal_fail(TIDAL_ERR_INVALID, "output %d: %s / %llu tokens, but the trajectory says %s / %zu", i,
                            out[i].trajectory_id, (unsigned long long)out[i].completion_tokens,
                            t[i]->trajectory_id, t[i]->n_completion_token_ids);
    }
    tok_ids_free(&ids);
    env_client_free(c);
    return st;
}

static void test_single_turn_strings(void)
{
    env *gen = NULL;
    char *task = NULL, *prompt = NULL;
    CHECK_OK(env_create("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"]}", &gen));
    CHECK_OK(env_generate(gen, 5, &task, &prompt));
    Tidal__V1__Trajectory *t[4] = {0};
    CHECK_OK(run("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"]}", task, prompt, 8, 1, 0, t));
    for (int i = 0; i < 4; i++) {
        CHECK(t[i]->sample_index == (uint32_t)i && t[i]->group_size == 4 && !strcmp(t[i]->group_id, "grp"));
        CHECK(t[i]->n_completion_token_ids >= 1 && t[i]->n_completion_token_ids <= 8 && t[i]->turns == 1);
        CHECK(t[i]->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK);
        CHECK(t[i]->reward >= 0 && t[i]->reward <= 1 && t[i]->n_reward_components == 1);
        /* the env's own metric rides along: exact is 1 exactly when the reward is 1 */
        CHECK(!strcmp(t[i]->reward_components[0]->key, "exact") &&
              t[i]->reward_components[0]->value == (t[i]->reward == 1.0 ? 1.0 : 0.0));
        CHECK(t[i]->n_version_values == 1 && t[i]->version_values[0] == 7 && t[i]->temperature == 1.0);
        for (size_t k = 0; k < t[i]->n_completion_token_ids; k++)
            CHECK(t[i]->loss_mask[k] && t[i]->logprobs[k] <= 0 && isfinite(t[i]->logprobs[k]));
        CHECK(t[i]->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_STOP ||
              t[i]->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    }
    CHECK(strcmp(t[0]->trajectory_id, t[1]->trajectory_id) != 0);
    for (int i = 0; i < 4; i++) tidal__v1__trajectory__free_unpacked(t[i], NULL);
    free(task), free(prompt);
    env_free(gen);
}

static void test_multi_turn_guess(void)
{
    Tidal__V1__Trajectory *t[4] = {0};
    CHECK_OK(run("guess", NULL, "{\"secret\": 50, \"low\": 1, \"high\": 100, \"max_turns\": 3}",
                 "Guess a number between 1 and 100.", 96, 3, 8, t));
    int env_tokens = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(t[i]->turns >= 1 && t[i]->turns <= 3);
        for (size_t k = 0; k < t[i]->n_completion_token_ids; k++)
            if (!t[i]->loss_mask[k]) {
                env_tokens++;
                CHECK(t[i]->logprobs[k] == 0.0f);
            }
        CHECK(t[i]->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_ENV_DONE ||
              t[i]->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    }
    CHECK_MSG(env_tokens > 0, "no environment tokens in a multi-turn episode");
    for (int i = 0; i < 4; i++) tidal__v1__trajectory__free_unpacked(t[i], NULL);
}

static void test_env_error_is_the_samples_status(void)
{
    Tidal__V1__Trajectory *t[4] = {0};
    CHECK_OK(run("gsm8k", NULL, "{\"question\": \"no answer here\"}", "What is 2 + 2?", 6, 1, 0, t));
    for (int i = 0; i < 4; i++) {
        CHECK(t[i]->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_ERROR && t[i]->reward == 0);
        CHECK(strstr(t[i]->error, "answer") && t[i]->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_ERROR);
    }
    for (int i = 0; i < 4; i++) tidal__v1__trajectory__free_unpacked(t[i], NULL);
}

/* The hook abandons the group once a request has finished while another still runs. */
static bool abandon_after_a_finish(void *ctx)
{
    const uint64_t *finished_before = ctx;
    return engine_get_stats(E).finished == *finished_before;
}

/* An abandoned group: TIDAL_ERR_CANCELLED naming the group (not the engine's
 * "not queued or running" about requests that had already finished), nothing
 * output, the engine left empty for the next group. */
static void test_abandoned_group(void)
{
    env_client *c = NULL;
    CHECK_OK(env_client_local("gsm8k", NULL, &c));
    tok_ids ids = {0};
    CHECK_OK(tokenizer_encode(TOK, "What is 2 + 2?", 14, false, &ids));
    uint64_t finished_before = engine_get_stats(E).finished;
    /* five samples on four slots: the fifth runs after the first four finished */
    episode_group g = {.prompt_id = "p2", .group_id = "gone", .worker_id = "w", .task_json = "{\"question\": \"q\"}",
                       .prompt = ids.ids, .prompt_len = (int)ids.n, .group_size = 5, .max_tokens = 6,
                       .max_turns = 1, .sampling = {.temperature = 1.0f, .seed = 5}, .stop_id = -1,
                       .between_steps = abandon_after_a_finish, .hook_ctx = &finished_before};
    episode_out out[5];
    memset(out, 0x5a, sizeof out);
    CHECK_STATUS(episode_run_group(&GEN, TOK, c, &g, out), TIDAL_ERR_CANCELLED);
    CHECK_MSG(strstr(tidal_errmsg(), "episode gone: abandoned") != NULL, "message: %s", tidal_errmsg());
    for (int i = 0; i < 5; i++) CHECK(out[i].data == NULL && out[i].trajectory_id[0] == '\0');
    CHECK(!engine_busy(E) && engine_next_result(E) == NULL);
    tok_ids_free(&ids);
    env_client_free(c);
}

/* ---------------------------------------------------------------- the batch */

#define BG 4 /* samples per group in the batch tests */

static engine *E16; /* 16 slots: room for several groups at once */
static generator GEN16;

/* A guessing group: its secret and sampling differ by k. */
static episode_group guess_group(int k, char *gid, char *task, const tok_ids *ids, float temperature)
{
    sprintf(gid, "g%d", k);
    sprintf(task, "{\"secret\": %d, \"low\": 1, \"high\": 100, \"max_turns\": 3}", 20 + 17 * k);
    return (episode_group){.prompt_id = gid, .group_id = gid, .worker_id = "w", .task_json = task,
                           .prompt = ids->ids, .prompt_len = (int)ids->n - k % 2, .group_size = BG,
                           .max_tokens = 40, .max_turns = 3, .max_turn_tokens = 8,
                           .sampling = {.temperature = temperature, .seed = 100 + (uint64_t)k}, .stop_id = 256};
}

static void decode_all(episode_out *out, Tidal__V1__Trajectory **t)
{
    for (int i = 0; i < BG; i++) {
        t[i] = NULL;
        CHECK_OK(codec_decode_trajectory(out[i].data, out[i].len, &t[i]));
        free(out[i].data);
        out[i].data = NULL;
    }
}

/* Trajectories a and b are the same sample: tokens, masks, turns, reward,
 * finish; log-probs to fp32 rounding of a batch's GEMM. */
static void same_sample(const Tidal__V1__Trajectory *a, const Tidal__V1__Trajectory *b)
{
    CHECK_MSG(a->n_completion_token_ids == b->n_completion_token_ids, "%s: %zu tokens alone, %zu in the batch",
              a->trajectory_id, a->n_completion_token_ids, b->n_completion_token_ids);
    if (a->n_completion_token_ids != b->n_completion_token_ids) return;
    CHECK(!strcmp(a->trajectory_id, b->trajectory_id));
    for (size_t k = 0; k < a->n_completion_token_ids; k++) {
        CHECK_MSG(a->completion_token_ids[k] == b->completion_token_ids[k], "%s: token %zu differs", a->trajectory_id, k);
        CHECK(a->loss_mask[k] == b->loss_mask[k]);
        CHECK_MSG(fabsf(a->logprobs[k] - b->logprobs[k]) < 1e-4f, "%s: logprob %zu: %g alone, %g in the batch",
                  a->trajectory_id, k, a->logprobs[k], b->logprobs[k]);
    }
    CHECK(a->turns == b->turns && a->reward == b->reward && a->finish_reason == b->finish_reason &&
          a->status == b->status);
}

/* Three multi-turn groups interleaved in one engine (and a fourth dropped
 * midway) give each group exactly what it gives alone. */
static void batch_same_as_alone(float temperature)
{
    env_client *c = NULL;
    CHECK_OK(env_client_local("guess", NULL, &c));
    tok_ids ids = {0};
    CHECK_OK(tokenizer_encode(TOK, "Guess a number between 1 and 100.", 33, false, &ids));
    char gid[4][16], task[4][128];
    episode_group g[4];
    for (int k = 0; k < 4; k++) g[k] = guess_group(k, gid[k], task[k], &ids, temperature);
    Tidal__V1__Trajectory *alone[3][BG], *batch[3][BG];
    episode_out out[4][BG];
    for (int k = 0; k < 3; k++) {
        CHECK_OK(episode_run_group(&GEN16, TOK, c, &g[k], out[k]));
        decode_all(out[k], alone[k]);
    }
    episode_batch *b = NULL;
    CHECK_OK(episode_batch_create(&GEN16, TOK, c, &b));
    CHECK_OK(episode_batch_add(b, &g[0], out[0]));
    CHECK_OK(episode_batch_add(b, &g[3], out[3]));
    CHECK_STATUS(episode_batch_add(b, &g[3], out[3]), TIDAL_ERR_INVALID); /* the same group twice */
    CHECK_OK(episode_batch_step(b));
    CHECK_OK(episode_batch_add(b, &g[1], out[1])); /* joins while the first two run */
    CHECK_MSG(engine_num_running(E16) == 2 * BG, "running %d, want the first two groups'", engine_num_running(E16));
    CHECK_OK(episode_batch_step(b));
    CHECK_MSG(engine_num_running(E16) > 2 * BG, "running %d: the third group did not join",
              engine_num_running(E16));
    episode_batch_drop(b, &g[3]); /* abandoned midway: the others go on */
    for (int i = 0; i < BG; i++) CHECK(out[3][i].data == NULL);
    CHECK(episode_batch_groups(b) == 2 && episode_batch_samples(b) == 2 * BG);
    bool added = false, got[3] = {false, false, false};
    int steps = 0, order[3], n_done = 0;
    while (n_done < 3 && steps < 1000) {
        CHECK_OK(episode_batch_step(b));
        steps++;
        if (!added && steps == 3) { /* and one more, later */
            CHECK_OK(episode_batch_add(b, &g[2], out[2]));
            added = true;
        }
        const episode_group *d;
        tidal_status st;
        while ((d = episode_batch_next_done(b, &st))) {
            CHECK_OK(st);
            const int k = (int)(d - g);
            CHECK(k >= 0 && k < 3 && !got[k]);
            got[k] = true;
            order[n_done++] = k;
            decode_all(out[k], batch[k]);
        }
    }
    CHECK_MSG(n_done == 3, "%d of 3 groups done after %d steps", n_done, steps);
    (void)order;
    CHECK(episode_batch_groups(b) == 0 && !engine_busy(E16));
    episode_batch_free(b);
    CHECK(engine_next_result(E16) == NULL);
    for (int k = 0; k < 3 && n_done == 3; k++)
        for (int i = 0; i < BG; i++) same_sample(alone[k][i], batch[k][i]);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < BG; i++) {
            tidal__v1__trajectory__free_unpacked(alone[k][i], NULL);
            if (got[k]) tidal__v1__trajectory__free_unpacked(batch[k][i], NULL);
        }
    tok_ids_free(&ids);
    env_client_free(c);
}

static void test_batch_greedy_same_as_alone(void) { batch_same_as_alone(0.0f); }
static void test_batch_sampled_same_as_alone(void) { batch_same_as_alone(1.0f); }

/* Two groups in one batch across a weight swap after 5 steps: each sample's
 * first 5 tokens carry the old version, the rest the new one; a group added
 * after the swap is all new. */
static void test_batch_versions_across_swap(void)
{
    model *m2 = NULL;
    CHECK_OK(model_create(&CFG, &m2));
    model_init_random(m2, 4, 0.5f, false);
    env_client *c = NULL;
    CHECK_OK(env_client_local("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"]}", &c));
    tok_ids ids = {0};
    CHECK_OK(tokenizer_encode(TOK, "123", 3, false, &ids));
    episode_group g[3];
    char gid[3][16];
    for (int k = 0; k < 3; k++) {
        sprintf(gid[k], "v%d", k);
        g[k] = (episode_group){.prompt_id = gid[k], .group_id = gid[k], .worker_id = "w",
                               .task_json = "{\"input\": \"123\", \"op\": \"reverse\", \"answer\": \"321\"}",
                               .prompt = ids.ids, .prompt_len = (int)ids.n, .group_size = BG, .max_tokens = 12,
                               .max_turns = 1, .sampling = {.temperature = 1.0f, .seed = 9 + (uint64_t)k}, .stop_id = -1};
    }
    episode_out out[3][BG];
    episode_batch *b = NULL;
    CHECK_OK(episode_batch_create(&GEN16, TOK, c, &b));
    CHECK_OK(episode_batch_add(b, &g[0], out[0]));
    CHECK_OK(episode_batch_add(b, &g[1], out[1]));
    for (int s = 0; s < 5; s++) CHECK_OK(episode_batch_step(b));
    CHECK_OK(engine_set_model(E16, m2, 8));
    CHECK_OK(episode_batch_add(b, &g[2], out[2]));
    int n_done = 0;
    for (int s = 0; s < 100 && n_done < 3; s++) {
        CHECK_OK(episode_batch_step(b));
        tidal_status st;
        while (episode_batch_next_done(b, &st)) {
            CHECK_OK(st);
            n_done++;
        }
    }
    CHECK(n_done == 3);
    for (int k = 0; k < 3 && n_done == 3; k++) {
        Tidal__V1__Trajectory *t[BG];
        decode_all(out[k], t);
        for (int i = 0; i < BG; i++) {
            CHECK(t[i]->n_completion_token_ids == 12);
            /* run-length versions: [7 x 5, 8 x 7] for the first two groups, [8 x 12] for the third */
            if (k < 2)
                CHECK_MSG(t[i]->n_version_values == 2 && t[i]->version_values[0] == 7 && t[i]->version_runs[0] == 5 &&
                              t[i]->version_values[1] == 8 && t[i]->version_runs[1] == 7,
                          "group %d sample %d: %zu version runs", k, i, t[i]->n_version_values);
            else
                CHECK(t[i]->n_version_values == 1 && t[i]->version_values[0] == 8 && t[i]->version_runs[0] == 12);
            tidal__v1__trajectory__free_unpacked(t[i], NULL);
        }
    }
    episode_batch_free(b);
    CHECK_OK(engine_set_model(E16, M, 7));
    model_free(m2);
    tok_ids_free(&ids);
    env_client_free(c);
}

/* A group the engine cannot take (a prompt longer than its cache) fails alone at add. */
static void test_batch_bad_group(void)
{
    episode_batch *b = NULL;
    CHECK_OK(episode_batch_create(&GEN16, TOK, NULL, &b));
    int32_t prompt[300] = {0};
    episode_group g = {.prompt_id = "x", .group_id = "x", .worker_id = "w", .task_json = "{}", .prompt = prompt,
                       .prompt_len = 300, .group_size = 2, .max_tokens = 4, .max_turns = 1, .stop_id = -1};
    episode_out out[2];
    CHECK_STATUS(episode_batch_add(b, &g, out), TIDAL_ERR_INVALID);
    CHECK(episode_batch_groups(b) == 0 && !engine_busy(E16));
    g.group_size = 0;
    CHECK_STATUS(episode_batch_add(b, &g, out), TIDAL_ERR_INVALID);
    episode_batch_free(b);
    CHECK(engine_next_result(E16) == NULL);
}

int main(void)
{
    if (model_create(&CFG, &M) != TIDAL_OK || tokenizer_byte_level(&TOK) != TIDAL_OK) return 1;
    model_init_random(M, 3, 0.5f, false);
    engine_options o = {.slots = 4, .max_len = 256};
    if (engine_create(M, 7, &o, &E) != TIDAL_OK) return 1;
    GEN = generator_of_engine(E);
    RUN(test_single_turn_strings);
    RUN(test_multi_turn_guess);
    RUN(test_env_error_is_the_samples_status);
    RUN(test_abandoned_group);
    engine_options o16 = {.slots = 16, .max_len = 256};
    if (engine_create(M, 7, &o16, &E16) != TIDAL_OK) return 1;
    GEN16 = generator_of_engine(E16);
    RUN(test_batch_greedy_same_as_alone);
    RUN(test_batch_sampled_same_as_alone);
    RUN(test_batch_versions_across_swap);
    RUN(test_batch_bad_group);
    engine_free(E16);
    engine_free(E);
    tokenizer_free(TOK);
    model_free(M);
    return check_summary();
}
