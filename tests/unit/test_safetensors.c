/* test_safetensors.c - the safetensors reader and writer (model/safetensors.h)
 * and model directories (model/modeldir.h):
 * hand-checked fp32 -> BF16 / F16 rounding (ties to even, subnormals, inf,
 * NaN) and the exact conversions back, write/read round trips on disk (F32
 * bits identical), a bf16 file laid out as PyTorch writes it, metadata, a
 * sharded model directory with an index, and one test per validation rule,
 * each checking that the error names the tensor at fault.
 *
 * When /usr/bin/python3 can import torch, PyTorch's own fp32 -> bf16/fp16
 * conversions are compared with the writer's on the same values (skipped
 * with a note otherwise).
 *
 * With TIDAL_FUZZ_SEEDS_OUT=DIR set it writes the seeds of
 * tests/fuzz/fuzz_safetensors.c instead (that is how
 * tests/fuzz/seeds/fuzz_safetensors/ was made).
 */
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model/modeldir.h"
#include "model/safetensors.h"

/* ---------------------------------------------------------------- helpers */

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A fresh temporary directory (removed by rm_dir). */
static bool make_tmp(char *dir, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, cap, "%s/tidal-st-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(dir) != NULL;
}

/* Remove a flat directory and the files in it. */
static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static bool write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(buf, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* A safetensors image in memory: the 8-byte length field `hlen`, `header`,
 * then data_len bytes of data (i mod 251). malloc'ed. */
static uint8_t *image_with_len(uint64_t hlen, const char *header, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *buf = malloc(*len ? *len : 1);
    if (!buf) abort();
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (uint8_t)(i % 251);
    return buf;
}

static uint8_t *image(const char *header, size_t data_len, size_t *len)
{
    return image_with_len(strlen(header), header, data_len, len);
}

/* True when the image of `header` + data_len bytes is refused with
 * TIDAL_ERR_INVALID and a message containing `want` (and `want2` if not
 * NULL); prints what happened otherwise. */
static bool rejected_image(uint8_t *buf, size_t len, const char *want, const char *want2)
{
    st_file *f = (st_file *)&f; /* must be reset to NULL */
    tidal_status st = st_open_memory(buf, len, "bad.safetensors", &f);
    bool ok = st == TIDAL_ERR_INVALID && f == NULL && strstr(tidal_errmsg(), want) &&
              (!want2 || strstr(tidal_errmsg(), want2));
    if (!ok)
        fprintf(stderr, "  got %s (%s), want invalid with \"%s\"%s%s\n", tidal_status_name(st),
                tidal_errmsg(), want, want2 ? " and " : "", want2 ? want2 : "");
    if (st == TIDAL_OK) st_close(f);
    free(buf);
    return ok;
}

static bool rejected(const char *header, size_t data_len, const char *want, const char *want2)
{
    size_t len;
    uint8_t *buf = image(header, data_len, &len);
    return rejected_image(buf, len, want, want2);
}

/* ---------------------------------------------------------------- conversions */

typedef struct {
    uint32_t in;   /* fp32 bits */
    uint16_t out;  /* expected BF16 / F16 bits */
} conv_case;

/* Write each input as a 1-element tensor of `dtype`, save, and return the
 * stored 16-bit patterns (and the values read back through st_read_f32). */
static bool convert_via_file(const conv_case *cases, int n, st_dtype dtype, uint16_t *got, float *back)
{
    char dir[256], path[320];
    if (!make_tmp(dir, sizeof dir)) return false;
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
    st_writer *w;
    bool ok = st_writer_new(&w) == TIDAL_OK;
    float *vals = malloc((size_t)n * sizeof *vals);
    for (int i = 0; ok && i < n; i++) vals[i] = f32_of(cases[i].in);
    int64_t shape[1] = {n};
    ok = ok && st_writer_add_f32(w, "x", dtype, 1, shape, vals) == TIDAL_OK &&
         st_writer_save(w, path) == TIDAL_OK;
    st_writer_free(w);
    free(vals);
    st_file *f = NULL;
    ok = ok && st_open(path, &f) == TIDAL_OK;
    const st_tensor *t = ok ? st_find(f, "x") : NULL;
    ok = ok && t && t->dtype == dtype && t->nbytes == 2u * (size_t)n;
    for (int i = 0; ok && i < n; i++) {
        const uint8_t *p = (const uint8_t *)t->data + 2 * i;
        got[i] = (uint16_t)(p[0] | (p[1] << 8));
    }
    ok = ok && st_read_f32(t, back, n) == TIDAL_OK;
    st_close(f);
    rm_dir(dir);
    return ok;
}

static void test_dtype_table(void)
{
    static const char *const names[] = {NULL, "F32", "F16", "BF16", "F64", "I32", "I64", "I8", "U8", "BOOL"};
    static const size_t sizes[] = {0, 4, 2, 2, 8, 4, 8, 1, 1, 1};
    for (int d = ST_F32; d <= ST_BOOL; d++) {
        CHECK(st_dtype_name((st_dtype)d) && !strcmp(st_dtype_name((st_dtype)d), names[d]));
        CHECK(st_dtype_size((st_dtype)d) == sizes[d]);
    }
    CHECK(st_dtype_name((st_dtype)0) == NULL && st_dtype_name((st_dtype)42) == NULL);
    CHECK(st_dtype_size((st_dtype)0) == 0);
    st_tensor t = {.ndim = 3, .shape = {2, 3, 4}};
    CHECK(st_numel(&t) == 24);
    t.ndim = 0;
    CHECK(st_numel(&t) == 1); /* a scalar */
}

static void test_bf16_rounding(void)
{
    static const conv_case cases[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 */
        {0xc0200000u, 0xc020}, /* -2.5 */
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: a tie, 0x3f80 is even: down */
        {0x3f818000u, 0x3f82}, /* a tie above the odd 0x3f81: up */
        {0x3f808001u, 0x3f81}, /* just above the tie: up */
        {0x3f807fffu, 0x3f80}, /* just below: down */
        {0x3dcccccdu, 0x3dcd}, /* 0.1f */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds up to inf */
        {0x7f7f7fffu, 0x7f7f}, /* the largest that stays finite */
        {0x7f800000u, 0x7f80}, /* inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x7fc00000u, 0x7fc0}, /* NaN */
        {0x7f800001u, 0x7fc0}, /* a NaN whose payload is in the low half: still NaN, not inf */
        {0xffc00001u, 0xffc0}, /* -NaN keeps its sign */
        {0x00000001u, 0x0000}, /* the smallest fp32 subnormal: to 0 */
        {0x00008000u, 0x0000}, /* a subnormal tie: to even 0 */
        {0x00018000u, 0x0002}, /* a subnormal tie above odd: up */
        {0x80000000u, 0x8000}, /* -0 */
    };
    enum { N = sizeof cases / sizeof cases[0] };
    uint16_t got[N];
    float back[N];
    CHECK(convert_via_file(cases, N, ST_BF16, got, back));
    for (int i = 0; i < N; i++) {
        CHECK_MSG(got[i] == cases[i].out, "case %d: %08" PRIx32 " -> %04x, want %04x", i, cases[i].in,
                  got[i], cases[i].out);
        /* BF16 -> fp32 is exact: the 16 bits become the top half */
        CHECK_MSG(bits_of(back[i]) == (uint32_t)cases[i].out << 16, "case %d read back as %08" PRIx32, i,
                  bits_of(back[i]));
    }
}

static void test_f16_rounding(void)
{
    static const conv_case cases[] = {
        {0x3f800000u, 0x3c00}, /* 1.0 */
        {0xc0000000u, 0xc000}, /* -2.0 */
        {0x3dcccccdu, 0x2e66}, /* 0.1f */
        {0x477fe000u, 0x7bff}, /* 65504, the largest half */
        {0x477fefffu, 0x7bff}, /* just below 65520: stays finite */
        {0x477ff000u, 0x7c00}, /* 65520: a tie, to even = inf */
        {0x7f7fffffu, 0x7c00}, /* FLT_MAX -> inf */
        {0x3f801000u, 0x3c00}, /* 1 + 2^-11: a tie, to even (down) */
        {0x3f803000u, 0x3c02}, /* 1 + 3 x 2^-11: a tie above odd (up) */
        {0x3f801001u, 0x3c01}, /* just above the tie */
        {0x38800000u, 0x0400}, /* 2^-14, the smallest normal */
        {0x387fc000u, 0x03ff}, /* 1023 x 2^-24, the largest subnormal */
        {0x387fe000u, 0x0400}, /* 1023.5 x 2^-24: a tie, to even = the smallest normal */
        {0x33800000u, 0x0001}, /* 2^-24, the smallest subnormal */
        {0x33000000u, 0x0000}, /* 2^-25: a tie between 0 and 1, to even 0 */
        {0x33000001u, 0x0001}, /* just above it */
        {0x33400000u, 0x0001}, /* 1.5 x 2^-25 */
        {0x33c00000u, 0x0002}, /* 1.5 x 2^-24: a tie between 1 and 2, to even 2 */
        {0x34200000u, 0x0002}, /* 2.5 x 2^-24: a tie between 2 and 3, to even 2 */
        {0xb3800000u, 0x8001}, /* -2^-24 */
        {0x322bcc77u, 0x0000}, /* 1e-8: to 0 */
        {0xb22bcc77u, 0x8000}, /* -1e-8: to -0 */
        {0x00000001u, 0x0000}, /* an fp32 subnormal */
        {0x7f800000u, 0x7c00}, /* inf */
        {0xff800000u, 0xfc00}, /* -inf */
        {0x7fc00000u, 0x7e00}, /* NaN */
        {0x7f800001u, 0x7e00}, /* a NaN with a tiny payload: still NaN, not inf */
        {0x80000000u, 0x8000}, /* -0 */
    };
    enum { N = sizeof cases / sizeof cases[0] };
    uint16_t got[N];
    float back[N];
    CHECK(convert_via_file(cases, N, ST_F16, got, back));
    for (int i = 0; i < N; i++)
        CHECK_MSG(got[i] == cases[i].out, "case %d: %08" PRIx32 " -> %04x, want %04x", i, cases[i].in,
                  got[i], cases[i].out);
    /* and back, exactly */
    CHECK(back[0] == 1.0f && back[1] == -2.0f);
    CHECK(back[2] == 0.0999755859375f);
    CHECK(back[3] == 65504.0f);
    CHECK(isinf(back[5]) && back[5] > 0);
    CHECK(back[10] == 0x1p-14f);
    CHECK(back[11] == 1023 * 0x1p-24f);
    CHECK(back[13] == 0x1p-24f);
    CHECK(back[17] == 2 * 0x1p-24f);
    CHECK(back[19] == -0x1p-24f);
    CHECK(back[21] == 0.0f && signbit(back[21]));
    CHECK(isinf(back[24]) && back[24] < 0);
    CHECK(isnan(back[25]) && isnan(back[26]));
    CHECK(bits_of(back[27]) == 0x80000000u);
}

/* Reference rounding computed in double, independently of the code under
 * test: the nearest value on the target grid, ties to even. */
static double ref_round(double v, int mant_bits, int min_exp, double max_finite, double overflow_at)
{
    if (isnan(v) || v == 0) return v;
    double a = fabs(v);
    if (a >= overflow_at) return copysign(INFINITY, v);
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) -> leading bit at 2^(e-1) */
    int lead = e - 1 < min_exp ? min_exp : e - 1;
    double ulp = ldexp(1.0, lead - mant_bits);
    double r = nearbyint(a / ulp) * ulp; /* default rounding mode: to nearest, ties to even */
    if (r > max_finite) return copysign(INFINITY, v);
    return copysign(r, v);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static void test_rounding_random(void)
{
    enum { N = 20000 };
    conv_case *cases = calloc(N, sizeof *cases);
    uint16_t *got = calloc(N, sizeof *got);
    float *back = calloc(N, sizeof *back);
    CHECK(cases && got && back);
    for (int i = 0; i < N; i++) {
        uint32_t u = rng32();
        /* half the inputs near the F16 range (exponents 100..150), the rest anywhere */
        if (i % 2) u = (u & 0x807fffffu) | ((100u + rng32() % 51u) << 23);
        if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xbfffffffu; /* finite only here */
        cases[i].in = u;
    }
    bool ok = convert_via_file(cases, N, ST_BF16, got, back);
    for (int i = 0; ok && i < N; i++) {
        double want = ref_round(f32_of(cases[i].in), 7, -126, 0x1.fep127, 0x1.ffp127);
        if ((double)back[i] != want) {
            fprintf(stderr, "  bf16 %08" PRIx32 ": got %a want %a\n", cases[i].in, back[i], want);
            ok = false;
        }
    }
    ok = ok && convert_via_file(cases, N, ST_F16, got, back);
    for (int i = 0; ok && i < N; i++) {
        double want = ref_round(f32_of(cases[i].in), 10, -14, 65504.0, 65520.0);
        if ((double)back[i] != want) {
            fprintf(stderr, "  f16 %08" PRIx32 ": got %a want %a\n", cases[i].in, back[i], want);
            ok = false;
        }
    }
    free(cases);
    free(got);
    free(back);
    CHECK(ok);
}

static void test_f64_and_read_errors(void)
{
    /* F64 -> fp32 rounds to nearest even */
    double d[6] = {0.1, 1e300, -1e300, 1.0 + 0x1p-24, 1.0 + 3 * 0x1p-24, 1e-50};
    char dir[256], path[320];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/f64.safetensors", dir);
    st_writer *w;
    CHECK_OK(st_writer_new(&w));
    int64_t s6[1] = {6}, s2[2] = {2, 3};
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    CHECK_OK(st_writer_add_raw(w, "d", ST_F64, 1, s6, d, sizeof d));
    CHECK_OK(st_writer_add_raw(w, "ids", ST_I32, 2, s2, ids, sizeof ids));
    tidal_status st = st_writer_save(w, path);
    st_writer_free(w);
    CHECK_OK(st);
    st_file *f;
    CHECK_OK(st_open(path, &f));
    float out[6];
    st = st_read_f32(st_find(f, "d"), out, 6);
    bool vals = out[0] == 0.1f && isinf(out[1]) && out[1] > 0 && isinf(out[2]) && out[2] < 0 &&
                out[3] == 1.0f && out[4] == 1.0f + 0x1p-22f && out[5] == 0.0f;
    tidal_status st_int = st_read_f32(st_find(f, "ids"), out, 6);
    char msg_int[256];
    snprintf(msg_int, sizeof msg_int, "%s", tidal_errmsg());
    tidal_status st_n = st_read_f32(st_find(f, "d"), out, 5);
    char msg_n[256];
    snprintf(msg_n, sizeof msg_n, "%s", tidal_errmsg());
    const st_tensor *ids_t = st_find(f, "ids");
    bool raw = ids_t && ids_t->ndim == 2 && ids_t->shape[0] == 2 && ids_t->shape[1] == 3 &&
               ids_t->nbytes == sizeof ids && !memcmp(ids_t->data, ids, sizeof ids);
    st_close(f);
    rm_dir(dir);
    CHECK_OK(st);
    CHECK(vals);
    CHECK(raw);
    CHECK(st_int == TIDAL_ERR_INVALID && strstr(msg_int, "tensor \"ids\" is I32, not a float tensor"));
    CHECK(st_n == TIDAL_ERR_INVALID && strstr(msg_n, "tensor \"d\" has 6 elements, expected 5"));
}

/* ---------------------------------------------------------------- files */

/* st_writer_to_memory: the very bytes st_writer_save writes, and an image
 * st_open_memory reads back (metadata, dtypes, shapes, data); a borrowed
 * tensor (st_writer_add_ref) is written like a copied one and never freed. */
static void test_writer_to_memory(void)
{
    char dir[256], path[320];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    st_writer *w;
    CHECK_OK(st_writer_new(&w));
    float a[6] = {1.5f, -2.0f, 0.1f, 3e-3f, 65504.0f, -0.0f};
    int32_t ids[3] = {7, 8, 9};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s0[1] = {0};
    tidal_status st = st_writer_metadata(w, "format", "pt");
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "a", ST_F32, 2, s23, a);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "a.bf16", ST_BF16, 2, s23, a);
    if (st == TIDAL_OK) st = st_writer_add_raw(w, "ids", ST_I32, 1, s3, ids, sizeof ids);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "empty", ST_F32, 1, s0, NULL);
    if (st == TIDAL_OK) st = st_writer_add_ref(w, "ref", ST_F32, 2, s23, a, sizeof a);
    tidal_status bad_ref = st_writer_add_ref(w, "ref2", ST_F32, 2, s23, a, sizeof a - 4);
    void *img = NULL;
    size_t len = 0;
    if (st == TIDAL_OK) st = st_writer_save(w, path);
    if (st == TIDAL_OK) st = st_writer_to_memory(w, &img, &len);
    void *none = (void *)1;
    size_t none_len = 1;
    tidal_status bad = st_writer_to_memory(NULL, &none, &none_len);
    st_writer_free(w);
    FILE *f = fopen(path, "rb");
    char *file = malloc(len + 1);
    size_t flen = f && file ? fread(file, 1, len + 1, f) : 0;
    if (f) fclose(f);
    rm_dir(dir);
    bool same = img && file && flen == len && !memcmp(file, img, len);
    free(file);
    st_file *sf = NULL;
    if (st == TIDAL_OK) st = st_open_memory(img, len, "image", &sf);
    float back[6];
    const st_tensor *t = sf ? st_find(sf, "a") : NULL;
    bool data_ok = t && t->ndim == 2 && t->shape[1] == 3 && st_read_f32(t, back, 6) == TIDAL_OK &&
                   !memcmp(back, a, sizeof a) && st_count(sf) == 5 && st_find(sf, "a.bf16")->dtype == ST_BF16 &&
                   st_find(sf, "ref") && !memcmp(st_find(sf, "ref")->data, a, sizeof a) && !st_find(sf, "ref2") &&
                   st_metadata(sf, "format") && !strcmp(st_metadata(sf, "format"), "pt");
    st_close(sf);
    free(img);
    CHECK_OK(st);
    CHECK(bad == TIDAL_ERR_INVALID && none == NULL && none_len == 0);
    CHECK(bad_ref == TIDAL_ERR_INVALID);
    CHECK(same);
    CHECK(data_ok);
}


