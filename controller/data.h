/* data.h - where a job's prompts come from: a JSONL file, or a built-in
 * environment's task generator; the training order (epochs, a shuffle per
 * epoch from the seed) and a held-out evaluation split.
 *
 * The controller numbers the training items it dispatches 0, 1, 2, ...; item
 * i is a pure function of (i, the data, the seed), so a restarted
 * controller that reads its cursor back from KV continues exactly where it
 * stopped, with nothing repeated or skipped.
 *
 * A file row is any JSON object; its prompt_key field (a string) is the
 * prompt text, and the whole row becomes the task the environment scores
 * against (gsm8k reads `answer`). A row is held out for evaluation by a hash
 * of its line number and the seed (the same split on every run over the same
 * file; inserting or deleting lines moves the rows after them), so about
 * eval_fraction of the rows never train. A generator's task for seed
 * s is env_generate(s); training seeds are even and evaluation seeds odd,
 * so the two never share a seed.
 */
#ifndef TIDAL_CONTROLLER_DATA_H
#define TIDAL_CONTROLLER_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct dataset dataset;

typedef struct dataset_item {
    char *task_json; /* heap: the row (an object) */
    char *prompt;    /* heap: the prompt text */
    uint64_t source; /* the row's line (1-based) in the file, or the generator seed */
} dataset_item;

void dataset_item_clear(dataset_item *it);

/* Read a JSONL file. Every non-empty line must be a JSON object whose
 * prompt_key is a string, with no NUL byte in the line; otherwise
 * TIDAL_ERR_INVALID "FILE:LINE: ...". An
 * empty file, or one whose rows all land in the evaluation split, is an error. */
tidal_status dataset_open_jsonl(const char *path, const char *prompt_key, double eval_fraction, uint64_t seed,
                                dataset **out);

/* Tasks from built-in env `env_name` (config as env_create), eval_size of
 * them held out. The training stream is unbounded (epochs do not apply). */
tidal_status dataset_open_generator(const char *env_name, const char *config_json, uint64_t seed, int eval_size,
                                    dataset **out);

void dataset_free(dataset *d);

/* Training rows (files; 0 for a generator) and held-out items. */
size_t dataset_train_rows(const dataset *d);
size_t dataset_eval_count(const dataset *d);

/* Training item i: for a file, epoch i / rows, row perm_epoch(i % rows)
 * (shuffled per epoch when `shuffle`); TIDAL_ERR_NOT_FOUND once i reaches
 * epochs x rows (the data is exhausted). */
tidal_status dataset_train_item(dataset *d, uint64_t i, int epochs, bool shuffle, dataset_item *out);

/* Held-out item i < dataset_eval_count(). */
tidal_status dataset_eval_item(dataset *d, size_t i, dataset_item *out);

#endif
