/* test_buffer.c - the replay buffer (buffer/buffer.h): groups, the staleness
 * bound at admission, at version changes and at the take, every drop reason
 * counted and acknowledged once, acks of trained samples only after their
 * checkpoint, duplicates after a restart, sampling orders (priority by
 * reward, too), reuse of a group up to opts.reuse trainings, and the balance
 * admitted = trained + dropped + held (not counting groups held for reuse,
 * which trained already counts), and a quarantined worker's groups dropped
 * (held ones at once, later ones as they come). Trajectories are real decoded
 * messages (encoded here, decoded by the codec). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer/buffer.h"
#include "check.h"
#include "proto/codec.h"

typedef struct acks {
    int trained, dropped, released;
    char last[64];
} acks;

static void on_ack(void *ctx, void *handle, bool dropped)
{
    acks *a = ctx;
    if (dropped) a->dropped++;
    else a->trained++;
    snprintf(a->last, sizeof a->last, "%s", (const char *)handle);
}

static void on_release(void *ctx, void *handle)
{
    (void)handle;
    ((acks *)ctx)->released++;
}

/* A decoded trajectory of group `gid` (size G), sample i, completion tokens
 * all at version v, with `reward`; status OK unless failed. */
static const char *traj_worker = "w1"; /* the worker_id traj() gives */

static Tidal__V1__Trajectory *traj(const char *gid, int G, int i, uint64_t v, double reward, int failed)
{
    char id[128];
    snprintf(id, sizeof id, "%s-%d", gid, i);
    Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
    uint32_t prompt[2] = {1, 2}, completion[3] = {3, 4, 5};
    float lp[3] = {-0.5f, -0.25f, -1.0f};
    uint64_t vv[1] = {v};
    uint32_t runs[1] = {3};
    protobuf_c_boolean mask[3] = {1, 1, 1};
    t.schema_version = 1;
    t.trajectory_id = id;
    t.prompt_id = (char *)gid;
    t.group_id = (char *)gid;
    t.sample_index = (uint32_t)i;
    t.group_size = (uint32_t)G;
    t.worker_id = (char *)traj_worker;
    t.n_prompt_token_ids = 2, t.prompt_token_ids = prompt;
    t.n_completion_token_ids = 3, t.completion_token_ids = completion;
    t.n_logprobs = 3, t.logprobs = lp;
    t.n_version_values = 1, t.version_values = vv;
    t.n_version_runs = 1, t.version_runs = runs;
    t.n_loss_mask = 3, t.loss_mask = mask;
    t.reward = reward;
    t.min_version = v;
    t.finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_STOP;
    t.status = failed ? TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_ERROR
                      : TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    if (failed) t.error = "env timeout";
    void *buf = NULL;
    size_t len = 0;
    Tidal__V1__Trajectory *out = NULL;
    if (codec_encode(&t.base, &buf, &len) != TIDAL_OK || codec_decode_trajectory(buf, len, &out) != TIDAL_OK) {
        fprintf(stderr, "traj: %s\n", tidal_errmsg());
        exit(1);
    }
    free(buf);
    return out;
}

static char handles[256][64];
static int n_handles;
static void *handle_for(const char *gid, int i)
{
    snprintf(handles[n_handles % 256], sizeof handles[0], "%s-%d", gid, i);
    return handles[n_handles++ % 256];
}

static buffer *make(int K, int capacity, buffer_sampling sampling, bool zero_var, acks *a)
{
    buffer_opts o = {.max_staleness = K, .capacity = capacity, .sampling = sampling,
                     .filter_zero_variance = zero_var, .ack = on_ack, .release = on_release, .ack_ctx = a};
    buffer *b = NULL;
    if (buffer_create(&o, &b) != TIDAL_OK) exit(1);
    return b;
}

/* A buffer from o with the test's callbacks. */
static buffer *make_opts(buffer_opts o, acks *a)
{
    o.ack = on_ack, o.release = on_release, o.ack_ctx = a;
    buffer *b = NULL;
    if (buffer_create(&o, &b) != TIDAL_OK) exit(1);
    return b;
}

