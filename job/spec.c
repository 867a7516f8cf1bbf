/* spec.c - the job spec (see spec.h): one table of keys drives the defaults,
 * the YAML reader, --set, the JSON form and docs/configuration.md.
 *
 * Every value, wherever it comes from (a default, a YAML scalar, a --set, a
 * JSON member), goes through set_value() as text, so there is one parser and
 * one set of checks per type. YAML is read with libyaml's document API,
 * which keeps each node's line for the messages.
 */
#include "job/spec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "proto/codec.h"

typedef enum { K_STR, K_ENUM, K_INT, K_I64, K_DBL, K_BOOL, K_JSON } kind;

typedef struct key {
    const char *path;
    kind k;
    size_t off, cap;    /* where in job_spec; cap: bytes of a string field */
    double min, max;    /* numbers */
    const char *allowed; /* K_ENUM: "a|b|c" */
    const char *def;
    const char *doc;
} key;

#define F(field) offsetof(job_spec, field), sizeof(((job_spec *)0)->field)
#define STR(p, field, def, doc) {p, K_STR, F(field), 0, 0, NULL, def, doc}
#define ENUM(p, field, allowed, def, doc) {p, K_ENUM, F(field), 0, 0, allowed, def, doc}
#define INT(p, field, lo, hi, def, doc) {p, K_INT, F(field), lo, hi, NULL, def, doc}
#define I64(p, field, def, doc) {p, K_I64, F(field), 0, 0, NULL, def, doc}
#define DBL(p, field, lo, hi, def, doc) {p, K_DBL, F(field), lo, hi, NULL, def, doc}
#define BOOL(p, field, def, doc) {p, K_BOOL, F(field), 0, 0, NULL, def, doc}