static void test_round_trip(void)
{
    char dir[256], path[320], tmp[330];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    enum { R = 5, C = 7 };
    float w32[R * C], b[C];
    for (int i = 0; i < R * C; i++) w32[i] = f32_of(rng32() & 0xbfffffffu); /* finite, |x| < 2 */
    w32[0] = -0.0f;
    w32[1] = f32_of(0x00000003u);  /* a subnormal */
    w32[2] = f32_of(0x7fc01234u);  /* a NaN with a payload: bits must survive F32 */
    w32[3] = INFINITY;
    for (int i = 0; i < C; i++) b[i] = 0.5f * (float)i - 1.0f;
    int32_t ids[4] = {151643, 0, -1, 7};
    uint8_t mask[3] = {1, 0, 1};
    int64_t s_w[2] = {R, C}, s_b[1] = {C}, s_ids[1] = {4}, s_m[1] = {3}, s_empty[2] = {0, 4};

    st_writer *w;
    CHECK_OK(st_writer_new(&w));
    tidal_status st = TIDAL_OK;
    if (st == TIDAL_OK) st = st_writer_metadata(w, "format", "pt");
    if (st == TIDAL_OK) st = st_writer_metadata(w, "tidal.version", "17");
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "model.w", ST_F32, 2, s_w, w32);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "model.w.bf16", ST_BF16, 2, s_w, w32);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "model.w.f16", ST_F16, 2, s_w, w32);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "bias", ST_F32, 1, s_b, b);
    if (st == TIDAL_OK) st = st_writer_add_raw(w, "input_ids", ST_I32, 1, s_ids, ids, sizeof ids);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "empty", ST_BF16, 2, s_empty, NULL);
    if (st == TIDAL_OK) st = st_writer_add_raw(w, "mask", ST_BOOL, 1, s_m, mask, sizeof mask);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "scalar", ST_F32, 0, NULL, b + 3);
    if (st == TIDAL_OK) st = st_writer_save(w, path);
    st_writer_free(w);
    CHECK_OK(st);
    CHECK(access(tmp, F_OK) != 0); /* renamed away */

    /* the layout on disk: header length a multiple of 8, space padded, metadata first */
    FILE *fp = fopen(path, "rb");
    CHECK(fp);
    uint8_t head[8];
    char json[4096] = {0};
    bool rd = fread(head, 1, 8, fp) == 8;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | head[i];
    rd = rd && hlen < sizeof json && fread(json, 1, (size_t)hlen, fp) == hlen;
    fclose(fp);
    CHECK(rd);
    CHECK_MSG(hlen % 8 == 0, "header length %" PRIu64, hlen);
    static const char start[] = "{\"__metadata__\":{\"format\":\"pt\",\"tidal.version\":\"17\"},"
                                "\"model.w\":{\"dtype\":\"F32\",\"shape\":[5,7],\"data_offsets\":[0,140]},"
                                "\"model.w.bf16\":{\"dtype\":\"BF16\",\"shape\":[5,7],\"data_offsets\":[140,210]}";
    CHECK_MSG(!strncmp(json, start, strlen(start)), "header %s", json);
    size_t jl = strlen(json);
    CHECK(jl == hlen);
    while (jl > 0 && json[jl - 1] == ' ') jl--;
    CHECK(jl > 0 && json[jl - 1] == '}' && hlen - jl < 8);

    st_file *f;
    CHECK_OK(st_open(path, &f));
    static const char *const order[] = {"model.w", "model.w.bf16", "model.w.f16", "bias",
                                        "input_ids", "empty", "mask", "scalar"};
    bool ok = st_count(f) == 8;
    for (int i = 0; ok && i < 8; i++) ok = !strcmp(st_at(f, i)->name, order[i]) && st_find(f, order[i]) == st_at(f, i);
    ok = ok && st_at(f, 8) == NULL && st_at(f, -1) == NULL && st_find(f, "nope") == NULL;
    ok = ok && st_metadata(f, "format") && !strcmp(st_metadata(f, "format"), "pt") &&
         st_metadata(f, "tidal.version") && !strcmp(st_metadata(f, "tidal.version"), "17") &&
         st_metadata(f, "nope") == NULL;
    float back[R * C];
    const st_tensor *t = st_find(f, "model.w");
    ok = ok && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == R && t->shape[1] == C &&
         st_read_f32(t, back, R * C) == TIDAL_OK && memcmp(back, w32, sizeof back) == 0;
    /* BF16 and F16 hold the rounded values; read back they equal fp32 -> 16 -> fp32 */
    t = st_find(f, "model.w.bf16");
    ok = ok && t->dtype == ST_BF16 && st_read_f32(t, back, R * C) == TIDAL_OK;
    for (int i = 0; ok && i < R * C; i++) {
        double want = isnan(w32[i]) ? NAN : ref_round(w32[i], 7, -126, 0x1.fep127, 0x1.ffp127);
        ok = isnan(want) ? isnan(back[i]) : (double)back[i] == want;
        if (!ok) fprintf(stderr, "  bf16[%d] %a -> %a\n", i, w32[i], back[i]);
    }
    t = st_find(f, "model.w.f16");
    ok = ok && t->dtype == ST_F16 && st_read_f32(t, back, R * C) == TIDAL_OK;
    for (int i = 0; ok && i < R * C; i++) {
        double want = isnan(w32[i]) ? NAN : ref_round(w32[i], 10, -14, 65504.0, 65520.0);
        ok = isnan(want) ? isnan(back[i]) : (double)back[i] == want;
        if (!ok) fprintf(stderr, "  f16[%d] %a -> %a\n", i, w32[i], back[i]);
    }
    t = st_find(f, "input_ids");
    ok = ok && t->dtype == ST_I32 && t->nbytes == sizeof ids && !memcmp(t->data, ids, sizeof ids);
    t = st_find(f, "empty");
    ok = ok && t->dtype == ST_BF16 && t->nbytes == 0 && st_numel(t) == 0 && st_read_f32(t, back, 0) == TIDAL_OK;
    t = st_find(f, "mask");
    ok = ok && t->dtype == ST_BOOL && t->nbytes == 3 && !memcmp(t->data, mask, 3);
    t = st_find(f, "scalar");
    ok = ok && t->ndim == 0 && st_numel(t) == 1 && st_read_f32(t, back, 1) == TIDAL_OK && back[0] == b[3];
    st_close(f);

    /* the same bytes through st_open_memory, and through a model directory */
    st_model *m = NULL;
    tidal_status stm = st_model_open(dir, &m);
    bool mok = stm == TIDAL_OK && st_model_count(m) == 8 && st_model_find(m, "bias") &&
               !strcmp(st_model_at(m, 3)->name, "bias") && st_model_find(m, "nope") == NULL;
    st_model_close(m);
    rm_dir(dir);
    CHECK(ok);
    CHECK_OK(stm);
    CHECK(mok);
}