static void admit_group(buffer *b, const char *gid, int G, uint64_t v, double reward0)
{
    for (int i = 0; i < G; i++) buffer_admit(b, traj(gid, G, i, v, reward0 + i, 0), handle_for(gid, i));
}

/* Every sample of the group with the same reward (mean = reward). */
static void admit_rewarded(buffer *b, const char *gid, int G, double reward)
{
    for (int i = 0; i < G; i++) buffer_admit(b, traj(gid, G, i, 0, reward, 0), handle_for(gid, i));
}

/* admitted = trained + dropped + held, held counting only groups never
 * trained (trained counts a sample once, on its group's first training) */
static int balanced(const buffer *b)
{
    buffer_counts c;
    buffer_counts_get(b, &c);
    uint64_t dropped = 0;
    for (int r = 0; r < BUFFER_DROP__COUNT; r++) dropped += c.dropped[r];
    return c.admitted == c.trained + dropped + c.samples_held - c.samples_held_trained;
}

static void test_group_train_then_ack_at_checkpoint(void)
{
    acks a = {0};
    buffer *b = make(2, 16, BUFFER_FIFO, false, &a);
    admit_group(b, "g1", 4, 0, 0.0);
    CHECK(buffer_ready(b) == 1);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 1, &batch));
    CHECK(batch.n_groups == 1 && batch.groups[0].n == 4 && !strcmp(batch.groups[0].group_id, "g1"));
    for (int i = 0; i < 4; i++) CHECK(batch.groups[0].samples[i]->sample_index == (uint32_t)i);
    buffer_trained(b, &batch, 1);
    buffer_checkpointed(b, 0);
    CHECK_MSG(a.trained == 0, "acked before the checkpoint holds the step");
    buffer_checkpointed(b, 1);
    CHECK(a.trained == 4 && a.dropped == 0);
    buffer_checkpointed(b, 5);
    CHECK(a.trained == 4); /* once */
    CHECK(balanced(b));
    /* what has no fate at the end is released, not acked: a held sample, a trained one not checkpointed */
    buffer_admit(b, traj("g2", 2, 0, 0, 0, 0), handle_for("g2", 0));
    admit_group(b, "g3", 1, 0, 0.0);
    CHECK_OK(buffer_take(b, 1, &batch));
    buffer_trained(b, &batch, 2);
    buffer_free(b);
    CHECK_MSG(a.released == 2 && a.trained == 4, "released %d trained %d", a.released, a.trained);
}

static void test_staleness_everywhere(void)
{
    acks a = {0};
    buffer *b = make(2, 16, BUFFER_FIFO, false, &a);
    buffer_set_version(b, 5); /* trainable: oldest >= 3 */
    /* on arrival: a sample at version 2 kills its group; later samples follow it */
    buffer_admit(b, traj("old", 3, 0, 2, 1, 0), handle_for("old", 0));
    buffer_admit(b, traj("old", 3, 1, 4, 1, 0), handle_for("old", 1));
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK_MSG(c.dropped[BUFFER_DROP_STALE] == 1 && c.dropped[BUFFER_DROP_STALE_GROUP] == 1 && a.dropped == 2, "stale %llu group %llu acks %d", (unsigned long long)c.dropped[BUFFER_DROP_STALE], (unsigned long long)c.dropped[BUFFER_DROP_STALE_GROUP], a.dropped);
    /* a held group goes when the version moves past it: the stale sample and its partners */
    admit_group(b, "v3", 2, 3, 0.0);
    admit_group(b, "v5", 2, 5, 0.0);
    buffer_admit(b, traj("part", 3, 0, 3, 0, 0), handle_for("part", 0));
    CHECK(buffer_ready(b) == 2);
    buffer_set_version(b, 6);
    buffer_counts_get(b, &c);
    CHECK_MSG(buffer_ready(b) == 1 && c.dropped[BUFFER_DROP_STALE] == 3 && c.dropped[BUFFER_DROP_STALE_GROUP] == 2,
              "ready %d stale %llu stale_group %llu", buffer_ready(b), (unsigned long long)c.dropped[BUFFER_DROP_STALE],
              (unsigned long long)c.dropped[BUFFER_DROP_STALE_GROUP]);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 1, &batch));
    /* the invariant: every trained token is at most K versions old */
    for (int i = 0; i < batch.groups[0].n; i++) CHECK(6 - batch.groups[0].samples[i]->version_values[0] <= 2);
    buffer_trained(b, &batch, 7);
    CHECK(balanced(b));
    /* groups, each once by what ended it: "old" and "v3"+"part" went stale, "v5" trained */
    buffer_counts_get(b, &c);
    CHECK_MSG(c.groups_dropped[BUFFER_DROP_STALE] == 3 && c.groups_trained == 1 &&
                  c.groups_dropped[BUFFER_DROP_STALE_GROUP] == 0,
              "groups: stale %llu trained %llu", (unsigned long long)c.groups_dropped[BUFFER_DROP_STALE],
              (unsigned long long)c.groups_trained);
    /* K = 0: only the current version trains */
    buffer *b0 = make(0, 16, BUFFER_FIFO, false, &a);
    buffer_set_version(b0, 3);
    admit_group(b0, "on", 2, 3, 0.0);
    admit_group(b0, "off", 2, 2, 0.0);
    CHECK(buffer_ready(b0) == 1);
    buffer_free(b0);
    buffer_free(b);
}

