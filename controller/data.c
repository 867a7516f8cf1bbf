/* data.c - datasets and the training order (see data.h for the contract). */
#include "controller/data.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envs/env.h"
#include "base/hash.h"

/* A generator's evaluation seeds come from another base (and are odd). */
#define EVAL_SEED_BASE 0x45564100000000ull /* "EVA" */

typedef struct row {
    char *text; /* the line, a JSON object */
    uint64_t line;
} row;

struct dataset {
    char path[512], prompt_key[64];
    row *train, *eval;
    size_t n_train, n_eval;
    uint64_t seed;
    env *gen;          /* a generator, or NULL */
    uint64_t *perm;    /* the current epoch's order */
    int64_t perm_epoch; /* which epoch perm holds (-1: none) */
};

void dataset_item_clear(dataset_item *it)
{
    free(it->task_json);
    free(it->prompt);
    memset(it, 0, sizeof *it);
}

void dataset_free(dataset *d)
{
    if (!d) return;
    for (size_t i = 0; d->train && i < d->n_train; i++) free(d->train[i].text);
    for (size_t i = 0; d->eval && i < d->n_eval; i++) free(d->eval[i].text); /* a generator has no rows */
    free(d->train);
    free(d->eval);
    free(d->perm);
    env_free(d->gen);
    free(d);
}

static tidal_status push(row **a, size_t *n, size_t *cap, char *text, uint64_t line)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        row *na = realloc(*a, nc * sizeof *na);
        if (!na) return tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory at line %llu", (unsigned long long)line);
        *a = na, *cap = nc;
    }
    (*a)[(*n)++] = (row){.text = text, .line = line};
    return TIDAL_OK;
}

tidal_status dataset_open_jsonl(const char *path, const char *prompt_key, double eval_fraction, uint64_t seed,
                                dataset **out)
{
    *out = NULL;
    if (!(eval_fraction >= 0 && eval_fraction < 1))
        return tidal_fail(TIDAL_ERR_INVALID, "%s: eval_fraction %g is not in [0, 1)", path, eval_fraction);
    FILE *f = fopen(path, "rb");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    tidal_status st = TIDAL_OK;
    char *line = NULL;
    dataset *d = calloc(1, sizeof *d);
    if (!d) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory");
        goto cleanup;
    }
    snprintf(d->path, sizeof d->path, "%s", path);
    snprintf(d->prompt_key, sizeof d->prompt_key, "%s", prompt_key);
    d->seed = seed;
    d->perm_epoch = -1;
    size_t cap_t = 0, cap_e = 0, len_cap = 0;
    uint64_t no = 0;
    for (ssize_t n; (n = getline(&line, &len_cap, f)) > 0;) {
        no++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        size_t lead = strspn(line, " \t");
        const char *nul = memchr(line, '\0', (size_t)n);
        if (nul) { /* a row is kept as a C string (the task JSON), so it cannot hold one */
            st = tidal_fail(TIDAL_ERR_INVALID, "%s:%llu: a NUL byte at column %zu", path, (unsigned long long)no,
                            (size_t)(nul - line) + 1);
            goto cleanup;
        }
        if (!line[lead]) continue; /* blank lines are allowed */
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &je);
        json_t *p = json_is_object(o) ? json_object_get(o, prompt_key) : NULL;
        if (!json_is_object(o))
            st = tidal_fail(TIDAL_ERR_INVALID, "%s:%llu: not a JSON object%s%s", path, (unsigned long long)no,
                            o ? "" : ": ", o ? "" : je.text);
        else if (!json_is_string(p))
            st = tidal_fail(TIDAL_ERR_INVALID, "%s:%llu: %s is %s (the prompt must be a string; data.prompt_key "
                            "names the field)", path, (unsigned long long)no, prompt_key, p ? "not a string" : "missing");
        json_decref(o);
        if (st != TIDAL_OK) goto cleanup;
        char *text = strdup(line + lead);
        if (!text) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory");
            goto cleanup;
        }
        const bool held = (double)(mix64(seed ^ mix64(no)) >> 11) * 0x1.0p-53 < eval_fraction;
        st = held ? push(&d->eval, &d->n_eval, &cap_e, text, no) : push(&d->train, &d->n_train, &cap_t, text, no);
        if (st != TIDAL_OK) {
            free(text); /* not pushed: still ours */
            goto cleanup;
        }
    }
    if (d->n_train == 0) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: no training rows (%zu held out for evaluation)", path, d->n_eval);
        goto cleanup;
    }
    if (!(d->perm = malloc(d->n_train * sizeof *d->perm))) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory");
        goto cleanup;
    }
    *out = d;
    d = NULL;
