/* fuzz_safetensors.c - libFuzzer target for the safetensors reader
 * (model/safetensors.h).
 *
 * The input is a safetensors image: st_open_memory validates it, and when it
 * is accepted every tensor must be where the header says (inside the input,
 * nbytes = numel x dtype size) and every float tensor (F32, F16, BF16, F64)
 * must convert with st_read_f32. Whatever the bytes: OK or TIDAL_ERR_INVALID,
 * never a crash, an out-of-bounds read or a leak (ASan + UBSan).
 *
 * Seeds: tests/fuzz/seeds/fuzz_safetensors/, written by
 * `TIDAL_FUZZ_SEEDS_OUT=DIR test_safetensors`.
 * Run by hand: fuzz_safetensors -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_safetensors
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file *f = NULL;
    tidal_status st = st_open_memory(data, size, "fuzz", &f);
    if (st != TIDAL_OK) {
        if (f != NULL || st != TIDAL_ERR_INVALID) abort();
        return 0;
    }
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        int64_t n = st_numel(t);
        if (!t || n < 0 || (uint64_t)n * st_dtype_size(t->dtype) != t->nbytes) abort();
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) abort();
        if (st_find(f, t->name) != t) abort();
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) continue;
        /* at most size / 2 elements fit in the input, so this stays small */
        float *buf = malloc((size_t)n * sizeof *buf + 1);
        if (!buf) abort();
        if (st_read_f32(t, buf, n) != TIDAL_OK) abort();
        if (n > 0 && st_read_f32(t, buf, n - 1) != TIDAL_ERR_INVALID) abort();
        free(buf);
    }
    st_close(f);
    return 0;
}
