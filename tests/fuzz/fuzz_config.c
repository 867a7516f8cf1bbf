/* fuzz_config.c - libFuzzer target for the config.json parser (model/config.h).
 *
 * The input is config.json text (not NUL-terminated). model_config_parse must
 * return OK or TIDAL_ERR_INVALID, never crash, read out of bounds or leak. A
 * config it accepts must also pass model_config_validate, and its parameter
 * count must be at least the embeddings (no overflow to something smaller).
 *
 * Seeds: tests/fuzz/seeds/fuzz_config/, written by
 * `TIDAL_FUZZ_SEEDS_OUT=DIR test_config`.
 * Run by hand: fuzz_config -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_config
 */
#include <stdint.h>
#include <stdlib.h>

#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    model_config c;
    tidal_status st = model_config_parse((const char *)data, size, "fuzz/config.json", &c);
    if (st == TIDAL_OK) {
        if (model_config_validate(&c, "fuzz") != TIDAL_OK) abort();
        if (model_config_num_params(&c) < (size_t)c.vocab_size * (size_t)c.hidden_size) abort();
    } else if (st != TIDAL_ERR_INVALID) {
        abort();
    }
    return 0;
}
