/* jobmodel.h - the model, tokenizer and prompt format a job spec names.
 *
 * Controller, trainer and rollout workers must agree on these exactly: the
 * controller renders prompts with the chat format, workers tokenize them and
 * stop at the end-of-turn token, the trainer builds the initial weights.
 * So each role derives them from the spec here, once:
 *   model.path   config.json, the safetensors, tokenizer.json (and
 *                tokenizer_config.json's chat template for data.template
 *                auto, read on its own: the controller loads no tokenizer)
 *   model.init.* a tiny model from scratch with tidal's byte-level tokenizer
 *                (TOKENIZER_BYTE_LEVEL_VOCAB ids; model.init.vocab must hold
 *                them) and the plain format unless data.template names one;
 *                or the alphabet tokenizer (model.init.alphabet); or a real
 *                one (model.init.tokenizer: a tokenizer.json, or a directory
 *                with it and tokenizer_config.json), which sets the
 *                vocabulary (model.init.vocab when larger), eos and bos, and
 *                for data.template auto the chat format. Every role reads
 *                the same file (a path on the machine that runs the role),
 *                and the trainer copies it into each checkpoint.
 */
#ifndef TIDAL_JOB_JOBMODEL_H
#define TIDAL_JOB_JOBMODEL_H

#include <stdint.h>

#include "job/spec.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"

/* The model's shape: model.init's, or model.path/config.json. */
tidal_status job_model_config(const job_spec *s, model_config *out);

/* The same for a worker that already holds the job's tokenizer (from
 * job_tokenizer), so model.init.tokenizer is not loaded twice. */
tidal_status job_model_config_of(const job_spec *s, const tokenizer *tok, model_config *out);

/* The initial weights (version 0): loaded from model.path, or model.init
 * initialised from its seed and std. *out belongs to the caller. */
tidal_status job_model_initial(const job_spec *s, model **out);

/* The tokenizer: model.path/tokenizer.json, model.init.tokenizer, or the
 * alphabet or byte-level one. */
tidal_status job_tokenizer(const job_spec *s, tokenizer **out);

/* Copy model.init.tokenizer's tokenizer.json and tokenizer_config.json (when
 * there is one) into DIR (a checkpoint), so the directory loads with its
 * tokenizer; nothing to do for other specs (TIDAL_OK). Errors name the key
 * and the file. */
tidal_status job_tokenizer_copy(const job_spec *s, const char *dir);

/* data.template resolved, without loading a tokenizer: a named format, or for
 * auto the one model.path's files ask for (chat_format_of_model_dir: its
 * tokenizer_config.json's chat template, else plain), the one
 * model.init.tokenizer's tokenizer_config.json asks for the same way, plain
 * for other model.init.
 * Errors name the model directory's file (a missing tokenizer.json, a
 * malformed tokenizer_config.json). */
tidal_status job_chat_format(const job_spec *s, chat_format *out);

/* The prompt text as one user message with the generation prompt, in format
 * f. *out is malloc'd (the caller frees it). */
tidal_status job_render_prompt(chat_format f, const char *text, char **out);

/* The token that ends the model's turn: the format's end-of-turn token when
 * the tokenizer has it, else eos; -1 when neither exists. */
int32_t job_stop_id(chat_format f, const tokenizer *t);

#endif
