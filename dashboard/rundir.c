/* rundir.c - the dashboard's API over a run directory's files (rundir.h). */
#include "dashboard/rundir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FILE_MAX (256u << 20) /* a file this large is not one tidal wrote: refuse rather than read it */

/* RUN/name read whole into *buf (NUL-terminated, malloc'd; *len bytes).
 * A file that is not there: TIDAL_OK with *buf NULL. */
static tidal_status slurp(const char *run_dir, const char *name, char **buf, size_t *len)
{
    *buf = NULL, *len = 0;
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", run_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? TIDAL_OK : tidal_fail(TIDAL_ERR_IO, "dashboard: %s: %s", name, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || (size_t)sb.st_size > FILE_MAX) {
        fclose(f);
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: %s: not a regular file of at most %u MiB", name, FILE_MAX >> 20);
    }
    char *b = malloc((size_t)sb.st_size + 1);
    if (!b) {
        fclose(f);
        return tidal_fail(TIDAL_ERR_NOMEM, "dashboard: %s: out of memory", name);
    }
    const size_t n = fread(b, 1, (size_t)sb.st_size, f);
    fclose(f);
    b[n] = 0;
    *buf = b, *len = n;
    return TIDAL_OK;
}

/* The lines of buf (modified: each '\n' becomes NUL) as pointers into it;
 * a last line without its '\n' is a line cut short (its writer mid-line) and
 * left out, counted in *cut. *out malloc'd. */
static tidal_status split_lines(char *buf, size_t len, char ***out, size_t *n, long *cut)
{
    *out = NULL, *n = 0;
    size_t cap = 0;
    char *p = buf, *end = buf + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            (*cut)++;
            break;
        }
        *nl = 0;
        if (nl > p) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 256;
                char **grown = realloc(*out, cap * sizeof *grown);
                if (!grown) {
                    free(*out), *out = NULL, *n = 0;
                    return tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
                }
                *out = grown;
            }
            (*out)[(*n)++] = p;
        }
        p = nl + 1;
    }
    return TIDAL_OK;
}

/* A JSON object read from one line, or NULL (counted in *bad) when the line is not one. */
static json_t *line_object(const char *line, long *bad)
{
    json_t *j = json_loads(line, JSON_DECODE_ANY, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        (*bad)++;
        return NULL;
    }
    return j;
}

/* The lines of RUN/name (none when it is not there). */
typedef struct lines {
    char *buf;
    char **v;
    size_t n;
} lines;

static void lines_free(lines *l)
{
    free(l->buf), free(l->v);
    memset(l, 0, sizeof *l);
}

static tidal_status lines_read(const char *run_dir, const char *name, lines *l, long *cut)
{
    memset(l, 0, sizeof *l);
    size_t len = 0;
    TRY(slurp(run_dir, name, &l->buf, &len));
    if (!l->buf) return TIDAL_OK;
    tidal_status st = split_lines(l->buf, len, &l->v, &l->n, cut);
    if (st != TIDAL_OK) lines_free(l);
    return st;
}

tidal_status dash_run_dir_check(const char *run_dir)
{
    struct stat sb;
    if (stat(run_dir, &sb) != 0) return tidal_fail(TIDAL_ERR_NOT_FOUND, "%s: %s", run_dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return tidal_fail(TIDAL_ERR_NOT_FOUND, "%s: not a directory", run_dir);
    char path[4400];
    const char *want[] = {"spec.json", "metrics.jsonl"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", run_dir, want[i]);
        if (stat(path, &sb) == 0) return TIDAL_OK;
    }
    return tidal_fail(TIDAL_ERR_INVALID, "%s: not a run directory: it holds neither spec.json nor metrics.jsonl", run_dir);
}

tidal_status dash_api_info(const char *run_dir, json_t **out)
{
    *out = NULL;
    json_t *o = json_object(), *files = json_object();
    const char *names[] = {"spec.json", "summary.json", "metrics.jsonl", "eval.jsonl", "samples.jsonl",
                           "samples.1.jsonl", "eval_samples.jsonl", "eval_samples.1.jsonl"};
    char path[4400];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", run_dir, names[i]);
        if (stat(path, &sb) == 0) json_object_set_new(files, names[i], json_integer((json_int_t)sb.st_size));
    }
    json_object_set_new(o, "run_dir", json_string(run_dir));
    json_object_set_new(o, "finished", json_boolean(json_object_get(files, "summary.json") != NULL));
    json_object_set_new(o, "files", files);
    json_t *spec = NULL;
    if (dash_api_file(run_dir, "spec.json", &spec) == TIDAL_OK) {
        json_t *name = json_object_get(json_object_get(spec, "job"), "name");
        if (json_is_string(name)) json_object_set(o, "job", name);
        json_t *steps = json_object_get(json_object_get(spec, "trainer"), "steps");
        if (json_is_integer(steps)) json_object_set(o, "steps", steps);
        json_t *gs = json_object_get(json_object_get(spec, "rollout"), "group_size");
        if (json_is_integer(gs)) json_object_set(o, "group_size", gs);
    }
    json_decref(spec);
    *out = o;
    return TIDAL_OK;
}

