/* test_codec.c - the wire codec (proto/codec.h): round trips of every message,
 * garbage in (random bytes, truncations, the wrong message type) never
 * crashes and always errors, every validation rule fires with the right
 * status and a message naming the field, per-token version RLE.
 *
 * With TIDAL_FUZZ_SEEDS_OUT=DIR set it also writes the fuzz seeds: one file
 * per message type, the type byte of tests/fuzz/fuzz_decode.c followed by a
 * valid encoding (that is how tests/fuzz/seeds/fuzz_decode/ was made).
 */
#include <assert.h>
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "proto/codec.h"
#include "proto/enum_names.h"

#define MSG(x) ((ProtobufCMessage *)&(x))
#define N_TYPES 10 /* top-level message types, in all_types order */

/* ---------------------------------------------------------------- fixtures */
/* Each fixture holds a valid message with non-trivial values and the storage
 * its pointers reach. Initialise in place; do not copy a fixture. */

typedef struct {
    Tidal__V1__Prompt p;
    Tidal__V1__SamplingParams s;
    uint32_t tokens[5];
    char *stop[2];
} prompt_fx;

static void prompt_init(prompt_fx *f)
{
    static const uint32_t tokens[5] = {151644, 872, 198, 4340, 70000};
    Tidal__V1__Prompt p = TIDAL__V1__PROMPT__INIT;
    Tidal__V1__SamplingParams s = TIDAL__V1__SAMPLING_PARAMS__INIT;
    f->p = p;
    f->s = s;
    memcpy(f->tokens, tokens, sizeof tokens);
    f->stop[0] = "</answer>";
    f->stop[1] = "\n\nQ:";
    f->s.temperature = 0.7;
    f->s.top_p = 0.95;
    f->s.top_k = 50;
    f->s.seed = 1234567890123ull;
    f->s.n_stop = 2;
    f->s.stop = f->stop;
    f->p.schema_version = CODEC_SCHEMA_VERSION;
    f->p.prompt_id = "quick-e0-g000042";
    f->p.group_id = "g000042";
    f->p.sample_index = 2;
    f->p.sample_count = 6;
    f->p.group_size = 8;
    f->p.text = "Reverse 4 7 1 → ";
    f->p.n_token_ids = 5;
    f->p.token_ids = f->tokens;
    f->p.task_json = "{\"question\":\"471\",\"answer\":\"174\"}";
    f->p.env = "strings";
    f->p.sampling = &f->s;
    f->p.max_tokens = 512;
    f->p.min_version = 17;
    f->p.data_index = 9000000001ull;
    f->p.dispatched_unix_ms = 1732390000123ull;
    f->p.controller_epoch = 3;
    f->p.attempt = 1;
    f->p.eval = 1;
}

#define TRAJ_N 24

typedef struct {
    Tidal__V1__Trajectory t;
    Tidal__V1__Timings tm;
    uint32_t prompt[6];
    uint32_t completion[TRAJ_N];
    float logprobs[TRAJ_N];
    uint64_t vv[TRAJ_N];
    uint32_t vr[TRAJ_N];
    protobuf_c_boolean mask[TRAJ_N];
    Tidal__V1__Trajectory__RewardComponentsEntry comp[2];
    Tidal__V1__Trajectory__RewardComponentsEntry *compp[2];
} traj_fx;

/* Two turns: 10 generated tokens at version 3, 5 environment tokens, 9
 * generated tokens at version 4 (weights swapped between the turns). */
static void traj_init(traj_fx *f)
{
    Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
    Tidal__V1__Timings tm = TIDAL__V1__TIMINGS__INIT;
    Tidal__V1__Trajectory__RewardComponentsEntry e =
        TIDAL__V1__TRAJECTORY__REWARD_COMPONENTS_ENTRY__INIT;
    f->t = t;
    f->tm = tm;
    uint64_t versions[TRAJ_N];
    for (int i = 0; i < 6; i++) f->prompt[i] = 100u + (uint32_t)i * 7919u;
    for (int i = 0; i < TRAJ_N; i++) {
        bool env_token = i >= 10 && i < 15;
        f->completion[i] = 3000u + (uint32_t)i * 104729u % 150000u;
        f->mask[i] = !env_token;
        f->logprobs[i] = env_token ? 0.0f : -0.05f * (float)(i + 1);
        versions[i] = i < 10 ? 3 : 4;
    }
    size_t runs = codec_versions_rle(versions, TRAJ_N, f->vv, f->vr);
    assert(runs == 2);
    f->comp[0] = e;
    f->comp[0].key = "format";
    f->comp[0].value = 0.25;
    f->comp[1] = e;
    f->comp[1].key = "correct";
    f->comp[1].value = 0.75;
    f->compp[0] = &f->comp[0];
    f->compp[1] = &f->comp[1];
    f->tm.queue_ms = 12.5;
    f->tm.sync_ms = 3.25;
    f->tm.generate_ms = 870.0;
    f->tm.env_ms = 4.75;
    f->tm.total_ms = 901.125;

    Tidal__V1__Trajectory *p = &f->t;
    p->schema_version = CODEC_SCHEMA_VERSION;
    p->trajectory_id = "g000042.s5";
    p->prompt_id = "quick-e0-g000042";
    p->group_id = "g000042";
    p->sample_index = 5;
    p->group_size = 8;
    p->worker_id = "host-a.1234";
    p->n_prompt_token_ids = 6;
    p->prompt_token_ids = f->prompt;
    p->n_completion_token_ids = TRAJ_N;
    p->completion_token_ids = f->completion;
    p->n_logprobs = TRAJ_N;
    p->logprobs = f->logprobs;
    p->n_version_values = runs;
    p->version_values = f->vv;
    p->n_version_runs = runs;
    p->version_runs = f->vr;
    p->n_loss_mask = TRAJ_N;
    p->loss_mask = f->mask;
    p->reward = 0.875;
    p->n_reward_components = 2;
    p->reward_components = f->compp;
    p->finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_ENV_DONE;
    p->status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    p->timings = &f->tm;
    p->turns = 2;
    p->eval = 0;
    p->min_version = 2;
    p->temperature = 1.0;
    p->completion_text = "174 ... 2 digits wrong; try again: 147";
    p->finished_unix_ms = 1732390001024ull;
}

/* A group of GROUP_N trajectories of prompt quick-e0-g000042, samples 0 ..
 * GROUP_N - 1, in one part. */
#define GROUP_N 8
typedef struct {
    Tidal__V1__TrajectoryGroup g;
    traj_fx t[GROUP_N];
    Tidal__V1__Trajectory *tp[GROUP_N];
    char ids[GROUP_N][16];
} group_fx;

static void group_init(group_fx *f)
{
    Tidal__V1__TrajectoryGroup g = TIDAL__V1__TRAJECTORY_GROUP__INIT;
    f->g = g;
    for (int i = 0; i < GROUP_N; i++) {
        traj_init(&f->t[i]);
        snprintf(f->ids[i], sizeof f->ids[i], "g000042.s%d", i);
        f->t[i].t.trajectory_id = f->ids[i];
        f->t[i].t.sample_index = (uint32_t)i;
        f->t[i].t.reward = i % 2 ? 1.0 : 0.0;
        f->tp[i] = &f->t[i].t;
    }
    f->g.schema_version = CODEC_SCHEMA_VERSION;
    f->g.group_id = "g000042";
    f->g.prompt_id = "quick-e0-g000042";
    f->g.worker_id = "host-a.1234";
    f->g.attempt = 1;
    f->g.group_size = GROUP_N;
    f->g.n_trajectories = GROUP_N;
    f->g.trajectories = f->tp;
}

typedef struct {
    Tidal__V1__BlobManifest b;
    uint8_t digest[32];
    uint8_t chunk_digests[3][32];
    ProtobufCBinaryData chunks[3];
} blob_fx;

static void blob_init(blob_fx *f, const char *name)
{
    Tidal__V1__BlobManifest b = TIDAL__V1__BLOB_MANIFEST__INIT;
    f->b = b;
    for (int i = 0; i < 32; i++) {
        f->digest[i] = (uint8_t)(i * 37 + 1);
        for (int k = 0; k < 3; k++) f->chunk_digests[k][i] = (uint8_t)(i * 11 + k * 101);
    }
    for (int k = 0; k < 3; k++) {
        f->chunks[k].len = 32;
        f->chunks[k].data = f->chunk_digests[k];
    }
    f->b.schema_version = CODEC_SCHEMA_VERSION;
    f->b.name = (char *)name;
    f->b.subject_prefix = "tidal.quick.weights";
    f->b.bytes = 2ull * (4u << 20) + 12345; /* two full chunks and a short one */
    f->b.chunk_bytes = 4u << 20;
    f->b.chunk_count = 3;
    f->b.digest.len = 32;
    f->b.digest.data = f->digest;
    f->b.n_chunk_digest = 3;
    f->b.chunk_digest = f->chunks;
    f->b.created_unix_ms = 1732390002000ull;
}

