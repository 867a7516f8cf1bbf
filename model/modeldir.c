/* modeldir.c - a model directory's weights: model.safetensors, or the shards
 * model.safetensors.index.json lists (see modeldir.h).
 *
 * The index is trusted for nothing: every shard it names is opened once (and
 * fully validated by safetensors.c), every tensor it maps must be in the
 * shard it names, every tensor of a shard must be in the map, and no tensor
 * may be in two shards. A disagreement is refused rather than guessed at.
 */
#include "model/modeldir.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/safetensors_internal.h"

/* A tensor of a model and the shard (index into files) holding it. */
typedef struct {
    const st_tensor *t;
    int file;
} model_entry;

struct st_model {
    int nfiles;
    st_file **files;      /* owned; shards in file-name order */
    char **file_names;    /* [nfiles] shard file names, for messages */
    int n;
    model_entry *order;   /* [n] shard by shard, each in file order */
    model_entry *by_name; /* [n] sorted by name */
};

/* qsort order of entries by tensor name. */
static int model_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const model_entry *)a)->t->name, ((const model_entry *)b)->t->name);
}

/* DIR/NAME, malloc'ed; NULL when memory is short. */
static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Whether path names a regular file (following links). */
static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Read a whole (small) file into a malloc'ed buffer. */
static tidal_status read_all(const char *path, size_t limit, char **out, size_t *len)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: open: %s", path,
                          strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    tidal_status st = buf ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "%s: read", path);
    while (st == TIDAL_OK) {
        if (n == cap) {
            if (cap >= limit) { st = tidal_fail(TIDAL_ERR_INVALID, "%s: larger than %zu bytes", path, limit); break; }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { st = tidal_fail(TIDAL_ERR_NOMEM, "%s: read", path); break; }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp)) st = tidal_fail(TIDAL_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(fp);
    if (st != TIDAL_OK) { free(buf); return st; }
    *out = buf;
    *len = n;
    return TIDAL_OK;
}

void st_model_close(st_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->nfiles; i++) {
        st_close(m->files[i]);
        free(m->file_names[i]);
    }
    free(m->files);
    free(m->file_names);
    free(m->order);
    free(m->by_name);
    free(m);
}

/* Open the files named in `names` (sorted, distinct; relative to dir) into
 * m. An error opening one is prefixed with `index` (the index file's path)
 * when there is one. */
static tidal_status open_shards(st_model *m, const char *dir, const char *const *names, int count,
                                const char *index)
{
    m->files = calloc((size_t)count, sizeof *m->files);
    m->file_names = calloc((size_t)count, sizeof *m->file_names);
    if (!m->files || !m->file_names) return tidal_fail(TIDAL_ERR_NOMEM, "%s: shards", dir);
    for (int i = 0; i < count; i++) {
        char *path = path_join(dir, names[i]);
        m->file_names[i] = strdup(names[i]);
        if (!path || !m->file_names[i]) { free(path); return tidal_fail(TIDAL_ERR_NOMEM, "%s: shards", dir); }
        m->nfiles = i + 1;
        tidal_status st = st_open(path, &m->files[i]);
        free(path);
        if (st != TIDAL_OK) return index ? tidal_wrap(st, "%s: shard", index) : st;
    }
    return TIDAL_OK;
}

/* Build m->order and m->by_name over every tensor of every file; a name in
 * two files is an error. */
static tidal_status index_model(st_model *m, const char *label)
{
    size_t total = 0;
    for (int i = 0; i < m->nfiles; i++) total += (size_t)st_count(m->files[i]);
    if (total > INT_MAX) return tidal_fail(TIDAL_ERR_INVALID, "%s: too many tensors", label);
    m->order = calloc(total ? total : 1, sizeof *m->order);
    m->by_name = calloc(total ? total : 1, sizeof *m->by_name);
    if (!m->order || !m->by_name) return tidal_fail(TIDAL_ERR_NOMEM, "%s: tensor table", label);
    size_t k = 0;
    for (int i = 0; i < m->nfiles; i++)
        for (int j = 0; j < st_count(m->files[i]); j++) {
            m->order[k].t = st_at(m->files[i], j);
            m->order[k].file = i;
            k++;
        }
    m->n = (int)total;
    memcpy(m->by_name, m->order, total * sizeof *m->order);
    qsort(m->by_name, total, sizeof *m->by_name, model_entry_cmp);
    for (size_t i = 1; i < total; i++)
        if (strcmp(m->by_name[i - 1].t->name, m->by_name[i].t->name) == 0) {
            char a[112], b[112];
            int fa = m->by_name[i - 1].file, fb = m->by_name[i].file;
            if (fa > fb) { int x = fa; fa = fb; fb = x; }
            return st_bad_tensor(label, m->by_name[i].t->name, "is in two shards, %s and %s",
                                 st_safe_name(a, sizeof a, m->file_names[fa]), st_safe_name(b, sizeof b, m->file_names[fb]));
        }
    return TIDAL_OK;
}

