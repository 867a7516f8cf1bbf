/* fuzz_jsonl.c - libFuzzer target for the JSONL dataset reader
 * (controller/data.c): a job's training file is user input.
 *
 * The input's first byte picks eval_fraction (0, 0.25, 0.5 or 0.75) and the
 * rest is the file. Checked on every input: dataset_open_jsonl returns OK or
 * TIDAL_ERR_INVALID, never a crash, a leak or another status; an error names
 * the file; on OK every training item of two epochs (shuffled) and every
 * held-out item comes back, its task is a JSON object whose "prompt" is the
 * item's prompt, its source line is within the file, and the item after the
 * last epoch is TIDAL_ERR_NOT_FOUND.
 *
 * Seeds: tests/fuzz/seeds/fuzz_jsonl/ (written by hand: rows, blank and CRLF
 * lines, a missing or non-string prompt, nested objects, duplicate keys).
 * Run by hand: fuzz_jsonl -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_jsonl
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controller/data.h"

static char path[64];

static void check_item(const dataset_item *it, uint64_t lines)
{
    if (!it->task_json || !it->prompt) abort();
    json_t *o = json_loads(it->task_json, 0, NULL);
    const char *p = json_string_value(json_object_get(o, "prompt"));
    if (!json_is_object(o) || !p || strcmp(p, it->prompt) != 0) abort();
    json_decref(o);
    if (it->source < 1 || it->source > lines) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_jsonl-%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size > 1 && fwrite(data + 1, 1, size - 1, f) != size - 1) abort();
    fclose(f);
    uint64_t lines = 1;
    for (size_t i = 1; i < size; i++) lines += data[i] == '\n';

    dataset *d = NULL;
    tidal_status s = dataset_open_jsonl(path, "prompt", (data[0] % 4) * 0.25, data[0], &d);
    if (s != TIDAL_OK) {
        if (s != TIDAL_ERR_INVALID || d || !strstr(tidal_errmsg(), path)) abort();
        return 0;
    }
    const size_t rows = dataset_train_rows(d);
    if (rows == 0) abort();
    dataset_item it;
    for (uint64_t i = 0; i < 2 * rows; i++) {
        if (dataset_train_item(d, i, 2, true, &it) != TIDAL_OK) abort();
        check_item(&it, lines);
        dataset_item_clear(&it);
    }
    if (dataset_train_item(d, 2 * rows, 2, true, &it) != TIDAL_ERR_NOT_FOUND) abort();
    for (size_t i = 0; i < dataset_eval_count(d); i++) {
        if (dataset_eval_item(d, i, &it) != TIDAL_OK) abort();
        check_item(&it, lines);
        dataset_item_clear(&it);
    }
    dataset_free(d);
    return 0;
}
