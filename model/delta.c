/* delta.c - weights images as compressed XOR deltas (see delta.h). */
#include "model/delta.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static const char MAGIC[4] = {'T', 'D', 'L', 'T'};
#define FORMAT 1

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Where a safetensors image's tensor data starts (8 + its header's length),
 * or 0 when the image is too short to be one. */
static size_t data_offset(const uint8_t *img, size_t len)
{
    if (len < 8) return 0;
    const uint64_t n = get_u64(img);
    if (n > len - 8) return 0;
    return (size_t)(8 + n);
}

#define WINDOW (1u << 20)

/* The transformed XOR stream's bytes [pos, pos + n) into win: the header
 * and the tail as they are, the values' bytes plane by plane. */
static void transform_window(const uint8_t *a, const uint8_t *b, size_t off, size_t nv, size_t vb, size_t pos,
                             size_t n, uint8_t *win)
{
    const size_t planes_end = off + nv * vb;
    for (size_t j = 0; j < n;) {
        const size_t s = pos + j;
        if (s < off || s >= planes_end) {
            const size_t upto = s < off ? off : pos + n, m = (upto - s < n - j) ? upto - s : n - j;
            for (size_t t = 0; t < m; t++) win[j + t] = a[s + t] ^ b[s + t];
            j += m;
            continue;
        }
        const size_t k = (s - off) / nv, i = (s - off) % nv;
        const size_t m = (nv - i < n - j) ? nv - i : n - j;
        const uint8_t *pa = a + off + i * vb + k, *pb = b + off + i * vb + k;
        for (size_t t = 0; t < m; t++) win[j + t] = pa[t * vb] ^ pb[t * vb];
        j += m;
    }
}

tidal_status delta_encode(const void *base, const void *next, size_t len, int value_bytes, int level, void **out,
                          size_t *out_len, delta_stats *stats)
{
    *out = NULL;
    *out_len = 0;
    if (stats) *stats = (delta_stats){0};
    if (value_bytes != 1 && value_bytes != 2 && value_bytes != 4)
        return tidal_fail(TIDAL_ERR_INVALID, "weights delta: values of %d bytes (1, 2 or 4)", value_bytes);
    const uint8_t *a = base, *b = next;
    const size_t off = data_offset(b, len);
    if (!off || data_offset(a, len) != off)
        return tidal_fail(TIDAL_ERR_INVALID, "weights delta: the images are not safetensors with one layout");
    const size_t vb = (size_t)value_bytes, nv = (len - off) / vb;
    uint64_t changed = 0;
    if (vb == 2) { /* bf16: the common case, as 16-bit words */
        for (size_t i = 0; i < nv; i++) {
            uint16_t x, y;
            memcpy(&x, a + off + 2 * i, 2);
            memcpy(&y, b + off + 2 * i, 2);
            changed += x != y;
        }
    } else {
        for (size_t i = 0; i < nv; i++) {
            uint8_t any = 0;
            for (size_t k = 0; k < vb; k++) any |= a[off + i * vb + k] ^ b[off + i * vb + k];
            changed += any != 0;
        }
    }

    /* Streamed a window at a time: no image-sized XOR buffer. The output's
     * bound is only address space until zstd writes it (a small delta touches
     * few of its pages). */
    const size_t bound = DELTA_HEADER_BYTES + ZSTD_compressBound(len);
    uint8_t *d = malloc(bound), *win = malloc(WINDOW);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    tidal_status st = TIDAL_OK;
    if (!d || !win || !cc) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "weights delta: out of memory for %zu bytes", len);
        goto cleanup;
    }
    memcpy(d, MAGIC, 4);
    d[4] = FORMAT;
    d[5] = (uint8_t)vb;
    d[6] = d[7] = 0;
    put_u64(d + 8, len);
    put_u64(d + 16, off);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level > 0 ? level : 1);
    ZSTD_CCtx_setPledgedSrcSize(cc, len); /* the frame says its size (delta_apply checks it) */
    ZSTD_outBuffer zo = {d + DELTA_HEADER_BYTES, bound - DELTA_HEADER_BYTES, 0};
    for (size_t pos = 0;;) {
        const size_t n = len - pos < WINDOW ? len - pos : WINDOW;
        transform_window(a, b, off, nv, vb, pos, n, win);
        pos += n;
        const ZSTD_EndDirective end = pos == len ? ZSTD_e_end : ZSTD_e_continue;
        ZSTD_inBuffer zi = {win, n, 0};
        size_t left;
        do {
            left = ZSTD_compressStream2(cc, &zo, &zi, end);
            if (ZSTD_isError(left)) {
                st = tidal_fail(TIDAL_ERR_INVALID, "weights delta: zstd: %s", ZSTD_getErrorName(left));
                goto cleanup;
            }
        } while (end == ZSTD_e_end ? left != 0 : zi.pos < zi.size);
        if (end == ZSTD_e_end) break;
    }
    if (stats) *stats = (delta_stats){.values = nv, .changed = changed};
    *out = d;
    *out_len = DELTA_HEADER_BYTES + zo.pos;
    d = NULL;
cleanup:
    ZSTD_freeCCtx(cc);
    free(win);
    free(d);
    return st;
}

uint64_t delta_image_bytes(const void *dv, size_t d_len)
{
    const uint8_t *d = dv;
    if (d_len < DELTA_HEADER_BYTES || memcmp(d, MAGIC, 4) != 0 || d[4] != FORMAT) return 0;
    return get_u64(d + 8);
}