/* A bf16 file laid out byte for byte as PyTorch's safetensors writes one
 * (metadata "format": "pt", header padded with spaces). */
static void test_bf16_file(void)
{
    static const char header[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
        "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[12,18]}}";
    /* 1, -2, 0.5, 3.140625 (0x4049), 1e-40ish subnormal (0x0001), -inf; 1, 1, 65280 */
    static const uint16_t vals[9] = {0x3f80, 0xc000, 0x3f00, 0x4049, 0x0001, 0xff80, 0x3f80, 0x3f80, 0x477f};
    size_t h = strlen(header), padded = (h + 7) & ~(size_t)7;
    size_t len = 8 + padded + sizeof vals;
    uint8_t *buf = calloc(1, len);
    CHECK(buf);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    for (int i = 0; i < 9; i++) {
        buf[8 + padded + 2 * i] = (uint8_t)(vals[i] & 0xff);
        buf[8 + padded + 2 * i + 1] = (uint8_t)(vals[i] >> 8);
    }
    char dir[256], path[320];
    bool wrote = make_tmp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    wrote = wrote && write_file(path, buf, len);
    free(buf);
    CHECK(wrote);
    st_model *m;
    tidal_status st = st_model_open(dir, &m);
    if (st != TIDAL_OK) rm_dir(dir);
    CHECK_OK(st);
    float w[6], n[3];
    const st_tensor *tw = st_model_find(m, "lm_head.weight"), *tn = st_model_find(m, "model.norm.weight");
    bool ok = tw && tn && tw->dtype == ST_BF16 && tw->ndim == 2 && tw->shape[0] == 2 && tw->shape[1] == 3 &&
              st_read_f32(tw, w, 6) == TIDAL_OK && st_read_f32(tn, n, 3) == TIDAL_OK;
    ok = ok && w[0] == 1.0f && w[1] == -2.0f && w[2] == 0.5f && w[3] == 3.140625f && w[4] == 0x1p-133f &&
         isinf(w[5]) && w[5] < 0 && n[0] == 1.0f && n[1] == 1.0f && n[2] == 65280.0f;
    st_model_close(m);
    rm_dir(dir);
    CHECK(ok);
}

static void test_empty_and_edge_files(void)
{
    st_file *f;
    size_t len;
    /* no tensors and no data (a 0-byte data region is fine) */
    uint8_t *buf = image("{}      ", 0, &len);
    tidal_status st = st_open_memory(buf, len, "empty", &f);
    bool ok = st == TIDAL_OK && st_count(f) == 0 && st_at(f, 0) == NULL && st_metadata(f, "format") == NULL;
    if (st == TIDAL_OK) st_close(f);
    free(buf);
    CHECK_OK(st);
    CHECK(ok);
    /* only zero-sized tensors, sharing offset 0, metadata null */
    buf = image("{\"__metadata__\":null,\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                "\"b\":{\"shape\":[3,0],\"dtype\":\"I64\",\"data_offsets\":[0,0]}}", 0, &len);
    st = st_open_memory(buf, len, "zeros", &f);
    ok = st == TIDAL_OK && st_count(f) == 2 && st_find(f, "a")->nbytes == 0 && st_find(f, "b")->shape[0] == 3;
    if (st == TIDAL_OK) st_close(f);
    free(buf);
    CHECK_OK(st);
    CHECK(ok);
    /* tensors listed out of data order come back in data order */
    buf = image("{\"second\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                "\"first\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 4, &len);
    st = st_open_memory(buf, len, "order", &f);
    ok = st == TIDAL_OK && !strcmp(st_at(f, 0)->name, "first") && !strcmp(st_at(f, 1)->name, "second") &&
         ((const uint8_t *)st_at(f, 1)->data)[0] == 2;
    if (st == TIDAL_OK) st_close(f);
    free(buf);
    CHECK_OK(st);
    CHECK(ok);
    /* st_open on something that is not there, or too short */
    CHECK_STATUS(st_open("/nonexistent/tidal/x.safetensors", &f), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "/nonexistent/tidal/x.safetensors"));
    char dir[256], path[320];
    CHECK(make_tmp(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    bool wrote = write_file(path, "\x02\0\0", 3);
    st = st_open(path, &f);
    rm_dir(dir);
    CHECK(wrote);
    CHECK(st == TIDAL_ERR_INVALID && strstr(tidal_errmsg(), "too short"));
}

/* ---------------------------------------------------------------- validation */

static void test_bad_length(void)
{
    size_t len;
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    /* the length runs past the end of the file, by one byte or by far */
    uint8_t *buf = image_with_len(strlen(h) + 5, h, 4, &len);
    CHECK(rejected_image(buf, len, "runs past the end", NULL));
    buf = image_with_len(1000, h, 4, &len);
    CHECK(rejected_image(buf, len, "bad.safetensors: header: length 1000 runs past the end of the file", NULL));
    /* absurdly large */
    buf = image_with_len(100000000ull, h, 4, &len);
    CHECK(rejected_image(buf, len, "length 100000000 is too large", NULL));
    buf = image_with_len(UINT64_MAX, h, 4, &len);
    CHECK(rejected_image(buf, len, "too large", NULL));
    /* shorter than the length field */
    buf = malloc(5);
    CHECK(buf);
    memset(buf, 0, 5);
    CHECK(rejected_image(buf, 5, "too short for the 8-byte header length", NULL));
    /* a length that cuts the JSON short */
    buf = image_with_len(strlen(h) - 3, h, 4, &len);
    CHECK(rejected_image(buf, len, "header: JSON", NULL));
    /* zero */
    buf = image_with_len(0, "", 0, &len);
    CHECK(rejected_image(buf, len, "too short for a JSON object", NULL));
}

static void test_truncated(void)
{
    /* the file stops before the data the header promises */
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 10,
                   "tensor \"w\"", "reach beyond the 10 bytes of data"));
    /* every truncation of a valid image is refused, never read past */
    size_t len;
    uint8_t *full = image("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]}}", 16, &len);
    st_file *f;
    CHECK_OK(st_open_memory(full, len, "full", &f));
    st_close(f);
    bool all = true;
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *part = malloc(cut ? cut : 1);
        if (!part) abort();
        memcpy(part, full, cut);
        if (st_open_memory(part, cut, "cut", &f) != TIDAL_ERR_INVALID) {
            fprintf(stderr, "  truncation to %zu bytes accepted\n", cut);
            all = false;
            if (f) st_close(f);
        }
        free(part);
    }
    free(full);
    CHECK(all);
}

