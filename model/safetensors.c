/* safetensors.c - the safetensors format: header validation, the reader and
 * the writer (see safetensors.h). Model directories, which hold one such file
 * or several shards, are model/modeldir.c's.
 *
 * Reading validates the whole header before any tensor is handed out, by the
 * rules of the reference implementation (huggingface/safetensors):
 *   - the 8-byte header length N is < 100 MB and N <= file size - 8;
 *   - the header is one JSON object (jansson, duplicate keys rejected): tensor
 *     name -> {"dtype", "shape", "data_offsets"} and nothing else, plus an
 *     optional "__metadata__" object of strings;
 *   - dtype is one st_dtype knows; shape entries are >= 0 and their product
 *     times the dtype size fits in 63 bits and equals end - begin;
 *   - sorted by offset, the tensors tile the data region exactly: the first
 *     starts at 0, each starts where the one before ends, the last ends at the
 *     end of the file (no overlap, no gap, no trailing bytes).
 * Every failure is TIDAL_ERR_INVALID with a message "FILE: tensor \"NAME\": ..."
 * naming the tensor at fault (or "FILE: header ..." when no tensor is).
 *
 * Tensor names and metadata strings point into the parsed JSON header, which
 * the st_file keeps until st_close; tensor data points into the mapping (or
 * the caller's buffer for st_open_memory) and is not aligned in general, so
 * conversions read it bytewise / with memcpy.
 *
 * Byte order: safetensors is little-endian; this file assumes a little-endian
 * host (x86-64, arm64) and refuses to compile elsewhere.
 */
#include "model/safetensors.h"
#include "model/safetensors_internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* ---------------------------------------------------------------- dtypes */

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8}, [ST_I32] = {"I32", 4}, [ST_I64] = {"I64", 8},
    [ST_I8] = {"I8", 1},   [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

static bool dtype_ok(st_dtype d) { return (int)d >= ST_F32 && (int)d < N_DTYPES; }

const char *st_dtype_name(st_dtype d) { return dtype_ok(d) ? dtypes[d].name : NULL; }

size_t st_dtype_size(st_dtype d) { return dtype_ok(d) ? dtypes[d].size : 0; }

/* The dtype called `s`, or 0 when there is none. */
static st_dtype dtype_parse(const char *s)
{
    for (int d = ST_F32; d < N_DTYPES; d++)
        if (strcmp(s, dtypes[d].name) == 0) return (st_dtype)d;
    return (st_dtype)0;
}

/* Product of the dims, or -1 when it does not fit in int64 (or a dim < 0). */
static int64_t shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

int64_t st_numel(const st_tensor *t) { return t ? shape_numel(t->ndim, t->shape) : 0; }

/* ---------------------------------------------------------------- conversions */

static inline uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* bfloat16 is the top half of an fp32: exact. */
static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* IEEE half -> fp32, exact for every input: normals rebias the exponent,
 * subnormals are m x 2^-24 (exact in fp32), inf stays inf, a NaN keeps its
 * sign and payload (shifted into the fp32 mantissa, so it stays a NaN). */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    return bits_f32(sign | f32_bits((float)mant * 0x1p-24f)); /* zero or subnormal */
}

/* fp32 -> bfloat16, round to nearest, ties to even (a carry out of the
 * mantissa correctly rounds the largest finite values up to inf). A NaN stays
 * a NaN (quiet bit set, sign and top payload kept) instead of rounding into
 * inf. */
static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* fp32 -> IEEE half, round to nearest, ties to even, in integer arithmetic
 * (no dependence on the FPU rounding mode):
 *   |x| >= 65520 (half of the way past 65504, rounding to even = up) -> inf;
 *   normal halves (|x| >= 2^-14): drop 13 mantissa bits with RNE, rebias;
 *   below that the result is a subnormal m x 2^-24 (or 0), m = RNE(|x| 2^24).
 * NaN -> quiet NaN keeping the sign and the top of the payload. */