tidal_status delta_apply(const void *base, size_t base_len, const void *dv, size_t d_len, const char *what,
                         void **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    const uint8_t *d = dv, *a = base;
    if (d_len < DELTA_HEADER_BYTES || memcmp(d, MAGIC, 4) != 0)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: not a weights delta (%zu bytes, no TDLT header)", what, d_len);
    if (d[4] != FORMAT)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: delta format %u (this build reads %d)", what, d[4], FORMAT);
    const size_t vb = d[5];
    const uint64_t len = get_u64(d + 8), off = get_u64(d + 16);
    if (vb != 1 && vb != 2 && vb != 4)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: delta of %zu-byte values (1, 2 or 4)", what, vb);
    if (len != base_len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta rebuilds %llu bytes, its base has %zu", what,
                          (unsigned long long)len, base_len);
    if (off > len || off != data_offset(a, base_len))
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta's data offset %llu is not its base's", what,
                          (unsigned long long)off);
    const void *z = d + DELTA_HEADER_BYTES;
    const size_t zlen = d_len - DELTA_HEADER_BYTES;
    const unsigned long long content = ZSTD_getFrameContentSize(z, zlen);
    if (content != len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta's zstd frame %s", what,
                          content == ZSTD_CONTENTSIZE_ERROR ? "is not a zstd frame" : "has another size than its header");
    uint8_t *x = malloc(len ? len : 1), *y = malloc(len ? len : 1);
    if (!x || !y) {
        free(x);
        free(y);
        return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory for %llu bytes", what, (unsigned long long)len);
    }
    const size_t got = ZSTD_decompress(x, len, z, zlen);
    if (ZSTD_isError(got) || got != len) {
        free(x);
        free(y);
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta does not decompress: %s", what,
                          ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
    }
    const size_t nv = (size_t)(len - off) / vb, tail = (size_t)(len - off) % vb;
    for (size_t i = 0; i < off; i++) y[i] = a[i] ^ x[i];
    for (size_t k = 0; k < vb; k++) {
        const uint8_t *plane = x + off + k * nv;
        uint8_t *dst = y + off + k;
        const uint8_t *src = a + off + k;
        for (size_t i = 0; i < nv; i++) dst[i * vb] = src[i * vb] ^ plane[i];
    }
    for (size_t i = (size_t)len - tail; i < len; i++) y[i] = a[i] ^ x[i];
    free(x);
    *out = y;
    *out_len = (size_t)len;
    return TIDAL_OK;
}

tidal_status delta_apply_inplace(void *imgv, size_t len, const void *dv, size_t d_len, const char *what)
{
    const uint8_t *d = dv;
    uint8_t *img = imgv;
    if (d_len < DELTA_HEADER_BYTES || memcmp(d, MAGIC, 4) != 0)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: not a weights delta (%zu bytes, no TDLT header)", what, d_len);
    if (d[4] != FORMAT)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: delta format %u (this build reads %d)", what, d[4], FORMAT);
    const size_t vb = d[5];
    const uint64_t n = get_u64(d + 8), off = get_u64(d + 16);
    if (vb != 1 && vb != 2 && vb != 4)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: delta of %zu-byte values (1, 2 or 4)", what, vb);
    if (n != len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta rebuilds %llu bytes, its base has %zu", what,
                          (unsigned long long)n, len);
    if (off > len || off != data_offset(img, len))
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta's data offset %llu is not its base's", what,
                          (unsigned long long)off);
    ZSTD_inBuffer in = {d + DELTA_HEADER_BYTES, d_len - DELTA_HEADER_BYTES, 0};
    if (ZSTD_getFrameContentSize(in.src, in.size) != len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta's zstd frame is not one of the image's size", what);
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    uint8_t *win = malloc(WINDOW);
    if (!dc || !win) {
        ZSTD_freeDCtx(dc);
        free(win);
        return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", what);
    }
    const size_t nv = (len - off) / vb, planes_end = off + nv * vb;
    size_t pos = 0, k = 0, i = 0; /* the stream's position; in the planes: plane k, value i */
    size_t ret = 1;
    tidal_status st = TIDAL_OK;
    while (pos < len) {
        ZSTD_outBuffer out = {win, len - pos < WINDOW ? len - pos : WINDOW, 0};
        ret = ZSTD_decompressStream(dc, &out, &in);
        if (ZSTD_isError(ret)) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta does not decompress: %s", what, ZSTD_getErrorName(ret));
            break;
        }
        if (out.pos == 0 && in.pos == in.size) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta ends early (%zu of %zu bytes)", what, pos, len);
            break;
        }
        for (size_t j = 0; j < out.pos;) {
            const size_t s = pos + j;
            if (s < off || s >= planes_end) { /* the header, and the tail: as they are */
                const size_t upto = s < off ? off : len, m = (upto - s < out.pos - j) ? upto - s : out.pos - j;
                for (size_t t = 0; t < m; t++) img[s + t] ^= win[j + t];
                j += m;
                continue;
            }
            /* plane k from value i: as far as the window or the plane goes */
            const size_t m = (nv - i < out.pos - j) ? nv - i : out.pos - j;
            uint8_t *dst = img + off + i * vb + k;
            for (size_t t = 0; t < m; t++) dst[t * vb] ^= win[j + t];
            j += m, i += m;
            if (i == nv) i = 0, k++;
        }
        pos += out.pos;
    }
    if (st == TIDAL_OK && (ret != 0 || in.pos != in.size))
        st = tidal_fail(TIDAL_ERR_CORRUPT, "%s: the delta's zstd frame %s", what,
                        ret != 0 ? "does not end where the image does" : "is followed by other bytes");
    ZSTD_freeDCtx(dc);
    free(win);
    return st;
}
