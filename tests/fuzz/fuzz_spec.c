/* fuzz_spec.c - libFuzzer target: the job-spec reader (job/spec.c) on
 * any bytes, with and without --set overrides. It must never crash, leak or
 * hang; an accepted spec must survive the JSON round trip unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "job/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const sets[] = {"trainer.steps=3", "env.config.length=4"};
    job_spec s, t;
    const int n_sets = size && (data[0] & 1) ? 2 : 0;
    if (spec_parse((const char *)data, size, "fuzz.yaml", sets, n_sets, &s) == TIDAL_OK) {
        json_t *j = spec_to_json(&s);
        if (!j || spec_from_json(j, "fuzz json", &t) != TIDAL_OK) abort();
        json_t *j2 = spec_to_json(&t);
        if (!j2 || !json_equal(j, j2)) abort();
        json_decref(j);
        json_decref(j2);
        spec_release(&t);
    }
    spec_release(&s);
    return 0;
}
