/* buffer.c - the replay buffer (see buffer.h for the contract).
 *
 * Groups live in one list in arrival order of their first sample; a group
 * is complete when all group_size samples have arrived. Trajectory ids ever
 * admitted (and ids trained before a restart) sit in a string set, so a
 * redelivered message is a duplicate; ids of dropped groups sit in another,
 * so late samples of a dropped group follow it at once.
 *
 * A group back for reuse keeps its handles and samples; when it is done
 * (trained reuse times, stale, or pushed out) it retires: its handles move to
 * the pending list with the step that last trained it.
 */
#include "buffer/buffer.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"
#include "base/hash.h"

/* ---------------------------------------------------------------- a string set */

typedef struct strset {
    char **slots;
    uint8_t *tag; /* per slot: 0 empty, else the reason + 1 (dead groups) or 1 */
    size_t cap, n;
} strset;

static size_t strset_find(const strset *s, const char *k)
{
    size_t i = (size_t)hash_string(k) & (s->cap - 1);
    while (s->slots[i] && strcmp(s->slots[i], k)) i = (i + 1) & (s->cap - 1);
    return i;
}

/* The tag of k, 0 when absent. */
static int strset_get(const strset *s, const char *k)
{
    if (!s->cap) return 0;
    size_t i = strset_find(s, k);
    return s->slots[i] ? s->tag[i] : 0;
}

static tidal_status strset_put(strset *s, const char *k, int tag)
{
    if ((s->n + 1) * 2 > s->cap) { /* grow to keep the load under 1/2 */
        strset g = {.cap = s->cap ? s->cap * 2 : 1024};
        g.slots = calloc(g.cap, sizeof *g.slots);
        g.tag = calloc(g.cap, 1);
        if (!g.slots || !g.tag) {
            free(g.slots);
            free(g.tag);
            return tidal_fail(TIDAL_ERR_NOMEM, "buffer: out of memory for %zu ids", s->n + 1);
        }
        for (size_t i = 0; i < s->cap; i++)
            if (s->slots[i]) {
                size_t j = strset_find(&g, s->slots[i]);
                g.slots[j] = s->slots[i];
                g.tag[j] = s->tag[i];
            }
        g.n = s->n;
        free(s->slots);
        free(s->tag);
        *s = g;
    }
    size_t i = strset_find(s, k);
    if (!s->slots[i]) {
        if (!(s->slots[i] = strdup(k))) return tidal_fail(TIDAL_ERR_NOMEM, "buffer: out of memory");
        s->n++;
    }
    s->tag[i] = (uint8_t)tag;
    return TIDAL_OK;
}