typedef struct {
    Tidal__V1__WeightsManifest w;
    uint8_t digest[32];
    blob_fx blob;
} weights_fx;

static void weights_init(weights_fx *f)
{
    Tidal__V1__WeightsManifest w = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    f->w = w;
    blob_init(&f->blob, "12");
    f->w.schema_version = CODEC_SCHEMA_VERSION;
    f->w.version = 12;
    f->w.dtype = "bf16";
    f->w.bytes = f->blob.b.bytes;
    f->w.chunk_count = 3;
    memcpy(f->digest, f->blob.digest, 32);
    f->w.digest.len = 32;
    f->w.digest.data = f->digest;
    f->w.transport = "bus";
    f->w.blob = &f->blob.b;
    f->w.model_config_json = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64}";
    f->w.created_unix_ms = 1732390003000ull;
    f->w.digest_algorithm = "blake3";
}

typedef struct {
    Tidal__V1__EnvRequest r;
    uint32_t tokens[4];
} envreq_fx;

static void envreq_init(envreq_fx *f)
{
    Tidal__V1__EnvRequest r = TIDAL__V1__ENV_REQUEST__INIT;
    f->r = r;
    for (int i = 0; i < 4; i++) f->tokens[i] = 17u + (uint32_t)i * 65536u;
    f->r.env = "gsm8k";
    f->r.session = "g000042.s5";
    f->r.op = TIDAL__V1__ENV_OP__ENV_OP_STEP;
    f->r.task_json = "{\"answer\":\"... #### 1,234\"}";
    f->r.action_text = "So the answer is #### 1234";
    f->r.n_action_tokens = 4;
    f->r.action_tokens = f->tokens;
    f->r.turn = 3;
    f->r.schema_version = CODEC_SCHEMA_VERSION;
}

typedef struct {
    Tidal__V1__EnvResponse r;
    Tidal__V1__EnvResponse__MetricsEntry m[2];
    Tidal__V1__EnvResponse__MetricsEntry *mp[2];
} envresp_fx;

static void envresp_init(envresp_fx *f)
{
    Tidal__V1__EnvResponse r = TIDAL__V1__ENV_RESPONSE__INIT;
    Tidal__V1__EnvResponse__MetricsEntry e = TIDAL__V1__ENV_RESPONSE__METRICS_ENTRY__INIT;
    f->r = r;
    f->m[0] = e;
    f->m[0].key = "parsed";
    f->m[0].value = 1.0;
    f->m[1] = e;
    f->m[1].key = "distance";
    f->m[1].value = -3.5e-3;
    f->mp[0] = &f->m[0];
    f->mp[1] = &f->m[1];
    f->r.observation = "higher ↑";
    f->r.reward = -0.125;
    f->r.done = 1;
    f->r.error = "";
    f->r.n_metrics = 2;
    f->r.metrics = f->mp;
    f->r.schema_version = CODEC_SCHEMA_VERSION;
}

static Tidal__V1__WorkerStatus worker_sample(void)
{
    Tidal__V1__WorkerStatus w = TIDAL__V1__WORKER_STATUS__INIT;
    w.schema_version = CODEC_SCHEMA_VERSION;
    w.worker_id = "gpu-node-7.31337";
    w.host = "gpu-node-7";
    w.pid = 31337;
    w.state = TIDAL__V1__WORKER_STATE__WORKER_STATE_SYNCING;
    w.weights_version = 41;
    w.prompts_in_flight = 3;
    w.tokens_per_s = 1523.75;
    w.backend = "builtin";
    w.device = "cuda:0";
    w.started_unix_ms = 1732390000000ull;
    w.updated_unix_ms = 1732390009000ull;
    w.capacity = 4;
    w.trajectories = 977;
    w.errors = 2;
    return w;
}

static Tidal__V1__Control control_sample(void)
{
    Tidal__V1__Control c = TIDAL__V1__CONTROL__INIT;
    c.schema_version = CODEC_SCHEMA_VERSION;
    c.command = TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_DRAIN;
    c.reason = "scale down";
    c.issued_unix_ms = 1732390004000ull;
    c.target = "gpu-node-7.31337";
    c.issuer = "tidal-cli";
    return c;
}

typedef struct {
    Tidal__V1__Metric m;
    Tidal__V1__Metric__ValuesEntry v[3];
    Tidal__V1__Metric__ValuesEntry *vp[3];
} metric_fx;

static void metric_init(metric_fx *f)
{
    Tidal__V1__Metric m = TIDAL__V1__METRIC__INIT;
    Tidal__V1__Metric__ValuesEntry e = TIDAL__V1__METRIC__VALUES_ENTRY__INIT;
    f->m = m;
    static const char *const keys[3] = {"reward_mean", "loss", "staleness_max"};
    static const double vals[3] = {0.61, -0.0123, 2.0};
    for (int i = 0; i < 3; i++) {
        f->v[i] = e;
        f->v[i].key = (char *)keys[i];
        f->v[i].value = vals[i];
        f->vp[i] = &f->v[i];
    }
    f->m.schema_version = CODEC_SCHEMA_VERSION;
    f->m.role = "trainer";
    f->m.step = 41;
    f->m.time = 93.5;
    f->m.n_values = 3;
    f->m.values = f->vp;
    f->m.unix_ms = 1732390005000ull;
    f->m.source = "trainer";
}

/* ---------------------------------------------------------------- helpers */

/* Encode m with codec_encode and decode it back as its own type. */
static tidal_status round_trip(const ProtobufCMessage *m, ProtobufCMessage **out)
{
    void *buf;
    size_t len;
    tidal_status st = codec_encode(m, &buf, &len);
    if (st != TIDAL_OK) return st;
    st = codec_decode(m->descriptor, buf, len, out);
    free(buf);
    return st;
}

/* True when m (built by hand, maybe nonsense) is rejected by both
 * codec_validate and encode+decode with TIDAL_ERR_INVALID and a message
 * containing `want`; prints what happened otherwise. */
static bool rejected(const ProtobufCMessage *m, const char *want)
{
    tidal_status st = codec_validate(m);
    if (st != TIDAL_ERR_INVALID || !strstr(tidal_errmsg(), want)) {
        fprintf(stderr, "  validate: %s (%s), want invalid with \"%s\"\n", tidal_status_name(st),
                tidal_errmsg(), want);
        return false;
    }
    ProtobufCMessage *out = (ProtobufCMessage *)&out; /* must be reset to NULL */
    st = round_trip(m, &out);
    if (st != TIDAL_ERR_INVALID || out != NULL || !strstr(tidal_errmsg(), want)) {
        fprintf(stderr, "  decode: %s (%s), want invalid with \"%s\"\n", tidal_status_name(st),
                tidal_errmsg(), want);
        if (st == TIDAL_OK && out) protobuf_c_message_free_unpacked(out, NULL);
        return false;
    }
    return true;
}

static bool streq(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }

/* The order of message types behind tests/fuzz/fuzz_decode.c's first byte. */
static const ProtobufCMessageDescriptor *const all_types[N_TYPES] = {
    &tidal__v1__prompt__descriptor,          &tidal__v1__trajectory__descriptor,
    &tidal__v1__blob_manifest__descriptor,   &tidal__v1__weights_manifest__descriptor,
    &tidal__v1__env_request__descriptor,     &tidal__v1__env_response__descriptor,
    &tidal__v1__worker_status__descriptor,   &tidal__v1__control__descriptor,
    &tidal__v1__metric__descriptor,          &tidal__v1__trajectory_group__descriptor,
};

/* Valid samples of all ten types, in all_types order, built in `store`. */
typedef struct {
    prompt_fx prompt;
    traj_fx traj;
    blob_fx blob;
    weights_fx weights;
    envreq_fx envreq;
    envresp_fx envresp;
    Tidal__V1__WorkerStatus worker;
    Tidal__V1__Control control;
    metric_fx metric;
    group_fx group;
    const ProtobufCMessage *msgs[N_TYPES];
} samples;

