/* checkpoint.h - the trainer's checkpoints: a Hugging Face directory plus
 * tidal's state, so `tidal trainer --resume` continues exactly.
 *
 * ROOT/step-<version>/ is a complete Hugging Face directory - config.json,
 * model.safetensors, the tokenizer's files (tokenizer.json,
 * tokenizer_config.json, ...) and generation_config.json, loadable by
 * transformers, vLLM or `tidal generate` as it is - plus
 * optimizer.safetensors (AdamW's two moments, fp32, as 1-D tensors
 * "adamw.m" and "adamw.v") and state.json: the
 * version, the optimizer's step count, the group and drop counts so far, and
 * the id of every trajectory trained (a redelivered one is then a
 * duplicate). The directory is written as step-<version>.tmp and renamed,
 * so a checkpoint either exists whole or not at all; the newest `keep` are
 * kept.
 */
#ifndef TIDAL_TRAINER_CHECKPOINT_H
#define TIDAL_TRAINER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "buffer/buffer.h"
#include "model/hfdir.h"
#include "model/model.h"
#include "trainer/optimizer.h"

typedef struct ckpt_state {
    uint64_t version;
    double elapsed_s;                /* training time before this checkpoint (the run's clock goes on) */
    uint64_t groups_trained;
    uint64_t groups_dropped[BUFFER_DROP__COUNT];
    uint64_t samples_dropped[BUFFER_DROP__COUNT];
    uint64_t rejected;               /* trajectory messages that did not decode or validate */
    char **trained_ids;              /* [n_trained], heap */
    size_t n_trained, cap_trained;
} ckpt_state;

/* Remember one more trained trajectory id (copied). */
tidal_status ckpt_state_add_trained(ckpt_state *s, const char *id);
void ckpt_state_clear(ckpt_state *s);

/* Write ROOT/step-<s->version> (ROOT is created when missing) with the
 * files of hf (the tokenizer's and generation_config.json: job_hf_files;
 * NULL: none) and remove all but the newest `keep` checkpoints. */
tidal_status checkpoint_save(const char *root, const model *m, const adamw *opt, const ckpt_state *s, int keep,
                             const hf_files *hf);

/* Load the newest checkpoint under ROOT: *m, *opt (owned by the caller) and
 * *s. TIDAL_ERR_NOT_FOUND when there is none; TIDAL_ERR_CORRUPT naming the
 * file when one is damaged. */
tidal_status checkpoint_load_latest(const char *root, model **m, adamw **opt, ckpt_state *s);

#endif