/* {"rows": [...], "bad_lines"} of a JSONL file, rows kept when keep() says so. */
static tidal_status rows_of(const char *run_dir, const char *name, int64_t since, json_t **out)
{
    *out = NULL;
    long bad = 0;
    lines l;
    TRY(lines_read(run_dir, name, &l, &bad));
    json_t *rows = json_array();
    for (size_t i = 0; i < l.n; i++) {
        json_t *r = line_object(l.v[i], &bad);
        if (!r) continue;
        json_t *step = json_object_get(r, "step");
        if (since >= 0 && json_is_integer(step) && json_integer_value(step) <= since) {
            json_decref(r);
            continue;
        }
        json_array_append_new(rows, r);
    }
    lines_free(&l);
    *out = json_pack("{s:o, s:I}", "rows", rows, "bad_lines", (json_int_t)bad);
    return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
}

tidal_status dash_api_metrics(const char *run_dir, const dash_query *q, json_t **out)
{
    return rows_of(run_dir, "metrics.jsonl", q->since, out);
}

tidal_status dash_api_eval(const char *run_dir, json_t **out) { return rows_of(run_dir, "eval.jsonl", -1, out); }

/* Whether sample s passes q's filters. */
static bool passes(const json_t *s, const dash_query *q)
{
    const json_t *r = json_object_get(s, "reward");
    if (q->reward_min > -1e308 || q->reward_max < 1e308) {
        if (!json_is_number(r)) return false;
        const double v = json_number_value(r);
        if (v < q->reward_min || v > q->reward_max) return false;
    }
    if (q->worker[0]) {
        const char *w = json_string_value(json_object_get(s, "worker_id"));
        if (!w || strcmp(w, q->worker)) return false;
    }
    if (q->version >= 0) {
        bool held = false;
        size_t i;
        json_t *run;
        json_array_foreach(json_object_get(s, "versions"), i, run) {
            if (json_integer_value(json_array_get(run, 0)) == q->version) held = true;
        }
        if (!held) return false;
    }
    return true;
}

/* A group of a samples line as the API shows it: the line's step, version
 * and eval beside the group's own fields. New reference. */
static json_t *group_view(const json_t *line, const json_t *g, json_t *samples)
{
    json_t *o = json_object();
    json_object_set(o, "step", json_object_get(line, "step"));
    json_object_set(o, "version", json_object_get(line, "version"));
    json_object_set_new(o, "eval", json_boolean(json_is_true(json_object_get(line, "eval"))));
    const char *keys[] = {"group_id", "prompt_id", "prompt"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(g, keys[i]);
        json_object_set(o, keys[i], v ? v : json_null());
    }
    json_object_set_new(o, "samples", samples);
    return o;
}

/* The lines of NAME.1.jsonl then NAME.jsonl (oldest first), in one list. */
static tidal_status sample_lines(const char *run_dir, bool eval, lines *older, lines *newer, long *bad)
{
    memset(older, 0, sizeof *older);
    TRY(lines_read(run_dir, eval ? "eval_samples.1.jsonl" : "samples.1.jsonl", older, bad));
    /* the older half's last line is whole (it was renamed between lines): a cut one there is a truncation */
    tidal_status st = lines_read(run_dir, eval ? "eval_samples.jsonl" : "samples.jsonl", newer, bad);
    if (st != TIDAL_OK) lines_free(older);
    return st;
}

/* The k-th line from the end over older + newer. */
static const char *nth_from_end(const lines *older, const lines *newer, size_t k)
{
    if (k < newer->n) return newer->v[newer->n - 1 - k];
    k -= newer->n;
    return k < older->n ? older->v[older->n - 1 - k] : NULL;
}

tidal_status dash_api_samples(const char *run_dir, const dash_query *q, json_t **out)
{
    *out = NULL;
    long bad = 0;
    lines older, newer;
    TRY(sample_lines(run_dir, q->eval, &older, &newer, &bad));
    json_t *groups = json_array();
    const char *text;
    for (size_t k = 0; (text = nth_from_end(&older, &newer, k)) && json_array_size(groups) < (size_t)q->limit; k++) {
        json_t *line = line_object(text, &bad);
        if (!line) continue;
        json_t *gs = json_object_get(line, "groups"), *g;
        size_t gi;
        json_array_foreach(gs, gi, g) {
            if (json_array_size(groups) >= (size_t)q->limit) break;
            json_t *kept = json_array(), *s;
            size_t si;
            json_array_foreach(json_object_get(g, "samples"), si, s) {
                if (passes(s, q)) json_array_append(kept, s);
            }
            if (json_array_size(kept)) json_array_append_new(groups, group_view(line, g, kept));
            else json_decref(kept);
        }
        json_decref(line);
    }
    lines_free(&older), lines_free(&newer);
    *out = json_pack("{s:o, s:I}", "groups", groups, "bad_lines", (json_int_t)bad);
    return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
}

