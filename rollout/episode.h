/* episode.h - one group of episodes: G samples of a prompt generated with the
 * engine and scored by an environment, as Trajectory messages.
 *
 * For every sample: the engine generates up to the token budget; the
 * completion is decoded to text and sent to the environment (STEP, turn 1).
 * A multi-turn environment answers done = false with an observation: its
 * tokens are appended to the completion with loss mask false and log-prob 0
 * (they carry the version of the weights current then), and the model takes
 * its next turn on the whole context, until the env says done, the budget is
 * spent (finish reason length) or max_turns is reached. The reward is the sum
 * of the STEP rewards; the last answer's metrics become reward_components.
 * An environment error or timeout makes the sample's status ENV_ERROR /
 * ENV_TIMEOUT (reward 0) - the group is still published whole.
 *
 * episode_run_group runs one group alone: the engine is used exclusively for
 * the call (it must have no other requests); the env client may be shared.
 *
 * An episode_batch runs several groups on one generator at once (the rollout
 * worker's rollout.max_batch): every sample of every group is its own chain
 * of engine requests, one per turn, so the engine's batch holds the samples
 * of all groups and a sample's next turn is submitted as soon as the env has
 * scored its last one. A sample's tokens depend on its group, index and turn
 * only (the seed is derived from them), never on the other groups: a group
 * run in a batch gives what it gives alone, up to the engine's batch
 * independence (engine.h). The caller steps the batch and, between steps,
 * swaps weights (tokens carry the version that sampled them) and takes the
 * groups that are done. Env calls are made on the stepping thread, between
 * engine steps.
 */
#ifndef TIDAL_ROLLOUT_EPISODE_H
#define TIDAL_ROLLOUT_EPISODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envs/client.h"
#include "model/tokenizer.h"
#include "base/status.h"
#include "rollout/generator.h"
#include "tidal.pb-c.h"

typedef struct episode_group {
    const char *prompt_id, *group_id, *worker_id;
    const char *task_json;     /* the row, for the env */
    const int32_t *prompt;     /* [prompt_len] the rendered prompt's ids */
    int prompt_len;
    int group_size;            /* G, samples in the whole group */
    int first_index;           /* the first sample to run (a prompt may ask for part of a group) */
    int count;                 /* samples to run: first_index .. first_index + count - 1; 0 = the rest */
    bool eval;                 /* evaluation samples (marked so; never trained) */
    int max_tokens;            /* completion budget per sample, env tokens included */
    int max_turns;             /* model turns at most (>= 1) */
    int max_turn_tokens;       /* tokens per model turn at most; 0 = the rest of the budget */
    engine_sampling sampling;  /* per sample, the seed is sampling.seed + sample index */
    int32_t stop_id;           /* end of a turn (eos / end-of-turn), or -1 */
    uint64_t min_version;
    /* Called between engine steps (a decode-step boundary): the worker swaps
     * in new weights (engine_set_model) and keeps its prompt alive there.
     * Returning false abandons the group: the call returns TIDAL_ERR_CANCELLED
     * and nothing is output. NULL: never called. */
    bool (*between_steps)(void *ctx);
    /* Test-only (a lying worker, `tidal rollout --fault`): may change each
     * trajectory before it is encoded. NULL in production. */
    void (*tamper)(void *ctx, Tidal__V1__Trajectory *t);
    void *hook_ctx;
} episode_group;

/* The trajectory id's room: "<group_id>-<index>" (ids are at most 255 bytes on the wire). */
#define EPISODE_ID_CAP 300

/* One sample run, encoded, with what its publisher needs to know without
 * decoding it again (the caller owns data: free it). */
typedef struct episode_out {
    void *data;                          /* the encoded Trajectory */
    size_t len;
    char trajectory_id[EPISODE_ID_CAP];  /* "<group_id>-<index>": the Nats-Msg-Id it is published with */
    uint64_t completion_tokens;          /* its completion's tokens, generated and env tokens alike */
    double reward;
    int status;                          /* Tidal__V1__TrajectoryStatus */
} episode_out;

/* Run group g: out[count] receives the encoded trajectories, sample indices
 * first_index, first_index + 1, ..., each with its id ("<group_id>-<index>")
 * and completion length, so the publisher never decodes what was just
 * encoded. TIDAL_ERR_INVALID for a bad group (sizes, an engine with requests
 * of its own); env failures are not errors of the call (they are in the
 * samples' status). On any error out[] is left zeroed, the engine as it came
 * and this thread's error message names the failure. */
tidal_status episode_run_group(generator *e, tokenizer *tok, env_client *env, const episode_group *g,
                               episode_out *out);

/* Groups in flight on one generator (see the top comment). g->between_steps
 * is not called by the batch: the caller runs its own between steps. */
typedef struct episode_batch episode_batch;

/* A batch over e, tok, env (borrowed; e must have no requests of its own and
 * is used by no one else while the batch lives). */
tidal_status episode_batch_create(generator *e, tokenizer *tok, env_client *env, episode_batch **out);
/* Aborts the requests of the groups still in it (their out[] zeroed) and
 * leaves the generator with nothing queued, running or finished. NULL: no-op. */
void episode_batch_free(episode_batch *b);

/* Add group g: checked as episode_run_group checks it, out[count] zeroed,
 * the first turn of each sample submitted. g, what it points to and out must
 * stay valid until the group comes back from episode_batch_next_done or is
 * dropped. On an error nothing of g is left in the batch. */
tidal_status episode_batch_add(episode_batch *b, const episode_group *g, episode_out *out);

/* One generator step (none when nothing is queued or running), then each
 * finished request goes to its sample: appended, scored by the env, its next
 * turn submitted or the sample done; a group whose samples are all done is
 * encoded into its out[]. A failure of one group (a next turn the engine
 * refuses, out of memory) fails that group alone; an error of the call is the
 * generator's (every group's: the caller drops them). */
tidal_status episode_batch_step(episode_batch *b);

/* A group that is done, taken out of the batch (oldest first), or NULL.
 * *st: TIDAL_OK with its out[] filled, or its failure (the thread's error
 * message says it; out[] zeroed). */
const episode_group *episode_batch_next_done(episode_batch *b, tidal_status *st);

/* Abandon group g (no-op if it is not in the batch): its requests aborted,
 * its out[] zeroed. The thread's error message is kept. */
void episode_batch_drop(episode_batch *b, const episode_group *g);

/* The samples (sequences) of the groups in the batch, and the groups. */
int episode_batch_samples(const episode_batch *b);
int episode_batch_groups(const episode_batch *b);

#endif