static void test_drops_duplicates_failures_filters(void)
{
    acks a = {0};
    buffer *b = make(4, 2, BUFFER_FIFO, true, &a);
    admit_group(b, "dup", 2, 0, 0.0);
    buffer_admit(b, traj("dup", 2, 1, 0, 1, 0), handle_for("dup", 1)); /* redelivered */
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK(c.dropped[BUFFER_DROP_DUPLICATE] == 1 && a.dropped == 1);
    /* a failed sample takes its group with it, before and after */
    buffer_admit(b, traj("f", 3, 0, 0, 1, 0), handle_for("f", 0));
    buffer_admit(b, traj("f", 3, 1, 0, 1, 1), handle_for("f", 1));
    buffer_admit(b, traj("f", 3, 2, 0, 1, 0), handle_for("f", 2));
    buffer_counts_get(b, &c);
    CHECK(c.dropped[BUFFER_DROP_FAILED] == 3);
    /* all rewards equal: no learning signal, dropped when filtering */
    for (int i = 0; i < 3; i++) buffer_admit(b, traj("flat", 3, i, 0, 0.5, 0), handle_for("flat", i));
    buffer_counts_get(b, &c);
    CHECK(c.dropped[BUFFER_DROP_ZERO_VARIANCE] == 3);
    /* capacity 2: a third complete group pushes out the oldest */
    admit_group(b, "c2", 2, 0, 0.0);
    admit_group(b, "c3", 2, 0, 0.0);
    buffer_counts_get(b, &c);
    CHECK(buffer_ready(b) == 2 && c.dropped[BUFFER_DROP_CAPACITY] == 2);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 2, &batch));
    CHECK(!strcmp(batch.groups[0].group_id, "c2") && !strcmp(batch.groups[1].group_id, "c3"));
    buffer_untake(b, &batch); /* a failed step: the groups come back */
    CHECK(buffer_ready(b) == 2);
    CHECK_STATUS(buffer_take(b, 3, &batch), TIDAL_ERR_INVALID);
    CHECK(balanced(b));
    CHECK(a.dropped == 1 + 3 + 3 + 2);
    /* groups: a duplicate sample ends no group; one failed, one zero-variance, one pushed out */
    buffer_counts_get(b, &c);
    CHECK(c.groups_dropped[BUFFER_DROP_FAILED] == 1 && c.groups_dropped[BUFFER_DROP_ZERO_VARIANCE] == 1 &&
          c.groups_dropped[BUFFER_DROP_CAPACITY] == 1 && c.groups_dropped[BUFFER_DROP_DUPLICATE] == 0 &&
          c.groups_trained == 0);
    buffer_free(b);
}