static void test_overlap(void)
{
    CHECK(rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                   "bad.safetensors: tensor \"b\": data_offsets [4, 12] overlap tensor \"a\"", NULL));
    /* the same range twice */
    CHECK(rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                   "tensor \"b\"", "overlap tensor \"a\""));
    /* a zero-sized tensor inside another */
    CHECK(rejected("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                   "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8,
                   "tensor \"z\"", "overlap tensor \"a\""));
}

static void test_gap(void)
{
    CHECK(rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
                   "tensor \"b\": data_offsets [8, 12] leave a gap of 4 bytes after tensor \"a\"", NULL));
    /* not starting at 0 */
    CHECK(rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                   "tensor \"a\"", "bytes [0, 4) of the data belong to no tensor"));
    /* trailing bytes after the last tensor */
    CHECK(rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"last\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 9,
                   "tensor \"last\"", "the data region has 9 bytes"));
    /* data with no tensor at all */
    CHECK(rejected("{\"__metadata__\":{\"format\":\"pt\"}}", 16, "header: no tensors, but 16 bytes of data", NULL));
}

static void test_wrong_size(void)
{
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                   "tensor \"w\": data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
                   "tensor \"w\"", "BF16 [2, 2] needs 8"));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 0,
                   "tensor \"w\"", "overflows"));
    CHECK(rejected("{\"w\":{\"dtype\":\"F64\",\"shape\":[1152921504606846976],\"data_offsets\":[0,0]}}", 0,
                   "tensor \"w\"", "overflows"));
}