static void samples_init(samples *s)
{
    prompt_init(&s->prompt);
    traj_init(&s->traj);
    blob_init(&s->blob, "weights-12");
    weights_init(&s->weights);
    envreq_init(&s->envreq);
    envresp_init(&s->envresp);
    s->worker = worker_sample();
    s->control = control_sample();
    metric_init(&s->metric);
    group_init(&s->group);
    const ProtobufCMessage *msgs[N_TYPES] = {
        MSG(s->prompt.p),  MSG(s->traj.t), MSG(s->blob.b),    MSG(s->weights.w), MSG(s->envreq.r),
        MSG(s->envresp.r), MSG(s->worker), MSG(s->control),   MSG(s->metric.m),  MSG(s->group.g),
    };
    memcpy(s->msgs, msgs, sizeof msgs);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* ---------------------------------------------------------------- round trips */

static void test_every_sample_is_valid(void)
{
    static samples s;
    samples_init(&s);
    for (int i = 0; i < N_TYPES; i++) {
        CHECK(s.msgs[i]->descriptor == all_types[i]);
        CHECK_OK(codec_validate(s.msgs[i]));
    }
}

static void test_prompt_round_trip(void)
{
    static prompt_fx f;
    prompt_init(&f);
    Tidal__V1__Prompt *p;
    CHECK_OK(round_trip(MSG(f.p), (ProtobufCMessage **)&p));
    bool same = p->schema_version == 1 && streq(p->prompt_id, f.p.prompt_id) &&
                streq(p->group_id, f.p.group_id) && p->sample_index == 2 && p->sample_count == 6 &&
                p->group_size == 8 && streq(p->text, f.p.text) && p->n_token_ids == 5 &&
                !memcmp(p->token_ids, f.tokens, sizeof f.tokens) && streq(p->task_json, f.p.task_json) &&
                streq(p->env, "strings") && p->sampling && p->sampling->temperature == 0.7 &&
                p->sampling->top_p == 0.95 && p->sampling->top_k == 50 &&
                p->sampling->seed == 1234567890123ull && p->sampling->n_stop == 2 &&
                streq(p->sampling->stop[0], "</answer>") && streq(p->sampling->stop[1], "\n\nQ:") &&
                p->max_tokens == 512 && p->min_version == 17 && p->data_index == 9000000001ull &&
                p->dispatched_unix_ms == 1732390000123ull && p->controller_epoch == 3 &&
                p->attempt == 1 && p->eval;
    tidal__v1__prompt__free_unpacked(p, NULL);
    CHECK(same);
}

static void test_trajectory_round_trip(void)
{
    static traj_fx f;
    traj_init(&f);
    Tidal__V1__Trajectory *t;
    CHECK_STATUS(codec_decode_trajectory(NULL, 0, &t), TIDAL_ERR_INVALID); /* the empty message */
    CHECK(t == NULL);
    CHECK_OK(round_trip(MSG(f.t), (ProtobufCMessage **)&t));
    bool same = streq(t->trajectory_id, "g000042.s5") && streq(t->prompt_id, f.t.prompt_id) &&
                streq(t->group_id, "g000042") && t->sample_index == 5 && t->group_size == 8 &&
                streq(t->worker_id, "host-a.1234") && t->n_prompt_token_ids == 6 &&
                !memcmp(t->prompt_token_ids, f.prompt, sizeof f.prompt) &&
                t->n_completion_token_ids == TRAJ_N &&
                !memcmp(t->completion_token_ids, f.completion, sizeof f.completion) &&
                t->n_logprobs == TRAJ_N && !memcmp(t->logprobs, f.logprobs, sizeof f.logprobs) &&
                t->n_version_values == 2 && t->version_values[0] == 3 && t->version_values[1] == 4 &&
                t->n_version_runs == 2 && t->version_runs[0] == 10 && t->version_runs[1] == 14 &&
                t->n_loss_mask == TRAJ_N && t->reward == 0.875 && t->n_reward_components == 2 &&
                streq(t->reward_components[0]->key, "format") &&
                t->reward_components[0]->value == 0.25 &&
                streq(t->reward_components[1]->key, "correct") &&
                t->reward_components[1]->value == 0.75 &&
                t->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_ENV_DONE &&
                t->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK && streq(t->error, "") &&
                t->timings && t->timings->queue_ms == 12.5 && t->timings->sync_ms == 3.25 &&
                t->timings->generate_ms == 870.0 && t->timings->env_ms == 4.75 &&
                t->timings->total_ms == 901.125 && t->turns == 2 && !t->eval && t->min_version == 2 &&
                t->temperature == 1.0 && streq(t->completion_text, f.t.completion_text) &&
                t->finished_unix_ms == 1732390001024ull;
    for (size_t i = 0; same && i < TRAJ_N; i++) same = !t->loss_mask[i] == !f.mask[i];
    uint64_t lo = 0, hi = 0;
    bool any = codec_trajectory_versions(t, &lo, &hi);
    tidal__v1__trajectory__free_unpacked(t, NULL);
    CHECK(same);
    CHECK(any && lo == 3 && hi == 4);
}

static bool blob_same(const Tidal__V1__BlobManifest *b, const blob_fx *f)
{
    bool same = b->schema_version == 1 && streq(b->name, f->b.name) &&
                streq(b->subject_prefix, "tidal.quick.weights") && b->bytes == f->b.bytes &&
                b->chunk_bytes == (4u << 20) && b->chunk_count == 3 && b->digest.len == 32 &&
                !memcmp(b->digest.data, f->digest, 32) && b->n_chunk_digest == 3 &&
                b->created_unix_ms == 1732390002000ull;
    for (int k = 0; same && k < 3; k++)
        same = b->chunk_digest[k].len == 32 && !memcmp(b->chunk_digest[k].data, f->chunk_digests[k], 32);
    return same;
}

static void test_blob_manifest_round_trip(void)
{
    static blob_fx f;
    blob_init(&f, "weights-12");
    Tidal__V1__BlobManifest *b;
    CHECK_OK(round_trip(MSG(f.b), (ProtobufCMessage **)&b));
    bool same = blob_same(b, &f);
    tidal__v1__blob_manifest__free_unpacked(b, NULL);
    CHECK(same);
}

static void test_weights_manifest_round_trip(void)
{
    static weights_fx f;
    weights_init(&f);
    Tidal__V1__WeightsManifest *w;
    CHECK_OK(round_trip(MSG(f.w), (ProtobufCMessage **)&w));
    bool same = w->version == 12 && streq(w->dtype, "bf16") && w->bytes == f.blob.b.bytes &&
                w->chunk_count == 3 && w->digest.len == 32 && !memcmp(w->digest.data, f.blob.digest, 32) &&
                streq(w->transport, "bus") && streq(w->url, "") && w->blob &&
                blob_same(w->blob, &f.blob) && streq(w->model_config_json, f.w.model_config_json) &&
                w->created_unix_ms == 1732390003000ull;
    tidal__v1__weights_manifest__free_unpacked(w, NULL);
    CHECK(same);

    /* the http transport: the url and the ranges' hashes */
    static uint8_t h[3][32] = {{1}, {2}, {3}};
    ProtobufCBinaryData hs[3] = {{32, h[0]}, {32, h[1]}, {32, h[2]}};
    f.w.transport = "http";
    f.w.url = "http://10.0.0.5:8470/weights/12";
    f.w.blob = NULL;
    f.w.chunk_count = 0;
    f.w.http_chunk_bytes = 4u << 20; /* 8400953 bytes: 3 ranges */
    f.w.n_http_chunk_digest = 3;
    f.w.http_chunk_digest = hs;
    CHECK_OK(round_trip(MSG(f.w), (ProtobufCMessage **)&w));
    same = streq(w->url, f.w.url) && !w->blob && w->chunk_count == 0 && w->http_chunk_bytes == 4u << 20 &&
           w->n_http_chunk_digest == 3 && !memcmp(w->http_chunk_digest[2].data, h[2], 32);
    tidal__v1__weights_manifest__free_unpacked(w, NULL);
    CHECK(same);
}

static void test_env_round_trip(void)
{
    static envreq_fx q;
    static envresp_fx r;
    envreq_init(&q);
    envresp_init(&r);
    Tidal__V1__EnvRequest *a;
    CHECK_OK(round_trip(MSG(q.r), (ProtobufCMessage **)&a));
    bool same = streq(a->env, "gsm8k") && streq(a->session, "g000042.s5") &&
                a->op == TIDAL__V1__ENV_OP__ENV_OP_STEP && streq(a->task_json, q.r.task_json) &&
                streq(a->action_text, q.r.action_text) && a->n_action_tokens == 4 &&
                !memcmp(a->action_tokens, q.tokens, sizeof q.tokens) && a->turn == 3 &&
                a->schema_version == 1;
    tidal__v1__env_request__free_unpacked(a, NULL);
    CHECK(same);

    Tidal__V1__EnvResponse *b;
    CHECK_OK(round_trip(MSG(r.r), (ProtobufCMessage **)&b));
    same = streq(b->observation, "higher ↑") && b->reward == -0.125 && b->done &&
           streq(b->error, "") &&
           b->n_metrics == 2 && streq(b->metrics[0]->key, "parsed") && b->metrics[0]->value == 1.0 &&
           streq(b->metrics[1]->key, "distance") && b->metrics[1]->value == -3.5e-3;
    tidal__v1__env_response__free_unpacked(b, NULL);
    CHECK(same);
}

static void test_worker_control_metric_round_trip(void)
{
    Tidal__V1__WorkerStatus w0 = worker_sample();
    Tidal__V1__WorkerStatus *w;
    CHECK_OK(round_trip(MSG(w0), (ProtobufCMessage **)&w));
    bool same = streq(w->worker_id, "gpu-node-7.31337") && streq(w->host, "gpu-node-7") &&
                w->pid == 31337 && w->state == TIDAL__V1__WORKER_STATE__WORKER_STATE_SYNCING &&
                w->weights_version == 41 && w->prompts_in_flight == 3 && w->tokens_per_s == 1523.75 &&
                streq(w->backend, "builtin") && streq(w->device, "cuda:0") &&
                w->started_unix_ms == 1732390000000ull && w->updated_unix_ms == 1732390009000ull &&
                w->capacity == 4 && w->trajectories == 977 && w->errors == 2;
    tidal__v1__worker_status__free_unpacked(w, NULL);
    CHECK(same);

    Tidal__V1__Control c0 = control_sample();
    Tidal__V1__Control *c;
    CHECK_OK(round_trip(MSG(c0), (ProtobufCMessage **)&c));
    same = c->command == TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_DRAIN &&
           streq(c->reason, "scale down") && c->issued_unix_ms == 1732390004000ull &&
           streq(c->target, "gpu-node-7.31337") && streq(c->issuer, "tidal-cli");
    tidal__v1__control__free_unpacked(c, NULL);
    CHECK(same);

    static metric_fx mf;
    metric_init(&mf);
    mf.v[1].value = NAN; /* a diverging loss is reported, not rejected */
    Tidal__V1__Metric *m;
    CHECK_OK(round_trip(MSG(mf.m), (ProtobufCMessage **)&m));
    same = streq(m->role, "trainer") && m->step == 41 && m->time == 93.5 && m->n_values == 3 &&
           streq(m->values[0]->key, "reward_mean") && m->values[0]->value == 0.61 &&
           streq(m->values[1]->key, "loss") && isnan(m->values[1]->value) &&
           streq(m->values[2]->key, "staleness_max") && m->values[2]->value == 2.0 &&
           m->unix_ms == 1732390005000ull && streq(m->source, "trainer");
    tidal__v1__metric__free_unpacked(m, NULL);
    CHECK(same);
}

/* The typed decoders agree with the generic one. */
static void test_typed_decoders(void)
{
    static samples s;
    samples_init(&s);
    typedef tidal_status (*typed)(const void *, size_t, void **);
    const typed fns[N_TYPES] = {
        (typed)codec_decode_prompt,          (typed)codec_decode_trajectory,
        (typed)codec_decode_blob_manifest,   (typed)codec_decode_weights_manifest,
        (typed)codec_decode_env_request,     (typed)codec_decode_env_response,
        (typed)codec_decode_worker_status,   (typed)codec_decode_control,
        (typed)codec_decode_metric,          (typed)codec_decode_trajectory_group,
    };
    for (int i = 0; i < N_TYPES; i++) {
        void *buf, *m;
        size_t len;
        CHECK_OK(codec_encode(s.msgs[i], &buf, &len));
        tidal_status st = fns[i](buf, len, &m);
        free(buf);
        CHECK_OK(st);
        CHECK(((ProtobufCMessage *)m)->descriptor == all_types[i]);
        protobuf_c_message_free_unpacked(m, NULL);
    }
}

/* ---------------------------------------------------------------- versioning */

static void test_schema_versions(void)
{
    Tidal__V1__Control c = control_sample();
    c.schema_version = 9;
    CHECK(rejected(MSG(c), "control: schema_version 9 not supported (max 1)"));
    c.schema_version = 0; /* absent: read as 1 */
    CHECK_OK(codec_validate(MSG(c)));

    static envresp_fx r;
    envresp_init(&r);
    r.r.schema_version = 2;
    CHECK(rejected(MSG(r.r), "schema_version 2 not supported"));

    static weights_fx w;
    weights_init(&w);
    w.blob.b.schema_version = 5;
    CHECK(rejected(MSG(w.w), "blob schema_version 5 not supported"));
}

/* QUARANTINE aims at one worker (a kv-key-like id), never at everyone; an unknown command is refused. */
static void test_control_commands(void)
{
    Tidal__V1__Control c = control_sample();
    c.command = TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_QUARANTINE;
    c.target = "";
    CHECK(rejected(MSG(c), "target is empty"));
    c.target = "a worker";
    CHECK(rejected(MSG(c), "target"));
    c.target = "w0-1234";
    CHECK_OK(codec_validate(MSG(c)));
    c.command = (Tidal__V1__ControlCommand)9;
    CHECK(rejected(MSG(c), "command 9 is not a known ControlCommand"));
}

/* A field this build does not know (a newer sender's) is skipped. */
static void test_unknown_fields_ignored(void)
{
    Tidal__V1__Control c0 = control_sample();
    uint8_t buf[256];
    size_t len = protobuf_c_message_pack(MSG(c0), buf);
    /* field 100, varint 300; field 101, length-delimited "hi" */
    const uint8_t extra[] = {0xa0, 0x06, 0xac, 0x02, 0xaa, 0x06, 0x02, 'h', 'i'};
    CHECK(len + sizeof extra <= sizeof buf);
    memcpy(buf + len, extra, sizeof extra);
    Tidal__V1__Control *c;
    CHECK_OK(codec_decode_control(buf, len + sizeof extra, &c));
    bool same = c->command == TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_DRAIN &&
                streq(c->reason, "scale down");
    tidal__v1__control__free_unpacked(c, NULL);
    CHECK(same);

    /* field number 0 is not protobuf, however its tag is spelled (protobuf-c
     * lets the overlong spelling 0x85 0x00 through on its own) */
    const uint8_t zero_short[] = {0x05, 1, 2, 3, 4};
    const uint8_t zero_long[] = {0x85, 0x00, 1, 2, 3, 4};
    memcpy(buf + len, zero_short, sizeof zero_short);
    CHECK_STATUS(codec_decode_control(buf, len + sizeof zero_short, &c), TIDAL_ERR_DECODE);
    memcpy(buf + len, zero_long, sizeof zero_long);
    CHECK_STATUS(codec_decode_control(buf, len + sizeof zero_long, &c), TIDAL_ERR_DECODE);
    CHECK(strstr(tidal_errmsg(), "field numbered 0"));
    CHECK(c == NULL);
}

/* ---------------------------------------------------------------- garbage */

/* Decode as `type`: never crashes, *out is NULL on error, OK results are freed. */
static bool decode_is_safe(const ProtobufCMessageDescriptor *type, const void *data, size_t len,
                           tidal_status *st_out)
{
    ProtobufCMessage *m = (ProtobufCMessage *)&m;
    tidal_status st = codec_decode(type, data, len, &m);
    *st_out = st;
    if (st == TIDAL_OK) {
        if (!m) return false;
        protobuf_c_message_free_unpacked(m, NULL);
        return true;
    }
    return m == NULL && (st == TIDAL_ERR_DECODE || st == TIDAL_ERR_INVALID) && tidal_errmsg()[0];
}

static void test_random_bytes(void)
{
    uint8_t buf[512];
    int decode_errors = 0, valid = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = rng() % sizeof buf;
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rng();
        tidal_status st;
        CHECK(decode_is_safe(all_types[iter % N_TYPES], buf, len, &st));
        /* every field of an env message is optional: a few random strings
         * (the empty one first) are valid there; nowhere else */
        bool lenient = all_types[iter % N_TYPES] == &tidal__v1__env_response__descriptor ||
                       all_types[iter % N_TYPES] == &tidal__v1__env_request__descriptor;
        CHECK_MSG(st != TIDAL_OK || lenient, "random bytes (%zu) decoded as a valid %s", len,
                  all_types[iter % N_TYPES]->short_name);
        valid += st == TIDAL_OK;
        decode_errors += st == TIDAL_ERR_DECODE;
    }
    CHECK(decode_errors > 10000); /* most random bytes are not protobuf at all */
    CHECK(valid < 100);
}