cleanup:
    free(line);
    fclose(f);
    dataset_free(d);
    return st;
}

tidal_status dataset_open_generator(const char *env_name, const char *config_json, uint64_t seed, int eval_size,
                                    dataset **out)
{
    *out = NULL;
    if (eval_size < 0) return tidal_fail(TIDAL_ERR_INVALID, "dataset: eval_size %d", eval_size);
    dataset *d = calloc(1, sizeof *d);
    if (!d) return tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory");
    d->seed = seed;
    d->n_eval = (size_t)eval_size;
    d->perm_epoch = -1;
    tidal_status st = TIDAL_OK;
    dataset_item probe = {0};
    TRY_GOTO(env_create(env_name, config_json, &d->gen));
    TRY_GOTO(env_generate(d->gen, seed, &probe.task_json, &probe.prompt)); /* it generates at all */
    *out = d;
    d = NULL;
cleanup:
    dataset_item_clear(&probe);
    dataset_free(d);
    return tidal_wrap(st, "data.generator %s", env_name);
}

size_t dataset_train_rows(const dataset *d) { return d->gen ? 0 : d->n_train; }
size_t dataset_eval_count(const dataset *d) { return d->n_eval; }

/* A file row as an item: the prompt read back from the row. */
static tidal_status row_item(const dataset *d, const row *r, dataset_item *out)
{
    json_error_t je;
    json_t *o = json_loads(r->text, 0, &je);
    const char *p = json_string_value(json_object_get(o, d->prompt_key));
    out->task_json = strdup(r->text);
    out->prompt = p ? strdup(p) : NULL;
    out->source = r->line;
    json_decref(o);
    if (!out->task_json || !out->prompt) {
        dataset_item_clear(out);
        return tidal_fail(TIDAL_ERR_NOMEM, "dataset: out of memory");
    }
    return TIDAL_OK;
}

tidal_status dataset_train_item(dataset *d, uint64_t i, int epochs, bool shuffle, dataset_item *out)
{
    memset(out, 0, sizeof *out);
    if (d->gen) {
        const uint64_t s = (mix64(d->seed) + i) << 1; /* training seeds are even, evaluation seeds odd */
        out->source = s;
        return env_generate(d->gen, s, &out->task_json, &out->prompt);
    }
    const uint64_t epoch = i / d->n_train;
    if (epochs < 1 || epoch >= (uint64_t)epochs)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "%s: item %llu is past %d epoch(s) of %zu rows", d->path,
                          (unsigned long long)i, epochs, d->n_train);
    if ((int64_t)epoch != d->perm_epoch) { /* this epoch's order: Fisher-Yates from (seed, epoch) */
        for (size_t k = 0; k < d->n_train; k++) d->perm[k] = k;
        if (shuffle) {
            uint64_t r = mix64(d->seed ^ mix64(epoch + 1));
            for (size_t k = d->n_train - 1; k > 0; k--) {
                r = mix64(r);
                size_t j = (size_t)(r % (k + 1));
                uint64_t t = d->perm[k];
                d->perm[k] = d->perm[j];
                d->perm[j] = t;
            }
        }
        d->perm_epoch = (int64_t)epoch;
    }
    return row_item(d, &d->train[d->perm[i % d->n_train]], out);
}

tidal_status dataset_eval_item(dataset *d, size_t i, dataset_item *out)
{
    memset(out, 0, sizeof *out);
    if (i >= d->n_eval)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "dataset: evaluation item %zu of %zu", i, d->n_eval);
    if (d->gen) {
        out->source = ((mix64(d->seed ^ EVAL_SEED_BASE) + i) << 1) | 1;
        return env_generate(d->gen, out->source, &out->task_json, &out->prompt);
    }
    return row_item(d, &d->eval[i], out);
}