static const key KEYS[] = {
    STR("job.name", job.name, "", "the job's name (required): subjects tidal.NAME.*, streams TIDAL_NAME_*; [A-Za-z0-9_-]"),
    STR("bus.url", bus.url, "", "NATS URL(s), comma separated; empty: `tidal run` starts a private nats-server"),
    STR("bus.user", bus.user, "", "user for user/password authentication"),
    STR("bus.password", bus.password, "", "password for user/password authentication"),
    STR("bus.token", bus.token, "", "token authentication"),
    STR("bus.creds", bus.creds, "", "a NATS .creds file (JWT and nkey seed), or a user nkey seed file (`tidal creds`)"),
    STR("bus.tls_ca", bus.tls_ca, "", "PEM CA file; any tls_* key turns TLS on"),
    STR("bus.tls_cert", bus.tls_cert, "", "client certificate for mutual TLS (with tls_key)"),
    STR("bus.tls_key", bus.tls_key, "", "client key for mutual TLS"),
    INT("bus.replicas", bus.replicas, 0, 5, "0", "copies of every stream and KV bucket the job creates, on a JetStream cluster (1, 3 or 5; 0: 3 when the cluster has 3 or more nodes, else 1)"),
    STR("model.path", model.path, "", "a Hugging Face model directory (config.json, safetensors, tokenizer.json); or model.init"),
    ENUM("model.init.arch", model.init.arch, "qwen2|llama", "qwen2", "the architecture of a tiny model initialised from scratch"),
    INT("model.init.layers", model.init.layers, 1, 256, "2", "decoder layers of the tiny model"),
    INT("model.init.hidden", model.init.hidden, 8, 65536, "64", "hidden size (a multiple of heads)"),
    INT("model.init.heads", model.init.heads, 1, 256, "4", "query heads"),
    INT("model.init.kv_heads", model.init.kv_heads, 1, 256, "2", "key-value heads (divides heads)"),
    INT("model.init.ffn", model.init.ffn, 1, 1 << 20, "256", "MLP intermediate size"),
    INT("model.init.vocab", model.init.vocab, 2, 1 << 20, "272", "vocabulary: 256 bytes + specials for the built-in byte tokenizer"),
    I64("model.init.seed", model.init.seed, "0", "seed of the initial weights"),
    DBL("model.init.std", model.init.std, 1e-6, 1.0, "0.02", "standard deviation of the initial weights"),
    STR("model.init.alphabet", model.init.alphabet, "", "a character-level tokenizer over these bytes (plus 3 specials) instead of the byte-level one; empty: byte-level"),
    STR("model.init.tokenizer", model.init.tokenizer, "", "a Hugging Face tokenizer.json, or a directory holding it and tokenizer_config.json: the tiny model's tokenizer (vocab raised to its size, eos/bos and chat template from it); empty: byte-level or alphabet"),
    STR("data.path", data.path, "", "a JSONL dataset, one row per line; or data.generator"),
    STR("data.prompt_key", data.prompt_key, "prompt", "the row's field holding the prompt text"),
    STR("data.answer_key", data.answer_key, "answer", "the row's field the environment scores against"),
    ENUM("data.template", data.template_, "auto|chatml|llama3|plain|none", "auto", "chat template; auto: from tokenizer_config.json; none: the bare prompt and a newline"),
    STR("data.generator", data.generator, "", "a built-in env that generates tasks (arith, strings, guess); or data.path"),
    I64("data.seed", data.seed, "0", "seed of shuffling and generated tasks"),
    BOOL("data.shuffle", data.shuffle, "true", "shuffle the rows each epoch"),
    INT("data.epochs", data.epochs, 1, 1000000, "1", "passes over the dataset"),
    DBL("data.eval_fraction", data.eval_fraction, 0, 0.5, "0", "share of the dataset's rows held out for evaluation"),
    INT("data.eval_size", data.eval_size, 0, 1000000, "64", "generated tasks held out for evaluation (with a generator)"),
    STR("env.name", env.name, "", "the environment (required): a built-in (`tidal env list`) or one served on the bus"),
    BOOL("env.remote", env.remote, "false", "call the environment over the bus (tidal.env.NAME) rather than in-process"),
    INT("env.timeout_ms", env.timeout_ms, 1, 3600000, "10000", "per request; then retried"),
    INT("env.retries", env.retries, 0, 100, "2", "retries of a failed or timed-out request"),
    INT("env.missing_timeout_s", env.missing_timeout_s, 0, 86400, "60",
        "stop the job when the env has failed on every worker this long (no instance running, or an error on every "
        "call); 0 = wait for it, reporting every 10 s"),
    {"env.config", K_JSON, offsetof(job_spec, env.config_json), 0, 0, 0, NULL, "{}",
     "the environment's configuration, any mapping (the keys of each built-in env: docs/environments.md)"},
    INT("rollout.workers", rollout.workers, 0, 4096, "1", "rollout processes `tidal run` starts (more may join)"),
    ENUM("rollout.backend", rollout.backend, "builtin|openai", "builtin", "generation: the built-in engine, or inference servers over HTTP (vLLM, SGLang, `tidal serve`; docs/inference.md)"),
    STR("rollout.endpoints", rollout.endpoints, "", "backend openai: the inference servers' base URLs, comma-separated (a worker's `--endpoints` overrides; docs/inference.md)"),
    ENUM("rollout.dialect", rollout.dialect, "vllm|sglang", "vllm", "backend openai: the servers' API, vLLM's /v1/completions or SGLang's /generate"),
    STR("rollout.weights_dir", rollout.weights_dir, "", "backend openai: where a worker writes each version for its servers to load (empty: /tmp/tidal-sidecar-WORKER)"),
    INT("rollout.connect_timeout_ms", rollout.connect_timeout_ms, 1, 3600000, "5000", "backend openai: connecting to a server"),
    INT("rollout.request_timeout_ms", rollout.request_timeout_ms, 1, 86400000, "600000", "backend openai: one generation request, end to end"),
    INT("rollout.retries", rollout.retries, 0, 100, "3", "backend openai: a request retried after a connection error, a 5xx or an abort"),
    INT("rollout.in_flight", rollout.in_flight, 1, 65536, "64", "backend openai: requests on the wire at once per worker"),
    INT("rollout.group_size", rollout.group_size, 1, 65536, "8", "samples per prompt (G)"),
    INT("rollout.max_tokens", rollout.max_tokens, 1, 1 << 20, "256", "completion budget per sample, environment tokens included"),
    INT("rollout.slots", rollout.slots, 1, 4096, "32", "sequences a worker's engine runs at once"),
    INT("rollout.max_batch", rollout.max_batch, 0, 1 << 20, "0", "sequences a worker holds in flight across prompts: it takes another prompt while those in flight plus a group fit (0: the group size - one group at a time). Built-in engine, rollout.weights newest; keep rollout.slots >= it"),
    ENUM("rollout.device", rollout.device, "auto|cpu|cuda", "cpu", "where the built-in engine runs: cpu, cuda (the GPU engine, after its start-up self-check), or auto (cuda when the build has CUDA and a GPU answers, else cpu)"),
    DBL("rollout.temperature", rollout.temperature, 0, 10, "1.0", "sampling temperature (0: greedy)"),
    DBL("rollout.top_p", rollout.top_p, 0, 1, "1.0", "nucleus sampling (1: off)"),
    INT("rollout.top_k", rollout.top_k, 0, 1 << 20, "0", "top-k sampling (0: off)"),
    ENUM("rollout.weights", rollout.weights, "newest|oldest", "newest", "the weights a worker generates with: the newest it has (swapped in mid-generation), or the oldest the staleness bound allows (stress tests and staleness studies: every sample about K versions old; holds K + 2 models)"),
    INT("rollout.ack_wait_ms", rollout.ack_wait_ms, 100, 3600000, "30000", "a prompt whose worker went silent this long is redelivered"),
    INT("buffer.max_staleness", buffer.max_staleness, 0, 1000000, "2", "K: a trained token is at most K versions old (0: on-policy)"),
    ENUM("buffer.sampling", buffer.sampling, "fifo|newest|uniform|priority", "fifo", "which complete groups a step takes: oldest first, newest first, uniformly, or by reward (softmax over the group's mean reward)"),
    DBL("buffer.priority_temperature", buffer.priority_temperature, 1e-9, 1e9, "1.0", "temperature of the priority softmax: small favours high reward, large is uniform"),
    INT("buffer.reuse", buffer.reuse, 1, 1000, "1", "times a group may be trained (replay); each use stays within max_staleness"),
    BOOL("buffer.filter_zero_variance", buffer.filter_zero_variance, "false", "drop groups whose rewards are all equal (DAPO)"),
    INT("buffer.capacity", buffer.capacity, 1, 1 << 24, "1024", "complete groups held at most"),
    ENUM("trainer.device", trainer.device, "auto|cpu|cuda", "cpu", "where the trainer runs: cpu, cuda (a GPU that passes the start-up self-check), or auto (cuda when the build has CUDA and a GPU answers, else cpu)"),
    ENUM("trainer.precision", trainer.precision, "auto|bf16|fp32", "auto", "what the trainer computes in: auto (bf16 on cuda, fp32 on the CPU), bf16 (cuda only: bf16 weights copy and activations, fp32 master weights, AdamW moments, norm statistics and log-softmax), fp32 (TF32 off: the CPU's arithmetic, for parity)"),
    INT("trainer.steps", trainer.steps, 1, 1 << 30, "100", "optimizer steps (the final version)"),
    INT("trainer.groups_per_step", trainer.groups_per_step, 1, 1 << 20, "8", "B: groups per optimizer step"),
    INT("trainer.micro_batch_tokens", trainer.micro_batch_tokens, 16, 1 << 24, "8192", "tokens per forward/backward micro-batch"),
    DBL("trainer.lr", trainer.lr, 0, 1, "1e-6", "AdamW learning rate"),
    INT("trainer.warmup_steps", trainer.warmup_steps, 0, 1 << 30, "0", "linear warm-up of the learning rate"),
    ENUM("trainer.lr_schedule", trainer.lr_schedule, "constant|cosine", "constant", "after the warm-up: constant, or a cosine decay to lr_min_ratio x lr at trainer.steps"),
    DBL("trainer.lr_min_ratio", trainer.lr_min_ratio, 0, 1, "0.1", "cosine: the final learning rate as a fraction of trainer.lr"),
    DBL("trainer.weight_decay", trainer.weight_decay, 0, 1, "0.0", "AdamW weight decay"),
    DBL("trainer.beta1", trainer.beta1, 0, 0.999999, "0.9", "AdamW beta1"),
    DBL("trainer.beta2", trainer.beta2, 0, 0.999999, "0.999", "AdamW beta2"),
    DBL("trainer.grad_clip", trainer.grad_clip, 0, 1e9, "1.0", "global gradient-norm clip (0: off)"),
    DBL("trainer.grad_spike", trainer.grad_spike, 0, 1e9, "3.0", "spike clipping: an update's gradient norm at most this x the running mean of the last ~10 (0: off; docs/training.md)"),
    ENUM("trainer.advantage", trainer.advantage, "grpo|drgrpo|rloo|reinforce_pp", "grpo", "advantage estimator (docs/training.md)"),
    ENUM("trainer.loss", trainer.loss, "ppo|cispo|gspo|m2po", "ppo", "policy loss: ppo-clip; cispo (clipped ratio as a weight, every token keeps a gradient); gspo (sequence ratio); m2po (second-moment masking, for very stale data)"),
    ENUM("trainer.correction", trainer.correction, "none|tis|tis_seq|mis|mis_seq|bypass", "tis", "behaviour-policy correction (decoupled PPO): token / sequence truncated IS, token / sequence masked IS, or bypass (ratio on the behaviour policy, no recompute)"),
    ENUM("trainer.proximal", trainer.proximal, "recompute|loglinear", "recompute", "the proximal policy with minibatches > 1: a recompute pass, or AReaL's log-linear interpolation from per-token versions (no pass)"),
    INT("trainer.minibatches", trainer.minibatches, 1, 65536, "1", "optimizer updates per step, by whole groups (PPO mini-batches); one weight version per step"),
    ENUM("trainer.loss_agg", trainer.loss_agg, "auto|token-mean|seq-mean-token-mean|seq-mean-token-sum-norm", "auto", "how token losses become one number; auto: gspo seq-mean-token-mean, the others token-mean"),
    DBL("trainer.loss_agg_norm", trainer.loss_agg_norm, 0, 1e9, "0", "seq-mean-token-sum-norm's constant (Dr. GRPO); 0: rollout.max_tokens"),
    DBL("trainer.eps_lo", trainer.eps_lo, -1, 1, "-1", "clip below 1 (ratio >= 1 - eps_lo); -1: the loss's own (ppo 0.2, cispo 1 = no bound, gspo 3e-4)"),
    DBL("trainer.eps_hi", trainer.eps_hi, -1, 10, "-1", "clip above 1; -1: the loss's own (ppo 0.2, cispo 0.28, gspo 4e-4; DAPO clip-higher 0.28)"),
    DBL("trainer.dual_clip", trainer.dual_clip, 0, 1e6, "0", "dual clip c > 1 caps the loss at -c A when A < 0 (ppo, gspo; usual 3; 0: off)"),
    DBL("trainer.tis_c", trainer.tis_c, 1, 1e6, "2.0", "truncation of the importance weight (tis, tis_seq)"),
    DBL("trainer.mis_lo", trainer.mis_lo, 0, 1e6, "0", "masked IS: tokens (mis) or sequences (mis_seq) with a weight below this are dropped"),
    DBL("trainer.mis_hi", trainer.mis_hi, 0, 1e6, "5", "masked IS: weights above this are dropped"),
    DBL("trainer.m2po_tau", trainer.m2po_tau, 1e-12, 1e6, "0.04", "m2po: bound on the mean squared log-ratio to the behaviour policy of the kept tokens"),
    ENUM("trainer.m2po_candidates", trainer.m2po_candidates, "harmful|all", "harmful", "m2po: tokens that may be masked: those whose ratio pushes with the advantage (the paper), or all (AReaL)"),
    DBL("trainer.kl", trainer.kl, 0, 10, "0.0", "beta of k3(lθ - lref) in the loss, to the initial weights held by the trainer (0: off)"),
    DBL("trainer.kl_reward", trainer.kl_reward, 0, 10, "0.0", "beta of k1 = Σ (lbeh - lref) subtracted from each reward (0: off)"),
    ENUM("trainer.stale_weight", trainer.stale_weight, "none|poly|hinge", "none", "weight samples by staleness s: (1+s)^-a, or 1 up to b then 1/(a(s-b)+1); renormalised to mean 1"),
    DBL("trainer.stale_a", trainer.stale_a, 0, 1e6, "0.5", "staleness weighting: poly exponent / hinge slope"),
    DBL("trainer.stale_b", trainer.stale_b, 0, 1e9, "0", "staleness weighting: hinge knee (versions)"),
    INT("trainer.overlong_buffer", trainer.overlong_buffer, 0, 1 << 20, "0", "DAPO overlong shaping: the last this many tokens of rollout.max_tokens cost up to overlong_factor of reward (0: off)"),
    DBL("trainer.overlong_factor", trainer.overlong_factor, 0, 1e6, "1.0", "DAPO overlong shaping: the penalty at rollout.max_tokens"),
    INT("trainer.checkpoint_every", trainer.checkpoint_every, 0, 1 << 30, "50", "steps between checkpoints (0: only at the end)"),
    INT("trainer.checkpoint_keep", trainer.checkpoint_keep, 1, 1000, "2", "newest checkpoints kept"),
    I64("trainer.seed", trainer.seed, "0", "the trainer's RNG seed"),
    BOOL("trainer.worker_check.enabled", trainer.worker_check.enabled, "true", "quarantine a rollout worker whose log-probabilities keep disagreeing with the trainer's at the same weights (docs/training.md \"Worker checks\"); off: measured only"),
    DBL("trainer.worker_check.threshold", trainer.worker_check.threshold, 1e-9, 10, "0.03", "a worker's mean k3 per token above the honest baseline (0 at its own version, the workers' median at older ones) above which its step counts against it"),
    INT("trainer.worker_check.window", trainer.worker_check.window, 1, 1 << 20, "5", "counted steps in a row above the threshold that quarantine a worker"),
    INT("trainer.worker_check.min_tokens", trainer.worker_check.min_tokens, 1, 1 << 30, "16", "scored tokens a worker needs in a step for the step to count"),
    ENUM("weights.transport", weights.transport, "bus|http|dir", "bus", "how new weights reach workers: chunked blobs on the bus, the trainer's HTTP server (with the bus copy as fallback; docs/protocol.md \"Weights over HTTP\"), or a Hugging Face directory per version under weights.dir (a shared filesystem)"),
    ENUM("weights.dtype", weights.dtype, "f32|bf16", "f32", "the published weights' dtype"),
    STR("weights.http_bind", weights.http_bind, "127.0.0.1:0", "transport http: IPv4 address:port the trainer's weights server listens on (port 0: a free one); a bind beyond loopback needs a token (TIDAL_WEIGHTS_HTTP_TOKEN or _FILE in the environment)"),
    STR("weights.http_url", weights.http_url, "", "transport http: the base URL workers fetch from (http://host:port), for a bind they cannot reach as such (0.0.0.0, NAT); empty: from weights.http_bind (0.0.0.0: this host's name)"),
    INT("weights.http_timeout_ms", weights.http_timeout_ms, 100, 600000, "10000", "transport http: a worker gives up on a fetch that brings no byte for this long (or cannot connect) and takes the bus copy"),
    INT("weights.http_parallel", weights.http_parallel, 1, 64, "4", "transport http: Range requests (connections) a worker fetches an image with at once, each a contiguous run of its chunks"),
    INT("weights.keep", weights.keep, 1, 1000, "2", "newest weight versions kept on the bus (or in weights.dir)"),
    STR("weights.dir", weights.dir, "", "transport dir: the shared directory the trainer writes each version into as step_<version>/ (config.json, model.safetensors, tokenizer files); every worker must see it at this path"),
    BOOL("weights.delta", weights.delta, "false", "transport bus: send a version as the zstd-compressed XOR of its image with the previous one (docs/protocol.md \"Delta versions\")"),
    INT("weights.full_every", weights.full_every, 1, 100000, "10", "weights.delta: a full image at least every this many versions (also whenever the deltas since the last one outweigh an image)"),
    STR("weights.signing_key", weights.signing_key, "", "PEM file of the trainer's Ed25519 key that signs every weights manifest; empty: one made per job in RUN/weights_signing_key.pem"),
    STR("weights.public_key", weights.public_key, "", "ed25519:<64 hex> that the weights must be signed with (the trainer checks its key, workers verify with it); empty: the key the trainer put in the job's KV"),
    INT("eval.every", eval.every, 0, 1 << 30, "0", "steps between evaluations on the held-out split (0: never)"),
    INT("eval.pass_k", eval.pass_k, 1, 1024, "1", "samples per prompt for pass@k (1: greedy pass@1 only)"),
    INT("eval.max_prompts", eval.max_prompts, 0, 1 << 24, "0", "held-out prompts per evaluation (0: all)"),
    STR("metrics.bind", metrics.bind, "127.0.0.1", "the IPv4 address the roles' Prometheus endpoints (/metrics) listen on (docs/metrics.md)"),
    INT("metrics.controller_port", metrics.controller_port, -1, 65535, "0", "the controller's /metrics port (0: off; -1: any free port, logged)"),
    INT("metrics.trainer_port", metrics.trainer_port, -1, 65535, "0", "the trainer's /metrics port (0: off; -1: any free port, logged); a worker's is `tidal rollout --metrics-port`"),
    BOOL("metrics.tensorboard", metrics.tensorboard, "true", "write TensorBoard event files under RUN/tb/ (`tensorboard --logdir RUN/tb`; docs/tensorboard.md)"),
};
#define N_KEYS (int)(sizeof KEYS / sizeof KEYS[0])

