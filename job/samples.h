/* samples.h - a bounded record of recent trajectories in the run directory,
 * for people to read (the dashboard's rollout viewer, docs/dashboard.md).
 *
 * The trainer writes RUN/samples.jsonl: after each step one line holding a
 * few of the step's groups (SAMPLES_GROUPS_PER_STEP, spread over the batch),
 * each sample with its decoded prompt and completion (generated text and
 * environment observations as separate segments, by the loss mask), reward
 * and its components, finish reason, the version runs of its tokens and its
 * staleness at training time, plus the staleness histogram of the whole
 * batch. The controller writes evaluation groups the same way into
 * RUN/eval_samples.jsonl. A file that passes SAMPLES_FILE_MAX bytes is
 * renamed to NAME.1.jsonl (replacing the previous one) and started afresh,
 * so a run keeps at most twice that on disk; each text is cut at
 * SAMPLES_TEXT_MAX bytes. Writing is best effort: a failure is logged once
 * and never stops the role.
 */
#ifndef TIDAL_JOB_SAMPLES_H
#define TIDAL_JOB_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "model/tokenizer.h"
#include "proto/codec.h"

#define SAMPLES_GROUPS_PER_STEP 4
#define SAMPLES_FILE_MAX (16u << 20)
#define SAMPLES_TEXT_MAX 8192

typedef struct samples_log samples_log;

/* A writer appending to RUN_DIR/NAME.jsonl (NAME "samples" or
 * "eval_samples"), decoding tokens with tok (borrowed; NULL: only the
 * trajectories' completion_text is shown, the prompt as token ids), rotating
 * at max_bytes (0: SAMPLES_FILE_MAX). TIDAL_ERR_IO naming the file when it
 * cannot be opened. */
tidal_status samples_log_open(const char *run_dir, const char *name, const tokenizer *tok, size_t max_bytes,
                              samples_log **out);

/* Append one line for a step: `step` (the version the step made),
 * `version` (the policy the step trained, against which staleness is
 * counted), the groups groups[0..n_groups) (each sizes[g] trajectories),
 * of which at most SAMPLES_GROUPS_PER_STEP are written. Rotates the file
 * when it has grown past SAMPLES_FILE_MAX. Never fails; NULL l is a no-op. */
void samples_log_step(samples_log *l, uint64_t step, uint64_t version, Tidal__V1__Trajectory **const groups[],
                      const int *sizes, int n_groups, int eval);

/* Close. NULL is a no-op. */
void samples_log_close(samples_log *l);

/* text[0..len) with every byte that is not part of valid UTF-8 replaced by
 * U+FFFD, cut at max bytes (on a character boundary) with "..." marking the
 * cut: malloc'd, NUL-terminated; NULL when out of memory. Token runs decode
 * to partial characters, which JSON cannot carry. */
char *samples_utf8_clean(const char *text, size_t len, size_t max);

#endif
