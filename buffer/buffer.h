/* buffer.h - the replay buffer: trajectories in, complete groups out, under
 * the staleness bound (docs/design.md "Versions and staleness").
 *
 * The trainer's consumer admits each decoded, validated trajectory with the
 * handle of its stream message. The buffer assembles groups (group_id,
 * group_size samples), drops what may not be trained - with a counted reason
 * - and hands out batches of complete groups. A sample's fate becomes durable
 * when it is dropped (its message is acknowledged at once) or when the last
 * step that trained it is in a checkpoint (buffer_checkpointed acknowledges
 * every retired sample trained last at or before that step). Until then its
 * message stays unacknowledged, so a trainer that dies loses nothing:
 * JetStream redelivers, and the ids already trained - which the checkpoint
 * keeps - are dropped as duplicates.
 *
 * Drop reasons (counted): stale (oldest token older than v - K), stale_group
 * (a group that lost a sample to staleness), failed (a sample whose status
 * is not OK takes its group with it), zero_variance (all rewards equal, when
 * filtering), capacity (complete groups beyond the capacity: the oldest go),
 * duplicate (a trajectory id already admitted or trained), incomplete (a
 * group still missing samples when the bound on partial groups - their
 * number, or the age of their first sample - pushed it out; a group whose
 * parts stopped coming, e.g. its worker died between two parts and the
 * prompt was never answered whole), quarantined (a sample of a worker the
 * trainer quarantined, buffer_quarantine: its group goes with it).
 *
 * Sampling: fifo (oldest complete first), newest, uniform, or priority
 * (without replacement, P(g) proportional to exp(mean reward of g / T)).
 *
 * Reuse: with opts.reuse = R a group may be trained up to R times. After each
 * training but the last it goes back into the buffer as a complete group,
 * behind the groups already waiting, when the capacity has room for it (a
 * reuse never pushes out a group not yet trained); else it retires. A group
 * trained at least once is never dropped: when it goes stale or is pushed out
 * by capacity it retires, too. A retired group's samples are acknowledged
 * (dropped = false) once a checkpoint holds the step that last trained it.
 *
 * The balance, whenever no batch is out: every admitted sample is acked
 * exactly once, either dropped (at once) or after a checkpoint covering the
 * last step that trained it, and
 *   admitted = trained + sum(dropped) + (samples_held - samples_held_trained)
 * since trained counts a sample on its first training only and samples held
 * for reuse are already in trained.
 *
 * Not thread-safe: one trainer thread owns it.
 */
#ifndef TIDAL_BUFFER_BUFFER_H
#define TIDAL_BUFFER_BUFFER_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "tidal.pb-c.h"

/* Job-spec names "fifo", "newest", "uniform", "priority". */
typedef enum { BUFFER_FIFO, BUFFER_NEWEST, BUFFER_UNIFORM, BUFFER_PRIORITY } buffer_sampling;

typedef enum {
    BUFFER_DROP_STALE,
    BUFFER_DROP_STALE_GROUP,
    BUFFER_DROP_FAILED,
    BUFFER_DROP_ZERO_VARIANCE,
    BUFFER_DROP_CAPACITY,
    BUFFER_DROP_DUPLICATE,
    BUFFER_DROP_INCOMPLETE,
    BUFFER_DROP_QUARANTINED,
    BUFFER_DROP__COUNT
} buffer_drop_reason;

/* "stale", "stale_group", ... (the summary.json keys). */
const char *buffer_drop_name(buffer_drop_reason r);

/* Called once per admitted trajectory when its fate is durable: dropped
 * (true) or trained in a checkpointed step (false). The handle is the one
 * given to buffer_admit (e.g. the JetStream message to acknowledge). */
typedef void (*buffer_ack_fn)(void *ctx, void *handle, bool dropped);
/* Called by buffer_free for each handle it lets go without a fate (held or
 * trained but not checkpointed: not acknowledged, so its message comes again). */
typedef void (*buffer_release_fn)(void *ctx, void *handle);

typedef struct buffer_opts {
    int max_staleness;          /* K */
    int capacity;               /* complete groups held at most (>= 1) */
    buffer_sampling sampling;
    bool filter_zero_variance;
    uint64_t seed;              /* uniform and priority sampling */
    double priority_temperature; /* T of priority sampling (> 0, finite); unused otherwise */
    int reuse;                  /* trainings per group at most (>= 1; 0 means 1) */
    int max_partial;            /* groups still missing samples held at most; beyond, the
                                 * oldest goes as incomplete (0: no bound) */
    uint64_t partial_max_age_ms; /* a partial group whose first sample came longer ago than
                                 * this (by buffer_tick's clock) goes as incomplete (0: none) */
    buffer_ack_fn ack;
    buffer_release_fn release;  /* may be NULL */
    void *ack_ctx;              /* passed to ack and release */
} buffer_opts;

