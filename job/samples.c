/* samples.c - the run directory's bounded record of recent trajectories (samples.h). */
#include "job/samples.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "proto/enum_names.h"

struct samples_log {
    char path[4200], old_path[4200];
    FILE *f;
    long size, max;
    const tokenizer *tok;
    int warned;
};

tidal_status samples_log_open(const char *run_dir, const char *name, const tokenizer *tok, size_t max_bytes,
                              samples_log **out)
{
    *out = NULL;
    samples_log *l = calloc(1, sizeof *l);
    if (!l) return tidal_fail(TIDAL_ERR_NOMEM, "samples: out of memory");
    snprintf(l->path, sizeof l->path, "%s/%s.jsonl", run_dir, name);
    snprintf(l->old_path, sizeof l->old_path, "%s/%s.1.jsonl", run_dir, name);
    l->tok = tok;
    l->max = max_bytes ? (long)max_bytes : (long)SAMPLES_FILE_MAX;
    l->f = fopen(l->path, "a");
    if (!l->f) {
        free(l);
        return tidal_fail(TIDAL_ERR_IO, "samples: cannot write %s/%s.jsonl", run_dir, name);
    }
    struct stat sb;
    l->size = stat(l->path, &sb) == 0 ? (long)sb.st_size : 0;
    *out = l;
    return TIDAL_OK;
}

void samples_log_close(samples_log *l)
{
    if (!l) return;
    if (l->f) fclose(l->f);
    free(l);
}

/* The length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    const unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) k = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) k = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) k = 4, min = 0x10000;
    else return 0;
    if (n < k) return 0;
    unsigned cp = c & (0x3f >> (k - 1));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return k;
}

char *samples_utf8_clean(const char *text, size_t len, size_t max)
{
    char *out = malloc((len < max ? len : max) * 3 + 8);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i < len) {
        size_t k = utf8_len((const unsigned char *)text + i, len - i);
        const size_t w = k ? k : 3;
        if (o + w > max) {
            memcpy(out + o, "...", 3), o += 3;
            break;
        }
        if (k) memcpy(out + o, text + i, k), o += k, i += k;
        else memcpy(out + o, "\xef\xbf\xbd", 3), o += 3, i++;
    }
    out[o] = 0;
    return out;
}

/* ids decoded to a JSON string (cleaned, cut), or their numbers when there
 * is no tokenizer or it cannot decode them. */
