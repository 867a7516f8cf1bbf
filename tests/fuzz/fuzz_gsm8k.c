/* fuzz_gsm8k.c - libFuzzer target for the gsm8k scorer and the number scanner
 * it shares with arith and guess (envs/builtin.h, envs/text.c, envs/gsm8k.c).
 *
 * The input is "<reference>\n<completion>" (no newline: all completion, the
 * reference "72"). Checked on every input: tokens lie inside the text, in
 * order, and re-read alone give the same value; exact values are reduced
 * fractions and equal themselves; gsm8k_extract and gsm8k_boxed stay in
 * bounds; env_handle on the gsm8k env returns OK with a 0/1 reward whose
 * metrics agree, or TIDAL_ERR_INVALID for an unusable reference - never a
 * crash, a leak or another status.
 *
 * Seeds: tests/fuzz/seeds/fuzz_gsm8k/ (written by hand: GSM8K solutions,
 * \boxed{} answers, fractions, signs, commas).
 * Run by hand: fuzz_gsm8k -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_gsm8k
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envs/builtin.h"
#include "envs/env.h"

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void check_number(const env_number *v)
{
    if (v->exact) {
        if (v->den == 0) abort();
        if (v->num == 0 && (v->den != 1 || v->neg)) abort();
        if (v->num != 0 && gcd(v->num, v->den) != 1) abort();
        if (!env_number_equal(v, v)) abort();
    } else if (isfinite(v->approx) && !env_number_equal(v, v)) {
        abort();
    }
}

static void scan(const char *t, size_t n)
{
    size_t pos = 0, prev_end = 0;
    env_numtok tok;
    while (env_next_number(t, n, &pos, &tok)) {
        if (tok.start < prev_end || tok.start >= tok.end || tok.end > n || pos != tok.end) abort();
        check_number(&tok.value);
        env_number again;
        if (!env_number_parse(t + tok.start, tok.end - tok.start, &again)) abort();
        if (again.exact != tok.value.exact) abort();
        if (again.exact && !env_number_equal(&again, &tok.value)) abort();
        prev_end = tok.end;
    }
}

static env *gsm8k_env;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    scan(text, size);

    size_t bs, bn;
    if (gsm8k_boxed(text, size, &bs, &bn) && (bs > size || bn > size - bs)) abort();
    env_number v;
    for (int strict = 0; strict < 2; strict++) {
        gsm8k_how how = gsm8k_extract(text, size, strict, &v);
        if (how != GSM8K_NONE) check_number(&v);
        if (strict && how == GSM8K_LAST) abort();
    }

    /* through env_handle: the reference is the first line */
    if (!gsm8k_env && env_create("gsm8k", NULL, &gsm8k_env) != TIDAL_OK) abort();
    const char *nl = memchr(text, '\n', size);
    size_t nref = nl ? (size_t)(nl - text) : 2;
    const char *ref = nl ? text : "72";
    const char *comp = nl ? nl + 1 : text;
    size_t ncomp = nl ? size - nref - 1 : size;
    json_t *task = json_pack("{s:s%}", "answer", ref, nref); /* NULL for text that is not UTF-8 */
    char *tj = task ? json_dumps(task, JSON_COMPACT) : NULL;
    json_decref(task);
    char *action = malloc(ncomp + 1);
    if (!action) abort();
    memcpy(action, comp, ncomp);
    action[ncomp] = '\0';
    env_call c = {.op = ENV_OP_STEP, .task_json = tj ? tj : "{\"answer\":\"#### 72\"}", .action = action, .turn = 1};
    env_result r;
    tidal_status st = env_handle(gsm8k_env, &c, &r);
    if (st == TIDAL_OK) {
        if (!(r.reward == 0 || r.reward == 1) || !r.done || r.n_metrics != 2) abort();
        if (strcmp(r.metrics[0].name, "correct") != 0 || r.metrics[0].value != r.reward) abort();
    } else if (st != TIDAL_ERR_INVALID || r.n_metrics != 0 || r.observation) {
        abort();
    }
    env_result_clear(&r);
    free(action);
    free(tj);
    return 0;
}