static void test_sampling_orders_and_restart(void)
{
    acks a = {0};
    buffer *b = make(4, 16, BUFFER_NEWEST, false, &a);
    admit_group(b, "a", 2, 0, 0.0);
    admit_group(b, "b", 2, 0, 0.0);
    admit_group(b, "c", 2, 0, 0.0);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 2, &batch));
    CHECK(!strcmp(batch.groups[0].group_id, "c") && !strcmp(batch.groups[1].group_id, "b"));
    buffer_trained(b, &batch, 1);
    buffer_free(b);

    /* after a restart: ids the checkpoint trained are duplicates when redelivered */
    buffer *r = make(4, 16, BUFFER_UNIFORM, false, &a);
    CHECK_OK(buffer_remember_trained(r, "c-0"));
    CHECK_OK(buffer_remember_trained(r, "c-1"));
    buffer_admit(r, traj("c", 2, 0, 0, 0, 0), handle_for("c", 0));
    buffer_admit(r, traj("c", 2, 1, 0, 1, 0), handle_for("c", 1));
    buffer_counts c;
    buffer_counts_get(r, &c);
    CHECK(c.dropped[BUFFER_DROP_DUPLICATE] == 2 && buffer_ready(r) == 0);
    for (int g = 0; g < 40; g++) {
        char id[16];
        snprintf(id, sizeof id, "u%d", g);
        admit_group(r, id, 1, 0, 0.0);
    }
    int seen_late = 0;
    for (int k = 0; k < 10; k++) {
        CHECK_OK(buffer_take(r, 1, &batch));
        seen_late |= atoi(batch.groups[0].group_id + 1) > 10;
        buffer_trained(r, &batch, 2);
    }
    CHECK_MSG(seen_late, "uniform sampling only ever took the oldest groups");
    CHECK(balanced(r));
    buffer_free(r);
}

static void test_priority_sampling(void)
{
    acks a = {0};
    buffer_batch batch;
    /* a low temperature: the best mean reward first, whatever the seed and arrival order */
    for (uint64_t seed = 1; seed <= 100; seed++) {
        buffer *b = make_opts((buffer_opts){.max_staleness = 4, .capacity = 16, .sampling = BUFFER_PRIORITY,
                                            .priority_temperature = 0.01, .seed = seed},
                              &a);
        const char *ids[3] = {"lo", "mid", "hi"};
        const double rewards[3] = {0.0, 0.5, 1.0};
        for (int k = 0; k < 3; k++) {
            const int j = (int)((seed + (uint64_t)k) % 3); /* rotate the arrival order */
            admit_rewarded(b, ids[j], 2, rewards[j]);
        }
        CHECK_OK(buffer_take(b, 3, &batch)); /* without replacement: all three, best first */
        CHECK_MSG(!strcmp(batch.groups[0].group_id, "hi") && !strcmp(batch.groups[1].group_id, "mid") &&
                      !strcmp(batch.groups[2].group_id, "lo"),
                  "seed %llu: %s %s %s", (unsigned long long)seed, batch.groups[0].group_id,
                  batch.groups[1].group_id, batch.groups[2].group_id);
        buffer_trained(b, &batch, 1);
        buffer_free(b);
    }
    /* a high temperature: about uniform (each of 4 near 25% of 4000 draws; sd ~ 0.7%) */
    buffer *b = make_opts((buffer_opts){.max_staleness = 4, .capacity = 16, .sampling = BUFFER_PRIORITY,
                                        .priority_temperature = 1e6, .seed = 7},
                          &a);
    const char *four[4] = {"p0", "p1", "p2", "p3"};
    for (int g = 0; g < 4; g++) admit_rewarded(b, four[g], 1, (double)g);
    int picks[4] = {0};
    for (int k = 0; k < 4000; k++) {
        CHECK_OK(buffer_take(b, 1, &batch));
        picks[atoi(batch.groups[0].group_id + 1)]++;
        buffer_untake(b, &batch);
    }
    for (int g = 0; g < 4; g++) CHECK_MSG(picks[g] > 600 && picks[g] < 1400, "group %d picked %d of 4000", g, picks[g]);
    buffer_free(b);
    /* T = 1, rewards 0 and 1: P(1) = e / (1 + e) = 0.731 (sd over 4000 draws ~ 0.7%) */
    b = make_opts((buffer_opts){.max_staleness = 4, .capacity = 16, .sampling = BUFFER_PRIORITY,
                                .priority_temperature = 1.0, .seed = 11},
                  &a);
    admit_rewarded(b, "p0", 1, 0.0);
    admit_rewarded(b, "p1", 1, 1.0);
    int hi = 0;
    for (int k = 0; k < 4000; k++) {
        CHECK_OK(buffer_take(b, 1, &batch));
        hi += !strcmp(batch.groups[0].group_id, "p1");
        buffer_untake(b, &batch);
    }
    CHECK_MSG(hi > 2700 && hi < 3150, "reward 1 picked %d of 4000", hi);
    CHECK(balanced(b));
    buffer_free(b);
    /* the temperature must be > 0 and finite for priority sampling, and only then */
    const double bad[] = {0.0, -1.0, NAN, INFINITY};
    for (int k = 0; k < 4; k++) {
        buffer_opts o = {.max_staleness = 1, .capacity = 1, .sampling = BUFFER_PRIORITY, .priority_temperature = bad[k]};
        CHECK_STATUS(buffer_create(&o, &b), TIDAL_ERR_INVALID);
        CHECK_MSG(!b && strstr(tidal_errmsg(), "priority_temperature"), "%s", tidal_errmsg());
    }
    buffer_opts fifo = {.max_staleness = 1, .capacity = 1, .sampling = BUFFER_FIFO};
    CHECK_OK(buffer_create(&fifo, &b));
    buffer_free(b);
    fifo.reuse = -1;
    CHECK_STATUS(buffer_create(&fifo, &b), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "reuse"), "%s", tidal_errmsg());
}