static const char *kind_name(kind k)
{
    switch (k) {
    case K_STR: return "string";
    case K_ENUM: return "name";
    case K_INT:
    case K_I64: return "integer";
    case K_DBL: return "number";
    case K_BOOL: return "boolean";
    case K_JSON: return "mapping";
    }
    return "?";
}

/* ---------------------------------------------------------------- one value */

static const key *find_key(const char *path)
{
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].path, path)) return &KEYS[i];
    return NULL;
}

/* The key with the nearest path, for "did you mean": same last word, or the
 * same section and a shared prefix. */
static const key *nearest_key(const char *path)
{
    const char *last = strrchr(path, '.');
    last = last ? last + 1 : path;
    for (int i = 0; i < N_KEYS; i++) {
        const char *kl = strrchr(KEYS[i].path, '.');
        if (kl && !strcmp(kl + 1, last)) return &KEYS[i];
    }
    size_t best = 0;
    const key *b = NULL;
    for (int i = 0; i < N_KEYS; i++) {
        size_t n = 0;
        while (path[n] && path[n] == KEYS[i].path[n]) n++;
        if (n > best && n >= 4) best = n, b = &KEYS[i];
    }
    return b;
}

static bool in_list(const char *allowed, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = allowed; *p;) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

/* Set key k of s from text; on failure the reason goes to err. */
static int set_value(const key *k, const char *text, job_spec *s, char *err, size_t cap)
{
    char *at = (char *)s + k->off;
    switch (k->k) {
    case K_STR:
    case K_ENUM:
        if (strlen(text) >= k->cap) {
            snprintf(err, cap, "is %zu bytes long (at most %zu)", strlen(text), k->cap - 1);
            return -1;
        }
        if (k->k == K_ENUM && !in_list(k->allowed, text)) {
            snprintf(err, cap, "\"%.64s\" is not one of %s", text, k->allowed);
            return -1;
        }
        snprintf(at, k->cap, "%s", text);
        return 0;
    case K_INT:
    case K_I64: {
        errno = 0;
        char *end = NULL;
        long long v = strtoll(text, &end, 10);
        if (!*text || *end || errno) {
            snprintf(err, cap, "\"%.64s\" is not an integer", text);
            return -1;
        }
        if (k->k == K_INT) {
            if (v < (long long)k->min || v > (long long)k->max) {
                snprintf(err, cap, "%lld is out of range [%lld, %lld]", v, (long long)k->min, (long long)k->max);
                return -1;
            }
            *(int *)at = (int)v;
        } else {
            *(int64_t *)at = (int64_t)v;
        }
        return 0;
    }
    case K_DBL: {
        errno = 0;
        char *end = NULL;
        double v = strtod(text, &end);
        if (!*text || *end || errno == ERANGE || !isfinite(v)) {
            snprintf(err, cap, "\"%.64s\" is not a finite number", text);
            return -1;
        }
        if (v < k->min || v > k->max) {
            snprintf(err, cap, "%g is out of range [%g, %g]", v, k->min, k->max);
            return -1;
        }
        *(double *)at = v;
        return 0;
    }
    case K_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on")) *(bool *)at = true;
        else if (!strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off")) *(bool *)at = false;
        else {
            snprintf(err, cap, "\"%.64s\" is not true or false", text);
            return -1;
        }
        return 0;
    case K_JSON: {
        json_error_t je;
        json_t *o = json_loads(text, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(o)) {
            json_decref(o);
            snprintf(err, cap, "is not a mapping");
            return -1;
        }
        char *t = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        if (!t) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        free(*(char **)at);
        *(char **)at = t;
        return 0;
    }
    }
    return -1;
}

void spec_release(job_spec *s)
{
    free(s->env.config_json);
    s->env.config_json = NULL;
}

void spec_defaults(job_spec *s)
{
    memset(s, 0, sizeof *s);
    char err[256];
    for (int i = 0; i < N_KEYS; i++) {
        if (KEYS[i].k == K_JSON) continue; /* NULL stands for {}: the defaults own no memory */
        int rc = set_value(&KEYS[i], KEYS[i].def, s, err, sizeof err);
        (void)rc;
        if (rc != 0) abort(); /* a default that fails its own rule is a bug in the table */
    }
    s->model.init.on = false;
}

/* ---------------------------------------------------------------- YAML */

typedef struct reader {
    yaml_document_t *doc;
    const char *name;
    job_spec *s;
    bool seen[sizeof KEYS / sizeof KEYS[0]];
    int line_of[sizeof KEYS / sizeof KEYS[0]];
} reader;

static tidal_status bad_at(const reader *r, const yaml_node_t *n, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static tidal_status bad_at(const reader *r, const yaml_node_t *n, const char *path, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s:%zu: %s%s%s", r->name, n ? n->start_mark.line + 1 : 0, path,
                      *path ? ": " : "", text);
}

/* A YAML subtree as JSON (env.config): plain scalars that read as numbers,
 * booleans or null become those; quoted ones stay strings. */
static json_t *node_json(yaml_document_t *d, yaml_node_t *n, int depth)
{
    if (!n || depth > 64) return NULL;
    if (n->type == YAML_SCALAR_NODE) {
        const char *v = (const char *)n->data.scalar.value;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
            if (!strcmp(v, "true")) return json_true();
            if (!strcmp(v, "false")) return json_false();
            if (!strcmp(v, "null") || !strcmp(v, "~") || !*v) return json_null();
            char *end = NULL;
            errno = 0;
            long long i = strtoll(v, &end, 10);
            if (*v && !*end && !errno) return json_integer(i);
            double x = strtod(v, &end);
            if (*v && !*end && isfinite(x)) return json_real(x);
        }
        return json_stringn(v, n->data.scalar.length);
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        json_t *a = json_array();
        for (yaml_node_item_t *it = n->data.sequence.items.start; a && it < n->data.sequence.items.top; it++) {
            json_t *e = node_json(d, yaml_document_get_node(d, *it), depth + 1);
            if (!e) {
                json_decref(a);
                return NULL;
            }
            json_array_append_new(a, e);
        }
        return a;
    }
    json_t *o = json_object();
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; o && p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(d, p->key);
        json_t *v = node_json(d, yaml_document_get_node(d, p->value), depth + 1);
        if (!kn || kn->type != YAML_SCALAR_NODE || !v || json_object_get(o, (const char *)kn->data.scalar.value)) {
            json_decref(v);
            json_decref(o);
            return NULL;
        }
        json_object_set_new(o, (const char *)kn->data.scalar.value, v);
    }
    return o;
}

