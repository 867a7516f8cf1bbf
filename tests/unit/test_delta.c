/* test_delta.c - weights deltas (model/delta.h): the image rebuilt bit for
 * bit in bf16 and fp32, only changed values counted, the zstd payload smaller
 * than the image when few values change, and every damaged delta refused. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/delta.h"
#include "model/safetensors.h"

#define N 40000

/* A safetensors image of two tensors (N - 7 and 7 values) in dtype dt. */
static tidal_status image_of(const float *x, st_dtype dt, void **buf, size_t *len)
{
    st_writer *w = NULL;
    tidal_status st = TIDAL_OK;
    const int64_t s0[1] = {N - 7}, s1[1] = {7};
    TRY_GOTO(st_writer_new(&w));
    TRY_GOTO(st_writer_add_f32(w, "a.weight", dt, 1, s0, x));
    TRY_GOTO(st_writer_add_f32(w, "b.bias", dt, 1, s1, x + N - 7));
    TRY_GOTO(st_writer_to_memory(w, buf, len));
cleanup:
    st_writer_free(w);
    return st;
}

static uint32_t rng = 12345;
static float rnd(void)
{
    rng = rng * 1664525u + 1013904223u;
    return ((float)(rng >> 8) / (float)(1 << 24)) - 0.5f;
}

/* Two versions, `changed` of N values moved by a small step. */
static void versions(float *a, float *b, int changed)
{
    for (int i = 0; i < N; i++) a[i] = b[i] = rnd() * 0.1f;
    for (int i = 0; i < changed; i++) {
        const int k = (int)((uint32_t)(i * 7919) % N);
        b[k] = a[k] * 1.01f + 1e-3f;
    }
}

static void round_trip(st_dtype dt, int vb)
{
    static float a[N], b[N];
    versions(a, b, N / 50); /* 2% of the values */
    void *ia = NULL, *ib = NULL, *d = NULL, *out = NULL;
    size_t la = 0, lb = 0, ld = 0, lo = 0;
    CHECK_OK(image_of(a, dt, &ia, &la));
    CHECK_OK(image_of(b, dt, &ib, &lb));
    CHECK(la == lb);
    delta_stats ds;
    CHECK_OK(delta_encode(ia, ib, la, vb, 1, &d, &ld, &ds));
    CHECK(ds.values == N);
    /* every moved value differs in bf16 too (a 1% step is above bf16's 0.4% resolution) */
    CHECK_MSG(ds.changed > N / 50 * 9 / 10 && ds.changed <= N / 50, "changed %llu", (unsigned long long)ds.changed);
    CHECK_MSG(ld < la / 5, "delta %zu bytes for a %zu-byte image", ld, la);
    CHECK(delta_image_bytes(d, ld) == la);
    CHECK_OK(delta_apply(ia, la, d, ld, "test", &out, &lo));
    CHECK(lo == lb && memcmp(out, ib, lb) == 0); /* bit for bit */
    /* in place, a window at a time: the same bits */
    memcpy(out, ia, la);
    CHECK_OK(delta_apply_inplace(out, la, d, ld, "test"));
    CHECK(memcmp(out, ib, lb) == 0);
    free(out);
    /* the same image: a delta of zeros, tiny, and the base back */
    free(d);
    CHECK_OK(delta_encode(ia, ia, la, vb, 1, &d, &ld, &ds));
    CHECK(ds.changed == 0 && ld < 200);
    CHECK_OK(delta_apply(ia, la, d, ld, "test", &out, &lo));
    CHECK(lo == la && memcmp(out, ia, la) == 0);
    free(out);
    free(d);
    free(ia);
    free(ib);
}

static void test_bf16_bit_identical(void) { round_trip(ST_BF16, 2); }
static void test_fp32_bit_identical(void) { round_trip(ST_F32, 4); }

