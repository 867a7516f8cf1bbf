/* test_episode.c - groups of episodes (rollout/episode.h) with a tiny random
 * model, the byte tokenizer and real built-in envs in-process: every
 * trajectory decodes and validates (codec), carries masks, logprobs and
 * versions that line up, rewards from the env; a multi-turn env's tokens are
 * masked out with log-prob 0; an env error becomes the sample's status; each
 * output's id and token count are the encoded trajectory's. */
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
    engine_free(E);
    tokenizer_free(TOK);
    model_free(M);
    return check_summary();
}