static tidal_status read_mapping(reader *r, yaml_node_t *m, const char *prefix, int depth);

static tidal_status read_value(reader *r, yaml_node_t *kn, yaml_node_t *vn, const char *path, int depth)
{
    const key *k = find_key(path);
    if (k && k->k == K_JSON) {
        if (vn->type != YAML_MAPPING_NODE)
            return bad_at(r, vn, path, "a mapping is expected, not %s",
                          vn->type == YAML_SCALAR_NODE ? "a scalar" : "a list");
        json_t *o = node_json(r->doc, vn, 0);
        if (!o) return bad_at(r, vn, path, "a key is not a string, or is given twice, or nesting is deeper than 64");
        char *t = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", r->name);
        free(r->s->env.config_json);
        r->s->env.config_json = t;
    } else if (vn->type == YAML_MAPPING_NODE) {
        if (k) return bad_at(r, vn, path, "a %s is expected, not a mapping", kind_name(k->k));
        return read_mapping(r, vn, path, depth + 1);
    } else if (!k) {
        const key *near = nearest_key(path);
        if (near) return bad_at(r, kn, path, "unknown key (did you mean %s?)", near->path);
        return bad_at(r, kn, path, "unknown key");
    } else if (vn->type != YAML_SCALAR_NODE) {
        return bad_at(r, vn, path, "a %s is expected, not a list", kind_name(k->k));
    } else {
        const char *text = (const char *)vn->data.scalar.value;
        if (strlen(text) != vn->data.scalar.length) return bad_at(r, vn, path, "the value holds a NUL byte");
        /* a quoted number is a string to YAML: refuse it where a number is wanted */
        if ((k->k == K_INT || k->k == K_I64 || k->k == K_DBL || k->k == K_BOOL) &&
            vn->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
            return bad_at(r, vn, path, "a %s is expected, not the string \"%.64s\"", kind_name(k->k), text);
        char err[256];
        if (set_value(k, text, r->s, err, sizeof err) != 0) return bad_at(r, vn, path, "%s", err);
    }
    if (k) {
        const int i = (int)(k - KEYS);
        r->seen[i] = true;
        r->line_of[i] = (int)kn->start_mark.line + 1;
        if (!strncmp(path, "model.init.", 11)) r->s->model.init.on = true;
    }
    return TIDAL_OK;
}

static tidal_status read_mapping(reader *r, yaml_node_t *m, const char *prefix, int depth)
{
    if (depth > 8) return bad_at(r, m, prefix, "nested too deep");
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(r->doc, p->key), *vn = yaml_document_get_node(r->doc, p->value);
        if (!kn || !vn) return bad_at(r, m, prefix, "a malformed pair");
        if (kn->type != YAML_SCALAR_NODE) return bad_at(r, kn, prefix, "a key must be a plain word");
        const char *name = (const char *)kn->data.scalar.value;
        for (yaml_node_pair_t *q = m->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *other = yaml_document_get_node(r->doc, q->key);
            if (other && other->type == YAML_SCALAR_NODE && !strcmp((const char *)other->data.scalar.value, name))
                return bad_at(r, kn, prefix, "%s is given twice (first at line %zu)", name,
                              other->start_mark.line + 1);
        }
        char path[256];
        int n = snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", name);
        if (n < 0 || (size_t)n >= sizeof path) return bad_at(r, kn, prefix, "a key path longer than 255 bytes");
        TRY(read_value(r, kn, vn, path, depth));
    }
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- --set and checks */

static tidal_status apply_set(const char *set, job_spec *s)
{
    const char *eq = strchr(set, '=');
    if (!eq || eq == set) return tidal_fail(TIDAL_ERR_INVALID, "--set %s: the form is key.path=value", set);
    char path[256];
    if ((size_t)(eq - set) >= sizeof path) return tidal_fail(TIDAL_ERR_INVALID, "--set: a key path longer than 255 bytes");
    memcpy(path, set, (size_t)(eq - set));
    path[eq - set] = '\0';
    const char *value = eq + 1;
    if (!strncmp(path, "env.config.", 11)) { /* one member of the env's configuration */
        json_error_t je;
        json_t *o = json_loads(s->env.config_json ? s->env.config_json : "{}", 0, &je);
        json_t *v = json_loads(value, JSON_DECODE_ANY, &je);
        if (!v) v = json_string(value); /* not JSON: a string */
        json_object_set_new(o, path + 11, v);
        char *t = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "--set %s: out of memory", path);
        free(s->env.config_json);
        s->env.config_json = t;
        return TIDAL_OK;
    }
    const key *k = find_key(path);
    if (!k) {
        const key *near = nearest_key(path);
        return near ? tidal_fail(TIDAL_ERR_INVALID, "--set %s: unknown key (did you mean %s?)", path, near->path)
                    : tidal_fail(TIDAL_ERR_INVALID, "--set %s: unknown key", path);
    }
    char err[256];
    if (set_value(k, value, s, err, sizeof err) != 0) return tidal_fail(TIDAL_ERR_INVALID, "--set %s: %s", path, err);
    if (!strncmp(path, "model.init.", 11)) s->model.init.on = true;
    return TIDAL_OK;
}

