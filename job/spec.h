/* spec.h - the job spec: a YAML file, fully validated, with --set overrides.
 *
 * Every key the spec accepts is one row of a table (spec.c): its dotted path
 * (`trainer.lr`), type, default, range or allowed values, and a line of
 * documentation; docs/configuration.md lists the same rows, and a test keeps
 * the two equal. A file is read with libyaml; an unknown key, a value of the
 * wrong type, out of range or not among the allowed names is an error naming
 * FILE:LINE and the key path (exit 2 at the CLI). `--set a.b=value` applies
 * after the file, with the same checks. The effective spec converts to JSON
 * (the copy in the run directory and in the job's KV bucket, which rollout
 * workers read) and back.
 *
 * Sections (docs/design.md "The job spec"): job, bus, model, data, env, rollout, buffer,
 * trainer, weights, eval.
 */
#ifndef TIDAL_JOB_SPEC_H
#define TIDAL_JOB_SPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

#define SPEC_STR 256 /* the longest string value, bytes with the terminator */

typedef struct job_spec {
    struct {
        char name[128];   /* the job's name: subjects tidal.<name>.*, streams TIDAL_<name>_* */
    } job;
    struct {
        char url[SPEC_STR]; /* empty: tidal run starts a private nats-server */
        char user[SPEC_STR], password[SPEC_STR], token[SPEC_STR], creds[SPEC_STR];
        char tls_ca[SPEC_STR], tls_cert[SPEC_STR], tls_key[SPEC_STR];
        int replicas;          /* copies of the job's streams and buckets; 0: 3 on a 3-node cluster, else 1 */
    } bus;
    struct {
        char path[SPEC_STR]; /* a Hugging Face directory, or empty with init */
        struct {
            bool on;          /* set when any model.init key is given */
            char arch[16];    /* qwen2 | llama */
            int layers, hidden, heads, kv_heads, ffn, vocab;
            int64_t seed;
            double std;
            char alphabet[SPEC_STR]; /* non-empty: the alphabet tokenizer over these bytes */
            char tokenizer[SPEC_STR]; /* non-empty: a tokenizer.json (or a directory holding one) */
        } init;
    } model;
    struct {
        char path[SPEC_STR];   /* JSONL file, or empty with a generator */
        char prompt_key[64], answer_key[64];
        char template_[16];    /* chatml | llama3 | plain | none | auto */
        char generator[32];    /* a built-in env's generator (arith, strings, guess), or empty */
        int64_t seed;
        bool shuffle;
        int epochs;
        double eval_fraction;  /* held-out share of the rows (or generated tasks) */
        int eval_size;         /* generated tasks held out, with a generator */
    } data;
    struct {
        char name[128];        /* the environment: a built-in, or one served on the bus */
        bool remote;           /* call it over the bus (tidal.env.<name>) rather than in-process */
        int timeout_ms, retries;
        int missing_timeout_s; /* stop the job when the env fails on every worker this long; 0 = never */
        char *config_json;     /* env.config as JSON text (heap; NULL when absent: {}) */
    } env;
    struct {
        int workers;           /* rollout processes tidal run starts */
        char backend[16];      /* builtin | openai */
        char endpoints[2048];  /* backend openai: the servers' base URLs, comma-separated */
        char dialect[16];      /* vllm | sglang */
        char weights_dir[SPEC_STR]; /* backend openai: where the sidecar writes versions for its servers */
        int connect_timeout_ms, request_timeout_ms, retries, in_flight;
        int group_size, max_tokens, slots;
        int max_batch;         /* sequences a worker holds in flight across groups; 0 = group_size */
        char device[8];        /* auto | cpu | cuda: where the built-in engine runs */
        double temperature, top_p;
        int top_k;
        int ack_wait_ms;       /* a silent worker's prompt is redelivered after this */
        char weights[16];      /* newest | oldest: the weights a worker generates with */
    } rollout;
    struct {
        int max_staleness;     /* K */
        char sampling[16];     /* fifo | newest | uniform | priority */
        double priority_temperature; /* priority: softmax over group mean reward / this */
        int reuse;             /* times a group may be trained */
        bool filter_zero_variance;
        int capacity;          /* groups held at most */
    } buffer;
    struct {
        char device[8];        /* auto | cpu | cuda */
        char precision[8];     /* auto | bf16 | fp32 (the CPU: fp32 only) */
        int steps, groups_per_step, micro_batch_tokens;
        double lr, weight_decay, grad_clip, beta1, beta2;
        double grad_spike;     /* spike clipping: x the recent gradient norms (0: off) */
        int warmup_steps;
        char lr_schedule[16];  /* constant | cosine */
        double lr_min_ratio;   /* cosine: the floor as a fraction of lr */
        char advantage[16];    /* grpo | drgrpo | rloo | reinforce_pp */
        char loss[16];         /* ppo | cispo | gspo | m2po */
        char correction[16];   /* none | tis | tis_seq | mis | mis_seq | bypass */
        char proximal[16];     /* recompute | loglinear */
        char loss_agg[32];     /* auto | token-mean | seq-mean-token-mean | seq-mean-token-sum-norm */
        double loss_agg_norm;  /* seq-mean-token-sum-norm's constant; 0: rollout.max_tokens */
        int minibatches;       /* optimizer updates per step */
        double eps_lo, eps_hi; /* -1: the loss's own */
        double dual_clip, tis_c, mis_lo, mis_hi, m2po_tau, kl, kl_reward;
        char m2po_candidates[16]; /* harmful | all */
        char stale_weight[16]; /* none | poly | hinge */
        double stale_a, stale_b;
        int overlong_buffer;
        double overlong_factor;
        int checkpoint_every, checkpoint_keep;
        int64_t seed;
        struct {
            bool enabled;      /* quarantine workers whose log-probabilities disagree */
            double threshold;  /* mean k3 per scored token */
            int window;        /* scored steps in a row above it */
            int min_tokens;    /* scored tokens a step needs to count for a worker */
        } worker_check;
    } trainer;
    struct {
        char transport[8];     /* bus | http | dir */
        char dtype[8];         /* f32 | bf16 */
        char http_bind[SPEC_STR]; /* transport http: "IPv4:port" the trainer serves on */
        char http_url[SPEC_STR];  /* transport http: base URL for workers; empty: from http_bind */
        int http_timeout_ms;      /* transport http: a fetch without progress this long falls back to the bus */
        int http_parallel;        /* transport http: Range requests (connections) per fetch */
        int keep;              /* newest versions kept */
        char dir[SPEC_STR];    /* transport dir: the shared directory of step_<version>/ */
        bool delta;            /* transport bus: versions as compressed deltas (model/delta.h) */
        int full_every;        /* weights.delta: a full image at least this often */
        char signing_key[SPEC_STR]; /* PEM file of the trainer's Ed25519 key; empty: RUN/weights_signing_key.pem */
        char public_key[SPEC_STR];  /* "ed25519:<hex>" the weights must be signed with; empty: the job's KV key */
    } weights;
    struct {
        int every;             /* steps between evaluations; 0 = never */
        int pass_k;            /* 1 = pass@1 only */
        int max_prompts;       /* 0 = the whole held-out split */
    } eval;
    struct {
        char bind[64];          /* the address every role's /metrics listens on */
        int controller_port, trainer_port; /* 0: off; -1: any free port (logged) */
        bool tensorboard;       /* the controller writes RUN/tb/events.out.tfevents.* */
    } metrics;
} job_spec;