/* Random bytes spliced into valid encodings: closer to what a bad peer sends. */
static void test_mutated_encodings(void)
{
    static samples s;
    samples_init(&s);
    for (int i = 0; i < N_TYPES; i++) {
        void *enc;
        size_t len;
        CHECK_OK(codec_encode(s.msgs[i], &enc, &len));
        uint8_t *buf = malloc(len);
        CHECK(buf);
        for (int iter = 0; iter < 3000; iter++) {
            memcpy(buf, enc, len);
            int flips = 1 + (int)(rng() % 4);
            for (int k = 0; k < flips; k++) buf[rng() % len] = (uint8_t)rng();
            tidal_status st;
            if (!decode_is_safe(all_types[i], buf, len, &st)) {
                free(buf);
                free(enc);
                CHECK_MSG(0, "%s mutation %d: %s", all_types[i]->short_name, iter,
                          tidal_status_name(st));
            }
        }
        free(buf);
        free(enc);
    }
}

static void test_truncated_encodings(void)
{
    static samples s;
    samples_init(&s);
    for (int i = 0; i < N_TYPES; i++) {
        void *enc;
        size_t len;
        CHECK_OK(codec_encode(s.msgs[i], &enc, &len));
        int decode_errors = 0;
        bool ok = true;
        for (size_t cut = 0; cut < len && ok; cut++) {
            /* a copy of exactly `cut` bytes, so ASan sees any read past it */
            uint8_t *part = malloc(cut ? cut : 1);
            memcpy(part, enc, cut);
            tidal_status st;
            ok = decode_is_safe(all_types[i], part, cut, &st);
            decode_errors += st == TIDAL_ERR_DECODE;
            free(part);
        }
        free(enc);
        CHECK_MSG(ok, "%s: truncation not handled", all_types[i]->short_name);
        CHECK_MSG(decode_errors > 0, "%s: no truncation was a decode error", all_types[i]->short_name);
    }
    /* one byte short is never accepted for the messages with a required tail */
    void *enc;
    size_t len;
    CHECK_OK(codec_encode(MSG(s.traj.t), &enc, &len));
    Tidal__V1__Trajectory *t;
    tidal_status st = codec_decode_trajectory(enc, len - 1, &t);
    free(enc);
    CHECK(st == TIDAL_ERR_DECODE && t == NULL);
}