static inline uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        a += 0xfffu + ((a >> 13) & 1u);
        return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
    }
    uint32_t e = a >> 23;           /* biased fp32 exponent, <= 112 here */
    if (e < 102) return sign;       /* |x| < 2^-25: below half the smallest subnormal */
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;       /* m = mant x 2^(e - 126), shift in 14..24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++; /* q may become 0x400: the smallest normal */
    return (uint16_t)(sign | q);
}

/* ---------------------------------------------------------------- messages */

/* Shared with modeldir.c (safetensors_internal.h has the contract). */
const char *st_safe_name(char *buf, size_t cap, const char *s)
{
    size_t n = 0;
    for (; s && *s && n < 96 && n + 4 < cap; s++)
        buf[n++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    if (s && *s) { buf[n++] = '.'; buf[n++] = '.'; buf[n++] = '.'; }
    buf[n] = '\0';
    return buf;
}

/* Shared with modeldir.c (safetensors_internal.h has the contract). */
tidal_status st_bad_tensor(const char *file, const char *tensor, const char *fmt, ...)
{
    char text[512], f[112], t[112];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: tensor \"%s\": %s", st_safe_name(f, sizeof f, file),
                      st_safe_name(t, sizeof t, tensor), text);
}

__attribute__((format(printf, 2, 3)))
static tidal_status bad_header(const char *file, const char *fmt, ...)
{
    char text[512], f[112];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: header: %s", st_safe_name(f, sizeof f, file), text);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* ---------------------------------------------------------------- reading */

struct st_file {
    char *label;          /* path or caller's name, for messages */
    void *map;            /* mmap of the file (NULL for st_open_memory) */
    size_t map_len;
    json_t *header;       /* owns the tensor names and metadata strings */
    json_t *meta;         /* the "__metadata__" object, or NULL (borrowed from header) */
    int n;
    st_tensor *tensors;   /* [n], in data order */
    const st_tensor **by_name; /* [n] into tensors, sorted by name */
};

/* One tensor entry while the header is being checked. */
typedef struct {
    st_tensor t;
    uint64_t begin, end;  /* data_offsets, relative to the data region */
} entry;

static int entry_by_offset(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name); /* names are unique: a total order */
}