/* One group of a batch: its samples in sample_index order. */
typedef struct buffer_group {
    char group_id[256];
    int n;                           /* = group_size */
    Tidal__V1__Trajectory **samples; /* [n], owned by the buffer until buffer_trained */
    int uses;                        /* trainings of this group before this batch (0: first) */
    void *priv;                      /* the buffer's (the samples' message handles) */
} buffer_group;

typedef struct buffer_batch {
    int n_groups;
    buffer_group *groups; /* [n_groups] */
} buffer_batch;

typedef struct buffer_counts {
    uint64_t admitted, acked;
    uint64_t trained;                     /* samples, on their group's first training only */
    uint64_t dropped[BUFFER_DROP__COUNT]; /* samples, by reason */
    /* Groups, each counted once by the reason that ended it: stale (a sample
     * too old), failed, zero_variance, capacity; trained when a step first
     * took it (a group once trained is never dropped). */
    uint64_t groups_dropped[BUFFER_DROP__COUNT];
    uint64_t groups_trained;
    uint64_t groups_reused; /* trainings of a group beyond its first */
    uint64_t samples_held, groups_complete, groups_partial;
    uint64_t samples_held_trained; /* of samples_held: in groups back for reuse */
} buffer_counts;

typedef struct buffer buffer;

/* TIDAL_ERR_INVALID (naming the field) unless max_staleness >= 0,
 * capacity >= 1, reuse >= 0 and, for priority sampling, priority_temperature
 * > 0 and finite. */
tidal_status buffer_create(const buffer_opts *o, buffer **out);
/* Frees everything; samples not yet durable are released without acking
 * (their messages will be redelivered): each handle goes to opts.release,
 * held groups (back for reuse, too) and trained ones not checkpointed alike. */
void buffer_free(buffer *b);

/* The trainer's version v moved: drop what is now older than v - K. A group
 * already trained retires instead (not dropped: acked after a checkpoint of
 * the step that last trained it). */
void buffer_set_version(buffer *b, uint64_t v);

/* Take ownership of a validated trajectory t (freed with
 * tidal__v1__trajectory__free_unpacked) and its message handle. Returns
 * TIDAL_OK whether it was kept or dropped (see buffer_counts); a sample is
 * dropped at once when stale, a duplicate, or part of a group already dropped.
 * An error (out of memory) leaves t and handle with the caller, untouched. */
tidal_status buffer_admit(buffer *b, Tidal__V1__Trajectory *t, void *handle);

/* Apply the bound on partial groups: the clock moved to now_ms (any monotonic
 * milliseconds); partial groups first seen more than partial_max_age_ms
 * before it, and the oldest beyond max_partial, are dropped as incomplete.
 * Groups admitted afterwards are stamped with now_ms. Only here: a group
 * whose samples are admitted one after another (the trajectories of one
 * message) is partial in between and must not be pushed out for it, so the
 * caller ticks after admitting what it fetched. */
void buffer_tick(buffer *b, uint64_t now_ms);

/* Complete groups ready to train. */
int buffer_ready(const buffer *b);

/* Take n complete groups (buffer_ready() >= n) for the next step by the
 * sampling rule; staleness is enforced at the take, too (as by
 * buffer_set_version). Each group's `uses` says how often it was trained
 * before: only at 0 are its trajectory ids new to training. */
tidal_status buffer_take(buffer *b, int n, buffer_batch *out);

/* The batch was trained in `step` (its version becomes step); the batch's
 * memory is released. A group with uses + 1 < reuse goes back into the buffer
 * as a complete group (uses + 1, behind the groups waiting) if there is room
 * under the capacity. Any other retires: its samples are freed and their
 * handles wait for a checkpoint holding `step`. Counts trained and
 * groups_trained on a group's first training, groups_reused on the others. */
void buffer_trained(buffer *b, buffer_batch *batch, uint64_t step);

/* A batch that was not trained (the step failed): its groups go back, each
 * with the uses it had before the take. */
void buffer_untake(buffer *b, buffer_batch *batch);

/* Steps <= step are in a durable checkpoint: acknowledge the samples of the
 * groups retired with such a step (dropped = false). */
void buffer_checkpointed(buffer *b, uint64_t step);

/* Mark trajectory ids trained earlier (from a checkpoint): when they come
 * again (redelivered) they are duplicates. */
tidal_status buffer_remember_trained(buffer *b, const char *trajectory_id);

void buffer_counts_get(const buffer *b, buffer_counts *c);

/* Worker `worker_id` is quarantined: every held group with a sample of it
 * that was never trained is dropped as quarantined now (one trained before
 * retires, as under staleness), and so is every later sample of it, with
 * its group. Returns the groups dropped now; TIDAL_ERR_NOMEM leaves the
 * worker unmarked. */
tidal_status buffer_quarantine(buffer *b, const char *worker_id, int *dropped_now);

#endif
