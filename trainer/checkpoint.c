/* checkpoint.c - trainer checkpoints (checkpoint.h). */
#define _GNU_SOURCE /* strdup */
#include "trainer/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/fs.h"

tidal_status ckpt_state_add_trained(ckpt_state *s, const char *id)
{
    if (s->n_trained == s->cap_trained) {
        size_t cap = s->cap_trained ? 2 * s->cap_trained : 1024;
        char **p = realloc(s->trained_ids, cap * sizeof *p);
        if (!p) return tidal_fail(TIDAL_ERR_NOMEM, "checkpoint: out of memory");
        s->trained_ids = p, s->cap_trained = cap;
    }
    if (!(s->trained_ids[s->n_trained] = strdup(id))) return tidal_fail(TIDAL_ERR_NOMEM, "checkpoint: out of memory");
    s->n_trained++;
    return TIDAL_OK;
}

void ckpt_state_clear(ckpt_state *s)
{
    for (size_t i = 0; i < s->n_trained; i++) free(s->trained_ids[i]);
    free(s->trained_ids);
    memset(s, 0, sizeof *s);
}

static json_t *counts_json(const uint64_t *c)
{
    json_t *o = json_object();
    for (int r = 0; r < BUFFER_DROP__COUNT; r++)
        json_object_set_new(o, buffer_drop_name((buffer_drop_reason)r), json_integer((json_int_t)c[r]));
    return o;
}

static void counts_read(const json_t *o, uint64_t *c)
{
    for (int r = 0; r < BUFFER_DROP__COUNT; r++) {
        json_t *v = json_object_get(o, buffer_drop_name((buffer_drop_reason)r));
        c[r] = json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
    }
}

/* Steps of the checkpoints under root, newest first; returns how many. */
static int list_steps(const char *root, uint64_t *steps, int cap)
{
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        unsigned long long v;
        char tail;
        if (sscanf(e->d_name, "step-%llu%c", &v, &tail) != 1) continue; /* step-N.tmp is not one */
        if (n < cap) steps[n++] = v;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
            uint64_t t = steps[j];
            steps[j] = steps[j - 1], steps[j - 1] = t;
        }
    return n;
}

/* The optimizer's moments as DIR/optimizer.safetensors. */
static tidal_status save_optimizer(const char *dir, const adamw *opt)
{
    char path[4300];
    st_writer *w = NULL;
    tidal_status st = TIDAL_OK;
    const int64_t shape[1] = {(int64_t)opt->n};
    TRY_GOTO(st_writer_new(&w));
    TRY_GOTO(st_writer_add_f32(w, "adamw.m", ST_F32, 1, shape, opt->m));
    TRY_GOTO(st_writer_add_f32(w, "adamw.v", ST_F32, 1, shape, opt->v));
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    TRY_GOTO(st_writer_save(w, path));
cleanup:
    st_writer_free(w);
    return st;
}