static void test_corrupted_delta_refused(void)
{
    static float a[N], b[N];
    versions(a, b, N / 10);
    void *ia = NULL, *ib = NULL, *d = NULL, *out = NULL;
    size_t la = 0, lb = 0, ld = 0, lo = 0;
    CHECK_OK(image_of(a, ST_BF16, &ia, &la));
    CHECK_OK(image_of(b, ST_BF16, &ib, &lb));
    CHECK_OK(delta_encode(ia, ib, la, 2, 1, &d, &ld, NULL));
    uint8_t *bad = malloc(ld);
    /* not a delta */
    memcpy(bad, d, ld);
    bad[0] = 'X';
    CHECK_STATUS(delta_apply(ia, la, bad, ld, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    CHECK(strstr(tidal_errmsg(), "v7") && strstr(tidal_errmsg(), "not a weights delta"));
    /* cut short: the zstd frame ends early */
    CHECK_STATUS(delta_apply(ia, la, d, ld - 9, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    CHECK_STATUS(delta_apply(ia, la, d, 10, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    /* a byte flipped in the compressed data (zstd's frame checksum is off by
     * default: the image may still come out wrong, which the manifest's
     * digest catches; here the block structure breaks) */
    int refused = 0;
    for (size_t k = DELTA_HEADER_BYTES + 4; k < ld; k += ld / 16 + 1) {
        memcpy(bad, d, ld);
        bad[k] ^= 0xff;
        void *o = NULL;
        size_t l = 0;
        if (delta_apply(ia, la, bad, ld, "v7", &o, &l) != TIDAL_OK) refused++;
        else CHECK(l == la); /* never a wrong size */
        free(o);
    }
    CHECK_MSG(refused > 0, "no flipped byte was refused");
    /* in place: the same refusals */
    void *work = malloc(la);
    memcpy(work, ia, la);
    CHECK_STATUS(delta_apply_inplace(work, la, d, ld - 9, "v7"), TIDAL_ERR_CORRUPT);
    memcpy(work, ia, la);
    CHECK_STATUS(delta_apply_inplace(work, la, d, 10, "v7"), TIDAL_ERR_CORRUPT);
    memcpy(bad, d, ld);
    bad[0] = 'X';
    CHECK_STATUS(delta_apply_inplace(work, la, bad, ld, "v7"), TIDAL_ERR_CORRUPT);
    CHECK_STATUS(delta_apply_inplace(work, la - 2, d, ld, "v7"), TIDAL_ERR_CORRUPT);
    /* trailing bytes after the frame */
    uint8_t *longer = malloc(ld + 4);
    memcpy(longer, d, ld);
    memset(longer + ld, 0, 4);
    memcpy(work, ia, la);
    CHECK_STATUS(delta_apply_inplace(work, la, longer, ld + 4, "v7"), TIDAL_ERR_CORRUPT);
    memcpy(work, ia, la);
    CHECK_OK(delta_apply_inplace(work, la, d, ld, "v7"));
    CHECK(memcmp(work, ib, la) == 0);
    free(longer);
    free(work);
    /* another base: a different size */
    CHECK_STATUS(delta_apply(ia, la - 2, d, ld, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    CHECK(strstr(tidal_errmsg(), "its base has"));
    /* the header says another image size */
    memcpy(bad, d, ld);
    bad[8] ^= 1;
    CHECK_STATUS(delta_apply(ia, la, bad, ld, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    /* bad value size */
    memcpy(bad, d, ld);
    bad[5] = 3;
    CHECK_STATUS(delta_apply(ia, la, bad, ld, "v7", &out, &lo), TIDAL_ERR_CORRUPT);
    CHECK(out == NULL);
    CHECK_STATUS(delta_encode(ia, ib, la, 3, 1, &out, &lo, NULL), TIDAL_ERR_INVALID);
    CHECK_STATUS(delta_encode(ia, ib, 4, 2, 1, &out, &lo, NULL), TIDAL_ERR_INVALID); /* not safetensors */
    free(bad);
    free(d);
    free(ia);
    free(ib);
}

int main(void)
{
    RUN(test_bf16_bit_identical);
    RUN(test_fp32_bit_identical);
    RUN(test_corrupted_delta_refused);
    return check_summary();
}
