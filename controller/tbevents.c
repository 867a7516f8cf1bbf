/* tbevents.c - a run's TensorBoard event file (tbevents.h). */
#include "controller/tbevents.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/fs.h"
#include "tensorboard.pb-c.h"

struct tbevents {
    FILE *f;
    char path[4352];
    char error[4608]; /* the first failed write's message; "" while none failed */
};

const char *tbevents_path(const tbevents *w) { return w->path; }

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Encode `ev` as one TFRecord and write it, flushed. A failure spends the
 * writer (its message kept for every later call). */
static tidal_status write_event(tbevents *w, const Tensorboard__Event *ev)
{
    if (w->error[0]) return tidal_fail(TIDAL_ERR_IO, "%s", w->error);
    const size_t n = tensorboard__event__get_packed_size(ev);
    unsigned char *rec = malloc(12 + n + 4);
    if (!rec) return tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory for a %zu-byte event", n);
    put_le64(rec, (uint64_t)n);
    put_le32(rec + 8, tidal_crc32c_mask(tidal_crc32c(rec, 8)));
    tensorboard__event__pack(ev, rec + 12);
    put_le32(rec + 12 + n, tidal_crc32c_mask(tidal_crc32c(rec + 12, n)));
    errno = 0;
    const bool ok = fwrite(rec, 1, 12 + n + 4, w->f) == 12 + n + 4 && fflush(w->f) == 0;
    free(rec);
    if (ok) return TIDAL_OK;
    snprintf(w->error, sizeof w->error, "tensorboard: cannot write %s: %s (no more events are written to it)",
             w->path, errno ? strerror(errno) : "short write");
    return tidal_fail(TIDAL_ERR_IO, "%s", w->error);
}

tidal_status tbevents_open(const char *dir, double wall_time, tbevents **out)
{
    *out = NULL;
    TRY_WRAP(fs_mkdirs(dir), "tensorboard");
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
    for (char *p = host; *p; p++) /* a name, never a path */
        if (*p == '/') *p = '_';
    tbevents *w = calloc(1, sizeof *w);
    if (!w) return tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory");
    snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s", dir, (long long)floor(wall_time), host);
    tidal_status st = TIDAL_OK;
    if (!(w->f = fopen(w->path, "ab"))) {
        st = tidal_fail(TIDAL_ERR_IO, "tensorboard: cannot create %s: %s", w->path, strerror(errno));
        goto cleanup;
    }
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = wall_time;
    ev.what_case = TENSORBOARD__EVENT__WHAT_FILE_VERSION;
    ev.file_version = TBEVENTS_FILE_VERSION;
    TRY_GOTO(write_event(w, &ev));
    *out = w, w = NULL;
cleanup:
    tbevents_close(w);
    return st;
}

/* The Event at step and wall_time holding n summary values. */
static tidal_status write_summary(tbevents *w, int64_t step, double wall_time, Tensorboard__Summary__Value **vals,
                                  size_t n)
{
    Tensorboard__Summary sum = TENSORBOARD__SUMMARY__INIT;
    sum.n_value = n, sum.value = vals;
    Tensorboard__Event ev = TENSORBOARD__EVENT__INIT;
    ev.wall_time = wall_time, ev.step = step;
    ev.what_case = TENSORBOARD__EVENT__WHAT_SUMMARY;
    ev.summary = &sum;
    return write_event(w, &ev);
}

tidal_status tbevents_scalars(tbevents *w, int64_t step, double wall_time, const tbevents_scalar *v, size_t n)
{
    if (n == 0) return TIDAL_OK;
    Tensorboard__Summary__Value *vals = calloc(n, sizeof *vals), **ptrs = calloc(n, sizeof *ptrs);
    tidal_status st = TIDAL_OK;
    if (!vals || !ptrs) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        vals[i] = (Tensorboard__Summary__Value)TENSORBOARD__SUMMARY__VALUE__INIT;
        vals[i].tag = (char *)v[i].tag;
        vals[i].value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
        vals[i].simple_value = (float)v[i].value;
        ptrs[i] = &vals[i];
    }
    st = write_summary(w, step, wall_time, ptrs, n);
