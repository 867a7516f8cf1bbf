/* env.c - the in-process environment interface (see env.h): results, the
 * registry of built-in classes, env_create / env_handle with their checks,
 * and the helpers the built-in envs share (configuration and task fields, a
 * seeded generator; see builtin.h).
 *
 * env_handle is the one place that checks what an environment returns
 * (finite reward and metrics, metric names non-empty and distinct), so a
 * class only has to compute; the bus service (envs/service.c) and the
 * in-process worker both go through it.
 */
#include "envs/env.h"
#include "envs/builtin.h"
#include "base/json.h"
#include "base/hash.h"
#include "base/str.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- results ---- */

void env_result_clear(env_result *r)
{
    if (!r) return;
    free(r->observation);
    memset(r, 0, sizeof *r);
}

tidal_status env_result_observe(env_result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = str_vprintf(fmt, ap);
    va_end(ap);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "env: observation: out of memory");
    free(r->observation);
    r->observation = s;
    return TIDAL_OK;
}

tidal_status env_result_metric(env_result *r, const char *name, double v)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "env: metric name is empty");
    if (n >= ENV_METRIC_NAME_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "env: metric %.32s...: name longer than %d bytes", name,
                          ENV_METRIC_NAME_MAX - 1);
    for (int i = 0; i < r->n_metrics; i++)
        if (strcmp(r->metrics[i].name, name) == 0)
            return tidal_fail(TIDAL_ERR_INVALID, "env: metric %s: set twice", name);
    if (r->n_metrics >= ENV_MAX_METRICS)
        return tidal_fail(TIDAL_ERR_INVALID, "env: metric %s: more than %d metrics", name, ENV_MAX_METRICS);
    env_metric *m = &r->metrics[r->n_metrics++];
    memcpy(m->name, name, n + 1);
    m->value = v;
    return TIDAL_OK;
}

/* ---- the registry ---- */

static const env_class *const builtins[] = {
    &env_arith, &env_strings, &env_gsm8k, &env_countdown, &env_match, &env_guess,
};
#define N_BUILTINS (sizeof builtins / sizeof builtins[0])

size_t env_builtins(const env_class *const **out)
{
    if (out) *out = builtins;
    return N_BUILTINS;
}

const env_class *env_builtin(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < N_BUILTINS; i++)
        if (strcmp(builtins[i]->name, name) == 0) return builtins[i];
    return NULL;
}

/* ---- an environment in-process ---- */

struct env {
    const env_class *cls;
    void *state;
};

/* Parse `what` (NULL or "" = {}) into a new reference to a JSON object. */
static tidal_status parse_object(const char *what, const char *text, json_t **out)
{
    *out = NULL;
    if (!text || !*text) {
        *out = json_object();
        return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", what);
    }
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    if (!v) return tidal_fail(TIDAL_ERR_INVALID, "%s: not valid JSON: %s (line %d, column %d)", what, err.text,
                              err.line, err.column);
    if (!json_is_object(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        json_decref(v);
        return tidal_fail(TIDAL_ERR_INVALID, "%s: must be a JSON object, got %s", what, d);
    }
    *out = v;
    return TIDAL_OK;
}

static void list_names(char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_BUILTINS && off < cap; i++) {
        int n = snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", builtins[i]->name);
        if (n < 0) break;
        off += (size_t)n;
    }
}

tidal_status env_create(const char *name, const char *config_json, env **out)
{
    *out = NULL;
    const env_class *cls = env_builtin(name);
    if (!cls) {
        char names[256];
        list_names(names, sizeof names);
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "env %s: no such built-in environment (built-in: %s)",
                          name ? name : "(null)", names);
    }
    json_t *config;
    tidal_status st = parse_object("config", config_json, &config);
    if (st != TIDAL_OK) return tidal_wrap(st, "env %s", cls->name);
    void *state = NULL;
    if (cls->create) {
        st = cls->create(config, &state);
    } else if (json_object_size(config) > 0) {
        st = tidal_fail(TIDAL_ERR_INVALID, "config.%s: unknown key (%s takes no configuration)",
                        json_object_iter_key(json_object_iter(config)), cls->name);
    }
    json_decref(config);
    if (st != TIDAL_OK) return tidal_wrap(st, "env %s", cls->name);
    env *e = calloc(1, sizeof *e);
    if (!e) {
        if (cls->destroy) cls->destroy(state);
        return tidal_fail(TIDAL_ERR_NOMEM, "env %s: out of memory", cls->name);
    }
    e->cls = cls;
    e->state = state;
    *out = e;
    return TIDAL_OK;
}

void env_free(env *e)
{
    if (!e) return;
    if (e->cls->destroy) e->cls->destroy(e->state);
    free(e);
}

const env_class *env_class_of(const env *e) { return e ? e->cls : NULL; }

tidal_status env_generate(const env *e, uint64_t seed, char **task_json, char **prompt)
{
    *task_json = *prompt = NULL;
    if (!e) return tidal_fail(TIDAL_ERR_INVALID, "env: no environment");
    if (!e->cls->generate)
        return tidal_fail(TIDAL_ERR_INVALID, "env %s: generates no tasks (it scores dataset rows)", e->cls->name);
    return tidal_wrap(e->cls->generate(e->state, seed, task_json, prompt), "env %s", e->cls->name);
}

