/* codec.c - decode + validate, encode, and per-token version helpers for the
 * wire messages (see codec.h; the rules are docs/protocol.md's).
 *
 * Validation runs in two passes over a message:
 *   1. a generic walk over the protoc-c descriptors: every string (nested
 *      messages and map keys included) is valid UTF-8 and every enum value is
 *      one the schema names - proto3 lets both through on the wire;
 *   2. the rules of the message's type (ids, lengths that must agree, finite
 *      numbers, enums that must be set).
 * Each failure is one tidal_fail(TIDAL_ERR_INVALID, ...) whose text starts with
 * the message kind and its id ("trajectory t-7: ...") and names the field.
 */
#include "proto/codec.h"

#include "base/digest.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- failure text */

/* What is being validated, as the prefix of every failure message:
 * "trajectory t-7", "weights manifest v3: blob 3". */
typedef struct vctx {
    char what[160];
} vctx;

/* Copy at most 48 bytes of an id for a message, '?' for anything that is not
 * visible ASCII, so hostile ids cannot garble the log line. */
static void sanitize(char *out, size_t cap, const char *id)
{
    assert(cap > 4);
    size_t n = 0;
    for (const char *s = id ? id : ""; *s && n < 48 && n + 4 < cap; s++)
        out[n++] = (*s > 0x20 && *s < 0x7f) ? *s : '?';
    if (id && strlen(id) > n) { out[n++] = '.'; out[n++] = '.'; out[n++] = '.'; }
    out[n] = '\0';
}

/* c->what = "[parent: ]kind[ id]". */
static void label(vctx *c, const char *parent, const char *kind, const char *id)
{
    char safe[64];
    sanitize(safe, sizeof safe, id);
    snprintf(c->what, sizeof c->what, "%s%s%s%s%s", parent ? parent : "", parent ? ": " : "",
             kind, safe[0] ? " " : "", safe);
}

__attribute__((format(printf, 2, 3)))
static tidal_status bad(const vctx *c, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: %s", c->what, text);
}

static const char *str(const char *s) { return s ? s : ""; }

/* "is NaN", "is inf" or "is -inf" for a non-finite x. */
static const char *nonfinite(double x)
{
    return isnan(x) ? "is NaN" : x > 0 ? "is inf" : "is -inf";
}

/* ---------------------------------------------------------------- field rules */

/* Ids (prompt, group, trajectory): 1..255 bytes of visible ASCII, so they fit
 * a Nats-Msg-Id header and a log line unchanged. */
static tidal_status need_id(const vctx *c, const char *field, const char *s)
{
    size_t n = strlen(str(s));
    if (n == 0) return bad(c, "%s is empty", field);
    if (n > CODEC_MAX_ID_BYTES) return bad(c, "%s has %zu bytes (max %u)", field, n, CODEC_MAX_ID_BYTES);
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return bad(c, "%s has a byte that is not visible ASCII at %zu", field, i);
    return TIDAL_OK;
}

/* Names that become one subject token (env, role) or a blob name:
 * [A-Za-z0-9_-]{1,127}. Empty passes when not required. */
static tidal_status need_name(const vctx *c, const char *field, const char *s, bool required)
{
    size_t n = strlen(str(s));
    if (n == 0) return required ? bad(c, "%s is empty", field) : TIDAL_OK;
    if (n > CODEC_MAX_NAME_BYTES)
        return bad(c, "%s has %zu bytes (max %u)", field, n, CODEC_MAX_NAME_BYTES);
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return bad(c, "%s \"%.64s\" has a character outside [A-Za-z0-9_-] at %zu", field, s, i);
    }
    return TIDAL_OK;
}

tidal_status codec_check_name(const char *what, const char *s)
{
    vctx c;
    snprintf(c.what, sizeof c.what, "%s", what);
    return need_name(&c, "name", s, true);
}

/* Worker ids are keys of the TIDAL_J_WORKERS bucket: NATS KV key characters
 * [-/_=.A-Za-z0-9], 1..255 bytes, not starting or ending with '.'. */
static tidal_status need_kv_key(const vctx *c, const char *field, const char *s)
{
    size_t n = strlen(str(s));
    if (n == 0) return bad(c, "%s is empty", field);
    if (n > CODEC_MAX_ID_BYTES) return bad(c, "%s has %zu bytes (max %u)", field, n, CODEC_MAX_ID_BYTES);
    if (s[0] == '.' || s[n - 1] == '.') return bad(c, "%s \"%.64s\" starts or ends with '.'", field, s);
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("-/_=.", ch)))
            return bad(c, "%s \"%.64s\" has a character outside [-/_=.A-Za-z0-9] at %zu", field, s, i);
    }
    return TIDAL_OK;
}

static tidal_status need_finite(const vctx *c, const char *field, double x)
{
    return isfinite(x) ? TIDAL_OK : bad(c, "%s %s", field, nonfinite(x));
}

/* Finite and >= 0 (durations, rates, temperatures). */
static tidal_status need_nonneg(const vctx *c, const char *field, double x)
{
    TRY(need_finite(c, field, x));
    return x >= 0 ? TIDAL_OK : bad(c, "%s = %g < 0", field, x);
}

static tidal_status need_digest(const vctx *c, const char *field, ProtobufCBinaryData b)
{
    return b.len == 32 ? TIDAL_OK : bad(c, "%s has %zu bytes, a digest has 32", field, b.len);
}

/* The key and value of a map<string, double> entry (protoc-c makes each map a
 * repeated entry message with fields key = 1 and value = 2). */
static void map_entry(const ProtobufCMessage *e, const char **key, double *value)
{
    const ProtobufCFieldDescriptor *fk = protobuf_c_message_descriptor_get_field(e->descriptor, 1);
    const ProtobufCFieldDescriptor *fv = protobuf_c_message_descriptor_get_field(e->descriptor, 2);
    assert(fk && fk->type == PROTOBUF_C_TYPE_STRING && fv && fv->type == PROTOBUF_C_TYPE_DOUBLE);
    *key = str(*(char *const *)((const char *)e + fk->offset));
    memcpy(value, (const char *)e + fv->offset, sizeof *value);
}

