/* test_digest.c - the weights' digest (base/digest.h) is BLAKE3-256: known
 * answers from the BLAKE3 paper's examples, incremental updates in any split
 * equal the one-shot digest, and for every size around BLAKE3's chunk (1 KiB)
 * and tree boundaries the digest equals that of an implementation written
 * apart from ours: Debian's b3sum (the BLAKE3 team's Rust crate). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "base/digest.h"
#include "base/spawn.h"

static void hex_of(const uint8_t d[DIGEST_BYTES], char out[2 * DIGEST_BYTES + 1])
{
    digest_hex(d, DIGEST_BYTES, out);
}

static void test_known_answers(void)
{
    uint8_t d[DIGEST_BYTES];
    char h[65];
    digest_compute("", 0, d);
    hex_of(d, h);
    CHECK_MSG(!strcmp(h, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"), "BLAKE3(\"\") = %s", h);
    digest_compute("abc", 3, d);
    hex_of(d, h);
    CHECK_MSG(!strcmp(h, "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"), "BLAKE3(\"abc\") = %s", h);
    /* the prefix form used in messages */
    char p[17];
    digest_hex(d, 8, p);
    CHECK(!strcmp(p, "6437b3ac38465133"));
    uint8_t e[DIGEST_BYTES];
    memcpy(e, d, sizeof e);
    CHECK(digest_equal(d, e));
    e[31] ^= 1;
    CHECK(!digest_equal(d, e));
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

static void test_incremental(void)
{
    const size_t n = 3 * 1024 * 1024 + 77;
    uint8_t *buf = malloc(n);
    CHECK(buf != NULL);
    if (!buf) return;
    fill(buf, n, 7);
    uint8_t whole[DIGEST_BYTES], part[DIGEST_BYTES];
    digest_compute(buf, n, whole);
    const size_t steps[] = {1, 63, 64, 65, 1023, 1024, 1025, 4096, 65536 + 3};
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        digest_state s;
        digest_init(&s);
        for (size_t off = 0; off < n; off += steps[k]) digest_update(&s, buf + off, n - off < steps[k] ? n - off : steps[k]);
        digest_final(&s, part);
        CHECK_MSG(digest_equal(whole, part), "updates of %zu bytes give another digest", steps[k]);
    }
    /* final does not consume: more bytes after it go on from where it was */
    digest_state s;
    digest_init(&s);
    digest_update(&s, buf, 1000);
    digest_final(&s, part);
    digest_update(&s, buf + 1000, n - 1000);
    digest_final(&s, part);
    CHECK(digest_equal(whole, part));
    free(buf);
}

/* b3sum's digest of the file at path, as 64 hex digits; 0 on failure. */
static int b3sum_of(const char *b3sum, const char *path, char out[65])
{
    char *const argv[] = {(char *)"b3sum", (char *)"--no-names", (char *)path, NULL};
    char *text = NULL;
    size_t len = 0;
    int code = -1;
    if (spawn_capture(b3sum, argv, NULL, &text, &len, &code) != TIDAL_OK || code != 0 || len < 64) {
        free(text);
        return 0;
    }
    memcpy(out, text, 64);
    out[64] = '\0';
    free(text);
    return 1;
}

static void test_against_b3sum(void)
{
    char *b3sum = NULL;
    if (spawn_which("b3sum", &b3sum) != TIDAL_OK) {
        CHECK_MSG(0, "b3sum not found: install Debian's b3sum (make deps installs it)");
        return;
    }
    char path[] = "/tmp/tidal-test-digest-XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) {
        free(b3sum);
        return;
    }
    close(fd);
    /* sizes around a block (64), a chunk (1024), tree levels, the SIMD
     * degrees (4, 8, 16 chunks at once) and a weights chunk (4 MiB) */
    const size_t sizes[] = {0, 1, 64, 65, 1023, 1024, 1025, 2048, 2049, 3072, 4096, 4097, 8192, 8193,
                            16384, 16385, 31744, 102400, 1048575, 4194304, 4194307, 5000000};
    uint8_t *buf = malloc(5000000);
    CHECK(buf != NULL);
    for (size_t k = 0; buf && k < sizeof sizes / sizeof *sizes; k++) {
        fill(buf, sizes[k], (uint32_t)k + 1);
        FILE *f = fopen(path, "wb");
        CHECK(f != NULL);
        if (!f) break;
        CHECK(fwrite(buf, 1, sizes[k], f) == sizes[k]);
        fclose(f);
        uint8_t d[DIGEST_BYTES];
        char ours[65], theirs[65];
        digest_compute(buf, sizes[k], d);
        hex_of(d, ours);
        CHECK_MSG(b3sum_of(b3sum, path, theirs), "b3sum failed on %zu bytes", sizes[k]);
        CHECK_MSG(!strcmp(ours, theirs), "%zu bytes: ours %s, b3sum %s", sizes[k], ours, theirs);
    }
    free(buf);
    unlink(path);
    free(b3sum);
}

int main(void)
{
    RUN(test_known_answers);
    RUN(test_incremental);
    RUN(test_against_b3sum);
    return check_summary();
}