tidal_status dash_api_sample(const char *run_dir, const char *id, json_t **out)
{
    *out = NULL;
    if (!dash_query_valid_id(id))
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: sample id '%.64s': not a trajectory id (1 to 255 of A-Z a-z 0-9 . _ : -)",
                          id ? id : "");
    char needle[300];
    snprintf(needle, sizeof needle, "\"id\":\"%s\"", id);
    for (int eval = 0; eval < 2 && !*out; eval++) {
        long bad = 0;
        lines older, newer;
        TRY(sample_lines(run_dir, eval, &older, &newer, &bad));
        const char *text;
        for (size_t k = 0; !*out && (text = nth_from_end(&older, &newer, k)); k++) {
            if (!strstr(text, needle)) continue; /* parse only the lines that can hold it */
            json_t *line = line_object(text, &bad), *g, *s;
            size_t gi, si;
            json_array_foreach(json_object_get(line, "groups"), gi, g) {
                json_array_foreach(json_object_get(g, "samples"), si, s) {
                    const char *sid = json_string_value(json_object_get(s, "id"));
                    if (!*out && sid && !strcmp(sid, id)) {
                        *out = group_view(line, g, json_array());
                        json_object_del(*out, "samples");
                        json_object_set(*out, "sample", s);
                    }
                }
            }
            json_decref(line);
        }
        lines_free(&older), lines_free(&newer);
    }
    if (!*out)
        return tidal_fail(TIDAL_ERR_NOT_FOUND,
                          "dashboard: sample %s: not among the samples kept in %s/samples.jsonl or eval_samples.jsonl "
                          "(a few groups a step, the newest files only)",
                          id, run_dir);
    return TIDAL_OK;
}

tidal_status dash_api_staleness(const char *run_dir, const dash_query *q, json_t **out)
{
    *out = NULL;
    long bad = 0;
    lines older, newer;
    TRY(sample_lines(run_dir, false, &older, &newer, &bad));
    json_t *hist = json_array();
    json_int_t from = -1, to = -1, steps = 0;
    const char *text;
    for (size_t k = 0; steps < q->last && (text = nth_from_end(&older, &newer, k)); k++) {
        json_t *line = line_object(text, &bad), *c;
        if (!line) continue;
        size_t i;
        json_array_foreach(json_object_get(line, "staleness_hist"), i, c) {
            if (i >= 1024) break;
            while (json_array_size(hist) <= i) json_array_append_new(hist, json_integer(0));
            json_array_set_new(hist, i, json_integer(json_integer_value(json_array_get(hist, i)) + json_integer_value(c)));
        }
        const json_int_t step = json_integer_value(json_object_get(line, "step"));
        if (to < 0) to = step;
        from = step;
        steps++;
        json_decref(line);
    }
    lines_free(&older), lines_free(&newer);
    *out = json_pack("{s:o, s:I, s:I, s:I, s:I}", "hist", hist, "steps", steps, "from_step", from, "to_step", to,
                     "bad_lines", (json_int_t)bad);
    return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
}

tidal_status dash_api_file(const char *run_dir, const char *name, json_t **out)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    TRY(slurp(run_dir, name, &buf, &len));
    if (!buf)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "dashboard: %s/%s: not there (yet: %s)", run_dir, name,
                          !strcmp(name, "summary.json") ? "the controller writes it when the run ends"
                                                        : "tidal run writes it when the run starts");
    json_error_t e;
    json_t *j = json_loadb(buf, len, 0, &e);
    free(buf);
    if (!json_is_object(j)) {
        json_decref(j);
        return tidal_fail(TIDAL_ERR_CORRUPT, "dashboard: %s/%s:%d: not a JSON object (cut short?): %s", run_dir, name,
                          e.line, e.text);
    }
    *out = j;
    return TIDAL_OK;
}

int dash_http_code(tidal_status st)
{
    return st == TIDAL_ERR_INVALID      ? 400
           : st == TIDAL_ERR_NOT_FOUND  ? 404
           : st == TIDAL_ERR_PERMISSION ? 401
           : st == TIDAL_ERR_CORRUPT    ? 422 /* the file is there but cut short */
                                        : 500;
}