/* A map<string, double>: at most CODEC_MAX_MAP_ENTRIES entries, keys
 * non-empty and distinct, values finite unless `allow_nonfinite`. */
static tidal_status need_map(const vctx *c, const char *field, void *const *entries, size_t n,
                             bool allow_nonfinite)
{
    if (n > CODEC_MAX_MAP_ENTRIES)
        return bad(c, "%s has %zu entries (max %u)", field, n, CODEC_MAX_MAP_ENTRIES);
    for (size_t i = 0; i < n; i++) {
        const char *key;
        double value;
        map_entry(entries[i], &key, &value);
        if (!key[0]) return bad(c, "%s has an empty key", field);
        if (!allow_nonfinite && !isfinite(value))
            return bad(c, "%s[\"%.64s\"] %s", field, key, nonfinite(value));
        for (size_t j = 0; j < i; j++) {
            const char *other;
            double unused;
            map_entry(entries[j], &other, &unused);
            if (!strcmp(key, other)) return bad(c, "%s has the key \"%.64s\" twice", field, key);
        }
    }
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- generic walk */

/* Offset of the first byte that breaks UTF-8 (overlongs, surrogates and code
 * points past U+10FFFF included), or -1 when s is valid. */
static long utf8_error(const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *start = p;
    while (*p) {
        unsigned char b = *p;
        int more;
        uint32_t cp;
        if (b < 0x80) { p++; continue; }
        if (b >= 0xc2 && b <= 0xdf) { more = 1; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) { more = 2; cp = b & 0x0f; }
        else if (b >= 0xf0 && b <= 0xf4) { more = 3; cp = b & 0x07; }
        else return (long)(p - start);
        for (int k = 1; k <= more; k++) {
            if ((p[k] & 0xc0) != 0x80) return (long)(p - start);
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return (long)(p - start);
        p += more + 1;
    }
    return -1;
}

static tidal_status walk(const vctx *c, const ProtobufCMessage *m, const char *path);

/* Check one value of field f (element i of a repeated field, or i < 0). */
static tidal_status walk_value(const vctx *c, const ProtobufCFieldDescriptor *f, const void *slot,
                               const char *path, long i)
{
    char name[128];
    if (i >= 0) snprintf(name, sizeof name, "%s%s%s[%ld]", path, path[0] ? "." : "", f->name, i);
    else snprintf(name, sizeof name, "%s%s%s", path, path[0] ? "." : "", f->name);

    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)slot;
        long at = s ? utf8_error(s) : -1;
        if (at >= 0) return bad(c, "%s is not valid UTF-8 (byte %ld)", name, at);
        return TIDAL_OK;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int v;
        memcpy(&v, slot, sizeof v);
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (!protobuf_c_enum_descriptor_get_value(ed, v))
            return bad(c, "%s %d is not a known %s", name, v, ed->short_name);
        return TIDAL_OK;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)slot;
        if (!sub) return i >= 0 ? bad(c, "%s is null", name) : TIDAL_OK;
        return walk(c, sub, name);
    }
    default:
        return TIDAL_OK;
    }
}

/* Pass 1: strings are UTF-8 and enums known, through nested messages. */
static tidal_status walk(const vctx *c, const ProtobufCMessage *m, const char *path)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof which);
            if (which != f->id) continue;
        }
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            TRY(walk_value(c, f, base + f->offset, path, -1));
            continue;
        }
        size_t n;
        const char *arr;
        memcpy(&n, base + f->quantifier_offset, sizeof n);
        memcpy(&arr, base + f->offset, sizeof arr);
        if (n && !arr) return bad(c, "%s has %zu entries and no array", f->name, n);
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_ENUM &&
            f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        size_t size = f->type == PROTOBUF_C_TYPE_ENUM ? sizeof(int) : sizeof(void *);
        for (size_t i = 0; i < n; i++) TRY(walk_value(c, f, arr + i * size, path, (long)i));
    }
    return TIDAL_OK;
}

/* True when m or a message inside it kept an unknown field numbered 0.
 * protobuf-c 1.4 accepts field number 0 (invalid protobuf) when the tag is
 * written as an overlong varint, then packs it back in a form it refuses;
 * such bytes are not a message. */
static bool has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned k = 0; k < m->n_unknown_fields; k++)
        if (m->unknown_fields[k].tag == 0) return true;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            const ProtobufCMessage *sub;
            memcpy(&sub, base + f->offset, sizeof sub);
            if (sub && has_field_zero(sub)) return true;
            continue;
        }
        size_t n;
        ProtobufCMessage *const *arr;
        memcpy(&n, base + f->quantifier_offset, sizeof n);
        memcpy(&arr, base + f->offset, sizeof arr);
        for (size_t i = 0; i < n; i++)
            if (arr[i] && has_field_zero(arr[i])) return true;
    }
    return false;
}

/* The start of every top-level validation: the schema version, then pass 1. */
static tidal_status begin(const vctx *c, const ProtobufCMessage *m, uint32_t schema_version)
{
    if (schema_version > CODEC_SCHEMA_VERSION)
        return bad(c, "schema_version %" PRIu32 " not supported (max %u)", schema_version,
                   CODEC_SCHEMA_VERSION);
    return walk(c, m, "");
}

/* ---------------------------------------------------------------- per-type rules */

/* A group's size: 1 .. CODEC_MAX_GROUP_SIZE (prompts, trajectories, groups). */
static tidal_status need_group_size(const vctx *c, uint32_t group_size)
{
    if (group_size < 1 || group_size > CODEC_MAX_GROUP_SIZE)
        return bad(c, "group_size %" PRIu32 " is outside 1..%u", group_size, CODEC_MAX_GROUP_SIZE);
    return TIDAL_OK;
}