/* The samples' bytes read as any other message type are rejected (the field
 * numbers overlap, so this is the wire types and validation at work). */
static void test_wrong_message_type(void)
{
    static samples s;
    samples_init(&s);
    for (int i = 0; i < N_TYPES; i++) {
        void *enc;
        size_t len;
        CHECK_OK(codec_encode(s.msgs[i], &enc, &len));
        for (int j = 0; j < N_TYPES; j++) {
            if (i == j) continue;
            tidal_status st;
            bool safe = decode_is_safe(all_types[j], enc, len, &st);
            if (!safe || st == TIDAL_OK) {
                free(enc);
                CHECK_MSG(0, "%s bytes read as %s: %s", all_types[i]->short_name,
                          all_types[j]->short_name, tidal_status_name(st));
            }
        }
        free(enc);
    }
    /* a type this module does not validate */
    Tidal__V1__Timings tm = TIDAL__V1__TIMINGS__INIT;
    CHECK_STATUS(codec_validate(MSG(tm)), TIDAL_ERR_INVALID);
    ProtobufCMessage *m;
    CHECK_STATUS(codec_decode(&tidal__v1__timings__descriptor, "", 0, &m), TIDAL_ERR_INVALID);
    CHECK(m == NULL);
}

/* ---------------------------------------------------------------- validation rules */

static void test_prompt_rules(void)
{
    static prompt_fx f;
#define PROMPT_BAD(mutation, want)  \
    do {                            \
        prompt_init(&f);            \
        mutation;                   \
        CHECK(rejected(MSG(f.p), want)); \
    } while (0)
    PROMPT_BAD(f.p.prompt_id = "", "prompt: prompt_id is empty");
    PROMPT_BAD(f.p.prompt_id = "has space", "prompt_id has a byte that is not visible ASCII at 3");
    PROMPT_BAD(f.p.group_id = "", "prompt quick-e0-g000042: group_id is empty");
    PROMPT_BAD(f.p.group_size = 0, "group_size 0 is outside 1..65536");
    PROMPT_BAD(f.p.sample_count = 0, "sample_count is 0");
    PROMPT_BAD(f.p.sample_index = 3, "samples 3..8 are outside the group of 8");
    PROMPT_BAD((f.p.text = "", f.p.n_token_ids = 0), "has neither text nor token_ids");
    PROMPT_BAD(f.p.env = "gsm8k.v2", "env \"gsm8k.v2\" has a character outside [A-Za-z0-9_-] at 5");
    PROMPT_BAD(f.s.temperature = -1, "sampling.temperature = -1 < 0");
    PROMPT_BAD(f.s.temperature = NAN, "sampling.temperature is NaN");
    PROMPT_BAD(f.s.top_p = 1.5, "sampling.top_p 1.5 is outside [0, 1]");
    PROMPT_BAD(f.stop[1] = "", "sampling.stop[1] is empty");
    PROMPT_BAD(f.p.max_tokens = 0, "max_tokens 0 is outside 1..1048576");
    PROMPT_BAD(f.p.text = "bad \xc3\x28 utf8", "text is not valid UTF-8 (byte 4)");
    PROMPT_BAD(f.stop[0] = "\xed\xa0\x80", "sampling.stop[0] is not valid UTF-8 (byte 0)");
#undef PROMPT_BAD
    /* text alone, token ids alone, and no sampling block are all fine */
    prompt_init(&f);
    f.p.n_token_ids = 0;
    f.p.sampling = NULL;
    CHECK_OK(codec_validate(MSG(f.p)));
    f.p.text = "";
    f.p.n_token_ids = 5;
    CHECK_OK(codec_validate(MSG(f.p)));
}

static void test_trajectory_rules(void)
{
    static traj_fx f;
#define TRAJ_BAD(mutation, want)    \
    do {                            \
        traj_init(&f);              \
        mutation;                   \
        CHECK(rejected(MSG(f.t), want)); \
    } while (0)
    TRAJ_BAD(f.logprobs[17] = 0.3f, "trajectory g000042.s5: logprob[17] = 0.3 > 0");
    TRAJ_BAD(f.logprobs[3] = NAN, "logprob[3] is NaN");
    TRAJ_BAD(f.logprobs[3] = -INFINITY, "logprob[3] is -inf on a trained token");
    TRAJ_BAD(f.t.reward = NAN, "reward is NaN");
    TRAJ_BAD(f.t.reward = -INFINITY, "reward is -inf");
    TRAJ_BAD(f.comp[1].value = INFINITY, "reward_components[\"correct\"] is inf");
    TRAJ_BAD(f.comp[1].key = "format", "reward_components has the key \"format\" twice");
    TRAJ_BAD(f.comp[0].key = "", "reward_components has an empty key");
    TRAJ_BAD(f.t.n_loss_mask = 10, "loss_mask has 10 entries for 24 completion tokens");
    TRAJ_BAD(f.t.n_logprobs = 23, "logprobs has 23 entries for 24 completion tokens");
    TRAJ_BAD(f.vr[1] = 13, "version runs cover 23 tokens, completion has 24");
    TRAJ_BAD((f.vr[0] = 0, f.vr[1] = 24), "version run 0 has length 0");
    TRAJ_BAD(f.t.n_version_runs = 1, "version_values has 2 entries, version_runs 1");
    TRAJ_BAD(f.vv[1] = 1, "version run 1 has version 1 after 3 (versions never go back)");
    TRAJ_BAD(f.t.min_version = 4, "version 3 is older than min_version 4");
    TRAJ_BAD(f.t.trajectory_id = "", "trajectory: trajectory_id is empty");
    TRAJ_BAD(f.t.prompt_id = "", "prompt_id is empty");
    TRAJ_BAD(f.t.worker_id = "", "worker_id is empty");
    TRAJ_BAD(f.t.worker_id = "a b", "worker_id \"a b\" has a character outside");
    TRAJ_BAD(f.t.group_size = 0, "group_size 0 is outside 1..65536");
    TRAJ_BAD(f.t.sample_index = 8, "sample_index 8 is outside the group of 8");
    TRAJ_BAD(f.t.status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_UNSPECIFIED,
             "status is unspecified");
    TRAJ_BAD(f.t.status = 42, "status 42 is not a known TrajectoryStatus");
    TRAJ_BAD(f.t.finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED,
             "finish_reason is unspecified");
    TRAJ_BAD(f.t.finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_ERROR,
             "status ok with finish_reason error");
    TRAJ_BAD(f.t.status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_TIMEOUT,
             "status TRAJECTORY_STATUS_ENV_TIMEOUT without an error text");
    TRAJ_BAD(f.t.n_prompt_token_ids = 0, "prompt_token_ids is empty");
    TRAJ_BAD(f.tm.env_ms = -1, "timings.env_ms = -1 < 0");
    TRAJ_BAD(f.tm.total_ms = NAN, "timings.total_ms is NaN");
    TRAJ_BAD(f.t.temperature = INFINITY, "temperature is inf");
    TRAJ_BAD(f.t.completion_text = "\xff", "completion_text is not valid UTF-8 (byte 0)");
    TRAJ_BAD(f.comp[0].key = "\xc0\x80", "reward_components[0].key is not valid UTF-8");
    TRAJ_BAD(f.t.schema_version = 9, "trajectory g000042.s5: schema_version 9 not supported (max 1)");
#undef TRAJ_BAD

    /* an environment token may carry any logprob <= 0, -inf included */
    traj_init(&f);
    f.logprobs[12] = -INFINITY;
    CHECK_OK(codec_validate(MSG(f.t)));
    /* a failed sample: no tokens at all, an error text, the failure reason */
    traj_init(&f);
    f.t.status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_ENV_ERROR;
    f.t.finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_ERROR;
    f.t.error = "env gsm8k: timeout after 3 tries";
    f.t.n_prompt_token_ids = 0;
    f.t.n_completion_token_ids = f.t.n_logprobs = f.t.n_loss_mask = 0;
    f.t.n_version_values = f.t.n_version_runs = 0;
    f.t.reward = 0;
    CHECK_OK(codec_validate(MSG(f.t)));
    CHECK(!codec_trajectory_versions(&f.t, NULL, NULL));
}