/* Check one "NAME": {...} entry and fill e (all but data). */
static tidal_status parse_entry(const char *file, const char *name, json_t *v, uint64_t data_len,
                                entry *e)
{
    if (!json_is_object(v)) return st_bad_tensor(file, name, "entry is %s, not an object", json_kind(v));
    const char *key;
    json_t *field;
    json_object_foreach(v, key, field) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets")) {
            char k[112];
            return st_bad_tensor(file, name, "unknown key \"%s\" (allowed: dtype, shape, data_offsets)",
                                 st_safe_name(k, sizeof k, key));
        }
    }
    memset(e, 0, sizeof *e);
    e->t.name = name;

    json_t *dt = json_object_get(v, "dtype");
    if (!dt) return st_bad_tensor(file, name, "no dtype");
    if (!json_is_string(dt)) return st_bad_tensor(file, name, "dtype is %s, not a string", json_kind(dt));
    e->t.dtype = dtype_parse(json_string_value(dt));
    if (!e->t.dtype) {
        char d[112];
        return st_bad_tensor(file, name,
                             "dtype \"%s\" is not supported (F32, F16, BF16, F64, I32, I64, I8, U8, BOOL)",
                             st_safe_name(d, sizeof d, json_string_value(dt)));
    }

    json_t *shape = json_object_get(v, "shape");
    if (!shape) return st_bad_tensor(file, name, "no shape");
    if (!json_is_array(shape)) return st_bad_tensor(file, name, "shape is %s, not an array", json_kind(shape));
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS) return st_bad_tensor(file, name, "shape has %zu dimensions (max %d)", nd, ST_MAX_DIMS);
    e->t.ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d)) return st_bad_tensor(file, name, "shape[%zu] is %s, not an integer", i, json_kind(d));
        json_int_t x = json_integer_value(d);
        if (x < 0) return st_bad_tensor(file, name, "shape[%zu] = %" JSON_INTEGER_FORMAT " is negative", i, x);
        e->t.shape[i] = (int64_t)x;
    }
    int64_t numel = shape_numel(e->t.ndim, e->t.shape);
    size_t esize = st_dtype_size(e->t.dtype);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / esize)
        return st_bad_tensor(file, name, "shape's element count overflows");
    uint64_t want = (uint64_t)numel * esize;

    json_t *off = json_object_get(v, "data_offsets");
    if (!off) return st_bad_tensor(file, name, "no data_offsets");
    if (!json_is_array(off) || json_array_size(off) != 2)
        return st_bad_tensor(file, name, "data_offsets is not an array [begin, end]");
    json_t *jb = json_array_get(off, 0), *je = json_array_get(off, 1);
    if (!json_is_integer(jb) || !json_is_integer(je))
        return st_bad_tensor(file, name, "data_offsets holds something other than integers");
    json_int_t b = json_integer_value(jb), en = json_integer_value(je);
    if (b < 0 || en < 0)
        return st_bad_tensor(file, name, "data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                             "] is negative", b, en);
    if (en < b)
        return st_bad_tensor(file, name, "data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                             "] ends before it begins", b, en);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end > data_len)
        return st_bad_tensor(file, name, "data_offsets [%" PRIu64 ", %" PRIu64 "] reach beyond the %" PRIu64
                             " bytes of data", e->begin, e->end, data_len);
    if (e->end - e->begin != want) {
        char dims[160];
        size_t k = 0;
        dims[k++] = '[';
        for (int i = 0; i < e->t.ndim && k < sizeof dims - 24; i++)
            k += (size_t)snprintf(dims + k, sizeof dims - k, "%s%" PRId64, i ? ", " : "", e->t.shape[i]);
        snprintf(dims + k, sizeof dims - k, "]");
        return st_bad_tensor(file, name, "data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                             " bytes, but %s %s needs %" PRIu64, e->begin, e->end, e->end - e->begin,
                             st_dtype_name(e->t.dtype), dims, want);
    }
    e->t.nbytes = (size_t)want;
    return TIDAL_OK;
}

/* The metadata object: strings only (null is allowed, as by the reference). */
static tidal_status parse_metadata(const char *file, json_t *v, json_t **meta)
{
    *meta = NULL;
    if (json_is_null(v)) return TIDAL_OK;
    if (!json_is_object(v)) return bad_header(file, "__metadata__ is %s, not an object", json_kind(v));
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val)) {
            char k[112];
            return bad_header(file, "__metadata__ \"%s\" is %s, not a string", st_safe_name(k, sizeof k, key),
                              json_kind(val));
        }
    }
    *meta = v;
    return TIDAL_OK;
}

static int tensor_ptr_by_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Validate the image at buf (len bytes) and fill f's header, meta, n,
 * tensors and by_name. On failure f holds whatever was allocated; the caller
 * frees it with st_close. */