/* Samples first .. first + count - 1 (count >= 1) lie inside a group of group_size. */
static tidal_status need_samples_in_group(const vctx *c, uint32_t first, uint32_t count, uint32_t group_size)
{
    if ((uint64_t)first + count > group_size)
        return bad(c, "samples %" PRIu32 "..%" PRIu64 " are outside the group of %" PRIu32, first,
                   (uint64_t)first + count - 1, group_size);
    return TIDAL_OK;
}

static tidal_status v_sampling(const vctx *c, const Tidal__V1__SamplingParams *s)
{
    TRY(need_nonneg(c, "sampling.temperature", s->temperature));
    TRY(need_finite(c, "sampling.top_p", s->top_p));
    if (s->top_p < 0 || s->top_p > 1) return bad(c, "sampling.top_p %g is outside [0, 1]", s->top_p);
    for (size_t i = 0; i < s->n_stop; i++)
        if (!str(s->stop[i])[0]) return bad(c, "sampling.stop[%zu] is empty", i);
    return TIDAL_OK;
}

static tidal_status v_prompt(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__Prompt *p = (const Tidal__V1__Prompt *)m;
    vctx c;
    label(&c, parent, "prompt", p->prompt_id);
    TRY(begin(&c, m, p->schema_version));
    TRY(need_id(&c, "prompt_id", p->prompt_id));
    TRY(need_id(&c, "group_id", p->group_id));
    TRY(need_group_size(&c, p->group_size));
    if (p->sample_count < 1) return bad(&c, "sample_count is 0");
    TRY(need_samples_in_group(&c, p->sample_index, p->sample_count, p->group_size));
    if (!str(p->text)[0] && p->n_token_ids == 0) return bad(&c, "has neither text nor token_ids");
    TRY(need_name(&c, "env", p->env, false));
    if (p->sampling) TRY(v_sampling(&c, p->sampling));
    if (p->max_tokens < 1 || p->max_tokens > CODEC_MAX_TOKENS)
        return bad(&c, "max_tokens %" PRIu32 " is outside 1..%u", p->max_tokens, CODEC_MAX_TOKENS);
    return TIDAL_OK;
}

/* The run-length encoded versions against the completion and min_version. */
static tidal_status v_versions(const vctx *c, const Tidal__V1__Trajectory *t)
{
    if (t->n_version_values != t->n_version_runs)
        return bad(c, "version_values has %zu entries, version_runs %zu", t->n_version_values,
                   t->n_version_runs);
    uint64_t covered = 0;
    for (size_t r = 0; r < t->n_version_runs; r++) {
        if (t->version_runs[r] == 0) return bad(c, "version run %zu has length 0", r);
        if (r > 0 && t->version_values[r] < t->version_values[r - 1])
            return bad(c, "version run %zu has version %" PRIu64 " after %" PRIu64
                          " (versions never go back)",
                       r, t->version_values[r], t->version_values[r - 1]);
        covered += t->version_runs[r];
    }
    if (covered != t->n_completion_token_ids)
        return bad(c, "version runs cover %" PRIu64 " tokens, completion has %zu", covered,
                   t->n_completion_token_ids);
    if (t->n_version_values > 0 && t->version_values[0] < t->min_version)
        return bad(c, "version %" PRIu64 " is older than min_version %" PRIu64, t->version_values[0],
                   t->min_version);
    return TIDAL_OK;
}

/* The rules of one trajectory after pass 1 (begin), which a group has run over
 * all of its trajectories at once. */
