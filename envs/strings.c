/* strings.c - the `strings` environment: synthetic string transformations
 * (docs/environments.md "strings").
 *
 * generate(seed) draws a random string of `length` characters from the
 * alphabet (lower-case letters or digits) and one op from `ops`, and states
 * it as an English instruction (prompt "instruction", the default) or as
 * "OP INPUT" (prompt "terse", for tiny byte-level models) or the input
 * alone (prompt "bare", with a single op: the quickstart); STEP reads
 * the completion's last non-empty line (quotes and backticks trimmed) and
 * scores it position by position against task.answer.
 */
#include "envs/builtin.h"
#include "base/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { OP_REVERSE, OP_SORT, OP_COPY, OP_SHIFT, OP_UPPER, N_OPS } strings_op;

static const char *const op_names[N_OPS] = {"reverse", "sort", "copy", "shift", "upper"};

#define MAX_CFG_OPS 16

typedef struct strings_cfg {
    int length;
    bool digits; /* the alphabet: digits, else lower-case letters */
    bool terse;  /* prompt "OP INPUT", else the English instruction */
    bool bare;   /* prompt "INPUT" (one op: nothing to name) */
    size_t n_ops;
    strings_op ops[MAX_CFG_OPS];
} strings_cfg;

static const char *const strings_keys[] = {"length", "alphabet", "ops", "prompt", NULL};

static tidal_status strings_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, strings_keys);
    if (st != TIDAL_OK) return st;
    int64_t length;
    const char *alphabet, *prompt;
    if ((st = env_cfg_int(config, "length", 8, 1, 64, &length)) != TIDAL_OK) return st;
    if ((st = env_cfg_string(config, "alphabet", "letters", &alphabet)) != TIDAL_OK) return st;
    bool digits = strcmp(alphabet, "digits") == 0;
    if (!digits && strcmp(alphabet, "letters") != 0)
        return env_bad("config", "alphabet", "must be \"letters\" or \"digits\", got \"%.40s\"", alphabet);
    if ((st = env_cfg_string(config, "prompt", "instruction", &prompt)) != TIDAL_OK) return st;
    bool terse = strcmp(prompt, "terse") == 0, bare = strcmp(prompt, "bare") == 0;
    if (!terse && !bare && strcmp(prompt, "instruction") != 0)
        return env_bad("config", "prompt", "must be \"instruction\", \"terse\" or \"bare\", got \"%.40s\"", prompt);

    strings_cfg *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    c->length = (int)length;
    c->digits = digits;
    c->terse = terse;
    c->bare = bare;
    json_t *ops = json_object_get(config, "ops");
    if (!ops || json_is_null(ops)) {
        if (bare) {
            free(c);
            return env_bad("config", "prompt", "\"bare\" names no op, so ops must hold a single one");
        }
        for (int i = 0; i < OP_UPPER; i++) c->ops[c->n_ops++] = (strings_op)i;
        *state = c;
        return TIDAL_OK;
    }
    if (!json_is_array(ops) || json_array_size(ops) == 0 || json_array_size(ops) > MAX_CFG_OPS) {
        free(c);
        return env_bad("config", "ops", "must be an array of 1 to %d op names (reverse, sort, copy, shift, upper)",
                       MAX_CFG_OPS);
    }
    size_t i;
    json_t *v;
    json_array_foreach(ops, i, v) {
        const char *name = json_is_string(v) ? json_string_value(v) : "";
        int k = 0;
        while (k < N_OPS && strcmp(op_names[k], name) != 0) k++;
        if (k == N_OPS || (k == OP_UPPER && digits)) {
            free(c);
            if (k == OP_UPPER)
                return tidal_fail(TIDAL_ERR_INVALID, "config.ops[%zu]: upper needs alphabet \"letters\"", i);
            return tidal_fail(TIDAL_ERR_INVALID,
                              "config.ops[%zu]: must be one of reverse, sort, copy, shift, upper, got %s%.40s%s", i,
                              json_is_string(v) ? "\"" : "", json_is_string(v) ? name : "a non-string",
                              json_is_string(v) ? "\"" : "");
        }
        c->ops[c->n_ops++] = (strings_op)k;
        if (bare && c->n_ops > 1 && c->ops[c->n_ops - 1] != c->ops[0]) {
            free(c);
            return env_bad("config", "prompt", "\"bare\" names no op, so ops must hold a single one");
        }
    }
    *state = c;
    return TIDAL_OK;
}

static void strings_destroy(void *state) { free(state); }

static int cmp_char(const void *a, const void *b) { return *(const char *)a - *(const char *)b; }