static tidal_status parse_image(st_file *f, const uint8_t *buf, size_t len)
{
    const char *file = f->label;
    if (len < 8)
        return bad_header(file, "file has %zu bytes, too short for the 8-byte header length", len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen >= ST_MAX_HEADER)
        return bad_header(file, "length %" PRIu64 " is too large (limit %llu bytes)", hlen, ST_MAX_HEADER);
    if (hlen > len - 8)
        return bad_header(file, "length %" PRIu64 " runs past the end of the file (%zu bytes after the length)",
                          hlen, len - 8);
    if (hlen < 2) return bad_header(file, "length %" PRIu64 " is too short for a JSON object", hlen);
    uint64_t data_len = len - 8 - hlen;

    json_error_t jerr;
    f->header = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return bad_header(file, "JSON at byte %d: %s (a tensor name appears twice)", jerr.position,
                              jerr.text);
        return bad_header(file, "JSON at byte %d: %s", jerr.position, jerr.text);
    }
    if (!json_is_object(f->header))
        return bad_header(file, "is %s, not a JSON object", json_kind(f->header));

    size_t count = json_object_size(f->header);
    json_t *meta_v = json_object_get(f->header, "__metadata__");
    if (meta_v) {
        TRY(parse_metadata(file, meta_v, &f->meta));
        count--;
    }
    if (count > INT_MAX / 2) return bad_header(file, "too many tensors (%zu)", count);

    entry *es = calloc(count ? count : 1, sizeof *es);
    if (!es) return tidal_fail(TIDAL_ERR_NOMEM, "%s: %zu tensor entries", file, count);
    size_t n = 0;
    const char *name;
    json_t *v;
    tidal_status st = TIDAL_OK;
    json_object_foreach(f->header, name, v) {
        if (strcmp(name, "__metadata__") == 0) continue;
        st = parse_entry(file, name, v, data_len, &es[n]);
        if (st != TIDAL_OK) break;
        n++;
    }
    if (st == TIDAL_OK) {
        /* sorted by offset, the tensors must tile [0, data_len) exactly */
        qsort(es, n, sizeof *es, entry_by_offset);
        uint64_t pos = 0;
        for (size_t i = 0; i < n && st == TIDAL_OK; i++) {
            char prev[112];
            if (es[i].begin < pos)
                st = st_bad_tensor(file, es[i].t.name,
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor \"%s\", which ends at %" PRIu64,
                                   es[i].begin, es[i].end, st_safe_name(prev, sizeof prev, es[i - 1].t.name), pos);
            else if (es[i].begin > pos && i == 0)
                st = st_bad_tensor(file, es[i].t.name,
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "]: bytes [0, %" PRIu64
                                   ") of the data belong to no tensor (the first tensor must start at 0)",
                                   es[i].begin, es[i].end, es[i].begin);
            else if (es[i].begin > pos)
                st = st_bad_tensor(file, es[i].t.name,
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap of %" PRIu64
                                   " bytes after tensor \"%s\", which ends at %" PRIu64,
                                   es[i].begin, es[i].end, es[i].begin - pos,
                                   st_safe_name(prev, sizeof prev, es[i - 1].t.name), pos);
            pos = es[i].end;
        }
        if (st == TIDAL_OK && pos != data_len) {
            if (n == 0)
                st = bad_header(file, "no tensors, but %" PRIu64 " bytes of data", data_len);
            else
                st = st_bad_tensor(file, es[n - 1].t.name,
                                   "the last tensor ends at %" PRIu64 ", but the data region has %" PRIu64
                                   " bytes (trailing bytes belong to no tensor)", pos, data_len);
        }
    }
    if (st == TIDAL_OK) {
        f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
        f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
        if (!f->tensors || !f->by_name) st = tidal_fail(TIDAL_ERR_NOMEM, "%s: tensor table", file);
    }
    if (st == TIDAL_OK) {
        const uint8_t *data = buf + 8 + hlen;
        for (size_t i = 0; i < n; i++) {
            f->tensors[i] = es[i].t;
            f->tensors[i].data = data + es[i].begin;
            f->by_name[i] = &f->tensors[i];
        }
        f->n = (int)n;
        qsort(f->by_name, n, sizeof *f->by_name, tensor_ptr_by_name);
    }
    free(es);
    return st;
}

static st_file *file_new(const char *label)
{
    st_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->label = strdup(label ? label : "<memory>");
    if (!f->label) { free(f); return NULL; }
    return f;
}

tidal_status st_open_memory(const void *buf, size_t len, const char *name, st_file **out)
{
    *out = NULL;
    if (!buf && len) return tidal_fail(TIDAL_ERR_INVALID, "st_open_memory: NULL buffer");
    st_file *f = file_new(name);
    if (!f) return tidal_fail(TIDAL_ERR_NOMEM, "st_open_memory");
    tidal_status st = parse_image(f, buf, len);
    if (st != TIDAL_OK) { st_close(f); return st; }
    *out = f;
    return TIDAL_OK;
}