static tidal_status v_trajectory_rules(const vctx *c_, const Tidal__V1__Trajectory *t)
{
    vctx c = *c_;
    if (t->schema_version > CODEC_SCHEMA_VERSION)
        return bad(&c, "schema_version %" PRIu32 " not supported (max %u)", t->schema_version,
                   CODEC_SCHEMA_VERSION);
    TRY(need_id(&c, "trajectory_id", t->trajectory_id));
    TRY(need_id(&c, "prompt_id", t->prompt_id));
    TRY(need_id(&c, "group_id", t->group_id));
    TRY(need_kv_key(&c, "worker_id", t->worker_id));
    TRY(need_group_size(&c, t->group_size));
    if (t->sample_index >= t->group_size)
        return bad(&c, "sample_index %" PRIu32 " is outside the group of %" PRIu32, t->sample_index,
                   t->group_size);

    bool ok = t->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    if (t->status == TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_UNSPECIFIED)
        return bad(&c, "status is unspecified");
    if (t->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
        return bad(&c, "finish_reason is unspecified");
    if (ok && t->finish_reason == TIDAL__V1__FINISH_REASON__FINISH_REASON_ERROR)
        return bad(&c, "status ok with finish_reason error");
    if (!ok && !str(t->error)[0])
        return bad(&c, "status %s without an error text",
                   protobuf_c_enum_descriptor_get_value(&tidal__v1__trajectory_status__descriptor,
                                                        (int)t->status)->name);
    if (ok && t->n_prompt_token_ids == 0) return bad(&c, "prompt_token_ids is empty");

    size_t n = t->n_completion_token_ids;
    if (t->n_logprobs != n)
        return bad(&c, "logprobs has %zu entries for %zu completion tokens", t->n_logprobs, n);
    if (t->n_loss_mask != n)
        return bad(&c, "loss_mask has %zu entries for %zu completion tokens", t->n_loss_mask, n);
    TRY(v_versions(&c, t));
    for (size_t i = 0; i < n; i++) {
        float lp = t->logprobs[i];
        if (isnan(lp)) return bad(&c, "logprob[%zu] is NaN", i);
        if (lp > 0) return bad(&c, "logprob[%zu] = %g > 0", i, (double)lp);
        if (isinf(lp) && t->loss_mask[i]) return bad(&c, "logprob[%zu] is -inf on a trained token", i);
    }

    TRY(need_finite(&c, "reward", t->reward));
    TRY(need_map(&c, "reward_components", (void *const *)t->reward_components,
                 t->n_reward_components, false));
    if (t->timings) {
        TRY(need_nonneg(&c, "timings.queue_ms", t->timings->queue_ms));
        TRY(need_nonneg(&c, "timings.sync_ms", t->timings->sync_ms));
        TRY(need_nonneg(&c, "timings.generate_ms", t->timings->generate_ms));
        TRY(need_nonneg(&c, "timings.env_ms", t->timings->env_ms));
        TRY(need_nonneg(&c, "timings.total_ms", t->timings->total_ms));
    }
    TRY(need_nonneg(&c, "temperature", t->temperature));
    return TIDAL_OK;
}

static tidal_status v_trajectory(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__Trajectory *t = (const Tidal__V1__Trajectory *)m;
    vctx c;
    label(&c, parent, "trajectory", t->trajectory_id);
    TRY(begin(&c, m, t->schema_version));
    return v_trajectory_rules(&c, t);
}

uint32_t codec_group_sample_count(const Tidal__V1__TrajectoryGroup *g)
{
    return g->sample_count ? g->sample_count : g->group_size;
}

uint32_t codec_group_part_count(const Tidal__V1__TrajectoryGroup *g)
{
    return g->part_count ? g->part_count : 1;
}

/* One part of a group on its own: the header, then each trajectory by its own
 * rules and as a member of this group and prompt, sample indices unique inside
 * the asked range. What only the whole group can show (the count across parts,
 * indices unique across parts) the buffer checks as it assembles. */
static tidal_status v_trajectory_group(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__TrajectoryGroup *g = (const Tidal__V1__TrajectoryGroup *)m;
    vctx c;
    label(&c, parent, "trajectory group", g->group_id);
    TRY(begin(&c, m, g->schema_version));
    TRY(need_id(&c, "group_id", g->group_id));
    TRY(need_id(&c, "prompt_id", g->prompt_id));
    TRY(need_kv_key(&c, "worker_id", g->worker_id));
    if (g->attempt < 1) return bad(&c, "attempt is 0 (the first delivery is 1)");
    TRY(need_group_size(&c, g->group_size));
    const uint32_t count = codec_group_sample_count(g), parts = codec_group_part_count(g);
    TRY(need_samples_in_group(&c, g->sample_index, count, g->group_size));
    if (parts > count) return bad(&c, "part_count %" PRIu32 " exceeds the %" PRIu32 " samples", parts, count);
    if (g->part_index >= parts)
        return bad(&c, "part_index %" PRIu32 " is outside 0..%" PRIu32, g->part_index, parts - 1);
    if (g->n_trajectories < 1) return bad(&c, "part %" PRIu32 " holds no trajectory", g->part_index);
    if (g->n_trajectories > count)
        return bad(&c, "%zu trajectories for %" PRIu32 " samples", g->n_trajectories, count);
    if (parts == 1 && g->n_trajectories != count)
        return bad(&c, "%zu trajectories in a one-part answer for %" PRIu32 " samples", g->n_trajectories, count);

    uint8_t seen[CODEC_MAX_GROUP_SIZE / 8];
    memset(seen, 0, count / 8 + 1);
    for (size_t i = 0; i < g->n_trajectories; i++) {
        const Tidal__V1__Trajectory *t = g->trajectories[i];
        vctx tc;
        char field[48];
        snprintf(field, sizeof field, "trajectories[%zu]", i);
        label(&tc, c.what, field, t->trajectory_id);
        TRY(v_trajectory_rules(&tc, t));
        if (strcmp(t->group_id, g->group_id) != 0) return bad(&tc, "group_id is not the group's");
        if (strcmp(t->prompt_id, g->prompt_id) != 0) return bad(&tc, "prompt_id is not the group's");
        if (strcmp(t->worker_id, g->worker_id) != 0) return bad(&tc, "worker_id is not the group's");
        if (t->group_size != g->group_size)
            return bad(&tc, "group_size %" PRIu32 ", the group's is %" PRIu32, t->group_size, g->group_size);
        if (t->eval != g->eval) return bad(&tc, "eval differs from the group's");
        if (t->sample_index < g->sample_index || t->sample_index - g->sample_index >= count)
            return bad(&tc, "sample_index %" PRIu32 " is outside the prompt's samples %" PRIu32 "..%" PRIu32,
                       t->sample_index, g->sample_index, g->sample_index + count - 1);
        uint32_t k = t->sample_index - g->sample_index;
        if (seen[k / 8] & (1u << (k % 8))) return bad(&tc, "sample_index %" PRIu32 " appears twice", t->sample_index);
        seen[k / 8] |= (uint8_t)(1u << (k % 8));
    }
    return TIDAL_OK;
}

/* chunk_count = ceil(bytes / chunk_bytes), without overflow. */
static uint64_t chunks_for(uint64_t bytes, uint32_t chunk_bytes)
{
    assert(chunk_bytes > 0);
    return bytes / chunk_bytes + (bytes % chunk_bytes != 0);
}

/* A subject prefix: dot-separated non-empty tokens of visible ASCII without
 * wildcards, at most 200 bytes. */
static tidal_status need_subject(const vctx *c, const char *field, const char *s)
{
    size_t n = strlen(str(s));
    if (n == 0) return bad(c, "%s is empty", field);
    if (n > 200) return bad(c, "%s has %zu bytes (max 200)", field, n);
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool token_start = i == 0 || s[i - 1] == '.';
        if (ch <= 0x20 || ch >= 0x7f || ch == '*' || ch == '>' || (ch == '.' && token_start) ||
            (ch == '.' && i == n - 1))
            return bad(c, "%s \"%.64s\" is not a subject without wildcards (byte %zu)", field, s, i);
    }
    return TIDAL_OK;
}