static void test_unknown_dtype(void)
{
    CHECK(rejected("{\"model.w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                   "tensor \"model.w\": dtype \"F8_E4M3\" is not supported", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor \"w\"", "dtype \"f32\""));
    CHECK(rejected("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor \"w\": dtype is an integer, not a string", NULL));
}

static void test_duplicate_name(void)
{
    CHECK(rejected("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                   "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                   "duplicate object key near '\"w\"'", "a tensor name appears twice"));
}

static void test_offsets_beyond_data(void)
{
    CHECK(rejected("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 6,
                   "tensor \"b\": data_offsets [4, 8] reach beyond the 6 bytes of data", NULL));
    CHECK(rejected("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}", 1,
                   "tensor \"b\"", "reach beyond"));
    CHECK(rejected("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
                   "tensor \"b\": data_offsets [-1, 0] is negative", NULL));
    CHECK(rejected("{\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
                   "tensor \"b\"", "ends before it begins"));
}

static void test_negative_shape(void)
{
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-2],\"data_offsets\":[0,16]}}", 16,
                   "tensor \"w\": shape[1] = -2 is negative", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
                   "tensor \"w\": shape[0] is a real number, not an integer", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                   "tensor \"w\": shape has 9 dimensions (max 8)", NULL));
}

static void test_malformed_entries(void)
{
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", 4,
                   "tensor \"w\": unknown key \"extra\"", NULL));
    CHECK(rejected("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"w\": no dtype", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor \"w\": no shape", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor \"w\": no data_offsets", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4,
                   "tensor \"w\": shape is an integer, not an array", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4,
                   "tensor \"w\": data_offsets is not an array [begin, end]", NULL));
    CHECK(rejected("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4,
                   "tensor \"w\": data_offsets holds something other than integers", NULL));
    CHECK(rejected("{\"w\":[1,2]}", 0, "tensor \"w\": entry is an array, not an object", NULL));
    CHECK(rejected("[1,2]", 0, "header: is an array, not a JSON object", NULL));
    CHECK(rejected("{\"w\":", 0, "bad.safetensors: header: JSON at byte", NULL));
    CHECK(rejected("{\"__metadata__\":{\"format\":1}}", 0, "__metadata__ \"format\" is an integer, not a string", NULL));
    CHECK(rejected("{\"__metadata__\":[]}", 0, "__metadata__ is an array, not an object", NULL));
    /* names with control characters are made printable in the message */
    CHECK(rejected("{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor \"a?b\"", NULL));
}