/* Overwrite *s with the defaults (every key's default value). The defaults
 * own no memory, so a spec that holds only them needs no release. */
void spec_defaults(job_spec *s);
/* Release what the spec owns (env.config_json); the spec is then defaults-free. */
void spec_release(job_spec *s);

/* Read and validate FILE; then apply the n `--set` overrides ("a.b=value").
 * TIDAL_ERR_INVALID (or TIDAL_ERR_IO for a file that cannot be read) with
 * "FILE:LINE: key.path: what is wrong" or "--set key.path: ...". On error *s
 * holds the defaults. */
tidal_status spec_load(const char *file, const char *const *sets, int n_sets, job_spec *s);
/* The same from YAML text; `name` stands for the file in messages. */
tidal_status spec_parse(const char *yaml, size_t len, const char *name, const char *const *sets, int n_sets,
                        job_spec *s);

/* The spec's local files, checked before anything starts (`tidal run` runs
 * every role here; a spec read elsewhere, by a worker on another machine,
 * names paths of the machine that runs the role, so spec_load does not look):
 * model.path is a directory with a config.json, model.init.tokenizer a
 * readable file or a directory holding a readable tokenizer.json, data.path
 * a readable file.
 * TIDAL_ERR_INVALID with "NAME: key: path: what is wrong". */
tidal_status spec_check_paths(const job_spec *s, const char *name);

/* The effective spec as a JSON object (every key, defaults included), and
 * back (the same checks: a worker refuses a spec it cannot honour). */
json_t *spec_to_json(const job_spec *s);
tidal_status spec_from_json(const json_t *o, const char *name, job_spec *s);

/* The table of keys, for docs and tools: n rows, each path / type / default
 * / allowed (a range or the names) / doc. */
typedef struct spec_key_info {
    const char *path, *type, *def, *allowed, *doc;
} spec_key_info;
int spec_keys(const spec_key_info **out);

#endif