static tidal_status v_blob_rules(const vctx *c, const Tidal__V1__BlobManifest *b)
{
    TRY(need_name(c, "name", b->name, true));
    TRY(need_subject(c, "subject_prefix", b->subject_prefix));
    if (b->chunk_bytes < 1 || b->chunk_bytes > CODEC_MAX_CHUNK_BYTES)
        return bad(c, "chunk_bytes %" PRIu32 " is outside 1..%u", b->chunk_bytes, CODEC_MAX_CHUNK_BYTES);
    uint64_t want = chunks_for(b->bytes, b->chunk_bytes);
    if (b->chunk_count != want)
        return bad(c, "chunk_count %" PRIu32 ", but %" PRIu64 " bytes in chunks of %" PRIu32
                      " make %" PRIu64,
                   b->chunk_count, b->bytes, b->chunk_bytes, want);
    TRY(need_digest(c, "digest", b->digest));
    if (b->n_chunk_digest != b->chunk_count)
        return bad(c, "chunk_digest has %zu entries for %" PRIu32 " chunks", b->n_chunk_digest,
                   b->chunk_count);
    for (size_t i = 0; i < b->n_chunk_digest; i++)
        if (b->chunk_digest[i].len != 32)
            return bad(c, "chunk_digest[%zu] has %zu bytes, a digest has 32", i,
                       b->chunk_digest[i].len);
    return TIDAL_OK;
}

static tidal_status v_blob_manifest(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__BlobManifest *b = (const Tidal__V1__BlobManifest *)m;
    vctx c;
    label(&c, parent, "blob manifest", b->name);
    TRY(begin(&c, m, b->schema_version));
    return v_blob_rules(&c, b);
}

static tidal_status v_weights_manifest(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__WeightsManifest *w = (const Tidal__V1__WeightsManifest *)m;
    vctx c;
    char v[32];
    snprintf(v, sizeof v, "v%" PRIu64, w->version);
    label(&c, parent, "weights manifest", v);
    TRY(begin(&c, m, w->schema_version));
    const char *dtype = str(w->dtype);
    if (strcmp(dtype, "fp32") && strcmp(dtype, "bf16") && strcmp(dtype, "fp16"))
        return bad(&c, "dtype \"%.32s\" is not fp32, bf16 or fp16", dtype);
    if (w->bytes == 0) return bad(&c, "bytes is 0");
    TRY(need_digest(&c, "digest", w->digest));
    const char *alg = str(w->digest_algorithm);
    if (!alg[0]) /* field 30 came with BLAKE3; before it the digests were SHA-256 */
        return bad(&c, "no digest_algorithm: written by a tidal whose digests were SHA-256; the trainer and the "
                       "workers must run the same tidal");
    if (strcmp(alg, DIGEST_ALGORITHM))
        return bad(&c, "digest_algorithm \"%.32s\" is not " DIGEST_ALGORITHM, alg);
    if (w->signature.len != 0 && w->signature.len != 64) /* Ed25519; empty = unsigned (the worker refuses it) */
        return bad(&c, "signature has %zu bytes, an Ed25519 signature has 64", w->signature.len);

    const char *transport = str(w->transport);
    if (!strcmp(transport, "bus")) {
        if (!w->blob) return bad(&c, "transport bus without a blob manifest");
        if (str(w->url)[0]) return bad(&c, "transport bus with a url");
        if (w->http_chunk_bytes || w->n_http_chunk_digest) return bad(&c, "transport bus with http chunks");
        const Tidal__V1__BlobManifest *b = w->blob;
        if (b->schema_version > CODEC_SCHEMA_VERSION)
            return bad(&c, "blob schema_version %" PRIu32 " not supported (max %u)", b->schema_version,
                       CODEC_SCHEMA_VERSION);
        vctx cb;
        label(&cb, c.what, "blob", b->name);
        TRY(v_blob_rules(&cb, b));
        if (strcmp(str(b->name), v + 1)) /* the blob is named by the decimal version */
            return bad(&c, "blob name \"%.64s\" is not the version %" PRIu64, str(b->name), w->version);
        if (b->bytes != w->bytes)
            return bad(&c, "blob has %" PRIu64 " bytes, manifest %" PRIu64, b->bytes, w->bytes);
        if (b->chunk_count != w->chunk_count)
            return bad(&c, "blob has %" PRIu32 " chunks, manifest %" PRIu32, b->chunk_count,
                       w->chunk_count);
        if (memcmp(b->digest.data, w->digest.data, 32))
            return bad(&c, "blob digest differs from the manifest's");
    } else if (!strcmp(transport, "http")) {
        /* the image at url, in ranges whose hashes the signature covers; the
         * bus copy is blob "<version>", checked against digest (no blob here) */
        const char *url = str(w->url);
        if (strncmp(url, "http://", 7) || !url[7]) return bad(&c, "transport http with url \"%.64s\" (not http://...)", url);
        if (w->blob) return bad(&c, "transport http with a blob manifest");
        if (w->chunk_count != 0) return bad(&c, "transport http with chunk_count %" PRIu32, w->chunk_count);
        if (w->http_chunk_bytes == 0) return bad(&c, "transport http with http_chunk_bytes 0");
        const uint64_t ranges = (w->bytes + w->http_chunk_bytes - 1) / w->http_chunk_bytes;
        if (w->n_http_chunk_digest != ranges)
            return bad(&c, "transport http: %zu http_chunk_digest for %" PRIu64 " ranges of %" PRIu32 " bytes",
                       w->n_http_chunk_digest, ranges, w->http_chunk_bytes);
        for (size_t i = 0; i < w->n_http_chunk_digest; i++)
            if (w->http_chunk_digest[i].len != 32)
                return bad(&c, "http_chunk_digest[%zu] has %zu bytes, not 32", i, w->http_chunk_digest[i].len);
    } else if (!strcmp(transport, "dir")) {
        if (!str(w->dir)[0]) return bad(&c, "transport dir without a dir");
        if (w->blob) return bad(&c, "transport dir with a blob manifest");
        if (str(w->url)[0]) return bad(&c, "transport dir with a url");
        if (w->chunk_count != 0) return bad(&c, "transport dir with chunk_count %" PRIu32, w->chunk_count);
    } else {
        return bad(&c, "transport \"%.32s\" is neither bus, http nor dir", transport);
    }
    if (str(w->dir)[0] && strcmp(transport, "dir")) return bad(&c, "transport %.32s with a dir", transport);
    if (w->live && (strcmp(transport, "bus") || w->delta || w->full_every))
        return bad(&c, "live on transport %.32s%s (only a plain bus blob is broadcast)", transport,
                   w->delta || w->full_every ? " with delta versions" : "");
    if (w->delta) {
        if (strcmp(transport, "bus")) return bad(&c, "a delta on transport %.32s (deltas go on the bus)", transport);
        if (w->full_every == 0) return bad(&c, "a delta with full_every 0");
        if (w->delta_base >= w->version)
            return bad(&c, "delta_base %" PRIu64 " is not before the version", w->delta_base);
        if (w->n_chain == 0 || w->chain[w->n_chain - 1] != w->delta_base)
            return bad(&c, "the delta's chain does not end at delta_base %" PRIu64, w->delta_base);
        for (size_t i = 1; i < w->n_chain; i++)
            if (w->chain[i] <= w->chain[i - 1]) return bad(&c, "the delta's chain is not increasing at %zu", i);
        if (w->image_bytes == 0) return bad(&c, "a delta with image_bytes 0");
        TRY(need_digest(&c, "image_digest", w->image_digest));
    } else if (w->delta_base || w->n_chain || w->image_bytes || w->image_digest.len) {
        return bad(&c, "delta fields on a full image");
    }
    return TIDAL_OK;
}