/* ---------------------------------------------------------------- model directories */

/* Save a one-file safetensors with the named F32 tensors [2] (values i, i+0.5). */
static tidal_status save_shard(const char *dir, const char *file, const char *const *names, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    st_writer *w;
    tidal_status st = st_writer_new(&w);
    if (st != TIDAL_OK) return st;
    int64_t shape[1] = {2};
    for (int i = 0; i < n && st == TIDAL_OK; i++) {
        float v[2] = {(float)names[i][0], (float)names[i][0] + 0.5f};
        st = st_writer_add_f32(w, names[i], ST_F32, 1, shape, v);
    }
    if (st == TIDAL_OK) st = st_writer_save(w, path);
    st_writer_free(w);
    return st;
}

static bool save_text(const char *dir, const char *file, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return write_file(path, text, strlen(text));
}

#define INDEX_PATH "model.safetensors.index.json"
#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static void test_sharded(void)
{
    char dir[256];
    CHECK(make_tmp(dir, sizeof dir));
    static const char *const s1[] = {"b", "a"}, *const s2[] = {"c"};
    tidal_status st = save_shard(dir, SHARD1, s1, 2);
    if (st == TIDAL_OK) st = save_shard(dir, SHARD2, s2, 1);
    bool wrote = save_text(dir, INDEX_PATH,
                           "{\"metadata\":{\"total_size\":24},\"weight_map\":{"
                           "\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}");
    st_model *m = NULL;
    tidal_status sto = st == TIDAL_OK && wrote ? st_model_open(dir, &m) : TIDAL_ERR_IO;
    bool ok = sto == TIDAL_OK && st_model_count(m) == 3;
    /* shards in file-name order, each in file order */
    ok = ok && !strcmp(st_model_at(m, 0)->name, "b") && !strcmp(st_model_at(m, 1)->name, "a") &&
         !strcmp(st_model_at(m, 2)->name, "c") && st_model_at(m, 3) == NULL;
    float v[2] = {0, 0};
    ok = ok && st_read_f32(st_model_find(m, "c"), v, 2) == TIDAL_OK && v[0] == 'c' && v[1] == 'c' + 0.5f;
    ok = ok && st_read_f32(st_model_find(m, "a"), v, 2) == TIDAL_OK && v[0] == 'a';
    ok = ok && st_model_find(m, "d") == NULL;
    st_model_close(m);
    if (!ok) rm_dir(dir);
    CHECK_OK(st);
    CHECK(wrote);
    CHECK_OK(sto);
    CHECK(ok);

    struct {
        const char *index;
        tidal_status want;
        const char *msg, *msg2;
    } bad[] = {
        /* the map names a shard that does not hold the tensor */
        {"{\"weight_map\":{\"a\":\"" SHARD2 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}", TIDAL_ERR_INVALID,
         "tensor \"a\": the weight_map puts it in " SHARD2 ", which does not hold it", NULL},
        /* a tensor of the map that no shard holds */
        {"{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\",\"d\":\"" SHARD2 "\"}}",
         TIDAL_ERR_INVALID, "tensor \"d\": the weight_map puts it in " SHARD2, NULL},
        /* a tensor of a shard that the map does not list */
        {"{\"weight_map\":{\"a\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}", TIDAL_ERR_INVALID,
         "tensor \"b\": is in " SHARD1 " but not in the weight_map", NULL},
        /* a shard file that is not there */
        {"{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"model-3.safetensors\"}}",
         TIDAL_ERR_NOT_FOUND, INDEX_PATH ": shard: ", "model-3.safetensors: open"},
        {"{\"weight_map\":{\"a\":\"../" SHARD1 "\"}}", TIDAL_ERR_INVALID,
         "tensor \"a\": weight_map entry is not a file name in the directory", NULL},
        {"{\"weight_map\":{}}", TIDAL_ERR_INVALID, "weight_map is empty", NULL},
        {"{\"metadata\":{}}", TIDAL_ERR_INVALID, "no \"weight_map\" object", NULL},
        {"{\"weight_map\":{\"a\":\"" SHARD1 "\",\"a\":\"" SHARD1 "\"}}", TIDAL_ERR_INVALID, "duplicate object key", NULL},
        {"not json", TIDAL_ERR_INVALID, INDEX_PATH ": JSON at line 1", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wrote = save_text(dir, INDEX_PATH, bad[i].index);
        m = (st_model *)&m;
        st = st_model_open(dir, &m);
        bool match = wrote && st == bad[i].want && m == NULL && strstr(tidal_errmsg(), bad[i].msg) &&
                     (!bad[i].msg2 || strstr(tidal_errmsg(), bad[i].msg2));
        if (!match) {
            fprintf(stderr, "  index %zu: %s (%s)\n", i, tidal_status_name(st), tidal_errmsg());
            if (st == TIDAL_OK) st_model_close(m);
            rm_dir(dir);
        }
        CHECK(match);
    }

    /* the same tensor in two shards */
    static const char *const s2b[] = {"c", "a"};
    st = save_shard(dir, SHARD2, s2b, 2);
    wrote = save_text(dir, INDEX_PATH,
                      "{\"weight_map\":{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}}");
    sto = st_model_open(dir, &m);
    bool dup = sto == TIDAL_ERR_INVALID &&
               strstr(tidal_errmsg(), "tensor \"a\": is in two shards, " SHARD1 " and " SHARD2);
    if (!dup) fprintf(stderr, "  duplicate: %s (%s)\n", tidal_status_name(sto), tidal_errmsg());
    if (sto == TIDAL_OK) st_model_close(m);

    /* neither file: say which were looked for */
    char index[512];
    snprintf(index, sizeof index, "%s/" INDEX_PATH, dir);
    unlink(index);
    sto = st_model_open(dir, &m);
    bool none = sto == TIDAL_ERR_NOT_FOUND && strstr(tidal_errmsg(), "looked for") &&
                strstr(tidal_errmsg(), "/model.safetensors and ") && strstr(tidal_errmsg(), "/" INDEX_PATH);
    if (!none) fprintf(stderr, "  none: %s (%s)\n", tidal_status_name(sto), tidal_errmsg());
    rm_dir(dir);
    CHECK_OK(st);
    CHECK(wrote);
    CHECK(dup);
    CHECK(none);
}