static void test_blob_manifest_rules(void)
{
    static blob_fx f;
#define BLOB_BAD(mutation, want)      \
    do {                              \
        blob_init(&f, "weights-12");  \
        mutation;                     \
        CHECK(rejected(MSG(f.b), want)); \
    } while (0)
    BLOB_BAD(f.b.name = "", "blob manifest: name is empty");
    BLOB_BAD(f.b.name = "a.b", "name \"a.b\" has a character outside [A-Za-z0-9_-] at 1");
    BLOB_BAD(f.b.subject_prefix = "tidal..w", "subject_prefix \"tidal..w\" is not a subject");
    BLOB_BAD(f.b.subject_prefix = "tidal.*", "subject_prefix \"tidal.*\" is not a subject");
    BLOB_BAD(f.b.subject_prefix = "", "subject_prefix is empty");
    BLOB_BAD(f.b.chunk_bytes = 0, "chunk_bytes 0 is outside 1..4194304");
    BLOB_BAD(f.b.chunk_bytes = (4u << 20) + 1, "chunk_bytes 4194305 is outside");
    BLOB_BAD(f.b.chunk_count = 2, "chunk_count 2, but 8400953 bytes in chunks of 4194304 make 3");
    BLOB_BAD(f.b.bytes = 2ull * (4u << 20), "chunk_count 3, but 8388608 bytes");
    BLOB_BAD(f.b.digest.len = 31, "digest has 31 bytes, a digest has 32");
    BLOB_BAD(f.b.n_chunk_digest = 2, "chunk_digest has 2 entries for 3 chunks");
    BLOB_BAD(f.chunks[2].len = 0, "chunk_digest[2] has 0 bytes");
#undef BLOB_BAD
    /* the empty blob: no chunks */
    blob_init(&f, "empty");
    f.b.bytes = 0;
    f.b.chunk_count = 0;
    f.b.n_chunk_digest = 0;
    CHECK_OK(codec_validate(MSG(f.b)));
}

static void test_weights_manifest_rules(void)
{
    static weights_fx f;
#define WEIGHTS_BAD(mutation, want)   \
    do {                              \
        weights_init(&f);             \
        mutation;                     \
        CHECK(rejected(MSG(f.w), want)); \
    } while (0)
    WEIGHTS_BAD(f.w.dtype = "int8", "weights manifest v12: dtype \"int8\" is not fp32, bf16 or fp16");
    WEIGHTS_BAD(f.w.bytes = 0, "bytes is 0");
    WEIGHTS_BAD(f.w.digest.len = 0, "digest has 0 bytes");
    WEIGHTS_BAD(f.w.digest_algorithm = "", "no digest_algorithm: written by a tidal whose digests were SHA-256");
    WEIGHTS_BAD(f.w.digest_algorithm = "sha256", "digest_algorithm \"sha256\" is not blake3");
    WEIGHTS_BAD(f.w.transport = "s3", "transport \"s3\" is neither bus, http nor dir");
    WEIGHTS_BAD(f.w.blob = NULL, "transport bus without a blob manifest");
    WEIGHTS_BAD(f.w.url = "file:///x", "transport bus with a url");
    WEIGHTS_BAD(f.w.version = 13, "weights manifest v13: blob name \"12\" is not the version 13");
    WEIGHTS_BAD(f.w.bytes = 1, "blob has 8400953 bytes, manifest 1");
    WEIGHTS_BAD(f.w.chunk_count = 4, "blob has 3 chunks, manifest 4");
    WEIGHTS_BAD(f.blob.digest[0] ^= 1, "blob digest differs from the manifest's");
    WEIGHTS_BAD(f.blob.b.chunk_count = 1, "weights manifest v12: blob 12: chunk_count 1, but");
    static uint8_t hh[3][32];
    static ProtobufCBinaryData hs[3] = {{32, hh[0]}, {32, hh[1]}, {32, hh[2]}};
#define HTTP_FX (f.w.transport = "http", f.w.url = "http://h:1/weights/12", f.w.blob = NULL, f.w.chunk_count = 0, \
                 f.w.http_chunk_bytes = 4u << 20, f.w.n_http_chunk_digest = 3, f.w.http_chunk_digest = hs)
    WEIGHTS_BAD(f.w.http_chunk_bytes = 7, "transport bus with http chunks");
    WEIGHTS_BAD((HTTP_FX, f.w.url = ""), "transport http with url \"\" (not http://...)");
    WEIGHTS_BAD((HTTP_FX, f.w.url = "file:///srv/w"), "transport http with url \"file:///srv/w\" (not http://...)");
    WEIGHTS_BAD((HTTP_FX, f.w.blob = &f.blob.b), "transport http with a blob manifest");
    WEIGHTS_BAD((HTTP_FX, f.w.chunk_count = 3), "transport http with chunk_count 3");
    WEIGHTS_BAD((HTTP_FX, f.w.http_chunk_bytes = 0), "transport http with http_chunk_bytes 0");
    WEIGHTS_BAD((HTTP_FX, f.w.n_http_chunk_digest = 2), "transport http: 2 http_chunk_digest for 3 ranges of 4194304 bytes");
    WEIGHTS_BAD((HTTP_FX, hs[1].len = 31), "http_chunk_digest[1] has 31 bytes, not 32");
    hs[1].len = 32;
    weights_init(&f);
    HTTP_FX;
    CHECK_OK(codec_validate(MSG(f.w)));
#undef HTTP_FX
    /* transport dir (fields 20-29) */
    WEIGHTS_BAD((f.w.transport = "dir", f.w.blob = NULL, f.w.chunk_count = 0), "transport dir without a dir");
    WEIGHTS_BAD((f.w.transport = "dir", f.w.dir = "/w/step_12", f.w.chunk_count = 0), "transport dir with a blob manifest");
    WEIGHTS_BAD((f.w.transport = "dir", f.w.dir = "/w/step_12", f.w.blob = NULL), "transport dir with chunk_count 3");
    WEIGHTS_BAD(f.w.dir = "/w/step_12", "transport bus with a dir");
    /* delta versions */
    static uint64_t chain[3] = {8, 10, 11};
    static uint8_t image_digest[32] = {1};
#define DELTA(f) ((f).w.delta = true, (f).w.delta_base = 11, (f).w.chain = chain, (f).w.n_chain = 3, \
                  (f).w.image_bytes = 5000, (f).w.image_digest.data = image_digest, (f).w.image_digest.len = 32, \
                  (f).w.full_every = 10)
    weights_init(&f);
    DELTA(f);
    CHECK_OK(codec_validate(MSG(f.w)));
    WEIGHTS_BAD((DELTA(f), f.w.full_every = 0), "a delta with full_every 0");
    WEIGHTS_BAD((DELTA(f), f.w.delta_base = 12), "delta_base 12 is not before the version");
    WEIGHTS_BAD((DELTA(f), f.w.delta_base = 10), "the delta's chain does not end at delta_base 10");
    WEIGHTS_BAD((DELTA(f), f.w.n_chain = 0), "the delta's chain does not end at delta_base 11");
    WEIGHTS_BAD((DELTA(f), chain[1] = 7), "the delta's chain is not increasing at 1");
    chain[1] = 10;
    WEIGHTS_BAD((DELTA(f), f.w.image_bytes = 0), "a delta with image_bytes 0");
    WEIGHTS_BAD((DELTA(f), f.w.image_digest.len = 31), "image_digest has 31 bytes");
    WEIGHTS_BAD((DELTA(f), f.w.delta = false), "delta fields on a full image");
    WEIGHTS_BAD((DELTA(f), f.w.transport = "dir", f.w.dir = "/w", f.w.blob = NULL, f.w.chunk_count = 0),
                "a delta on transport dir (deltas go on the bus)");
#undef DELTA
    WEIGHTS_BAD(f.w.model_config_json = "\xe2\x82", "model_config_json is not valid UTF-8");
    WEIGHTS_BAD(f.blob.b.subject_prefix = "\xe2\x82", "blob.subject_prefix is not valid UTF-8");
#undef WEIGHTS_BAD
}