static tidal_status v_env_request(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__EnvRequest *r = (const Tidal__V1__EnvRequest *)m;
    vctx c;
    label(&c, parent, "env request", r->session);
    TRY(begin(&c, m, r->schema_version));
    if (r->op != TIDAL__V1__ENV_OP__ENV_OP_RESET && r->op != TIDAL__V1__ENV_OP__ENV_OP_STEP)
        return bad(&c, "op is unspecified");
    TRY(need_name(&c, "env", r->env, false));
    return TIDAL_OK;
}

static tidal_status v_env_response(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__EnvResponse *r = (const Tidal__V1__EnvResponse *)m;
    vctx c;
    label(&c, parent, "env response", NULL);
    TRY(begin(&c, m, r->schema_version));
    TRY(need_finite(&c, "reward", r->reward));
    TRY(need_map(&c, "metrics", (void *const *)r->metrics, r->n_metrics, false));
    return TIDAL_OK;
}

static tidal_status v_worker_status(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__WorkerStatus *w = (const Tidal__V1__WorkerStatus *)m;
    vctx c;
    label(&c, parent, "worker status", w->worker_id);
    TRY(begin(&c, m, w->schema_version));
    TRY(need_kv_key(&c, "worker_id", w->worker_id));
    if (w->state == TIDAL__V1__WORKER_STATE__WORKER_STATE_UNSPECIFIED)
        return bad(&c, "state is unspecified");
    TRY(need_nonneg(&c, "tokens_per_s", w->tokens_per_s));
    if (w->started_unix_ms && w->updated_unix_ms && w->updated_unix_ms < w->started_unix_ms)
        return bad(&c, "updated_unix_ms %" PRIu64 " is before started_unix_ms %" PRIu64,
                   w->updated_unix_ms, w->started_unix_ms);
    if (w->errors > w->trajectories)
        return bad(&c, "errors %" PRIu64 " > trajectories %" PRIu64, w->errors, w->trajectories);
    return TIDAL_OK;
}

static tidal_status v_control(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__Control *k = (const Tidal__V1__Control *)m;
    vctx c;
    label(&c, parent, "control", NULL);
    TRY(begin(&c, m, k->schema_version));
    if (k->command == TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_UNSPECIFIED)
        return bad(&c, "command is unspecified");
    if (k->command == TIDAL__V1__CONTROL_COMMAND__CONTROL_COMMAND_QUARANTINE) /* one worker, never everyone */
        TRY(need_kv_key(&c, "target", k->target));
    return TIDAL_OK;
}

static tidal_status v_metric(const ProtobufCMessage *m, const char *parent)
{
    const Tidal__V1__Metric *k = (const Tidal__V1__Metric *)m;
    vctx c;
    label(&c, parent, "metric", k->role);
    TRY(begin(&c, m, k->schema_version));
    TRY(need_name(&c, "role", k->role, true));
    TRY(need_nonneg(&c, "time", k->time));
    TRY(need_map(&c, "values", (void *const *)k->values, k->n_values, true));
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- dispatch */

typedef tidal_status (*validator)(const ProtobufCMessage *m, const char *parent);

static const struct {
    const ProtobufCMessageDescriptor *desc;
    validator check;
} types[] = {
    {&tidal__v1__prompt__descriptor, v_prompt},
    {&tidal__v1__trajectory__descriptor, v_trajectory},
    {&tidal__v1__trajectory_group__descriptor, v_trajectory_group},
    {&tidal__v1__blob_manifest__descriptor, v_blob_manifest},
    {&tidal__v1__weights_manifest__descriptor, v_weights_manifest},
    {&tidal__v1__env_request__descriptor, v_env_request},
    {&tidal__v1__env_response__descriptor, v_env_response},
    {&tidal__v1__worker_status__descriptor, v_worker_status},
    {&tidal__v1__control__descriptor, v_control},
    {&tidal__v1__metric__descriptor, v_metric},
};

static validator find_validator(const ProtobufCMessageDescriptor *desc)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].desc == desc) return types[i].check;
    return NULL;
}