/* The text form of an Ed25519 public key (base/sign.h): "ed25519:" (may be
 * left out) and 64 hex digits. Checked here by its shape so that the spec
 * parser needs no crypto library (the fuzz build links it alone). */
/* "a.b.c.d:port": an IPv4 address and a port in 0..65535. */
static bool http_bind_ok(const char *t)
{
    const char *colon = strrchr(t, ':');
    if (!colon || colon == t || (size_t)(colon - t) >= 16 || !colon[1]) return false;
    char host[16];
    memcpy(host, t, (size_t)(colon - t));
    host[colon - t] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1) return false;
    char *end = NULL;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    return errno == 0 && *end == '\0' && colon[1] != '-' && colon[1] != '+' && port >= 0 && port <= 65535;
}

static bool public_key_text(const char *t)
{
    if (!strncmp(t, "ed25519:", 8)) t += 8;
    size_t n = 0;
    for (; t[n]; n++)
        if (!((t[n] >= '0' && t[n] <= '9') || (t[n] >= 'a' && t[n] <= 'f') || (t[n] >= 'A' && t[n] <= 'F'))) return false;
    return n == 64;
}

/* Rules across keys; `where(path)` names the place of a key ("FILE:LINE: " or "--set/FILE: "). */
static tidal_status check_spec(const job_spec *s, const char *name)
{
#define BAD(...) tidal_fail(TIDAL_ERR_INVALID, __VA_ARGS__)
    if (!s->job.name[0]) return BAD("%s: job.name is required", name);
    TRY_WRAP(codec_check_name("job.name", s->job.name), "%s", name);
    if (!s->env.name[0]) return BAD("%s: env.name is required (`tidal env list` shows the built-in ones)", name);
    TRY_WRAP(codec_check_name("env.name", s->env.name), "%s", name);
    if (!!s->model.path[0] == s->model.init.on)
        return BAD("%s: model: give exactly one of model.path (a Hugging Face directory) and model.init (a tiny "
                   "model)", name);
    if (s->model.init.on) {
        if (s->model.init.heads % s->model.init.kv_heads)
            return BAD("%s: model.init.kv_heads: %d does not divide model.init.heads = %d", name,
                       s->model.init.kv_heads, s->model.init.heads);
        if (s->model.init.hidden % s->model.init.heads || (s->model.init.hidden / s->model.init.heads) % 2)
            return BAD("%s: model.init.hidden: %d is not an even multiple of model.init.heads = %d (head_dim must "
                       "be even)", name, s->model.init.hidden, s->model.init.heads);
        if (s->model.init.tokenizer[0] && s->model.init.alphabet[0])
            return BAD("%s: model.init: give at most one of model.init.tokenizer and model.init.alphabet", name);
    }
    if (!!s->data.path[0] == !!s->data.generator[0])
        return BAD("%s: data: give exactly one of data.path (a JSONL file) and data.generator (a built-in env)", name);
    if (s->bus.replicas == 2 || s->bus.replicas == 4)
        return BAD("%s: bus.replicas: %d: JetStream keeps an odd number of copies (1, 3 or 5; 0: auto)", name,
                   s->bus.replicas);
    if (!http_bind_ok(s->weights.http_bind))
        return BAD("%s: weights.http_bind: \"%.80s\" is not an IPv4 address and a port (127.0.0.1:0, 0.0.0.0:8470)",
                   name, s->weights.http_bind);
    if (s->weights.http_url[0] && (strncmp(s->weights.http_url, "http://", 7) || !s->weights.http_url[7]))
        return BAD("%s: weights.http_url: \"%.80s\" is not http://host:port", name, s->weights.http_url);
    if (!strcmp(s->weights.transport, "dir") && !s->weights.dir[0])
        return BAD("%s: weights.dir is required with weights.transport dir", name);
    if (s->weights.delta && strcmp(s->weights.transport, "bus"))
        return BAD("%s: weights.delta needs weights.transport bus (a directory holds whole images: what a server "
                   "loads), not %s", name, s->weights.transport);
    if (s->weights.public_key[0] && !public_key_text(s->weights.public_key))
        return BAD("%s: weights.public_key: \"%.80s\" is not \"ed25519:\" and 64 hex digits", name,
                   s->weights.public_key);
    if (s->trainer.eps_lo != -1 && s->trainer.eps_lo < 0)
        return BAD("%s: trainer.eps_lo: %g must be -1 (the loss's own) or in [0, 1]", name, s->trainer.eps_lo);
    if (s->trainer.eps_hi != -1 && s->trainer.eps_hi < 0)
        return BAD("%s: trainer.eps_hi: %g must be -1 (the loss's own) or >= 0", name, s->trainer.eps_hi);
    if (s->trainer.dual_clip != 0 && s->trainer.dual_clip <= 1)
        return BAD("%s: trainer.dual_clip: %g must be 0 (off) or above 1", name, s->trainer.dual_clip);
    if (s->trainer.mis_hi <= s->trainer.mis_lo)
        return BAD("%s: trainer.mis_hi: %g must be above trainer.mis_lo = %g", name, s->trainer.mis_hi, s->trainer.mis_lo);
    if (!strcmp(s->trainer.loss_agg, "seq-mean-token-sum-norm") && s->trainer.loss_agg_norm == 0 &&
        s->rollout.max_tokens < 1)
        return BAD("%s: trainer.loss_agg_norm: 0 needs rollout.max_tokens", name);
    return TIDAL_OK;
#undef BAD
}

