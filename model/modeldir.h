/* modeldir.h - the weights of a Hugging Face model directory, one file or
 * shards, read as one set of tensors.
 *
 * A model directory holds model.safetensors, or shards listed by
 * model.safetensors.index.json ("weight_map": name -> shard file); when both
 * are there the single file wins, as in transformers. Each file is read and
 * validated by model/safetensors.h; this module finds the files, checks the
 * index against what the shards hold, and looks tensors up by name across
 * them. (config.json is model/config.h's, tokenizer.json model/tokenizer.h's.)
 */
#ifndef TIDAL_MODEL_MODELDIR_H
#define TIDAL_MODEL_MODELDIR_H

#include "base/status.h"
#include "model/safetensors.h"

typedef struct st_model st_model;

/* Open DIR/model.safetensors, or every shard named in
 * DIR/model.safetensors.index.json (checking that each tensor is in the
 * shard the index names, and that no tensor appears twice). The tensors stay
 * valid until st_model_close. TIDAL_ERR_NOT_FOUND when the directory holds
 * neither file; TIDAL_ERR_INVALID naming the file and tensor at fault. */
tidal_status st_model_open(const char *dir, st_model **out);
void st_model_close(st_model *m);
/* The tensor called `name` in whichever shard holds it; NULL when absent. */
const st_tensor *st_model_find(const st_model *m, const char *name);
/* The number of tensors over all shards. */
int st_model_count(const st_model *m);
/* Tensor i in [0, st_model_count): shard by shard in file-name order, each
 * in its file's order; NULL outside that range. */
const st_tensor *st_model_at(const st_model *m, int i);

#endif