/* op applied to in[0, n) into out (n bytes, then a NUL). */
static void apply(strings_op op, const char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) out[i] = in[i];
    out[n] = '\0';
    switch (op) {
    case OP_REVERSE:
        for (size_t i = 0; i < n; i++) out[i] = in[n - 1 - i];
        break;
    case OP_SORT: qsort(out, n, 1, cmp_char); break;
    case OP_COPY: break;
    case OP_SHIFT:
        for (size_t i = 0; i < n; i++) {
            char ch = out[i];
            if (ch >= 'a' && ch <= 'z') out[i] = ch == 'z' ? 'a' : (char)(ch + 1);
            else if (ch >= '0' && ch <= '9') out[i] = ch == '9' ? '0' : (char)(ch + 1);
        }
        break;
    case OP_UPPER:
        for (size_t i = 0; i < n; i++)
            if (out[i] >= 'a' && out[i] <= 'z') out[i] = (char)(out[i] - 'a' + 'A');
        break;
    case N_OPS: break;
    }
}

static const char *instruction(strings_op op, bool digits)
{
    switch (op) {
    case OP_REVERSE: return "Reverse the string: write its characters in the opposite order.";
    case OP_SORT:
        return digits ? "Sort the characters of the string in ascending order."
                      : "Sort the characters of the string in alphabetical order.";
    case OP_COPY: return "Copy the string exactly.";
    case OP_SHIFT:
        return digits ? "Replace each digit with the next one (0 becomes 1, ..., 9 becomes 0)."
                      : "Replace each letter with the next one in the alphabet (a becomes b, ..., z becomes a).";
    case OP_UPPER: return "Write the string in upper case.";
    case N_OPS: break;
    }
    return "";
}

static tidal_status strings_generate(const void *state, uint64_t seed, char **task_json, char **prompt)
{
    const strings_cfg *c = state;
    *task_json = *prompt = NULL;
    env_rng rng;
    env_rng_seed(&rng, seed);
    strings_op op = c->ops[env_rng_below(&rng, c->n_ops)];
    char in[65], ans[65];
    size_t n = (size_t)c->length;
    for (size_t i = 0; i < n; i++)
        in[i] = c->digits ? (char)('0' + env_rng_below(&rng, 10)) : (char)('a' + env_rng_below(&rng, 26));
    in[n] = '\0';
    apply(op, in, n, ans);
    json_t *task = json_pack("{s:s, s:s, s:s}", "op", op_names[op], "input", in, "answer", ans);
    char *tj = task ? json_dumps(task, JSON_COMPACT) : NULL;
    json_decref(task);
    char *p = c->bare    ? str_printf("%s", in)
              : c->terse ? str_printf("%s %s", op_names[op], in)
                         : str_printf("%s\nString: %s\nGive only the resulting string.", instruction(op, c->digits), in);
    if (!tj || !p) {
        free(tj);
        free(p);
        return tidal_fail(TIDAL_ERR_NOMEM, "strings: out of memory");
    }
    *task_json = tj;
    *prompt = p;
    return TIDAL_OK;
}

static bool is_trimmed(char c) { return env_is_space(c) || c == '"' || c == '\'' || c == '`'; }

bool strings_extract(const char *text, size_t len, const char **ans, size_t *ans_len)
{
    size_t end = len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && text[start - 1] != '\n') start--;
        size_t a = start, b = end;
        while (a < b && is_trimmed(text[a])) a++;
        while (b > a && is_trimmed(text[b - 1])) b--;
        if (b > a) {
            *ans = text + a;
            *ans_len = b - a;
            return true;
        }
        end = start > 0 ? start - 1 : 0;
    }
    *ans = text;
    *ans_len = 0;
    return false;
}

double strings_score(const char *ref, size_t ref_len, const char *pred, size_t pred_len)
{
    size_t longer = ref_len > pred_len ? ref_len : pred_len;
    if (longer == 0) return 1.0;
    size_t same = 0;
    for (size_t i = 0; i < ref_len && i < pred_len; i++) same += ref[i] == pred[i];
    return (double)same / (double)longer;
}

static tidal_status strings_handle(const void *state, const env_request *rq, env_result *out)
{
    (void)state;
    if (rq->call->op == ENV_OP_RESET) return TIDAL_OK;
    json_t *v = json_object_get(rq->task, "answer");
    if (!v || json_is_null(v)) return env_bad("task_json", "answer", "missing (the expected string)");
    if (!json_is_string(v)) return env_bad("task_json", "answer", "must be a string");
    const char *pred;
    size_t np;
    strings_extract(rq->action, strlen(rq->action), &pred, &np);
    const char *ref = json_string_value(v);
    size_t nr = json_string_length(v);
    bool exact = nr == np && memcmp(ref, pred, nr) == 0;
    out->reward = exact ? 1.0 : strings_score(ref, nr, pred, np);
    out->done = true;
    return env_result_metric(out, "exact", exact ? 1.0 : 0.0);
}

const env_class env_strings = {
    .name = "strings",
    .summary = "synthetic string transformations (reverse, sort, copy, shift, upper): per-position credit",
    .create = strings_create,
    .destroy = strings_destroy,
    .handle = strings_handle,
    .generate = strings_generate,
};