static void test_reuse_trains_then_retires(void)
{
    acks a = {0};
    buffer *b = make_opts((buffer_opts){.max_staleness = 8, .capacity = 16, .reuse = 3}, &a);
    admit_group(b, "r", 3, 0, 0.0);
    buffer_batch batch;
    buffer_counts c;
    for (int use = 0; use < 3; use++) {
        CHECK_OK(buffer_take(b, 1, &batch));
        CHECK_MSG(!strcmp(batch.groups[0].group_id, "r") && batch.groups[0].uses == use, "use %d: uses %d", use,
                  batch.groups[0].uses);
        for (int i = 0; i < 3; i++) CHECK(batch.groups[0].samples[i]->sample_index == (uint32_t)i); /* kept */
        buffer_trained(b, &batch, (uint64_t)use + 1);
        CHECK(buffer_ready(b) == (use < 2 ? 1 : 0));
        CHECK(balanced(b));
        buffer_checkpointed(b, (uint64_t)use); /* up to the step before this one: nothing durable yet */
        CHECK_MSG(a.trained == 0 && a.dropped == 0, "use %d: acked %d", use, a.trained);
    }
    buffer_counts_get(b, &c);
    CHECK_MSG(c.groups_trained == 1 && c.groups_reused == 2 && c.trained == 3 && c.samples_held == 0 &&
                  c.samples_held_trained == 0,
              "groups trained %llu reused %llu samples %llu", (unsigned long long)c.groups_trained,
              (unsigned long long)c.groups_reused, (unsigned long long)c.trained);
    buffer_checkpointed(b, 2);
    CHECK(a.trained == 0);
    buffer_checkpointed(b, 3); /* the third training is durable: each sample once, not dropped */
    CHECK(a.trained == 3 && a.dropped == 0);
    buffer_checkpointed(b, 9);
    buffer_counts_get(b, &c);
    CHECK(a.trained == 3 && c.acked == 3 && balanced(b));
    buffer_free(b);
    CHECK(a.released == 0);
}