/* qsort order of C strings (shard file names). */
static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The sharded layout: parse the index, open each shard once, check the
 * weight map against the shards' contents. */
static tidal_status open_sharded(st_model *m, const char *dir, const char *index_path)
{
    char *text = NULL;
    size_t len = 0;
    TRY(read_all(index_path, (size_t)ST_MAX_HEADER, &text, &len));
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: JSON at line %d: %s", index_path, jerr.line, jerr.text);
    tidal_status st = TIDAL_OK;
    const char **names = NULL;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(map)) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: no \"weight_map\" object", index_path);
        goto done;
    }
    size_t count = json_object_size(map);
    if (count == 0) {
        st = tidal_fail(TIDAL_ERR_INVALID, "%s: weight_map is empty", index_path);
        goto done;
    }
    names = calloc(count, sizeof *names);
    if (!names) { st = tidal_fail(TIDAL_ERR_NOMEM, "%s", index_path); goto done; }
    size_t k = 0;
    const char *tensor;
    json_t *v;
    json_object_foreach(map, tensor, v) {
        const char *shard = json_string_value(v);
        if (!shard || !*shard || strchr(shard, '/') || !strcmp(shard, ".") || !strcmp(shard, "..")) {
            st = st_bad_tensor(index_path, tensor, "weight_map entry is not a file name in the directory");
            goto done;
        }
        names[k++] = shard;
    }
    qsort(names, count, sizeof *names, cmp_str);
    size_t distinct = 0;
    for (size_t i = 0; i < count; i++)
        if (distinct == 0 || strcmp(names[distinct - 1], names[i]) != 0) names[distinct++] = names[i];
    st = open_shards(m, dir, names, (int)distinct, index_path);
    if (st != TIDAL_OK) goto done;
    /* every mapped tensor is in the shard the map names */
    json_object_foreach(map, tensor, v) {
        const char *shard = json_string_value(v);
        int fi = 0;
        while (fi < m->nfiles && strcmp(m->file_names[fi], shard) != 0) fi++;
        if (fi == m->nfiles || !st_find(m->files[fi], tensor)) {
            char s[112];
            st = st_bad_tensor(index_path, tensor, "the weight_map puts it in %s, which does not hold it",
                               st_safe_name(s, sizeof s, shard));
            goto done;
        }
    }
    st = index_model(m, index_path);
    if (st != TIDAL_OK) goto done;
    /* and every tensor of a shard is in the map (a stray tensor means the
     * index and the shards disagree; refuse rather than guess) */
    for (int i = 0; i < m->n; i++)
        if (!json_object_get(map, m->order[i].t->name)) {
            char s[112];
            st = st_bad_tensor(index_path, m->order[i].t->name, "is in %s but not in the weight_map",
                               st_safe_name(s, sizeof s, m->file_names[m->order[i].file]));
            goto done;
        }
done:
    free(names);
    json_decref(root);
    return st;
}

tidal_status st_model_open(const char *dir, st_model **out)
{
    *out = NULL;
    st_model *m = calloc(1, sizeof *m);
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    tidal_status st = TIDAL_OK;
    if (!m || !single || !index) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "%s: open model", dir);
    } else if (is_file(single)) {
        /* like transformers: the single file wins when both are present */
        static const char *const one[1] = {"model.safetensors"};
        st = open_shards(m, dir, one, 1, NULL);
        if (st == TIDAL_OK) st = index_model(m, single);
    } else if (is_file(index)) {
        st = open_sharded(m, dir, index);
    } else {
        st = tidal_fail(TIDAL_ERR_NOT_FOUND, "%s: no model weights: looked for %s and %s", dir, single,
                        index);
    }
    free(single);
    free(index);
    if (st != TIDAL_OK) { st_model_close(m); return st; }
    *out = m;
    return TIDAL_OK;
}

const st_tensor *st_model_find(const st_model *m, const char *name)
{
    if (!m || !name) return NULL;
    int lo = 0, hi = m->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->by_name[mid].t->name);
        if (c == 0) return m->by_name[mid].t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

int st_model_count(const st_model *m) { return m ? m->n : 0; }

const st_tensor *st_model_at(const st_model *m, int i)
{
    return (m && i >= 0 && i < m->n) ? m->order[i].t : NULL;
}