tidal_status st_open(const char *path, st_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: open: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return tidal_fail(TIDAL_ERR_IO, "%s: stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: header: file has %lld bytes, too short for the 8-byte header length",
                          path, (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: too large to map", path);
    }
    size_t len = (size_t)sb.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping stays valid */
    if (map == MAP_FAILED) return tidal_fail(TIDAL_ERR_IO, "%s: mmap %zu bytes: %s", path, len, strerror(e));
    st_file *f = file_new(path);
    if (!f) {
        munmap(map, len);
        return tidal_fail(TIDAL_ERR_NOMEM, "%s: open", path);
    }
    f->map = map;
    f->map_len = len;
    tidal_status st = parse_image(f, map, len);
    if (st != TIDAL_OK) { st_close(f); return st; }
    *out = f;
    return TIDAL_OK;
}

void st_close(st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    json_decref(f->header);
    free(f->tensors);
    free((void *)f->by_name);
    free(f->label);
    free(f);
}

int st_count(const st_file *f) { return f ? f->n : 0; }

const st_tensor *st_at(const st_file *f, int i)
{
    return (f && i >= 0 && i < f->n) ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (!f || !name) return NULL;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor *t = f->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const st_file *f, const char *key)
{
    if (!f || !f->meta || !key) return NULL;
    return json_string_value(json_object_get(f->meta, key));
}

tidal_status st_read_f32(const st_tensor *t, float *dst, int64_t numel)
{
    if (!t) return tidal_fail(TIDAL_ERR_INVALID, "st_read_f32: no tensor");
    char nm[112];
    st_safe_name(nm, sizeof nm, t->name);
    if (!dtype_ok(t->dtype))
        return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\": invalid dtype %d", nm, (int)t->dtype);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\" is %s, not a float tensor (F32, F16, BF16, F64)",
                          nm, st_dtype_name(t->dtype));
    int64_t have = st_numel(t);
    if (have < 0 || have != numel)
        return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\" has %" PRId64 " elements, expected %" PRId64,
                          nm, have, numel);
    if ((uint64_t)have * st_dtype_size(t->dtype) != t->nbytes)
        return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\": %zu bytes do not match its shape and dtype",
                          nm, t->nbytes);
    if (numel == 0) return TIDAL_OK;
    if (!dst || !t->data) return tidal_fail(TIDAL_ERR_INVALID, "tensor \"%s\": NULL buffer", nm);
    const uint8_t *p = t->data;
    size_t n = (size_t)numel;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p, n * sizeof(float));
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(load_u16(p + 2 * i));
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(load_u16(p + 2 * i));
        break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, sizeof d);
            dst[i] = (float)d; /* round to nearest (IEEE default); beyond FLT_MAX -> inf */
        }
        break;
    default:
        break;
    }
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    void *data;   /* owned copy, nbytes (or the caller's: borrowed) */
    size_t nbytes;
    bool borrowed; /* st_writer_add_ref: data is not ours to free */
} wtensor;

struct st_writer {
    wtensor *t;
    int n, cap;
    json_t *names; /* set of names added (object name -> true) */
    json_t *meta;  /* "__metadata__" object */
};

tidal_status st_writer_new(st_writer **out)
{
    *out = NULL;
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return tidal_fail(TIDAL_ERR_NOMEM, "st_writer_new");
    w->names = json_object();
    w->meta = json_object();
    if (!w->names || !w->meta) { st_writer_free(w); return tidal_fail(TIDAL_ERR_NOMEM, "st_writer_new"); }
    *out = w;
    return TIDAL_OK;
}

void st_writer_free(st_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        if (!w->t[i].borrowed) free(w->t[i].data);
    }
    free(w->t);
    json_decref(w->names);
    json_decref(w->meta);
    free(w);
}