static void test_reuse_untake_and_order(void)
{
    acks a = {0};
    buffer *b = make_opts((buffer_opts){.max_staleness = 8, .capacity = 16, .reuse = 2}, &a);
    admit_group(b, "r", 2, 0, 0.0);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 1, &batch));
    admit_group(b, "w", 1, 0, 0.0); /* waits while r trains */
    buffer_trained(b, &batch, 1);
    /* fifo: r came back behind w; a failed step keeps each group's uses */
    for (int k = 0; k < 2; k++) {
        CHECK_OK(buffer_take(b, 2, &batch));
        CHECK(!strcmp(batch.groups[0].group_id, "w") && batch.groups[0].uses == 0);
        CHECK(!strcmp(batch.groups[1].group_id, "r") && batch.groups[1].uses == 1);
        if (!k) buffer_untake(b, &batch);
        buffer_counts c;
        buffer_counts_get(b, &c);
        CHECK(c.samples_held_trained == (k ? 0u : 2u) && (k || balanced(b))); /* balanced with no batch out */
    }
    buffer_trained(b, &batch, 2); /* r retires (2 uses), w comes back */
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK(c.groups_trained == 2 && c.groups_reused == 1 && c.trained == 3 && buffer_ready(b) == 1 && balanced(b));
    buffer_checkpointed(b, 2);
    CHECK(a.trained == 2 && a.dropped == 0);
    buffer_free(b); /* w, held for reuse, is released: its message comes again */
    CHECK_MSG(a.released == 1 && a.trained == 2, "released %d", a.released);
}

static void test_reuse_stale_retires(void)
{
    acks a = {0};
    buffer *b = make_opts((buffer_opts){.max_staleness = 1, .capacity = 16, .reuse = 2}, &a);
    admit_group(b, "r", 2, 0, 0.0);
    admit_group(b, "n", 2, 0, 0.0); /* never trained: dropped when stale, as always */
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 1, &batch));
    CHECK(!strcmp(batch.groups[0].group_id, "r"));
    buffer_trained(b, &batch, 1);
    buffer_set_version(b, 1);
    CHECK(buffer_ready(b) == 2);
    buffer_set_version(b, 2); /* version 0 is older than 2 - 1 */
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK_MSG(buffer_ready(b) == 0 && c.samples_held == 0 && c.samples_held_trained == 0 && c.groups_complete == 0,
              "ready %d held %llu", buffer_ready(b), (unsigned long long)c.samples_held);
    CHECK_MSG(c.dropped[BUFFER_DROP_STALE] + c.dropped[BUFFER_DROP_STALE_GROUP] == 2 &&
                  c.groups_dropped[BUFFER_DROP_STALE] == 1 && a.dropped == 2 && a.trained == 0,
              "stale %llu groups %llu acks %d", (unsigned long long)c.dropped[BUFFER_DROP_STALE],
              (unsigned long long)c.groups_dropped[BUFFER_DROP_STALE], a.dropped);
    CHECK(c.groups_trained == 1 && c.groups_reused == 0 && balanced(b));
    buffer_checkpointed(b, 0);
    CHECK(a.trained == 0);
    buffer_checkpointed(b, 1); /* the step that trained r */
    buffer_counts_get(b, &c);
    CHECK(a.trained == 2 && a.dropped == 2 && c.acked == c.admitted);
    buffer_free(b);
    CHECK(a.released == 0);
}

static void test_reuse_capacity_retires(void)
{
    acks a = {0};
    buffer *b = make_opts((buffer_opts){.max_staleness = 8, .capacity = 1, .reuse = 2}, &a);
    admit_group(b, "r", 2, 0, 0.0);
    buffer_batch batch;
    CHECK_OK(buffer_take(b, 1, &batch));
    buffer_trained(b, &batch, 1); /* back: the buffer had room */
    CHECK(buffer_ready(b) == 1);
    admit_group(b, "n", 1, 0, 0.0); /* pushes out the oldest: r retires, not dropped */
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK_MSG(buffer_ready(b) == 1 && c.dropped[BUFFER_DROP_CAPACITY] == 0 &&
                  c.groups_dropped[BUFFER_DROP_CAPACITY] == 0 && a.dropped == 0 && c.samples_held_trained == 0,
              "ready %d capacity drops %llu", buffer_ready(b), (unsigned long long)c.dropped[BUFFER_DROP_CAPACITY]);
    CHECK(balanced(b));
    buffer_checkpointed(b, 1);
    CHECK(a.trained == 2 && a.dropped == 0);
    /* no room when a trained group would come back: it retires, the untrained group stays */
    CHECK_OK(buffer_take(b, 1, &batch));
    admit_group(b, "m", 1, 0, 0.0);
    buffer_trained(b, &batch, 2);
    buffer_counts_get(b, &c);
    CHECK(buffer_ready(b) == 1 && c.dropped[BUFFER_DROP_CAPACITY] == 0 && c.groups_trained == 2 && balanced(b));
    CHECK_OK(buffer_take(b, 1, &batch));
    CHECK(!strcmp(batch.groups[0].group_id, "m"));
    buffer_untake(b, &batch);
    buffer_checkpointed(b, 2);
    CHECK(a.trained == 3 && a.dropped == 0);
    buffer_free(b);
    CHECK(a.released == 1); /* m */
}