static void test_env_rules(void)
{
    static envreq_fx q;
    envreq_init(&q);
    q.r.op = TIDAL__V1__ENV_OP__ENV_OP_UNSPECIFIED;
    CHECK(rejected(MSG(q.r), "env request g000042.s5: op is unspecified"));
    envreq_init(&q);
    q.r.op = 7;
    CHECK(rejected(MSG(q.r), "op 7 is not a known EnvOp"));
    envreq_init(&q);
    q.r.env = "bad env";
    CHECK(rejected(MSG(q.r), "env \"bad env\" has a character outside"));
    envreq_init(&q);
    q.r.action_text = "\x80";
    CHECK(rejected(MSG(q.r), "action_text is not valid UTF-8"));
    /* a bare RESET from a minimal client: no env, no session, no schema_version */
    Tidal__V1__EnvRequest bare = TIDAL__V1__ENV_REQUEST__INIT;
    bare.op = TIDAL__V1__ENV_OP__ENV_OP_RESET;
    CHECK_OK(codec_validate(MSG(bare)));

    static envresp_fx r;
    envresp_init(&r);
    r.r.reward = NAN;
    CHECK(rejected(MSG(r.r), "env response: reward is NaN"));
    envresp_init(&r);
    r.m[0].value = -INFINITY;
    CHECK(rejected(MSG(r.r), "metrics[\"parsed\"] is -inf"));
    envresp_init(&r);
    r.m[1].key = "parsed";
    CHECK(rejected(MSG(r.r), "metrics has the key \"parsed\" twice"));
    /* the empty response is a valid answer (reward 0, not done) */
    ProtobufCMessage *m;
    CHECK_OK(codec_decode(&tidal__v1__env_response__descriptor, NULL, 0, &m));
    protobuf_c_message_free_unpacked(m, NULL);
}

static void test_worker_control_metric_rules(void)
{
    Tidal__V1__WorkerStatus w = worker_sample();
    w.worker_id = ".hidden";
    CHECK(rejected(MSG(w), "worker_id \".hidden\" starts or ends with '.'"));
    w = worker_sample();
    w.worker_id = "";
    CHECK(rejected(MSG(w), "worker status: worker_id is empty"));
    w = worker_sample();
    w.state = TIDAL__V1__WORKER_STATE__WORKER_STATE_UNSPECIFIED;
    CHECK(rejected(MSG(w), "worker status gpu-node-7.31337: state is unspecified"));
    w = worker_sample();
    w.tokens_per_s = -5;
    CHECK(rejected(MSG(w), "tokens_per_s = -5 < 0"));
    w = worker_sample();
    w.updated_unix_ms = 1;
    CHECK(rejected(MSG(w), "updated_unix_ms 1 is before started_unix_ms 1732390000000"));
    w = worker_sample();
    w.errors = 978;
    CHECK(rejected(MSG(w), "errors 978 > trajectories 977"));

    Tidal__V1__Control c = control_sample();
    c.command = TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_UNSPECIFIED;
    CHECK(rejected(MSG(c), "control: command is unspecified"));
    c.command = 99;
    CHECK(rejected(MSG(c), "command 99 is not a known ControlCommand"));
    ProtobufCMessage *m = (ProtobufCMessage *)&m;
    CHECK_STATUS(codec_decode(&tidal__v1__control__descriptor, NULL, 0, &m), TIDAL_ERR_INVALID);
    CHECK(m == NULL);

    static metric_fx f;
    metric_init(&f);
    f.m.role = "";
    CHECK(rejected(MSG(f.m), "metric: role is empty"));
    metric_init(&f);
    f.m.role = "roll.out";
    CHECK(rejected(MSG(f.m), "role \"roll.out\" has a character outside"));
    metric_init(&f);
    f.m.time = -0.5;
    CHECK(rejected(MSG(f.m), "metric trainer: time = -0.5 < 0"));
    metric_init(&f);
    f.v[2].key = "loss";
    CHECK(rejected(MSG(f.m), "values has the key \"loss\" twice"));
    metric_init(&f);
    f.v[0].key = "";
    CHECK(rejected(MSG(f.m), "values has an empty key"));
}

/* Oversized maps are refused before any quadratic work. */
static void test_map_limit(void)
{
    static metric_fx f;
    metric_init(&f);
    size_t n = CODEC_MAX_MAP_ENTRIES + 1;
    Tidal__V1__Metric__ValuesEntry *e = calloc(n, sizeof *e);
    Tidal__V1__Metric__ValuesEntry **ep = calloc(n, sizeof *ep);
    char(*keys)[16] = calloc(n, sizeof *keys);
    CHECK(e && ep && keys);
    Tidal__V1__Metric__ValuesEntry init = TIDAL__V1__METRIC__VALUES_ENTRY__INIT;
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        e[i] = init;
        e[i].key = keys[i];
        ep[i] = &e[i];
    }
    f.m.n_values = n;
    f.m.values = ep;
    bool refused = rejected(MSG(f.m), "values has 1025 entries (max 1024)");
    f.m.n_values = n - 1;
    tidal_status st = codec_validate(MSG(f.m));
    free(e);
    free(ep);
    free(keys);
    CHECK(refused);
    CHECK_OK(st);
}

/* ---------------------------------------------------------------- encode, RLE */

static void test_encode_empty_message(void)
{
    Tidal__V1__Control c = TIDAL__V1__CONTROL__INIT;
    void *buf;
    size_t len;
    CHECK_OK(codec_encode(MSG(c), &buf, &len));
    CHECK(buf != NULL && len == 0);
    free(buf);
}

static void test_versions_rle(void)
{
    uint64_t versions[1000], values[1000], back[1000];
    uint32_t runs[1000];
    CHECK(codec_versions_rle(NULL, 0, NULL, NULL) == 0);
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + rng() % 1000;
        uint64_t v = rng() % 50;
        size_t changes = 0;
        for (size_t i = 0; i < n; i++) {
            if (rng() % 37 == 0) v += 1 + rng() % 3;
            versions[i] = v;
            changes += i > 0 && versions[i] != versions[i - 1];
        }
        size_t r = codec_versions_rle(versions, n, values, runs);
        CHECK(r == changes + 1);
        uint64_t total = 0;
        for (size_t k = 0; k < r; k++) {
            CHECK(runs[k] >= 1);
            CHECK(k == 0 || values[k] > values[k - 1]); /* maximal runs */
            total += runs[k];
        }
        CHECK(total == n);
        size_t m = 0;
        CHECK_OK(codec_versions_expand(values, runs, r, back, n, &m));
        CHECK(m == n && !memcmp(back, versions, n * sizeof *back));
        /* one slot short */
        CHECK_STATUS(codec_versions_expand(values, runs, r, back, n - 1, &m), TIDAL_ERR_INVALID);
    }
    const uint64_t vv[3] = {1, 2, 3};
    const uint32_t zero[3] = {2, 0, 1};
    size_t m;
    CHECK_STATUS(codec_versions_expand(vv, zero, 3, back, 1000, &m), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "version run 1 has length 0"));
    const uint32_t big[2] = {UINT32_MAX, UINT32_MAX};
    CHECK_STATUS(codec_versions_expand(vv, big, 2, back, 1000, &m), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "version runs cover 8589934590 tokens, room for 1000"));
}

/* ---------------------------------------------------------------- trajectory groups */

/* A group in one message and in parts: every part fits, decodes, says which
 * part it is, and together the parts hold the trajectories in order; a
 * trajectory that cannot fit is refused by name. */
static void test_group_parts(void)
{
    static group_fx f;
    group_init(&f);
    codec_parts parts;
    char id[128];
    CHECK_OK(codec_encode_group_parts(&f.g, 1 << 20, &parts));
    CHECK(parts.n == 1);
    Tidal__V1__TrajectoryGroup *g = NULL;
    CHECK_OK(codec_decode_trajectory_group(parts.buf[0], parts.len[0], &g));
    CHECK(g->part_count == 0 && g->n_trajectories == GROUP_N && codec_group_sample_count(g) == GROUP_N);
    codec_group_msg_id(g, id, sizeof id);
    CHECK_MSG(streq(id, "quick-e0-g000042"), "one-part id %s", id);
    tidal__v1__trajectory_group__free_unpacked(g, NULL);
    const size_t whole = parts.len[0];
    codec_parts_free(&parts);
    CHECK(parts.n == 0 && parts.buf == NULL);

    /* about three trajectories per part: 8 trajectories in 3 parts */
    const size_t one = protobuf_c_message_get_packed_size(MSG(f.t[0].t));
    const size_t max = whole / GROUP_N * 3 + 40;
    CHECK_OK(codec_encode_group_parts(&f.g, max, &parts));
    CHECK_MSG(parts.n == 3, "%zu parts of at most %zu bytes (one trajectory %zu)", parts.n, max, one);
    uint32_t next = 0;
    for (size_t p = 0; p < parts.n; p++) {
        CHECK(parts.len[p] <= max);
        CHECK_OK(codec_decode_trajectory_group(parts.buf[p], parts.len[p], &g));
        bool ok = g->part_index == p && g->part_count == parts.n && g->n_trajectories >= 1;
        for (size_t k = 0; ok && k < g->n_trajectories; k++, next++) ok = g->trajectories[k]->sample_index == next;
        codec_group_msg_id(g, id, sizeof id);
        char want[64];
        snprintf(want, sizeof want, "quick-e0-g000042:1:%zu", p);
        ok = ok && streq(id, want);
        tidal__v1__trajectory_group__free_unpacked(g, NULL);
        CHECK_MSG(ok, "part %zu (id %s)", p, id);
    }
    CHECK(next == GROUP_N);
    codec_parts_free(&parts);

    /* one trajectory per part at the smallest size that holds each */
    CHECK_OK(codec_encode_group_parts(&f.g, one + 80, &parts));
    CHECK(parts.n == GROUP_N);
    codec_parts_free(&parts);
    CHECK_STATUS(codec_encode_group_parts(&f.g, one, &parts), TIDAL_ERR_INVALID);
    CHECK(parts.n == 0 && strstr(tidal_errmsg(), "trajectory g000042.s0 encodes to"));
}