/* Check name and shape, reserve a slot; *nbytes_out = numel x dtype size.
 * With `alloc` the slot gets a buffer of that size for the data; without,
 * the caller points it at data of its own (st_writer_add_ref). *slot and
 * *nbytes_out are set on success only; callers initialise them anyway, as
 * gcc 12 at -O3 cannot see through TRY's early return that they are set. */
static tidal_status writer_slot(st_writer *w, const char *name, st_dtype dtype, int ndim,
                                const int64_t *shape, bool alloc, wtensor **slot, size_t *nbytes_out)
{
    char nm[112];
    if (!w || !name) return tidal_fail(TIDAL_ERR_INVALID, "st_writer: NULL writer or name");
    st_safe_name(nm, sizeof nm, name);
    if (!*name || !strcmp(name, "__metadata__"))
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor name \"%s\" is not allowed", nm);
    if (!dtype_ok(dtype)) return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": invalid dtype %d", nm, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": ndim %d outside 0..%d", nm, ndim, ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": shape[%d] = %" PRId64 " is negative",
                              nm, i, shape[i]);
    int64_t numel = shape_numel(ndim, shape);
    size_t es = st_dtype_size(dtype);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / es || (uint64_t)numel * es > SIZE_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": shape too large", nm);
    if (json_object_get(w->names, name))
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\" added twice", nm);
    if (json_object_set_new(w->names, name, json_true()) != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": name is not valid UTF-8", nm);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) { json_object_del(w->names, name); return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: %s", nm); }
        w->t = t;
        w->cap = cap;
    }
    wtensor *s = &w->t[w->n];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    if (!s->name) { json_object_del(w->names, name); return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: %s", nm); }
    s->dtype = dtype;
    s->ndim = ndim;
    for (int i = 0; i < ndim; i++) s->shape[i] = shape[i];
    s->nbytes = (size_t)numel * es;
    s->borrowed = !alloc;
    s->data = alloc ? malloc(s->nbytes ? s->nbytes : 1) : NULL;
    if (alloc && !s->data) {
        free(s->name);
        json_object_del(w->names, name);
        return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: tensor \"%s\": %zu bytes", nm, s->nbytes);
    }
    *slot = s;
    *nbytes_out = s->nbytes;
    return TIDAL_OK;
}

/* Undo writer_slot for a tensor that is not added after all. */
static void slot_drop(st_writer *w, wtensor *s)
{
    json_object_del(w->names, s->name);
    free(s->name);
    if (!s->borrowed) free(s->data);
    memset(s, 0, sizeof *s);
}

tidal_status st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const float *data)
{
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": fp32 data can be stored as F32, F16 or BF16, not %s",
                          name ? name : "?", st_dtype_name(dtype) ? st_dtype_name(dtype) : "an invalid dtype");
    wtensor *s = NULL;
    size_t nbytes = 0;
    TRY(writer_slot(w, name, dtype, ndim, shape, true, &s, &nbytes));
    size_t n = nbytes / st_dtype_size(dtype);
    if (n && !data) {
        char nm[112];
        st_safe_name(nm, sizeof nm, name);
        slot_drop(w, s);
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": NULL data", nm);
    }
    uint8_t *out = s->data;
    if (dtype == ST_F32) {
        if (n) memcpy(out, data, nbytes);
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h = dtype == ST_BF16 ? f32_to_bf16(data[i]) : f32_to_f16(data[i]);
            out[2 * i] = (uint8_t)(h & 0xff);
            out[2 * i + 1] = (uint8_t)(h >> 8);
        }
    }
    w->n++;
    return TIDAL_OK;
}

