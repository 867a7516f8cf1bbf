/* safetensors.h - read and write the safetensors format (Hugging Face).
 *
 * A file is: 8 bytes little-endian header length N, N bytes of JSON (tensor
 * name -> {dtype, shape, data_offsets}, plus an optional "__metadata__" map of
 * strings), then the data. Reading maps the file (mmap) and validates the
 * whole header before any tensor is used: offsets inside the data, tensors
 * neither overlapping nor leaving gaps, sizes matching dtype x shape, no
 * duplicate names. Every error names the file and the tensor.
 *
 * A model directory's weights (one file or shards with an index) are
 * model/modeldir.h's.
 */
#ifndef TIDAL_MODEL_SAFETENSORS_H
#define TIDAL_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define ST_MAX_DIMS 8

typedef enum { ST_F32 = 1, ST_F16, ST_BF16, ST_F64, ST_I32, ST_I64, ST_I8, ST_U8, ST_BOOL } st_dtype;

typedef struct st_tensor {
    const char *name;          /* valid while the file is open */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;          /* into the mapping; not aligned in general */
    size_t nbytes;
} st_tensor;

/* "F32", "BF16", ...; NULL for an unknown dtype. */
const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);
int64_t st_numel(const st_tensor *t);

/* ---- reading one file ---- */
typedef struct st_file st_file;

/* Map and validate `path`. */
tidal_status st_open(const char *path, st_file **out);
/* Validate a safetensors image in memory (no copy: buf must outlive the
 * st_file). `name` labels errors. The fuzz target's entry point. */
tidal_status st_open_memory(const void *buf, size_t len, const char *name, st_file **out);
void st_close(st_file *f);

int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);              /* in file order */
const st_tensor *st_find(const st_file *f, const char *name); /* NULL when absent */
/* A "__metadata__" value, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

/* Copy tensor t into dst as fp32 (F32, F16, BF16, F64 converted), checking
 * that it holds exactly `numel` elements. TIDAL_ERR_INVALID naming the tensor
 * otherwise (wrong dtype for a float, wrong size). */
tidal_status st_read_f32(const st_tensor *t, float *dst, int64_t numel);

/* ---- writing ---- */
typedef struct st_writer st_writer;

tidal_status st_writer_new(st_writer **out);
/* Add a tensor from fp32 data, stored as `dtype` (F32, F16 or BF16; BF16 and
 * F16 round to nearest even). The data is copied. */
tidal_status st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const float *data);
/* Add a tensor from raw bytes already in `dtype` (e.g. I32 ids). Copied. */
tidal_status st_writer_add_raw(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes);
/* As st_writer_add_raw, but the bytes are not copied: the writer keeps the
 * pointer, so `data` must stay valid and unchanged until the writer is freed
 * (for an image of a large model without a second copy of it). */
tidal_status st_writer_add_ref(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes);
/* Add a "__metadata__" string entry (e.g. "format": "pt"). */
tidal_status st_writer_metadata(st_writer *w, const char *key, const char *value);
/* Write the file: header padded with spaces to a multiple of 8, tensors in
 * the order added, written to PATH.tmp then renamed (never a torn file). */
tidal_status st_writer_save(st_writer *w, const char *path);
/* How many bytes st_writer_save would write (header and data), without
 * writing them. */
tidal_status st_writer_size(st_writer *w, size_t *len);
/* The same bytes as st_writer_save would write, as one malloc'd image:
 * *buf (the caller frees it) of *len bytes, which st_open_memory reads. The
 * writer is unchanged (it can be saved or imaged again). */
tidal_status st_writer_to_memory(st_writer *w, void **buf, size_t *len);
/* The same bytes again, streamed: sink(ctx, piece, len) is called with the
 * file's pieces in order (the length, the header, each tensor's bytes as
 * added), nothing copied; a sink's failure stops it and is returned. */
typedef tidal_status (*st_sink)(void *ctx, const void *buf, size_t len);
tidal_status st_writer_emit(st_writer *w, st_sink sink, void *ctx);
void st_writer_free(st_writer *w);

#endif