tidal_status spec_parse(const char *yaml, size_t len, const char *name, const char *const *sets, int n_sets,
                        job_spec *s)
{
    spec_defaults(s);
    yaml_parser_t p;
    yaml_document_t d;
    if (!yaml_parser_initialize(&p)) return tidal_fail(TIDAL_ERR_NOMEM, "%s: cannot start the YAML parser", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    tidal_status st = TIDAL_OK;
    bool loaded = false;
    if (!yaml_parser_load(&p, &d)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s:%zu: YAML: %s%s%s", name, p.problem_mark.line + 1,
                        p.problem ? p.problem : "syntax error", p.context ? " " : "", p.context ? p.context : "");
        goto cleanup;
    }
    loaded = true;
    yaml_node_t *root = yaml_document_get_root_node(&d);
    reader r = {.doc = &d, .name = name, .s = s};
    if (!root) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: the spec is empty (job.name and env.name are required)", name);
        goto cleanup;
    }
    if (root->type != YAML_MAPPING_NODE) {
        st = bad_at(&r, root, "", "the spec must be a mapping of sections");
        goto cleanup;
    }
    TRY_GOTO(read_mapping(&r, root, "", 0));
    /* a second document is a mistake, not a spec */
    yaml_document_t d2;
    if (yaml_parser_load(&p, &d2)) {
        if (yaml_document_get_root_node(&d2))
            st = tidal_fail(TIDAL_ERR_INVALID, "%s:%zu: a second YAML document (one spec per file)", name,
                            p.mark.line + 1);
        yaml_document_delete(&d2);
        if (st != TIDAL_OK) goto cleanup;
    }
    for (int i = 0; i < n_sets; i++) TRY_GOTO(apply_set(sets[i], s));
    TRY_GOTO(check_spec(s, name));