tidal_status codec_validate(const ProtobufCMessage *m)
{
    assert(m && m->descriptor);
    validator check = find_validator(m->descriptor);
    if (!check)
        return tidal_fail(TIDAL_ERR_INVALID, "codec: %s is not a top-level tidal message",
                          m->descriptor->name);
    return check(m, NULL);
}

tidal_status codec_decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                          ProtobufCMessage **out)
{
    assert(desc && out);
    *out = NULL;
    if (!find_validator(desc))
        return tidal_fail(TIDAL_ERR_INVALID, "codec: %s is not a top-level tidal message", desc->name);
    if (!data && len)
        return tidal_fail(TIDAL_ERR_INVALID, "codec: %s: no data for %zu bytes", desc->name, len);
    static const uint8_t empty[1];
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data ? data : empty);
    if (!m)
        return tidal_fail(TIDAL_ERR_DECODE, "%s: %zu bytes are not a valid message", desc->short_name,
                          len);
    tidal_status st = TIDAL_OK;
    if (has_field_zero(m)) {
        st = tidal_fail(TIDAL_ERR_DECODE, "%s: %zu bytes hold a field numbered 0", desc->short_name, len);
        goto cleanup;
    }
    TRY_GOTO(codec_validate(m));
    *out = m;
    m = NULL;
cleanup:
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    return st;
}

tidal_status codec_encode(const ProtobufCMessage *m, void **buf, size_t *len)
{
    assert(m && buf && len);
    *buf = NULL;
    *len = 0;
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return tidal_fail(TIDAL_ERR_NOMEM, "codec: encode %s: %zu bytes", m->descriptor->short_name,
                          size);
    size_t written = protobuf_c_message_pack(m, p);
    assert(written == size);
    *buf = p;
    *len = written;
    return TIDAL_OK;
}

#define DECODE_AS(fn, type, desc)                                                 \
    tidal_status fn(const void *data, size_t len, type **out)                     \
    {                                                                             \
        ProtobufCMessage *m;                                                      \
        tidal_status st = codec_decode(&desc, data, len, &m);                     \
        *out = (type *)m;                                                         \
        return st;                                                                \
    }

DECODE_AS(codec_decode_prompt, Tidal__V1__Prompt, tidal__v1__prompt__descriptor)
DECODE_AS(codec_decode_trajectory, Tidal__V1__Trajectory, tidal__v1__trajectory__descriptor)
DECODE_AS(codec_decode_trajectory_group, Tidal__V1__TrajectoryGroup, tidal__v1__trajectory_group__descriptor)
DECODE_AS(codec_decode_blob_manifest, Tidal__V1__BlobManifest, tidal__v1__blob_manifest__descriptor)
DECODE_AS(codec_decode_weights_manifest, Tidal__V1__WeightsManifest,
          tidal__v1__weights_manifest__descriptor)
DECODE_AS(codec_decode_env_request, Tidal__V1__EnvRequest, tidal__v1__env_request__descriptor)
DECODE_AS(codec_decode_env_response, Tidal__V1__EnvResponse, tidal__v1__env_response__descriptor)
DECODE_AS(codec_decode_worker_status, Tidal__V1__WorkerStatus, tidal__v1__worker_status__descriptor)
DECODE_AS(codec_decode_control, Tidal__V1__Control, tidal__v1__control__descriptor)
DECODE_AS(codec_decode_metric, Tidal__V1__Metric, tidal__v1__metric__descriptor)

/* ---------------------------------------------------------------- per-token versions */

size_t codec_versions_rle(const uint64_t *versions, size_t n, uint64_t *values, uint32_t *runs)
{
    assert(n == 0 || (versions && values && runs));
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (r > 0 && values[r - 1] == versions[i] && runs[r - 1] < UINT32_MAX) {
            runs[r - 1]++;
        } else {
            values[r] = versions[i];
            runs[r] = 1;
            r++;
        }
    }
    assert(r <= n);
    return r;
}

tidal_status codec_versions_expand(const uint64_t *values, const uint32_t *runs, size_t n_runs,
                                   uint64_t *out, size_t cap, size_t *n)
{
    assert(n && (n_runs == 0 || (values && runs)) && (cap == 0 || out));
    size_t k = 0;
    for (size_t r = 0; r < n_runs; r++) {
        if (runs[r] == 0) return tidal_fail(TIDAL_ERR_INVALID, "version run %zu has length 0", r);
        if (runs[r] > cap - k) {
            uint64_t total = 0;
            for (size_t q = 0; q < n_runs; q++) total += runs[q];
            return tidal_fail(TIDAL_ERR_INVALID, "version runs cover %" PRIu64 " tokens, room for %zu",
                              total, cap);
        }
        for (uint32_t i = 0; i < runs[r]; i++) out[k++] = values[r];
    }
    *n = k;
    return TIDAL_OK;
}

bool codec_trajectory_versions(const Tidal__V1__Trajectory *t, uint64_t *oldest, uint64_t *newest)
{
    assert(t);
    if (t->n_completion_token_ids == 0 || t->n_version_values == 0) return false;
    uint64_t lo = t->version_values[0], hi = lo;
    for (size_t r = 1; r < t->n_version_values; r++) {
        if (t->version_values[r] < lo) lo = t->version_values[r];
        if (t->version_values[r] > hi) hi = t->version_values[r];
    }
    if (oldest) *oldest = lo;
    if (newest) *newest = hi;
    return true;
}

/* ---------------------------------------------------------------- trajectory groups */

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

void codec_parts_free(codec_parts *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) free(p->buf[i]);
    free(p->buf);
    free(p->len);
    memset(p, 0, sizeof *p);
}

