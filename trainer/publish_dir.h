/* publish_dir.h - weights.transport dir: each version as a Hugging Face
 * directory under a shared path (docs/protocol.md "Shared directory").
 *
 * The trainer writes version v into ROOT/.step_<v>.tmp/ - config.json,
 * model.safetensors (the image the manifest's size and digest describe), the
 * job's tokenizer files and generation_config.json - then renames it to
 * ROOT/step_<v>/, so a worker or an inference server never sees half a
 * version, and removes all but the newest `keep` step_* directories.
 */
#ifndef TIDAL_TRAINER_PUBLISH_DIR_H
#define TIDAL_TRAINER_PUBLISH_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "model/hfdir.h"

/* Write version v (image[len], config_json, the files hf: may be NULL) as
 * ROOT/step_<v>/ and keep the newest `keep` versions; *path (cap bytes) gets
 * the directory. On failure (a full disk: TIDAL_ERR_IO naming the file and
 * the spec key weights.dir) the temporary directory is removed and the
 * versions already there are left as they were. */
tidal_status publish_dir_write(const char *root, uint64_t v, const char *config_json, const void *image, size_t len,
                               const hf_files *hf, int keep, char *path, size_t cap);

#endif