static void strset_free(strset *s)
{
    for (size_t i = 0; i < s->cap; i++) free(s->slots[i]);
    free(s->slots);
    free(s->tag);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- groups */

typedef struct group {
    char id[256];
    int size, arrived;
    Tidal__V1__Trajectory **t; /* [size], by sample_index */
    void **handle;             /* [size] */
    uint64_t *oldest;          /* [size]: the sample's oldest token version */
    uint64_t completed_seq;    /* when it became complete (0: partial) */
    int uses;                  /* trainings so far */
    uint64_t last_step;        /* the step of the latest (uses >= 1) */
    uint64_t first_ms;         /* buffer_tick's clock when its first sample came */
    struct group *next;
} group;

typedef struct pending {
    void *handle;
    uint64_t step;
    struct pending *next;
} pending;

struct buffer {
    buffer_opts o;
    uint64_t version, seq, rng, now_ms;
    group *groups; /* arrival order */
    strset seen, dead;
    strset quarantined; /* worker ids */
    pending *wait; /* trained, waiting for a checkpoint */
    buffer_counts c;
};

static const char *const DROP_NAMES[BUFFER_DROP__COUNT] = {"stale", "stale_group", "failed", "zero_variance",
                                                           "capacity", "duplicate", "incomplete",
                                                           "quarantined"};

const char *buffer_drop_name(buffer_drop_reason r)
{
    return (int)r >= 0 && r < BUFFER_DROP__COUNT ? DROP_NAMES[r] : "unknown";
}

static void drop_one(buffer *b, Tidal__V1__Trajectory *t, void *handle, buffer_drop_reason why)
{
    b->c.dropped[why]++;
    if (t) tidal__v1__trajectory__free_unpacked(t, NULL);
    if (b->o.ack) b->o.ack(b->o.ack_ctx, handle, true);
    b->c.acked++;
}

static void group_free(group *g)
{
    free(g->t);
    free(g->handle);
    free(g->oldest);
    free(g);
}

/* Drop every sample of g (the stale one's reason is `first` at index
 * `first_i`, the others `rest`); g is unlinked by the caller. Later samples of
 * the group follow with `rest`. */
static void drop_group(buffer *b, group *g, int first_i, buffer_drop_reason first, buffer_drop_reason rest)
{
    b->c.groups_dropped[first]++;
    for (int i = 0; i < g->size; i++)
        if (g->t[i]) {
            drop_one(b, g->t[i], g->handle[i], i == first_i ? first : rest);
            g->t[i] = NULL;
            b->c.samples_held--;
        }
    if (g->completed_seq) b->c.groups_complete--;
    else b->c.groups_partial--;
    if (strset_put(&b->dead, g->id, (int)rest + 1) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "buffer: %s", tidal_errmsg()); /* late samples then wait: not lost */
}

static void unlink_group(buffer *b, group *g)
{
    for (group **p = &b->groups; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            return;
        }
}

/* g is done: its handles wait for a checkpoint of `step`, its samples (those
 * still with the group) are freed, and g itself. The caller unlinked g. */
static void retire_group(buffer *b, group *g, uint64_t step)
{
    for (int i = 0; i < g->size; i++) {
        pending *p = malloc(sizeof *p);
        if (p) {
            *p = (pending){.handle = g->handle[i], .step = step, .next = b->wait};
            b->wait = p;
        } /* out of memory: the message is redelivered later and dropped as a duplicate */
        if (g->t && g->t[i]) tidal__v1__trajectory__free_unpacked(g->t[i], NULL);
    }
    group_free(g);
}

/* A held complete group leaves without training: a never-trained one is
 * dropped (reasons as drop_group); one trained before retires: its training
 * stands, so it is acked after the checkpoint of the step that last trained it. */
static void evict_group(buffer *b, group *g, int first_i, buffer_drop_reason first, buffer_drop_reason rest)
{
    unlink_group(b, g);
    if (!g->uses) {
        drop_group(b, g, first_i, first, rest);
        group_free(g);
        return;
    }
    b->c.groups_complete--;
    b->c.samples_held -= (uint64_t)g->size;
    b->c.samples_held_trained -= (uint64_t)g->size;
    retire_group(b, g, g->last_step);
}

static void enforce_capacity(buffer *b)
{
    while ((int)b->c.groups_complete > b->o.capacity) { /* the oldest complete group goes */
        group *old = NULL;
        for (group *x = b->groups; x; x = x->next)
            if (x->completed_seq && (!old || x->completed_seq < old->completed_seq)) old = x;
        evict_group(b, old, -1, BUFFER_DROP_CAPACITY, BUFFER_DROP_CAPACITY);
    }
}

/* Partial groups beyond max_partial (the oldest first) or older than
 * partial_max_age_ms go as incomplete; their late samples follow them. */
static void enforce_partial(buffer *b)
{
    for (group *g = b->groups, *n; g; g = n) {
        n = g->next;
        if (g->completed_seq) continue;
        bool too_many = b->o.max_partial > 0 && (int)b->c.groups_partial > b->o.max_partial;
        bool aged = b->o.partial_max_age_ms > 0 && b->now_ms > g->first_ms &&
                    b->now_ms - g->first_ms > b->o.partial_max_age_ms;
        if (!too_many && !aged) continue;
        unlink_group(b, g);
        drop_group(b, g, -1, BUFFER_DROP_INCOMPLETE, BUFFER_DROP_INCOMPLETE);
        group_free(g);
    }
}

void buffer_tick(buffer *b, uint64_t now_ms)
{
    b->now_ms = now_ms;
    enforce_partial(b);
}

static bool too_old(const buffer *b, uint64_t oldest)
{
    return b->version > (uint64_t)b->o.max_staleness && oldest < b->version - (uint64_t)b->o.max_staleness;
}

/* The oldest token version of t (its min_version when it has no completion tokens). */
static uint64_t oldest_of(const Tidal__V1__Trajectory *t)
{
    uint64_t lo = t->min_version;
    if (!codec_trajectory_versions(t, &lo, NULL)) lo = t->min_version;
    return lo;
}

/* ---------------------------------------------------------------- life */

tidal_status buffer_create(const buffer_opts *o, buffer **out)
{
    *out = NULL;
    if (!o || o->max_staleness < 0 || o->capacity < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "buffer: max_staleness >= 0 and capacity >= 1 are required");
    if (o->reuse < 0) return tidal_fail(TIDAL_ERR_INVALID, "buffer: reuse must be >= 1, got %d", o->reuse);
    if (o->sampling == BUFFER_PRIORITY && !(o->priority_temperature > 0 && isfinite(o->priority_temperature)))
        return tidal_fail(TIDAL_ERR_INVALID, "buffer: priority_temperature must be > 0 and finite, got %g",
                          o->priority_temperature);
    buffer *b = calloc(1, sizeof *b);
    if (!b) return tidal_fail(TIDAL_ERR_NOMEM, "buffer: out of memory");
    b->o = *o;
    if (!b->o.reuse) b->o.reuse = 1; /* zero-initialised opts: train once, as before reuse existed */
    b->rng = o->seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    *out = b;
    return TIDAL_OK;
}

void buffer_free(buffer *b)
{
    if (!b) return;
    for (group *g = b->groups, *n; g; g = n) {
        n = g->next;
        for (int i = 0; i < g->size; i++)
            if (g->t[i]) {
                tidal__v1__trajectory__free_unpacked(g->t[i], NULL);
                if (b->o.release) b->o.release(b->o.ack_ctx, g->handle[i]);
            }
        group_free(g);
    }
    for (pending *p = b->wait, *n; p; p = n) {
        n = p->next;
        if (b->o.release) b->o.release(b->o.ack_ctx, p->handle);
        free(p);
    }
    strset_free(&b->seen);
    strset_free(&b->dead);
    strset_free(&b->quarantined);
    free(b);
}

void buffer_set_version(buffer *b, uint64_t v)
{
    b->version = v;
    for (group *g = b->groups, *n; g; g = n) {
        n = g->next;
        for (int i = 0; i < g->size; i++)
            if (g->t[i] && too_old(b, g->oldest[i])) {
                evict_group(b, g, i, BUFFER_DROP_STALE, BUFFER_DROP_STALE_GROUP);
                break;
            }
    }
}

static bool zero_variance(const group *g)
{
    for (int i = 1; i < g->size; i++)
        if (g->t[i]->reward != g->t[0]->reward) return false;
    return true;
}

tidal_status buffer_admit(buffer *b, Tidal__V1__Trajectory *t, void *handle)
{
    if (strset_get(&b->seen, t->trajectory_id)) {
        b->c.admitted++;
        drop_one(b, t, handle, BUFFER_DROP_DUPLICATE);
        return TIDAL_OK;
    }
    TRY(strset_put(&b->seen, t->trajectory_id, 1));
    b->c.admitted++;
    int dead = strset_get(&b->dead, t->group_id);
    if (dead) {
        drop_one(b, t, handle, (buffer_drop_reason)(dead - 1));
        return TIDAL_OK;
    }
    group *g = b->groups;
    while (g && strcmp(g->id, t->group_id)) g = g->next;
    if (t->worker_id && strset_get(&b->quarantined, t->worker_id)) { /* its group goes with it */
        if (g) {
            unlink_group(b, g);
            drop_group(b, g, -1, BUFFER_DROP_QUARANTINED, BUFFER_DROP_QUARANTINED);
            group_free(g);
        } else {
            b->c.groups_dropped[BUFFER_DROP_QUARANTINED]++;
            if (strset_put(&b->dead, t->group_id, BUFFER_DROP_QUARANTINED + 1) != TIDAL_OK)
                tidal_log(TIDAL_LOG_WARN, "buffer: %s", tidal_errmsg()); /* late samples then wait: not lost */
        }
        drop_one(b, t, handle, BUFFER_DROP_QUARANTINED);
        return TIDAL_OK;
    }
    const uint64_t oldest = oldest_of(t);
    const bool failed = t->status != TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    if (g && ((int)t->group_size != g->size || g->t[t->sample_index])) {
        /* a second sample at this index, or a disagreeing group size: not a sample of this group */
        drop_one(b, t, handle, BUFFER_DROP_DUPLICATE);
        return TIDAL_OK;
    }
    if (!g && (failed || too_old(b, oldest))) { /* the group dies with its first sample */
        b->c.groups_dropped[failed ? BUFFER_DROP_FAILED : BUFFER_DROP_STALE]++;
        if (strset_put(&b->dead, t->group_id, (failed ? BUFFER_DROP_FAILED : BUFFER_DROP_STALE_GROUP) + 1) != TIDAL_OK)
            tidal_log(TIDAL_LOG_WARN, "buffer: %s", tidal_errmsg()); /* late samples then wait: not lost */
        drop_one(b, t, handle, failed ? BUFFER_DROP_FAILED : BUFFER_DROP_STALE); /* t is consumed: report OK */
        return TIDAL_OK;
    }
    if (!g) {
        g = calloc(1, sizeof *g);
        if (g) {
            g->size = (int)t->group_size;
            g->t = calloc((size_t)g->size, sizeof *g->t);
            g->handle = calloc((size_t)g->size, sizeof *g->handle);
            g->oldest = calloc((size_t)g->size, sizeof *g->oldest);
        }
        if (!g || !g->t || !g->handle || !g->oldest) {
            if (g) group_free(g);
            /* t stays the caller's and its message comes again: forget its id (tag 0 reads as absent) */
            b->c.admitted--;
            (void)strset_put(&b->seen, t->trajectory_id, 0);
            return tidal_fail(TIDAL_ERR_NOMEM, "buffer: out of memory for group %s", t->group_id);
        }
        snprintf(g->id, sizeof g->id, "%s", t->group_id);
        g->first_ms = b->now_ms;
        group **tail = &b->groups;
        while (*tail) tail = &(*tail)->next;
        *tail = g;
        b->c.groups_partial++;
    }
    const int i = (int)t->sample_index;
    g->t[i] = t;
    g->handle[i] = handle;
    g->oldest[i] = oldest;
    g->arrived++;
    b->c.samples_held++;
    if (failed || too_old(b, oldest)) {
        unlink_group(b, g);
        if (failed) drop_group(b, g, i, BUFFER_DROP_FAILED, BUFFER_DROP_FAILED);
        else drop_group(b, g, i, BUFFER_DROP_STALE, BUFFER_DROP_STALE_GROUP);
        group_free(g);
        return TIDAL_OK;
    }
    if (g->arrived < g->size) return TIDAL_OK; /* the bound on partial groups waits for buffer_tick */
    if (b->o.filter_zero_variance && g->size > 1 && zero_variance(g)) {
        unlink_group(b, g);
        drop_group(b, g, -1, BUFFER_DROP_ZERO_VARIANCE, BUFFER_DROP_ZERO_VARIANCE);
        group_free(g);
        return TIDAL_OK;
    }
    g->completed_seq = ++b->seq;
    b->c.groups_partial--;
    b->c.groups_complete++;
    enforce_capacity(b);
    return TIDAL_OK;
}

int buffer_ready(const buffer *b) { return (int)b->c.groups_complete; }

static uint64_t next_rand(buffer *b)
{
    uint64_t z = (b->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double mean_reward(const group *g)
{
    double s = 0;
    for (int i = 0; i < g->size; i++) s += g->t[i]->reward;
    return s / g->size;
}

/* A complete group drawn with P proportional to exp(mean_reward / T): the
 * softmax less its max, so no exp overflows and the best group weighs 1. */
static group *pick_priority(buffer *b)
{
    const double T = b->o.priority_temperature;
    double hi = -INFINITY, total = 0;
    for (group *x = b->groups; x; x = x->next)
        if (x->completed_seq) hi = fmax(hi, mean_reward(x));
    for (group *x = b->groups; x; x = x->next)
        if (x->completed_seq) total += exp((mean_reward(x) - hi) / T);
    double r = (double)(next_rand(b) >> 11) * 0x1p-53 * total; /* uniform in [0, total) */
    group *last = NULL;
    for (group *x = b->groups; x; x = x->next)
        if (x->completed_seq) {
            last = x;
            if ((r -= exp((mean_reward(x) - hi) / T)) < 0) return x;
        }
    return last; /* rounding left r >= 0 at the end */
}

tidal_status buffer_take(buffer *b, int n, buffer_batch *out)
{
    memset(out, 0, sizeof *out);
    buffer_set_version(b, b->version); /* staleness at the take, too */
    if (n < 1 || n > buffer_ready(b))
        return tidal_fail(TIDAL_ERR_INVALID, "buffer: take %d groups, %d are complete", n, buffer_ready(b));
    out->groups = calloc((size_t)n, sizeof *out->groups);
    if (!out->groups) return tidal_fail(TIDAL_ERR_NOMEM, "buffer: out of memory");
    for (int k = 0; k < n; k++) {
        group *pick = NULL;
        if (b->o.sampling == BUFFER_UNIFORM) {
            uint64_t r = next_rand(b) % (uint64_t)buffer_ready(b);
            for (group *x = b->groups; x; x = x->next)
                if (x->completed_seq && r-- == 0) {
                    pick = x;
                    break;
                }
        } else if (b->o.sampling == BUFFER_PRIORITY) {
            pick = pick_priority(b);
        } else {
            for (group *x = b->groups; x; x = x->next)
                if (x->completed_seq && (!pick || (b->o.sampling == BUFFER_FIFO ? x->completed_seq < pick->completed_seq
                                                                                 : x->completed_seq > pick->completed_seq)))
                    pick = x;
        }
        assert(pick);
        unlink_group(b, pick);
        b->c.groups_complete--;
        b->c.samples_held -= (uint64_t)pick->size;
        if (pick->uses) b->c.samples_held_trained -= (uint64_t)pick->size;
        buffer_group *bg = &out->groups[out->n_groups++];
        snprintf(bg->group_id, sizeof bg->group_id, "%s", pick->id);
        bg->n = pick->size;
        bg->uses = pick->uses;
        bg->samples = pick->t; /* ownership moves to the batch; the handles stay with the group */
        bg->priv = pick;
        pick->t = NULL;
        pick->next = NULL;
    }
    return TIDAL_OK;
}

void buffer_trained(buffer *b, buffer_batch *batch, uint64_t step)
{
    for (int k = 0; k < batch->n_groups; k++) {
        buffer_group *bg = &batch->groups[k];
        group *g = bg->priv;
        g->t = bg->samples;
        if (g->uses++) {
            b->c.groups_reused++;
        } else { /* counted once, so the controller's balance holds */
            b->c.trained += (uint64_t)g->size;
            b->c.groups_trained++;
        }
        /* done, or no room: untrained groups are worth more than a reuse */
        if (g->uses >= b->o.reuse || (int)b->c.groups_complete >= b->o.capacity) {
            retire_group(b, g, step);
            continue;
        }
        g->last_step = step; /* back as a complete group, behind those waiting */
        g->completed_seq = ++b->seq;
        group **tail = &b->groups;
        while (*tail) tail = &(*tail)->next;
        *tail = g;
        b->c.groups_complete++;
        b->c.samples_held += (uint64_t)g->size;
        b->c.samples_held_trained += (uint64_t)g->size;
    }
    free(batch->groups);
    memset(batch, 0, sizeof *batch);
}

void buffer_untake(buffer *b, buffer_batch *batch)
{
    for (int k = 0; k < batch->n_groups; k++) {
        buffer_group *bg = &batch->groups[k];
        group *g = bg->priv;
        g->t = bg->samples;
        g->completed_seq = ++b->seq;
        g->next = b->groups;
        b->groups = g;
        b->c.groups_complete++;
        b->c.samples_held += (uint64_t)g->size;
        if (g->uses) b->c.samples_held_trained += (uint64_t)g->size; /* uses: untouched by the take */
    }
    free(batch->groups);
    memset(batch, 0, sizeof *batch);
}

void buffer_checkpointed(buffer *b, uint64_t step)
{
    for (pending **p = &b->wait; *p;) {
        if ((*p)->step <= step) {
            pending *x = *p;
            *p = x->next;
            if (b->o.ack) b->o.ack(b->o.ack_ctx, x->handle, false);
            b->c.acked++;
            free(x);
        } else {
            p = &(*p)->next;
        }
    }
}

tidal_status buffer_remember_trained(buffer *b, const char *trajectory_id)
{
    return strset_put(&b->seen, trajectory_id, 1);
}

void buffer_counts_get(const buffer *b, buffer_counts *c) { *c = b->c; }

static bool has_sample_of(const group *g, const char *worker_id)
{
    for (int i = 0; i < g->size; i++)
        if (g->t && g->t[i] && g->t[i]->worker_id && !strcmp(g->t[i]->worker_id, worker_id)) return true;
    return false;
}

tidal_status buffer_quarantine(buffer *b, const char *worker_id, int *dropped_now)
{
    *dropped_now = 0;
    TRY(strset_put(&b->quarantined, worker_id, 1));
    for (group *g = b->groups, *n; g; g = n) {
        n = g->next;
        if (!has_sample_of(g, worker_id)) continue;
        *dropped_now += !g->uses;
        evict_group(b, g, -1, BUFFER_DROP_QUARANTINED, BUFFER_DROP_QUARANTINED);
    }
    return TIDAL_OK;
}