/* Partial groups are bounded in number (the oldest goes first) and in age
 * (by the caller's clock); what goes is counted incomplete, acked at once,
 * and late samples of such a group follow it. A complete group is never
 * touched by the bound. */
static void test_incomplete_groups(void)
{
    acks a = {0};
    buffer *b = make_opts((buffer_opts){.max_staleness = 4, .capacity = 16, .max_partial = 2,
                                        .partial_max_age_ms = 1000},
                          &a);
    buffer_tick(b, 100);
    buffer_admit(b, traj("pA", 4, 0, 0, 0, 0), handle_for("pA", 0));
    buffer_admit(b, traj("pA", 4, 1, 0, 1, 0), handle_for("pA", 1));
    buffer_tick(b, 200);
    buffer_admit(b, traj("pB", 4, 0, 0, 0, 0), handle_for("pB", 0));
    admit_group(b, "whole", 2, 0, 0.0); /* complete before the tick: not pushed out */
    buffer_tick(b, 200);
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK(c.groups_partial == 2 && c.groups_complete == 1 && a.dropped == 0);
    buffer_admit(b, traj("pC", 4, 0, 0, 0, 0), handle_for("pC", 0)); /* a third: the oldest (pA) goes */
    buffer_counts_get(b, &c);
    CHECK(c.groups_partial == 3 && a.dropped == 0); /* at the tick, not before */
    buffer_tick(b, 200);
    buffer_counts_get(b, &c);
    CHECK_MSG(c.groups_partial == 2 && c.groups_dropped[BUFFER_DROP_INCOMPLETE] == 1 &&
                  c.dropped[BUFFER_DROP_INCOMPLETE] == 2 && a.dropped == 2,
              "partial %llu, incomplete groups %llu samples %llu, acked dropped %d",
              (unsigned long long)c.groups_partial, (unsigned long long)c.groups_dropped[BUFFER_DROP_INCOMPLETE],
              (unsigned long long)c.dropped[BUFFER_DROP_INCOMPLETE], a.dropped);
    buffer_admit(b, traj("pA", 4, 2, 0, 0, 0), handle_for("pA", 2)); /* a late part of pA follows it */
    buffer_counts_get(b, &c);
    CHECK(c.dropped[BUFFER_DROP_INCOMPLETE] == 3 && c.groups_dropped[BUFFER_DROP_INCOMPLETE] == 1 && a.dropped == 3);
    CHECK(!strcmp(buffer_drop_name(BUFFER_DROP_INCOMPLETE), "incomplete"));
    /* age: pB was first seen at 200, pC at 200; at 1200 neither is over 1000 ms old, at 1201 both are */
    buffer_tick(b, 1200);
    buffer_counts_get(b, &c);
    CHECK(c.groups_partial == 2);
    buffer_tick(b, 1201);
    buffer_counts_get(b, &c);
    CHECK(c.groups_partial == 0 && c.groups_dropped[BUFFER_DROP_INCOMPLETE] == 3 && c.groups_complete == 1);
    CHECK(buffer_ready(b) == 1 && balanced(b));
    buffer_free(b);
    CHECK(a.released == 2); /* the complete group, never trained */
}

