/* fuzz_decode.c - libFuzzer target for the wire codec (proto/codec.h).
 *
 * The first input byte picks the message type (modulo 10, in the order of
 * `types` below); the rest is decoded and validated as that type. Whatever
 * the bytes, the codec must return OK or an error, never crash, read out of
 * bounds or leak (ASan + UBSan, leak detection on). A message it accepts must
 * also survive the producer's path: re-encoded, it decodes as valid again, and
 * a trajectory's version runs expand to exactly one version per completion
 * token, and a trajectory group cut into parts holds the same trajectories.
 *
 * Seeds: tests/fuzz/seeds/fuzz_decode/, one valid message per type, written
 * by `TIDAL_FUZZ_SEEDS_OUT=DIR test_codec` (same type order).
 * Run by hand: fuzz_decode -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_decode
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

static const ProtobufCMessageDescriptor *const types[10] = {
    &tidal__v1__prompt__descriptor,          &tidal__v1__trajectory__descriptor,
    &tidal__v1__blob_manifest__descriptor,   &tidal__v1__weights_manifest__descriptor,
    &tidal__v1__env_request__descriptor,     &tidal__v1__env_response__descriptor,
    &tidal__v1__worker_status__descriptor,   &tidal__v1__control__descriptor,
    &tidal__v1__metric__descriptor,          &tidal__v1__trajectory_group__descriptor,
};

/* Properties of a message the codec accepted; a failure is a crash (a bug). */
static void check_accepted(const ProtobufCMessage *m)
{
    void *buf;
    size_t len;
    if (codec_encode(m, &buf, &len) != TIDAL_OK) abort();
    ProtobufCMessage *again;
    tidal_status st = codec_decode(m->descriptor, buf, len, &again);
    free(buf);
    if (st != TIDAL_OK) abort(); /* valid in, valid out */
    protobuf_c_message_free_unpacked(again, NULL);

    if (m->descriptor == &tidal__v1__trajectory__descriptor) {
        const Tidal__V1__Trajectory *t = (const Tidal__V1__Trajectory *)m;
        size_t n = t->n_completion_token_ids, got = 0;
        uint64_t *versions = malloc((n ? n : 1) * sizeof *versions);
        if (!versions) abort();
        st = codec_versions_expand(t->version_values, t->version_runs, t->n_version_runs, versions,
                                   n, &got);
        uint64_t oldest = 0, newest = 0;
        bool any = codec_trajectory_versions(t, &oldest, &newest);
        if (st != TIDAL_OK || got != n || any != (n > 0)) abort();
        if (n && (versions[0] != oldest || versions[n - 1] != newest || oldest < t->min_version))
            abort();
        free(versions);
    }

    /* A whole group in one message, cut into parts of at most half its size
     * (when no trajectory is larger): every part is a valid message, and the
     * parts hold the same trajectories in the same order. */
    if (m->descriptor == &tidal__v1__trajectory_group__descriptor) {
        const Tidal__V1__TrajectoryGroup *g = (const Tidal__V1__TrajectoryGroup *)m;
        if (codec_group_part_count(g) != 1) return;
        codec_parts parts;
        size_t whole = protobuf_c_message_get_packed_size(m);
        if (codec_encode_group_parts(g, whole, &parts) != TIDAL_OK || parts.n != 1) abort();
        codec_parts_free(&parts);
        if (codec_encode_group_parts(g, whole / 2, &parts) != TIDAL_OK) return; /* a trajectory too big */
        size_t next = 0;
        for (size_t p = 0; p < parts.n; p++) {
            Tidal__V1__TrajectoryGroup *part = NULL;
            if (parts.len[p] > whole / 2 || codec_decode_trajectory_group(parts.buf[p], parts.len[p], &part) != TIDAL_OK)
                abort();
            if (codec_group_part_count(part) != parts.n || part->part_index != p) abort();
            for (size_t i = 0; i < part->n_trajectories; i++, next++)
                if (next >= g->n_trajectories ||
                    strcmp(part->trajectories[i]->trajectory_id, g->trajectories[next]->trajectory_id) != 0)
                    abort();
            tidal__v1__trajectory_group__free_unpacked(part, NULL);
        }
        if (next != g->n_trajectories) abort();
        codec_parts_free(&parts);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    const ProtobufCMessageDescriptor *type = types[data[0] % 10];
    ProtobufCMessage *m = NULL;
    tidal_status st = codec_decode(type, data + 1, size - 1, &m);
    if (st == TIDAL_OK) {
        if (!m || m->descriptor != type) abort();
        check_accepted(m);
        protobuf_c_message_free_unpacked(m, NULL);
    } else if (m != NULL || (st != TIDAL_ERR_DECODE && st != TIDAL_ERR_INVALID)) {
        abort(); /* errors leave nothing behind and are one of the two kinds */
    }
    return 0;
}