static void test_group_rules(void)
{
    static group_fx f;
    group_init(&f);
    CHECK_OK(codec_validate(MSG(f.g)));
#define GROUP_BAD(mutation, want)    \
    do {                             \
        group_init(&f);              \
        mutation;                    \
        CHECK(rejected(MSG(f.g), want)); \
    } while (0)
    GROUP_BAD(f.g.attempt = 0, "trajectory group g000042: attempt is 0");
    GROUP_BAD(f.g.group_size = 0, "group_size 0 is outside");
    GROUP_BAD(f.g.n_trajectories = 7, "7 trajectories in a one-part answer for 8 samples");
    GROUP_BAD(f.g.n_trajectories = 0, "part 0 holds no trajectory");
    GROUP_BAD((f.g.part_count = 3, f.g.part_index = 3), "part_index 3 is outside 0..2");
    GROUP_BAD((f.g.sample_index = 4, f.g.sample_count = 5), "samples 4..8 are outside the group of 8");
    GROUP_BAD(f.t[3].t.sample_index = 5, "trajectories[5] g000042.s5: sample_index 5 appears twice");
    GROUP_BAD(f.t[6].t.group_id = "g000043", "trajectories[6] g000042.s6: group_id is not the group's");
    GROUP_BAD(f.t[6].t.prompt_id = "other", "prompt_id is not the group's");
    GROUP_BAD(f.t[2].t.worker_id = "host-b.1", "trajectories[2] g000042.s2: worker_id is not the group's");
    GROUP_BAD(f.t[2].t.group_size = 9, "group_size 9, the group's is 8");
    GROUP_BAD(f.t[2].t.eval = 1, "eval differs from the group's");
    GROUP_BAD(f.t[4].logprobs[17] = 0.3f, "trajectory group g000042: trajectories[4] g000042.s4: logprob[17] = 0.3 > 0");
    GROUP_BAD(f.t[1].t.worker_id = "bad worker", "trajectories[1]");
    /* a prompt that asked for samples 2..4: those, in any order, in two parts */
    group_init(&f);
    f.g.sample_index = 2, f.g.sample_count = 3, f.g.part_count = 2, f.g.part_index = 1;
    f.g.trajectories = f.tp + 2, f.g.n_trajectories = 2;
    f.tp[2] = &f.t[4].t;
    f.tp[3] = &f.t[2].t;
    CHECK_OK(codec_validate(MSG(f.g)));
    f.tp[3] = &f.t[5].t;
    CHECK(rejected(MSG(f.g), "sample_index 5 is outside the prompt's samples 2..4"));
    group_init(&f);
    f.g.part_count = 9;
    CHECK(rejected(MSG(f.g), "part_count 9 exceeds the 8 samples"));
#undef GROUP_BAD
}

/* ---------------------------------------------------------------- fuzz seeds */

static int write_seeds(const char *dir)
{
    static samples s;
    samples_init(&s);
    static const char *const names[N_TYPES] = {"prompt",        "trajectory",   "blob_manifest", "weights_manifest",
                                               "env_request",   "env_response", "worker_status", "control",
                                               "metric",        "trajectory_group"};
    for (int i = 0; i < N_TYPES; i++) {
        void *buf;
        size_t len;
        if (codec_encode(s.msgs[i], &buf, &len) != TIDAL_OK) return 1;
        char path[4096];
        snprintf(path, sizeof path, "%s/%d-%s.bin", dir, i, names[i]);
        FILE *f = fopen(path, "wb");
        uint8_t type = (uint8_t)i;
        bool ok = f && fwrite(&type, 1, 1, f) == 1 && fwrite(buf, 1, len, f) == len;
        if (f && fclose(f) != 0) ok = false;
        free(buf);
        if (!ok) { fprintf(stderr, "cannot write %s\n", path); return 1; }
        printf("wrote %s (%zu bytes)\n", path, len + 1);
    }
    return 0;
}

/* Every value proto/tidal.proto declares has its name in proto/enum_names.c:
 * the value's proto name without the enum's prefix, in lower case; a value
 * outside the schema is "unknown". */
static void check_enum_names(const ProtobufCEnumDescriptor *d, const char *prefix, const char *(*name)(int))
{
    const size_t pn = strlen(prefix);
    for (unsigned i = 0; i < d->n_values; i++) {
        const ProtobufCEnumValue *v = &d->values[i];
        char want[64];
        size_t k = 0;
        CHECK_MSG(strncmp(v->name, prefix, pn) == 0, "%s does not start with %s", v->name, prefix);
        for (const char *c = v->name + pn; *c && k + 1 < sizeof want; c++)
            want[k++] = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
        want[k] = 0;
        CHECK_MSG(strcmp(name(v->value), want) == 0, "%s: name \"%s\", want \"%s\"", v->name, name(v->value), want);
    }
    CHECK(strcmp(name(-1), "unknown") == 0);
    CHECK(strcmp(name(1000), "unknown") == 0);
}

static const char *ws_name(int v) { return proto_worker_state_name((Tidal__V1__WorkerState)v); }
static const char *cc_name(int v) { return proto_control_command_name((Tidal__V1__ControlCommand)v); }
static const char *fr_name(int v) { return proto_finish_reason_name((Tidal__V1__FinishReason)v); }
static const char *ts_name(int v) { return proto_trajectory_status_name((Tidal__V1__TrajectoryStatus)v); }
static const char *op_name(int v) { return proto_env_op_name((Tidal__V1__EnvOp)v); }

static void test_enum_names(void)
{
    check_enum_names(&tidal__v1__worker_state__descriptor, "WORKER_STATE_", ws_name);
    check_enum_names(&tidal__v1__control_command__descriptor, "CONTROL_COMMAND_", cc_name);
    check_enum_names(&tidal__v1__finish_reason__descriptor, "FINISH_REASON_", fr_name);
    check_enum_names(&tidal__v1__trajectory_status__descriptor, "TRAJECTORY_STATUS_", ts_name);
    check_enum_names(&tidal__v1__env_op__descriptor, "ENV_OP_", op_name);
    CHECK(strcmp(proto_worker_state_name(TIDAL__V1__WORKER_STATE__WORKER_STATE_QUARANTINED), "quarantined") == 0);
    CHECK(strcmp(proto_control_command_name(TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_STOP), "stop") == 0);
}

int main(void)
{
    const char *seeds = getenv("TIDAL_FUZZ_SEEDS_OUT");
    if (seeds) return write_seeds(seeds);

    RUN(test_every_sample_is_valid);
    RUN(test_prompt_round_trip);
    RUN(test_trajectory_round_trip);
    RUN(test_blob_manifest_round_trip);
    RUN(test_weights_manifest_round_trip);
    RUN(test_env_round_trip);
    RUN(test_worker_control_metric_round_trip);
    RUN(test_typed_decoders);
    RUN(test_group_parts);
    RUN(test_group_rules);
    RUN(test_schema_versions);
    RUN(test_unknown_fields_ignored);
    RUN(test_control_commands);
    RUN(test_random_bytes);
    RUN(test_mutated_encodings);
    RUN(test_truncated_encodings);
    RUN(test_wrong_message_type);
    RUN(test_prompt_rules);
    RUN(test_trajectory_rules);
    RUN(test_blob_manifest_rules);
    RUN(test_weights_manifest_rules);
    RUN(test_env_rules);
    RUN(test_worker_control_metric_rules);
    RUN(test_map_limit);
    RUN(test_encode_empty_message);
    RUN(test_versions_rle);
    RUN(test_enum_names);
    return check_summary();
}
