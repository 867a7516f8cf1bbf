/* fuzz_group.c - libFuzzer target for the trajectory stream as the trainer
 * reads it: TrajectoryGroup messages (proto/codec.h) admitted into the replay
 * buffer (buffer/buffer.h) the way trainer/loop.c does, each trajectory holding
 * a reference to its message.
 *
 * The input is a sequence of records: one control byte, then a 16-bit
 * little-endian length and that many bytes of a message. The control byte's
 * low bits move the trainer's version, tick the clock (the bound on partial
 * groups: at most 3, 50 ms old) or take and train a batch with a checkpoint.
 * Whatever the bytes: no crash, no leak (ASan), every message that decoded is
 * let go exactly once - acked when all its trajectories had a durable fate,
 * released otherwise - and the buffer's balance holds after every record:
 * admitted = trained + dropped + held - held for reuse.
 *
 * Seeds: tests/fuzz/seeds/fuzz_group/ (a valid group of 8 as one record, made
 * from fuzz_decode's group seed). Run by hand:
 *   fuzz_group -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_group
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buffer/buffer.h"
#include "proto/codec.h"

typedef struct msg_ref {
    int refs;
    int done; /* 1 acked, 2 released */
    int released_any;
} msg_ref;

static long live_msgs;

static void unref(msg_ref *r)
{
    if (r->refs <= 0 || r->done) abort(); /* let go twice */
    if (--r->refs > 0) return;
    r->done = r->released_any ? 2 : 1;
    live_msgs--;
    free(r);
}

static void on_ack(void *ctx, void *handle, bool dropped)
{
    (void)ctx, (void)dropped;
    unref(handle);
}

static void on_release(void *ctx, void *handle)
{
    (void)ctx;
    msg_ref *r = handle;
    r->released_any = 1;
    unref(r);
}

static void check_balance(const buffer *b)
{
    buffer_counts c;
    buffer_counts_get(b, &c);
    uint64_t dropped = 0;
    for (int r = 0; r < BUFFER_DROP__COUNT; r++) dropped += c.dropped[r];
    if (c.admitted != c.trained + dropped + c.samples_held - c.samples_held_trained) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    buffer_opts o = {.max_staleness = 2, .capacity = 4, .reuse = 2, .max_partial = 3, .partial_max_age_ms = 50,
                     .ack = on_ack, .release = on_release};
    buffer *b = NULL;
    if (buffer_create(&o, &b) != TIDAL_OK) abort();
    uint64_t version = 0, now = 0, step = 0;
    live_msgs = 0;
    for (size_t at = 0; at + 3 <= size;) {
        const uint8_t ctl = data[at];
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at) len = size - at;
        Tidal__V1__TrajectoryGroup *g = NULL;
        if (codec_decode_trajectory_group(data + at, len, &g) == TIDAL_OK) {
            msg_ref *r = calloc(1, sizeof *r);
            if (!r) abort();
            r->refs = 1;
            live_msgs++;
            for (size_t i = 0; i < g->n_trajectories; i++) {
                r->refs++;
                if (buffer_admit(b, g->trajectories[i], r) != TIDAL_OK) abort(); /* only out of memory fails */
                g->trajectories[i] = NULL;
            }
            g->n_trajectories = 0;
            tidal__v1__trajectory_group__free_unpacked(g, NULL);
            unref(r);
        }
        at += len;
        if (ctl & 1) buffer_set_version(b, version += ctl >> 6);
        if (ctl & 2) buffer_tick(b, now += (uint64_t)(ctl >> 2 & 15) * 10);
        if ((ctl & 4) && buffer_ready(b) >= 1) {
            buffer_batch batch;
            if (buffer_take(b, 1, &batch) != TIDAL_OK) abort();
            buffer_trained(b, &batch, ++step);
            buffer_set_version(b, version = version > step ? version : step);
            if (ctl & 8) buffer_checkpointed(b, step);
        }
        check_balance(b);
    }
    buffer_free(b);
    if (live_msgs != 0) abort(); /* a message never let go */
    return 0;
}