/* ---------------------------------------------------------------- writer errors */

static void test_writer_errors(void)
{
    st_writer *w;
    CHECK_OK(st_writer_new(&w));
    int64_t s2[1] = {2}, neg[2] = {2, -1};
    float v[2] = {1, 2};
    int32_t ids[2] = {1, 2};
    tidal_status st[8];
    char msg[8][256];
    int k = 0;
#define TRYW(expr) (st[k] = (expr), snprintf(msg[k], sizeof msg[k], "%s", tidal_errmsg()), k++)
    TRYW(st_writer_add_f32(w, "x", ST_F32, 1, s2, v));
    TRYW(st_writer_add_f32(w, "x", ST_BF16, 1, s2, v));              /* 1: twice */
    TRYW(st_writer_add_f32(w, "y", ST_I32, 1, s2, v));               /* 2: not a float dtype */
    TRYW(st_writer_add_raw(w, "z", ST_I32, 1, s2, ids, 4));          /* 3: wrong size */
    TRYW(st_writer_add_raw(w, "__metadata__", ST_I32, 1, s2, ids, 8)); /* 4: reserved */
    TRYW(st_writer_add_f32(w, "n", ST_F32, 2, neg, v));              /* 5: negative dim */
    TRYW(st_writer_add_raw(w, "z", ST_I32, 1, s2, ids, 8));          /* 6: fine after the failure */
    TRYW(st_writer_save(w, "/nonexistent/tidal/dir/model.safetensors"));
#undef TRYW
    st_writer_free(w);
    CHECK_OK(st[0]);
    CHECK(st[1] == TIDAL_ERR_INVALID && strstr(msg[1], "tensor \"x\" added twice"));
    CHECK(st[2] == TIDAL_ERR_INVALID && strstr(msg[2], "tensor \"y\": fp32 data can be stored as F32, F16 or BF16, not I32"));
    CHECK(st[3] == TIDAL_ERR_INVALID && strstr(msg[3], "tensor \"z\": 4 bytes given, I32 of that shape needs 8"));
    CHECK(st[4] == TIDAL_ERR_INVALID && strstr(msg[4], "\"__metadata__\" is not allowed"));
    CHECK(st[5] == TIDAL_ERR_INVALID && strstr(msg[5], "tensor \"n\": shape[1] = -1 is negative"));
    CHECK_OK(st[6]);
    CHECK(st[7] == TIDAL_ERR_IO && strstr(msg[7], "/nonexistent/tidal/dir/model.safetensors.tmp"));
}

/* ---------------------------------------------------------------- PyTorch */

static const char torch_script[] =
    "import json, struct, sys, torch\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', raw[:8])[0]\n"
    "hdr = json.loads(raw[8:8 + n])\n"
    "base = 8 + n\n"
    "def get(name, dt):\n"
    "    b, e = hdr[name]['data_offsets']\n"
    "    return torch.frombuffer(bytearray(raw[base + b:base + e]), dtype=dt)\n"
    "x = get('x', torch.float32)\n"
    "bad = 0\n"
    "for name, dt in (('bf16', torch.bfloat16), ('f16', torch.float16)):\n"
    "    ours = get(name, torch.int16)\n"
    "    theirs = x.to(dt).view(torch.int16)\n"
    "    nan = torch.isnan(x)\n"
    "    ours_nan = torch.isnan(ours.view(dt))\n"
    "    diff = ((ours != theirs) & ~nan) | (nan != ours_nan)\n"
    "    if diff.any():\n"
    "        i = int(diff.nonzero()[0])\n"
    "        print('%s: %d differences, first at %d: x=%r ours=%04x torch=%04x' % (name, int(diff.sum()), i,\n"
    "              float(x[i]), int(ours[i]) & 0xffff, int(theirs[i]) & 0xffff))\n"
    "        bad = 1\n"
    "print('torch agrees on %d values' % x.numel() if not bad else 'torch disagrees')\n"
    "sys.exit(bad)\n";