/* The header of one part: head's fields with the part fields given, no
 * trajectories; *buf malloc'd with room for `extra` more bytes. */
static tidal_status group_header(const Tidal__V1__TrajectoryGroup *head, uint32_t part_index, uint32_t part_count,
                                 size_t extra, uint8_t **buf, size_t *len)
{
    Tidal__V1__TrajectoryGroup h = *head;
    h.n_trajectories = 0, h.trajectories = NULL;
    h.part_index = part_index, h.part_count = part_count;
    *len = protobuf_c_message_get_packed_size(&h.base);
    if (!(*buf = malloc(*len + extra + 1)))
        return tidal_fail(TIDAL_ERR_NOMEM, "trajectory group %s: out of memory for %zu bytes", head->group_id,
                          *len + extra);
    protobuf_c_message_pack(&h.base, *buf);
    return TIDAL_OK;
}

/* Bytes trajectory t takes inside a group: field 11's one-byte tag, its length, its bytes. */
static size_t framed_size(const codec_encoded *t) { return 1 + varint_size(t->len) + t->len; }

/* Append trajectory bytes as field 11 (tag (11 << 3) | 2, one byte) to buf at *len. */
static void frame_trajectory(uint8_t *buf, size_t *len, const codec_encoded *t)
{
    buf[(*len)++] = (11u << 3) | 2u;
    for (uint64_t v = t->len; ; v >>= 7) {
        buf[(*len)++] = (uint8_t)(v < 0x80 ? v : (v & 0x7f) | 0x80);
        if (v < 0x80) break;
    }
    memcpy(buf + *len, t->data, t->len);
    *len += t->len;
}

tidal_status codec_frame_group_parts(const Tidal__V1__TrajectoryGroup *head, const codec_encoded *t, size_t n,
                                     size_t max_bytes, codec_parts *out)
{
    assert(head && out && (t || !n));
    memset(out, 0, sizeof *out);
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "trajectory group %s: no trajectories to send", head->group_id);
    size_t *first = malloc((n + 1) * sizeof *first), total = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    tidal_status st = TIDAL_OK;
    if (!first) return tidal_fail(TIDAL_ERR_NOMEM, "trajectory group %s: out of memory", head->group_id);
    for (size_t i = 0; i < n; i++) total += framed_size(&t[i]);
    /* The whole answer in one message when it fits (part fields absent). Else
     * parts, budgeting the header with part fields at their largest (n parts
     * at most), so no real header is larger than what was budgeted. */
    Tidal__V1__TrajectoryGroup h = *head;
    h.n_trajectories = 0, h.trajectories = NULL, h.part_index = 0, h.part_count = 0;
    size_t parts = 1;
    first[0] = 0, first[1] = n;
    if (protobuf_c_message_get_packed_size(&h.base) + total > max_bytes) {
        h.part_index = (uint32_t)n, h.part_count = (uint32_t)n;
        const size_t header = protobuf_c_message_get_packed_size(&h.base);
        size_t used = header;
        parts = 0;
        for (size_t i = 0; i < n; i++) {
            const size_t cost = framed_size(&t[i]);
            if (header + cost > max_bytes) {
                st = tidal_fail(TIDAL_ERR_INVALID,
                                "trajectory group %s: trajectory %s encodes to %zu bytes with the group's header, "
                                "over the %zu a message may hold (the server's max_payload less headers)",
                                head->group_id, t[i].trajectory_id ? t[i].trajectory_id : "?", header + cost,
                                max_bytes);
                goto cleanup;
            }
            if (i > 0 && used + cost > max_bytes) first[++parts] = i, used = header;
            used += cost;
        }
        first[++parts] = n;
    }
    out->buf = calloc(parts, sizeof *out->buf);
    out->len = calloc(parts, sizeof *out->len);
    if (!out->buf || !out->len) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "trajectory group %s: out of memory", head->group_id);
        goto cleanup;
    }
    for (size_t p = 0; p < parts; p++) {
        size_t extra = 0;
        for (size_t i = first[p]; i < first[p + 1]; i++) extra += framed_size(&t[i]);
        TRY_GOTO(group_header(head, (uint32_t)p, parts > 1 ? (uint32_t)parts : 0, extra, &buf, &len));
        for (size_t i = first[p]; i < first[p + 1]; i++) frame_trajectory(buf, &len, &t[i]);
        assert(len <= max_bytes);
        out->buf[p] = buf, out->len[p] = len, out->n = p + 1;
        buf = NULL;
    }
cleanup:
    free(first);
    free(buf);
    if (st != TIDAL_OK) codec_parts_free(out);
    return st;
}

tidal_status codec_encode_group_parts(const Tidal__V1__TrajectoryGroup *g, size_t max_bytes, codec_parts *out)
{
    assert(g && out);
    memset(out, 0, sizeof *out);
    codec_encoded *t = calloc(g->n_trajectories ? g->n_trajectories : 1, sizeof *t);
    tidal_status st = t ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "trajectory group %s: out of memory", g->group_id);
    size_t done = 0;
    for (; st == TIDAL_OK && done < g->n_trajectories; done++) {
        void *data = NULL;
        st = codec_encode(&g->trajectories[done]->base, &data, &t[done].len);
        t[done].data = data;
        t[done].trajectory_id = g->trajectories[done]->trajectory_id;
    }
    if (st == TIDAL_OK) st = codec_frame_group_parts(g, t, g->n_trajectories, max_bytes, out);
    for (size_t i = 0; t && i < done; i++) free((void *)t[i].data);
    free(t);
    return st;
}

int codec_group_msg_id(const Tidal__V1__TrajectoryGroup *g, char *buf, size_t cap)
{
    if (codec_group_part_count(g) == 1) return snprintf(buf, cap, "%s", g->prompt_id);
    return snprintf(buf, cap, "%s:%" PRIu32 ":%" PRIu32, g->prompt_id, g->attempt, g->part_index);
}