tidal_status st_writer_add_raw(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes)
{
    wtensor *s = NULL;
    size_t want = 0;
    TRY(writer_slot(w, name, dtype, ndim, shape, true, &s, &want));
    if (nbytes != want || (want && !data)) {
        char nm[112];
        slot_drop(w, s);
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": %zu bytes given, %s of that shape needs %zu",
                          st_safe_name(nm, sizeof nm, name), data ? nbytes : 0, st_dtype_name(dtype), want);
    }
    if (want) memcpy(s->data, data, want);
    w->n++;
    return TIDAL_OK;
}

tidal_status st_writer_add_ref(st_writer *w, const char *name, st_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes)
{
    wtensor *s = NULL;
    size_t want = 0;
    TRY(writer_slot(w, name, dtype, ndim, shape, false, &s, &want));
    if (nbytes != want || (want && !data)) {
        char nm[112];
        slot_drop(w, s);
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer: tensor \"%s\": %zu bytes given, %s of that shape needs %zu",
                          st_safe_name(nm, sizeof nm, name), data ? nbytes : 0, st_dtype_name(dtype), want);
    }
    s->data = (void *)data; /* borrowed: never written through, never freed */
    w->n++;
    return TIDAL_OK;
}

tidal_status st_writer_metadata(st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_metadata: NULL argument");
    json_t *v = json_string(value);
    if (!v) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_metadata: value of \"%s\" is not valid UTF-8", key);
    /* setting a key again replaces its value */
    if (json_object_set_new(w->meta, key, v) != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "st_writer_metadata: key is not valid UTF-8");
    return TIDAL_OK;
}

static tidal_status write_all(int fd, const void *buf, size_t len, const char *path)
{
    const uint8_t *p = buf;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t n = write(fd, p, chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return tidal_fail(TIDAL_ERR_IO, "%s: write: %s", path, n < 0 ? strerror(errno) : "no progress");
        p += n;
        len -= (size_t)n;
    }
    return TIDAL_OK;
}

/* The header JSON: "__metadata__" first (when any), then the tensors in the
 * order added with consecutive data_offsets; padded with spaces so that its
 * length is a multiple of 8 (the data then starts 8-byte aligned). */
static tidal_status writer_header(const st_writer *w, char **out, size_t *len)
{
    json_t *root = json_object();
    if (!root) return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: header");
    int bad = 0;
    if (json_object_size(w->meta)) bad |= json_object_set(root, "__metadata__", w->meta);
    uint64_t off = 0;
    for (int i = 0; i < w->n && !bad; i++) {
        const wtensor *t = &w->t[i];
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++) bad |= json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + t->nbytes));
        json_t *e = json_pack("{s:s, s:o, s:o}", "dtype", st_dtype_name(t->dtype), "shape", shape,
                              "data_offsets", offs);
        bad |= !e || json_object_set_new(root, t->name, e);
        off += t->nbytes;
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: header JSON");
    size_t n = strlen(text), padded = (n + 7) & ~(size_t)7;
    char *buf = realloc(text, padded + 1);
    if (!buf) { free(text); return tidal_fail(TIDAL_ERR_NOMEM, "st_writer: header JSON"); }
    memset(buf + n, ' ', padded - n);
    buf[padded] = '\0';
    *out = buf;
    *len = padded;
    return TIDAL_OK;
}

/* The file's bytes in order: the 8-byte little-endian header length, the
 * header, then every tensor's data as added. One routine for both outputs, so
 * a file and an in-memory image of the same writer are byte-identical. */
typedef tidal_status (*writer_sink)(void *ctx, const void *buf, size_t len);

static tidal_status writer_emit(const st_writer *w, const char *header, size_t hlen, writer_sink sink, void *ctx)
{
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    TRY(sink(ctx, lenb, 8));
    TRY(sink(ctx, header, hlen));
    for (int i = 0; i < w->n; i++) TRY(sink(ctx, w->t[i].data, w->t[i].nbytes));
    return TIDAL_OK;
}

typedef struct {
    int fd;
    const char *path;
} fd_sink;

static tidal_status sink_fd(void *ctx, const void *buf, size_t len)
{
    const fd_sink *f = ctx;
    return write_all(f->fd, buf, len, f->path);
}

