/* admission.c - the dispatch rule (see admission.h). */
#include "controller/admission.h"

#include <assert.h>

uint64_t admission_feeds(uint64_t n, uint32_t groups_per_step)
{
    assert(groups_per_step >= 1);
    return n / groups_per_step;
}

uint64_t admission_min_version(uint64_t d, uint32_t max_staleness)
{
    return d > max_staleness ? d - max_staleness : 0;
}

uint64_t admission_room(uint64_t version, uint32_t max_staleness, uint32_t groups_per_step, uint64_t dispatched,
                        uint64_t dropped)
{
    assert(dropped <= dispatched);
    const uint64_t cap = ((uint64_t)max_staleness + version + 1) * groups_per_step;
    const uint64_t live = dispatched - dropped;
    return live >= cap ? 0 : cap - live;
}