cleanup:
    free(vals);
    free(ptrs);
    return st;
}

tidal_status tbevents_json(tbevents *w, int64_t step, double wall_time, const char *prefix, const json_t *o,
                           const char *skip)
{
    const size_t n = json_object_size(o);
    tbevents_scalar *v = calloc(n ? n : 1, sizeof *v);
    char **tags = calloc(n ? n : 1, sizeof *tags);
    size_t k = 0;
    tidal_status st = TIDAL_OK;
    if (!v || !tags) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory");
        goto cleanup;
    }
    const char *key;
    json_t *x;
    json_object_foreach((json_t *)o, key, x) {
        if ((skip && !strcmp(key, skip)) || !(json_is_number(x) || json_is_boolean(x))) continue;
        const size_t len = strlen(prefix) + strlen(key) + 1;
        if (!(tags[k] = malloc(len))) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory");
            goto cleanup;
        }
        snprintf(tags[k], len, "%s%s", prefix, key);
        v[k].tag = tags[k];
        v[k].value = json_is_boolean(x) ? (json_is_true(x) ? 1.0 : 0.0) : json_number_value(x);
        k++;
    }
    st = tbevents_scalars(w, step, wall_time, v, k);
cleanup:
    for (size_t i = 0; tags && i < k; i++) free(tags[i]);
    free(tags);
    free(v);
    return st;
}

tidal_status tbevents_texts(tbevents *w, int64_t step, double wall_time, const char *tag, const char *const *texts,
                            size_t n)
{
    if (n == 0) return TIDAL_OK;
    ProtobufCBinaryData *strs = calloc(n, sizeof *strs);
    if (!strs) return tidal_fail(TIDAL_ERR_NOMEM, "tensorboard: out of memory");
    for (size_t i = 0; i < n; i++)
        strs[i] = (ProtobufCBinaryData){.len = strlen(texts[i]), .data = (uint8_t *)texts[i]};
    Tensorboard__TensorShapeProto__Dim dim = TENSORBOARD__TENSOR_SHAPE_PROTO__DIM__INIT, *dims[1] = {&dim};
    dim.size = (int64_t)n;
    Tensorboard__TensorShapeProto shape = TENSORBOARD__TENSOR_SHAPE_PROTO__INIT;
    shape.n_dim = 1, shape.dim = dims;
    Tensorboard__TensorProto tensor = TENSORBOARD__TENSOR_PROTO__INIT;
    tensor.dtype = TENSORBOARD__DATA_TYPE__DT_STRING;
    tensor.tensor_shape = &shape;
    tensor.n_string_val = n, tensor.string_val = strs;
    /* the text plugin's metadata: its name; its content (TextPluginData) empty, version 0 */
    Tensorboard__SummaryMetadata__PluginData plugin = TENSORBOARD__SUMMARY_METADATA__PLUGIN_DATA__INIT;
    plugin.plugin_name = "text";
    Tensorboard__SummaryMetadata meta = TENSORBOARD__SUMMARY_METADATA__INIT;
    meta.plugin_data = &plugin;
    meta.data_class = TENSORBOARD__DATA_CLASS__DATA_CLASS_TENSOR;
    Tensorboard__Summary__Value val = TENSORBOARD__SUMMARY__VALUE__INIT, *vals[1] = {&val};
    val.tag = (char *)tag;
    val.metadata = &meta;
    val.value_case = TENSORBOARD__SUMMARY__VALUE__VALUE_TENSOR;
    val.tensor = &tensor;
    tidal_status st = write_summary(w, step, wall_time, vals, 1);
    free(strs);
    return st;
}

void tbevents_close(tbevents *w)
{
    if (!w) return;
    if (w->f) fclose(w->f);
    free(w);
}