typedef struct {
    uint8_t *p;
    size_t off, cap;
} mem_sink;

static tidal_status sink_mem(void *ctx, const void *buf, size_t len)
{
    mem_sink *m = ctx;
    assert(len <= m->cap - m->off); /* sized exactly by st_writer_to_memory */
    if (len) memcpy(m->p + m->off, buf, len);
    m->off += len;
    return TIDAL_OK;
}

tidal_status st_writer_save(st_writer *w, const char *path)
{
    if (!w || !path) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_save: NULL argument");
    char *header = NULL;
    size_t hlen = 0;
    TRY(writer_header(w, &header, &hlen));
    size_t tl = strlen(path) + 5;
    char *tmp = malloc(tl);
    if (!tmp) { free(header); return tidal_fail(TIDAL_ERR_NOMEM, "%s: save", path); }
    snprintf(tmp, tl, "%s.tmp", path);
    tidal_status st = TIDAL_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = tidal_fail(TIDAL_ERR_IO, "%s: create: %s", tmp, strerror(errno));
    } else {
        fd_sink f = {.fd = fd, .path = tmp};
        st = writer_emit(w, header, hlen, sink_fd, &f);
        if (st == TIDAL_OK && fsync(fd) != 0) st = tidal_fail(TIDAL_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
        if (close(fd) != 0 && st == TIDAL_OK) st = tidal_fail(TIDAL_ERR_IO, "%s: close: %s", tmp, strerror(errno));
        if (st == TIDAL_OK && rename(tmp, path) != 0)
            st = tidal_fail(TIDAL_ERR_IO, "%s: rename to %s: %s", tmp, path, strerror(errno));
        if (st != TIDAL_OK) unlink(tmp);
    }
    free(tmp);
    free(header);
    return st;
}

tidal_status st_writer_emit(st_writer *w, st_sink sink, void *ctx)
{
    if (!w || !sink) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_emit: NULL argument");
    char *header = NULL;
    size_t hlen = 0;
    TRY(writer_header(w, &header, &hlen));
    tidal_status st = writer_emit(w, header, hlen, sink, ctx);
    free(header);
    return st;
}

tidal_status st_writer_size(st_writer *w, size_t *len)
{
    *len = 0;
    if (!w) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_size: NULL argument");
    char *header = NULL;
    size_t hlen = 0;
    TRY(writer_header(w, &header, &hlen));
    free(header);
    size_t total = 8 + hlen;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].nbytes > SIZE_MAX - total)
            return tidal_fail(TIDAL_ERR_INVALID, "st_writer_size: the image does not fit in memory");
        total += w->t[i].nbytes;
    }
    *len = total;
    return TIDAL_OK;
}

tidal_status st_writer_to_memory(st_writer *w, void **buf, size_t *len)
{
    if (buf) *buf = NULL;
    if (len) *len = 0;
    if (!w || !buf || !len) return tidal_fail(TIDAL_ERR_INVALID, "st_writer_to_memory: NULL argument");
    char *header = NULL;
    size_t hlen = 0;
    TRY(writer_header(w, &header, &hlen));
    size_t total = 8 + hlen;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].nbytes > SIZE_MAX - total) {
            free(header);
            return tidal_fail(TIDAL_ERR_INVALID, "st_writer_to_memory: the image does not fit in memory");
        }
        total += w->t[i].nbytes;
    }
    mem_sink m = {.p = malloc(total), .cap = total};
    if (!m.p) {
        free(header);
        return tidal_fail(TIDAL_ERR_NOMEM, "st_writer_to_memory: cannot allocate %zu bytes", total);
    }
    tidal_status st = writer_emit(w, header, hlen, sink_mem, &m);
    free(header);
    if (st != TIDAL_OK) { free(m.p); return st; }
    assert(m.off == total);
    *buf = m.p;
    *len = total;
    return TIDAL_OK;
}