tidal_status checkpoint_save(const char *root, const model *m, const adamw *opt, const ckpt_state *s, int keep,
                             const hf_files *hf)
{
    TRY(fs_mkdirs(root));
    char dir[4096], tmp[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/step-%llu", root, (unsigned long long)s->version);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    fs_remove_tree(tmp, "checkpoint");
    TRY(model_save(m, tmp, ST_F32));
    TRY(save_optimizer(tmp, opt));
    if (hf) TRY(hf_files_write(hf, tmp));

    json_t *o = json_object(), *ids = json_array();
    json_object_set_new(o, "format", json_integer(1));
    json_object_set_new(o, "version", json_integer((json_int_t)s->version));
    json_object_set_new(o, "optimizer_step", json_integer(opt->step));
    json_object_set_new(o, "grad_norm_mean", json_real(opt->norm_mean)); /* spike clipping goes on where it was */
    json_object_set_new(o, "grad_norms_seen", json_integer(opt->norms_seen));
    json_object_set_new(o, "elapsed_s", json_real(s->elapsed_s));
    json_object_set_new(o, "groups_trained", json_integer((json_int_t)s->groups_trained));
    json_object_set_new(o, "groups_dropped", counts_json(s->groups_dropped));
    json_object_set_new(o, "samples_dropped", counts_json(s->samples_dropped));
    json_object_set_new(o, "rejected", json_integer((json_int_t)s->rejected));
    for (size_t i = 0; i < s->n_trained; i++) json_array_append_new(ids, json_string(s->trained_ids[i]));
    json_object_set_new(o, "trained_ids", ids);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    snprintf(path, sizeof path, "%s/state.json", tmp);
    const tidal_status st =
        text ? fs_write_file(path, text, strlen(text)) : tidal_fail(TIDAL_ERR_NOMEM, "checkpoint: out of memory");
    free(text);
    TRY(st);
    fs_remove_tree(dir, "checkpoint"); /* a checkpoint of the same step from an earlier life */
    if (rename(tmp, dir) != 0) return tidal_fail(TIDAL_ERR_IO, "checkpoint: rename %s: %s", tmp, strerror(errno));

    uint64_t steps[256];
    const int n = list_steps(root, steps, 256);
    for (int i = keep > 0 ? keep : 1; i < n; i++) {
        snprintf(path, sizeof path, "%s/step-%llu", root, (unsigned long long)steps[i]);
        fs_remove_tree(path, "checkpoint");
    }
    return TIDAL_OK;
}

/* The trainer's state and the optimizer's counters (opt: step, norm_mean,
 * norms_seen; a checkpoint from before spike clipping has no norms: 0). */
static tidal_status load_state(const char *dir, ckpt_state *s, adamw *opt)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_error_t e;
    json_t *o = json_load_file(path, 0, &e);
    if (!o) return tidal_fail(TIDAL_ERR_CORRUPT, "%s:%d: %s", path, e.line, e.text);
    json_t *ids = json_object_get(o, "trained_ids");
    tidal_status st = json_is_integer(json_object_get(o, "version")) && json_is_array(ids)
                          ? TIDAL_OK
                          : tidal_fail(TIDAL_ERR_CORRUPT, "%s: version or trained_ids missing", path);
    if (st == TIDAL_OK) {
        s->version = (uint64_t)json_integer_value(json_object_get(o, "version"));
        opt->step = (long)json_integer_value(json_object_get(o, "optimizer_step"));
        opt->norm_mean = json_number_value(json_object_get(o, "grad_norm_mean"));
        opt->norms_seen = (long)json_integer_value(json_object_get(o, "grad_norms_seen"));
        s->elapsed_s = json_number_value(json_object_get(o, "elapsed_s"));
        s->groups_trained = (uint64_t)json_integer_value(json_object_get(o, "groups_trained"));
        s->rejected = (uint64_t)json_integer_value(json_object_get(o, "rejected"));
        counts_read(json_object_get(o, "groups_dropped"), s->groups_dropped);
        counts_read(json_object_get(o, "samples_dropped"), s->samples_dropped);
    }
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        if (st != TIDAL_OK) break;
        st = json_is_string(v) ? ckpt_state_add_trained(s, json_string_value(v))
                               : tidal_fail(TIDAL_ERR_CORRUPT, "%s: trained_ids[%zu] is not a string", path, i);
    }
    json_decref(o);
    return st;
}

tidal_status checkpoint_load_latest(const char *root, model **m, adamw **opt, ckpt_state *s)
{
    *m = NULL, *opt = NULL;
    memset(s, 0, sizeof *s);
    uint64_t steps[256];
    if (list_steps(root, steps, 256) == 0) return tidal_fail(TIDAL_ERR_NOT_FOUND, "no checkpoint under %s", root);
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/step-%llu", root, (unsigned long long)steps[0]);
    size_t n = 0;
    st_file *f = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_load(dir, m));
    model_params(*m, &n);
    const adamw_cfg ac = adamw_defaults(); /* the trainer applies the spec's betas and decay */
    TRY_GOTO(adamw_create(n, &ac, opt));
    TRY_GOTO(load_state(dir, s, *opt));
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    TRY_GOTO(st_open(path, &f));
    const st_tensor *tm = st_find(f, "adamw.m"), *tv = st_find(f, "adamw.v");
    if (!tm || !tv) TRY_GOTO(tidal_fail(TIDAL_ERR_CORRUPT, "%s: adamw.m or adamw.v missing", path));
    TRY_GOTO(st_read_f32(tm, (*opt)->m, (int64_t)n));
    TRY_GOTO(st_read_f32(tv, (*opt)->v, (int64_t)n));
cleanup:
    st_close(f);
    if (st != TIDAL_OK) { /* nothing half-loaded is left to the caller */
        model_free(*m), adamw_free(*opt);
        *m = NULL, *opt = NULL;
        ckpt_state_clear(s);
    }
    return st;
}
