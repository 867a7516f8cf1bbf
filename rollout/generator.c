/* generator.c - the built-in engine as a generator (generator.h). */
#include "rollout/generator.h"

static tidal_status eng_submit(void *impl, const engine_request *r, uint64_t *id) { return engine_submit(impl, r, id); }
static tidal_status eng_step(void *impl) { return engine_step(impl); }
static bool eng_busy(const void *impl) { return engine_busy(impl); }
static engine_result *eng_next(void *impl) { return engine_next_result(impl); }
static tidal_status eng_abort(void *impl, uint64_t id) { return engine_abort(impl, id); }
static uint64_t eng_version(const void *impl) { return engine_version(impl); }

static const generator_ops engine_ops = {eng_submit, eng_step, eng_busy, eng_next, eng_abort, eng_version};

generator generator_of_engine(engine *e) { return (generator){.ops = &engine_ops, .impl = e}; }
