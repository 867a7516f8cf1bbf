/* fuzz_delta.c - libFuzzer target for weights deltas (model/delta.h).
 *
 * The input is a delta, applied to a fixed 1,048-byte safetensors-shaped base
 * (a 24-byte header, bf16-sized values) both ways: delta_apply (a new image)
 * and delta_apply_inplace (the base rebuilt a window at a time). Whatever the
 * bytes: OK or TIDAL_ERR_CORRUPT from both, the same verdict, and when OK the
 * same image - never a crash, an out-of-bounds access or a leak (ASan + UBSan).
 *
 * Seeds: tests/fuzz/seeds/fuzz_delta/ (deltas made with delta_encode against
 * this base: the one in make_base).
 * Run by hand: fuzz_delta -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_delta
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/delta.h"

#define BASE_BYTES 1048

static void make_base(uint8_t *b)
{
    memset(b, 0, BASE_BYTES);
    b[0] = 16; /* header length 16, then 16 spaces, then the values */
    memset(b + 8, ' ', 16);
    for (int i = 24; i < BASE_BYTES; i++) b[i] = (uint8_t)(i * 37 + 11);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t base[BASE_BYTES], work[BASE_BYTES];
    make_base(base);
    memcpy(work, base, sizeof work);
    void *out = NULL;
    size_t len = 0;
    const tidal_status a = delta_apply(base, sizeof base, data, size, "fuzz", &out, &len);
    const tidal_status b = delta_apply_inplace(work, sizeof work, data, size, "fuzz");
    if ((a != TIDAL_OK && a != TIDAL_ERR_CORRUPT) || (b != TIDAL_OK && b != TIDAL_ERR_CORRUPT)) abort();
    if (a != b) abort();
    if (a == TIDAL_OK && (len != sizeof work || memcmp(out, work, len) != 0)) abort();
    if (a != TIDAL_OK && out) abort();
    free(out);
    return 0;
}