tidal_status env_result_check(const env_result *r)
{
    if (!isfinite(r->reward)) return tidal_fail(TIDAL_ERR_INVALID, "result: reward is %g, not finite", r->reward);
    if (r->n_metrics < 0 || r->n_metrics > ENV_MAX_METRICS)
        return tidal_fail(TIDAL_ERR_INVALID, "result: %d metrics (0..%d allowed)", r->n_metrics, ENV_MAX_METRICS);
    for (int i = 0; i < r->n_metrics; i++) {
        const env_metric *m = &r->metrics[i];
        if (!memchr(m->name, '\0', sizeof m->name))
            return tidal_fail(TIDAL_ERR_INVALID, "result: metric %d: name not terminated", i);
        if (!m->name[0]) return tidal_fail(TIDAL_ERR_INVALID, "result: metric %d: empty name", i);
        if (!isfinite(m->value))
            return tidal_fail(TIDAL_ERR_INVALID, "result: metric %s is %g, not finite", m->name, m->value);
        for (int j = 0; j < i; j++)
            if (strcmp(r->metrics[j].name, m->name) == 0)
                return tidal_fail(TIDAL_ERR_INVALID, "result: metric %s appears twice", m->name);
    }
    return TIDAL_OK;
}

tidal_status env_handle(const env *e, const env_call *c, env_result *out)
{
    memset(out, 0, sizeof *out);
    if (!e || !c) return tidal_fail(TIDAL_ERR_INVALID, "env: no environment or no call");
    const char *name = e->cls->name;
    if (c->op != ENV_OP_RESET && c->op != ENV_OP_STEP)
        return tidal_fail(TIDAL_ERR_INVALID, "env %s: op: %d is neither ENV_OP_RESET (1) nor ENV_OP_STEP (2)", name,
                          (int)c->op);
    json_t *task;
    tidal_status st = parse_object("task_json", c->task_json, &task);
    if (st != TIDAL_OK) return tidal_wrap(st, "env %s", name);
    env_request rq = {.call = c, .task = task, .action = c->action ? c->action : ""};
    st = e->cls->handle(e->state, &rq, out);
    json_decref(task);
    if (st == TIDAL_OK) st = env_result_check(out);
    if (st != TIDAL_OK) {
        env_result_clear(out);
        return tidal_wrap(st, "env %s", name);
    }
    return TIDAL_OK;
}

/* ---- configuration and task fields ---- */

tidal_status env_bad(const char *prefix, const char *key, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s.%s: %s", prefix, key, text);
}

tidal_status env_cfg_keys(const json_t *config, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)config, key, v) {
        bool ok = false;
        for (size_t i = 0; known[i]; i++) ok = ok || strcmp(known[i], key) == 0;
        if (ok) continue;
        char list[256];
        size_t off = 0;
        list[0] = '\0';
        for (size_t i = 0; known[i] && off < sizeof list; i++) {
            int n = snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", known[i]);
            if (n < 0) break;
            off += (size_t)n;
        }
        return env_bad("config", key, "unknown key (known: %s)", known[0] ? list : "none");
    }
    return TIDAL_OK;
}

tidal_status env_cfg_int(const json_t *config, const char *key, int64_t def, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = jv_get(config, key);
    if (!v) {
        *out = def;
        return TIDAL_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return env_bad("config", key, "must be an integer in %" PRId64 "..%" PRId64 ", got %s", lo, hi, d);
    }
    *out = json_integer_value(v);
    return TIDAL_OK;
}

tidal_status env_cfg_double(const json_t *config, const char *key, double def, double lo, double hi, double *out)
{
    json_t *v = jv_get(config, key);
    if (!v) {
        *out = def;
        return TIDAL_OK;
    }
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= lo && x <= hi)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return env_bad("config", key, "must be a number in [%g, %g], got %s", lo, hi, d);
    }
    *out = x;
    return TIDAL_OK;
}

tidal_status env_cfg_bool(const json_t *config, const char *key, bool def, bool *out)
{
    json_t *v = jv_get(config, key);
    if (!v) {
        *out = def;
        return TIDAL_OK;
    }
    if (!json_is_boolean(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return env_bad("config", key, "must be true or false, got %s", d);
    }
    *out = json_is_true(v);
    return TIDAL_OK;
}

tidal_status env_cfg_string(const json_t *config, const char *key, const char *def, const char **out)
{
    json_t *v = jv_get(config, key);
    if (!v) {
        *out = def;
        return TIDAL_OK;
    }
    if (!json_is_string(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return env_bad("config", key, "must be a string, got %s", d);
    }
    *out = json_string_value(v);
    return TIDAL_OK;
}

tidal_status env_task_int(const json_t *task, const char *key, bool required, int64_t def, int64_t *out)
{
    json_t *v = jv_get(task, key);
    if (!v) {
        if (required) return env_bad("task_json", key, "missing");
        *out = def;
        return TIDAL_OK;
    }
    if (!json_is_integer(v)) {
        char d[96];
        jv_describe(v, d, sizeof d);
        return env_bad("task_json", key, "must be an integer, got %s", d);
    }
    *out = json_integer_value(v);
    return TIDAL_OK;
}

json_t *env_task_field(const json_t *task, const char *path)
{
    json_t *v = jv_get(task, path);
    if (v || !strchr(path, '.')) return v;
    const json_t *cur = task;
    const char *p = path;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (!json_is_object(cur)) return NULL;
        v = json_object_getn(cur, p, n);
        if (!v || json_is_null(v)) return NULL;
        if (!dot) return v;
        cur = v;
        p = dot + 1;
    }
}

/* ---- the seeded generator ---- */

void env_rng_seed(env_rng *r, uint64_t seed) { r->s = seed; }

uint64_t env_rng_next(env_rng *r) { return splitmix64_next(&r->s); }

uint64_t env_rng_below(env_rng *r, uint64_t n)
{
    /* reject the top partial block so every residue is equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = env_rng_next(r);
    while (x >= limit);
    return x % n;
}