static void test_quarantine(void)
{
    acks a = {0};
    buffer *b = make(4, 16, BUFFER_FIFO, false, &a);
    traj_worker = "liar";
    admit_group(b, "l-whole", 2, 0, 0.0);                               /* complete, held */
    buffer_admit(b, traj("l-part", 3, 0, 0, 0, 0), handle_for("l-part", 0)); /* partial, held */
    admit_group(b, "l-other", 2, 0, 0.0);
    traj_worker = "honest";
    admit_group(b, "h1", 2, 0, 0.0);
    buffer_batch bt;
    CHECK_OK(buffer_take(b, 1, &bt)); /* fifo: l-whole */
    buffer_untake(b, &bt);
    buffer_counts c;
    buffer_counts_get(b, &c);
    CHECK(c.groups_complete == 3 && c.groups_partial == 1);
    int now = -1;
    CHECK_OK(buffer_quarantine(b, "liar", &now));
    buffer_counts_get(b, &c);
    CHECK_MSG(now == 3 && c.groups_dropped[BUFFER_DROP_QUARANTINED] == 3 && c.dropped[BUFFER_DROP_QUARANTINED] == 5 &&
                  a.dropped == 5 && c.groups_complete == 1 && c.groups_partial == 0,
              "now %d, groups %llu samples %llu acked %d", now,
              (unsigned long long)c.groups_dropped[BUFFER_DROP_QUARANTINED],
              (unsigned long long)c.dropped[BUFFER_DROP_QUARANTINED], a.dropped);
    /* its late samples: of a dropped group (follows it), of a new one (the group goes, counted once) */
    traj_worker = "liar";
    buffer_admit(b, traj("l-part", 3, 1, 0, 0, 0), handle_for("l-part", 1));
    buffer_admit(b, traj("l-new", 2, 0, 0, 0, 0), handle_for("l-new", 0));
    buffer_admit(b, traj("l-new", 2, 1, 0, 0, 0), handle_for("l-new", 1));
    traj_worker = "honest";
    admit_group(b, "h2", 2, 0, 0.0);
    buffer_counts_get(b, &c);
    CHECK_MSG(c.groups_dropped[BUFFER_DROP_QUARANTINED] == 4 && c.dropped[BUFFER_DROP_QUARANTINED] == 8 &&
                  buffer_ready(b) == 2 && balanced(b),
              "groups %llu samples %llu ready %d", (unsigned long long)c.groups_dropped[BUFFER_DROP_QUARANTINED],
              (unsigned long long)c.dropped[BUFFER_DROP_QUARANTINED], buffer_ready(b));
    /* a group it trained before the quarantine retires (its training stands), never dropped */
    acks a2 = {0};
    buffer *r = make_opts((buffer_opts){.max_staleness = 4, .capacity = 16, .reuse = 2}, &a2);
    traj_worker = "liar";
    admit_group(r, "l-reused", 2, 0, 0.0);
    traj_worker = "w1";
    CHECK_OK(buffer_take(r, 1, &bt));
    buffer_trained(r, &bt, 1); /* back for its second training */
    CHECK_OK(buffer_quarantine(r, "liar", &now));
    buffer_counts_get(r, &c);
    CHECK(now == 0 && c.groups_dropped[BUFFER_DROP_QUARANTINED] == 0 && c.groups_trained == 1 && buffer_ready(r) == 0);
    buffer_checkpointed(r, 1);
    CHECK(a2.trained == 2 && a2.dropped == 0 && balanced(r));
    CHECK(!strcmp(buffer_drop_name(BUFFER_DROP_QUARANTINED), "quarantined"));
    buffer_free(r);
    buffer_free(b);
}

int main(void)
{
    RUN(test_group_train_then_ack_at_checkpoint);
    RUN(test_staleness_everywhere);
    RUN(test_drops_duplicates_failures_filters);
    RUN(test_sampling_orders_and_restart);
    RUN(test_priority_sampling);
    RUN(test_reuse_trains_then_retires);
    RUN(test_reuse_untake_and_order);
    RUN(test_reuse_stale_retires);
    RUN(test_reuse_capacity_retires);
    RUN(test_incomplete_groups);
    RUN(test_quarantine);
    return check_summary();
}