static void test_torch_agrees(void)
{
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("note: /usr/bin/python3 cannot import torch; PyTorch conversion check skipped\n");
        return;
    }
    enum { N = 40000 };
    float *x = malloc(N * sizeof *x);
    CHECK(x);
    static const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x477ff000u, 0x477fefffu,
                                       0x387fe000u, 0x33000000u, 0x33c00000u, 0x7f800000u, 0xff800000u,
                                       0x7fc00000u, 0x00000001u, 0x80000000u, 0x3f801000u, 0x3f803000u};
    int ns = (int)(sizeof special / sizeof special[0]);
    for (int i = 0; i < N; i++) {
        uint32_t u = rng32();
        if (i % 2) u = (u & 0x807fffffu) | ((100u + rng32() % 51u) << 23);
        x[i] = f32_of(i < ns ? special[i] : u);
    }
    char dir[256], path[320], script[320], cmd[1024];
    bool tmp = make_tmp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    snprintf(script, sizeof script, "%s/check.py", dir);
    st_writer *w = NULL;
    int64_t shape[1] = {N};
    tidal_status st = tmp ? st_writer_new(&w) : TIDAL_ERR_IO;
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "x", ST_F32, 1, shape, x);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "bf16", ST_BF16, 1, shape, x);
    if (st == TIDAL_OK) st = st_writer_add_f32(w, "f16", ST_F16, 1, shape, x);
    if (st == TIDAL_OK) st = st_writer_save(w, path);
    st_writer_free(w);
    free(x);
    bool wrote = st == TIDAL_OK && write_file(script, torch_script, strlen(torch_script));
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, path);
    int rc = wrote ? system(cmd) : -1;
    rm_dir(dir);
    CHECK_OK(st);
    CHECK(wrote);
    CHECK_MSG(rc == 0, "PyTorch's conversions differ (exit %d)", rc);
}

/* ---------------------------------------------------------------- fuzz seeds */

static int write_seeds(const char *dir)
{
    char path[4096];
    int rc = 0;
    /* 1: several dtypes and metadata, as the writer makes them */
    {
        st_writer *w;
        if (st_writer_new(&w) != TIDAL_OK) return 1;
        float v[6] = {1.0f, -2.5f, 0.1f, 65504.0f, 1e-7f, -0.0f};
        int32_t ids[3] = {1, 151643, 7};
        int64_t s23[2] = {2, 3}, s3[1] = {3}, s0[1] = {0};
        bool ok = st_writer_metadata(w, "format", "pt") == TIDAL_OK &&
                  st_writer_add_f32(w, "model.embed_tokens.weight", ST_F32, 2, s23, v) == TIDAL_OK &&
                  st_writer_add_f32(w, "model.norm.weight", ST_BF16, 1, s3, v) == TIDAL_OK &&
                  st_writer_add_f32(w, "lm_head.weight", ST_F16, 2, s23, v) == TIDAL_OK &&
                  st_writer_add_raw(w, "input_ids", ST_I32, 1, s3, ids, sizeof ids) == TIDAL_OK &&
                  st_writer_add_f32(w, "empty", ST_F32, 1, s0, NULL) == TIDAL_OK;
        snprintf(path, sizeof path, "%s/mixed.safetensors", dir);
        ok = ok && st_writer_save(w, path) == TIDAL_OK;
        st_writer_free(w);
        if (!ok) { fprintf(stderr, "cannot write %s: %s\n", path, tidal_errmsg()); rc = 1; }
    }
    /* 2: an F64 tensor and a scalar */
    {
        st_writer *w;
        if (st_writer_new(&w) != TIDAL_OK) return 1;
        double d[2] = {0.1, 1e300};
        float s = 3.0f;
        int64_t s2[1] = {2};
        bool ok = st_writer_add_raw(w, "d", ST_F64, 1, s2, d, sizeof d) == TIDAL_OK &&
                  st_writer_add_f32(w, "s", ST_F32, 0, NULL, &s) == TIDAL_OK;
        snprintf(path, sizeof path, "%s/f64.safetensors", dir);
        ok = ok && st_writer_save(w, path) == TIDAL_OK;
        st_writer_free(w);
        if (!ok) { fprintf(stderr, "cannot write %s: %s\n", path, tidal_errmsg()); rc = 1; }
    }
    /* 3: hand-made images, out of data order and empty */
    static const struct {
        const char *file, *header;
        size_t data;
    } raw[] = {
        {"unordered.safetensors",
         "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]},"
         "\"a\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[0,4]}}", 8},
        {"empty.safetensors", "{}      ", 0},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        size_t len;
        uint8_t *buf = image(raw[i].header, raw[i].data, &len);
        snprintf(path, sizeof path, "%s/%s", dir, raw[i].file);
        if (!write_file(path, buf, len)) { fprintf(stderr, "cannot write %s\n", path); rc = 1; }
        free(buf);
    }
    if (rc == 0) printf("wrote the fuzz_safetensors seeds to %s\n", dir);
    return rc;
}

int main(void)
{
    const char *seeds = getenv("TIDAL_FUZZ_SEEDS_OUT");
    if (seeds) return write_seeds(seeds);

    RUN(test_dtype_table);
    RUN(test_bf16_rounding);
    RUN(test_f16_rounding);
    RUN(test_rounding_random);
    RUN(test_f64_and_read_errors);
    RUN(test_round_trip);
    RUN(test_writer_to_memory);
    RUN(test_bf16_file);
    RUN(test_empty_and_edge_files);
    RUN(test_bad_length);
    RUN(test_truncated);
    RUN(test_overlap);
    RUN(test_gap);
    RUN(test_wrong_size);
    RUN(test_unknown_dtype);
    RUN(test_duplicate_name);
    RUN(test_offsets_beyond_data);
    RUN(test_negative_shape);
    RUN(test_malformed_entries);
    RUN(test_sharded);
    RUN(test_writer_errors);
    RUN(test_torch_agrees);
    return check_summary();
}