static json_t *decode(const samples_log *l, const uint32_t *ids, size_t n)
{
    json_t *s = NULL;
    if (l->tok) {
        int32_t *v = malloc((n ? n : 1) * sizeof *v);
        tok_bytes b = {0};
        if (v) {
            for (size_t i = 0; i < n; i++) v[i] = (int32_t)ids[i];
            if (tokenizer_decode(l->tok, v, n, &b) == TIDAL_OK) {
                char *c = samples_utf8_clean(b.data ? b.data : "", b.len, SAMPLES_TEXT_MAX);
                if (c) s = json_string(c);
                free(c);
            }
        }
        tok_bytes_free(&b);
        free(v);
    }
    if (s) return s;
    char buf[SAMPLES_TEXT_MAX + 32];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 16 < SAMPLES_TEXT_MAX; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%u", i ? " " : "[", ids[i]);
    snprintf(buf + o, sizeof buf - o, "%s", n ? "]" : "");
    return json_string(buf);
}

/* The completion as segments {"kind":"gen"|"env","text"}: runs of tokens the
 * policy generated (loss mask true) apart from the environment's observations. */
static json_t *segments(const samples_log *l, const Tidal__V1__Trajectory *t)
{
    json_t *a = json_array();
    const size_t n = t->n_completion_token_ids;
    if (!l->tok && t->completion_text && t->completion_text[0]) {
        char *c = samples_utf8_clean(t->completion_text, strlen(t->completion_text), SAMPLES_TEXT_MAX);
        json_array_append_new(a, json_pack("{s:s, s:s}", "kind", "gen", "text", c ? c : ""));
        free(c);
        return a;
    }
    const bool masked = t->n_loss_mask == n;
    size_t i = 0, total = 0;
    while (i < n && total < SAMPLES_TEXT_MAX) {
        const bool gen = masked ? t->loss_mask[i] : true;
        size_t j = i;
        while (j < n && (masked ? t->loss_mask[j] : true) == gen) j++;
        json_t *text = decode(l, t->completion_token_ids + i, j - i);
        total += json_string_length(text);
        json_array_append_new(a, json_pack("{s:s, s:o}", "kind", gen ? "gen" : "env", "text", text));
        i = j;
    }
    return a;
}

static json_t *sample_json(const samples_log *l, const Tidal__V1__Trajectory *t, uint64_t version)
{
    json_t *comp = json_object(), *runs = json_array();
    for (size_t i = 0; i < t->n_reward_components; i++)
        if (t->reward_components[i]->key && isfinite(t->reward_components[i]->value))
            json_object_set_new(comp, t->reward_components[i]->key, json_real(t->reward_components[i]->value));
    for (size_t i = 0; i < t->n_version_values && i < t->n_version_runs; i++)
        json_array_append_new(runs, json_pack("[I, I]", (json_int_t)t->version_values[i], (json_int_t)t->version_runs[i]));
    const uint64_t oldest = t->n_version_values ? t->version_values[0] : version;
    json_t *o = json_pack("{s:s, s:i, s:s, s:o, s:o, s:s, s:s, s:o, s:I, s:I, s:i}", "id", t->trajectory_id ? t->trajectory_id : "",
                          "index", (int)t->sample_index, "worker_id", t->worker_id ? t->worker_id : "", "reward",
                          isfinite(t->reward) ? json_real(t->reward) : json_null(), "components", comp, "finish_reason",
                          proto_finish_reason_name(t->finish_reason), "status", proto_trajectory_status_name(t->status),
                          "versions", runs, "staleness", (json_int_t)(version > oldest ? version - oldest : 0), "tokens",
                          (json_int_t)t->n_completion_token_ids, "turns", (int)t->turns);
    if (o) json_object_set_new(o, "segments", segments(l, t));
    if (o && t->error && t->error[0]) json_object_set_new(o, "error", json_string(t->error));
    return o;
}

void samples_log_step(samples_log *l, uint64_t step, uint64_t version, Tidal__V1__Trajectory **const groups[],
                      const int *sizes, int n_groups, int eval)
{
    if (!l || !l->f || n_groups <= 0) return;
    json_t *o = json_object(), *gs = json_array(), *hist = json_array();
    json_object_set_new(o, "step", json_integer((json_int_t)step));
    json_object_set_new(o, "version", json_integer((json_int_t)version));
    json_object_set_new(o, "time_unix_ms", json_integer((json_int_t)time(NULL) * 1000));
    if (eval) json_object_set_new(o, "eval", json_true());
    /* the staleness of every sample of the step, not only of those kept */
    for (int g = 0; g < n_groups; g++)
        for (int i = 0; i < sizes[g]; i++) {
            const Tidal__V1__Trajectory *t = groups[g][i];
            const uint64_t oldest = t->n_version_values ? t->version_values[0] : version;
            const size_t k = version > oldest ? (size_t)(version - oldest) : 0;
            if (k > 64) continue; /* beyond any max_staleness a histogram shows */
            while (json_array_size(hist) <= k) json_array_append_new(hist, json_integer(0));
            json_array_set_new(hist, k, json_integer(json_integer_value(json_array_get(hist, k)) + 1));
        }
    json_object_set_new(o, "staleness_hist", hist);
    const int keep = n_groups < SAMPLES_GROUPS_PER_STEP ? n_groups : SAMPLES_GROUPS_PER_STEP;
    for (int k = 0; k < keep; k++) {
        const int g = (int)((long)k * n_groups / keep); /* spread over the batch */
        if (sizes[g] <= 0) continue;
        const Tidal__V1__Trajectory *t0 = groups[g][0];
        json_t *samples = json_array();
        for (int i = 0; i < sizes[g]; i++) json_array_append_new(samples, sample_json(l, groups[g][i], version));
        json_t *grp = json_pack("{s:s, s:s, s:o, s:o}", "group_id", t0->group_id ? t0->group_id : "", "prompt_id",
                                t0->prompt_id ? t0->prompt_id : "", "prompt",
                                decode(l, t0->prompt_token_ids, t0->n_prompt_token_ids), "samples", samples);
        if (grp) json_array_append_new(gs, grp);
    }
    json_object_set_new(o, "groups", gs);
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!line) return;
    const size_t n = strlen(line);
    if (l->size > 0 && l->size + (long)n + 1 > l->max) { /* rotate: the old half replaces NAME.1 */
        fclose(l->f);
        rename(l->path, l->old_path);
        l->f = fopen(l->path, "w");
        l->size = 0;
    }
    if (l->f && fprintf(l->f, "%s\n", line) > 0 && fflush(l->f) == 0) {
        l->size += (long)n + 1;
    } else if (!l->warned) {
        l->warned = 1;
        tidal_log(TIDAL_LOG_WARN, "samples: cannot write %s: the rollout viewer misses steps", l->path);
    }
    free(line);
}