cleanup:
    if (loaded) yaml_document_delete(&d);
    yaml_parser_delete(&p);
    if (st != TIDAL_OK) {
        spec_release(s);
        spec_defaults(s);
    }
    return st;
}

tidal_status spec_check_paths(const job_spec *s, const char *name)
{
    struct stat st;
    if (s->model.path[0]) {
        char cfg[SPEC_STR + 16];
        snprintf(cfg, sizeof cfg, "%s/config.json", s->model.path);
        if (stat(s->model.path, &st) != 0 || !S_ISDIR(st.st_mode))
            return tidal_fail(TIDAL_ERR_INVALID, "%s: model.path: %s: %s", name, s->model.path,
                              errno == ENOENT ? "no such directory" : "not a directory");
        if (access(cfg, R_OK) != 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: model.path: %s has no readable config.json (want a Hugging Face "
                              "model directory)", name, s->model.path);
    }
    if (s->model.init.tokenizer[0]) {
        const char *tp = s->model.init.tokenizer;
        if (stat(tp, &st) != 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: model.init.tokenizer: %s: %s", name, tp, strerror(errno));
        char tj[SPEC_STR + 16];
        snprintf(tj, sizeof tj, "%s%s", tp, S_ISDIR(st.st_mode) ? "/tokenizer.json" : "");
        if (S_ISDIR(st.st_mode) ? access(tj, R_OK) != 0 : !S_ISREG(st.st_mode) || access(tp, R_OK) != 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: model.init.tokenizer: %s %s (want a tokenizer.json file or a "
                              "directory holding one)", name, tp,
                              S_ISDIR(st.st_mode) ? "has no readable tokenizer.json" : "is not a readable file");
    }
    if (s->data.path[0]) {
        if (stat(s->data.path, &st) != 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: data.path: %s: %s", name, s->data.path, strerror(errno));
        if (!S_ISREG(st.st_mode) || access(s->data.path, R_OK) != 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: data.path: %s is not a readable file (want JSONL)", name,
                              s->data.path);
    }
    return TIDAL_OK;
}

tidal_status spec_load(const char *file, const char *const *sets, int n_sets, job_spec *s)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        spec_defaults(s);
        return tidal_fail(TIDAL_ERR_IO, "%s: cannot open: %s", file, strerror(errno));
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            char *nb = realloc(buf, cap = cap ? cap * 2 : 8192);
            if (!nb || cap > (16u << 20)) {
                free(nb ? nb : buf);
                fclose(f);
                spec_defaults(s);
                return tidal_fail(TIDAL_ERR_INVALID, "%s: larger than 16 MiB: not a job spec", file);
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    fclose(f);
    tidal_status st = spec_parse(buf ? buf : "", len, file, sets, n_sets, s);
    free(buf);
    return st;
}

/* ---------------------------------------------------------------- JSON */

/* obj[a][b]... for path "a.b.c": the object holding the last part (created), and that part. */
static json_t *parent_of(json_t *root, const char *path, char *last, size_t cap)
{
    json_t *o = root;
    const char *p = path;
    for (const char *dot; (dot = strchr(p, '.'));) {
        char part[64];
        snprintf(part, sizeof part, "%.*s", (int)(dot - p), p);
        json_t *next = json_object_get(o, part);
        if (!next) json_object_set_new(o, part, next = json_object());
        o = next;
        p = dot + 1;
    }
    snprintf(last, cap, "%s", p);
    return o;
}

json_t *spec_to_json(const job_spec *s)
{
    json_t *root = json_object();
    for (int i = 0; root && i < N_KEYS; i++) {
        const key *k = &KEYS[i];
        if (!strncmp(k->path, "model.init.", 11) && !s->model.init.on) continue;
        char last[64];
        json_t *o = parent_of(root, k->path, last, sizeof last);
        const char *at = (const char *)s + k->off;
        json_t *v = NULL;
        switch (k->k) {
        case K_STR:
        case K_ENUM: v = json_string(at); break;
        case K_INT: v = json_integer(*(const int *)at); break;
        case K_I64: v = json_integer((json_int_t) * (const int64_t *)at); break;
        case K_DBL: v = json_real(*(const double *)at); break;
        case K_BOOL: v = json_boolean(*(const bool *)at); break;
        case K_JSON: {
            json_error_t je;
            v = json_loads(*(char *const *)at ? *(char *const *)at : "{}", 0, &je);
            break;
        }
        }
        json_object_set_new(o, last, v ? v : json_null());
    }
    return root;
}

/* Walk a JSON object like a YAML mapping: every member must be a key. */
static tidal_status from_json_obj(const json_t *o, const char *prefix, const char *name, job_spec *s, int depth)
{
    const char *mk;
    json_t *v;
    if (depth > 8) return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: nested too deep", name, prefix);
    json_object_foreach((json_t *)o, mk, v)
    {
        char path[256], text[SPEC_STR + 32], err[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", mk);
        const key *k = find_key(path);
        if (!k && json_is_object(v)) {
            TRY(from_json_obj(v, path, name, s, depth + 1));
            continue;
        }
        if (!k) return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: unknown key", name, path);
        if (k->k == K_JSON) {
            char *t = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
            int rc = t ? set_value(k, t, s, err, sizeof err) : -1;
            free(t);
            if (rc != 0) return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: %s", name, path, t ? err : "out of memory");
            continue;
        }
        if (json_is_string(v) && (k->k == K_STR || k->k == K_ENUM)) snprintf(text, sizeof text, "%s", json_string_value(v));
        else if (json_is_integer(v) && (k->k == K_INT || k->k == K_I64 || k->k == K_DBL))
            snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v) && k->k == K_DBL) snprintf(text, sizeof text, "%.17g", json_real_value(v));
        else if (json_is_boolean(v) && k->k == K_BOOL) snprintf(text, sizeof text, "%s", json_is_true(v) ? "true" : "false");
        else return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: a %s is expected", name, path, kind_name(k->k));
        if (set_value(k, text, s, err, sizeof err) != 0) return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: %s", name, path, err);
        if (!strncmp(path, "model.init.", 11)) s->model.init.on = true;
    }
    return TIDAL_OK;
}

tidal_status spec_from_json(const json_t *o, const char *name, job_spec *s)
{
    spec_defaults(s);
    tidal_status st = TIDAL_OK;
    if (!json_is_object(o)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: the spec is not a JSON object", name);
        goto cleanup;
    }
    TRY_GOTO(from_json_obj(o, "", name, s, 0));
    TRY_GOTO(check_spec(s, name));
cleanup:
    if (st != TIDAL_OK) {
        spec_release(s);
        spec_defaults(s);
    }
    return st;
}

/* ---------------------------------------------------------------- the table */

int spec_keys(const spec_key_info **out)
{
    static spec_key_info info[sizeof KEYS / sizeof KEYS[0]];
    static char allowed[sizeof KEYS / sizeof KEYS[0]][64];
    for (int i = 0; i < N_KEYS; i++) {
        const key *k = &KEYS[i];
        if (k->k == K_ENUM) snprintf(allowed[i], sizeof allowed[i], "%s", k->allowed);
        else if (k->k == K_INT) snprintf(allowed[i], sizeof allowed[i], "%lld .. %lld", (long long)k->min, (long long)k->max);
        else if (k->k == K_DBL) snprintf(allowed[i], sizeof allowed[i], "%g .. %g", k->min, k->max);
        else allowed[i][0] = '\0';
        info[i] = (spec_key_info){k->path, kind_name(k->k), k->def, allowed[i], k->doc};
    }
    *out = info;
    return N_KEYS;
}
