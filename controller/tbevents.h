/* tbevents.h - a run's TensorBoard event file: RUN/tb/events.out.tfevents.<unix
 * seconds>.<hostname>, which `tensorboard --logdir` reads while the job runs
 * (docs/tensorboard.md).
 *
 * The file is a TFRecord stream: each record is its length (uint64, little
 * endian), the masked CRC-32C of those 8 bytes, the data, and the masked
 * CRC-32C of the data (base/crc32c.h). The data of each record is an Event of
 * proto/tensorboard.proto: the first says the file's version
 * ("brain.Event:2"), every later one holds a Summary at a step - scalars
 * (simple_value) or texts (a string tensor for TensorBoard's text plugin).
 * Each record is flushed as soon as it is written, so a live TensorBoard
 * sees it.
 *
 * After a failed write the file may end in a partial record (which readers
 * take for one still being written); the writer then writes nothing more and
 * every call fails with the first failure's message, so the caller can say it
 * once and go on.
 */
#ifndef TIDAL_CONTROLLER_TBEVENTS_H
#define TIDAL_CONTROLLER_TBEVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* The file_version of the first record. */
#define TBEVENTS_FILE_VERSION "brain.Event:2"

typedef struct tbevents tbevents;

/* One scalar: its tag (TensorBoard groups tags by the part before the first
 * '/') and value (stored as a float32, TensorBoard's simple_value). */
typedef struct tbevents_scalar {
    const char *tag;
    double value;
} tbevents_scalar;

/* Make directory `dir` (mkdir -p) and a new event file in it, named
 * events.out.tfevents.<wall_time's whole seconds>.<hostname> (appended to
 * when a file of that name is there: readers take the records of both), and
 * write its first record, the file version at wall_time. TIDAL_ERR_IO naming
 * the path when the directory or the file cannot be made or written. */
tidal_status tbevents_open(const char *dir, double wall_time, tbevents **out);

/* The event file's path. */
const char *tbevents_path(const tbevents *w);

/* One Event at `step` and wall_time (seconds since the Unix epoch) with n
 * scalars; n == 0 writes nothing. TIDAL_ERR_IO on a failed write (or one
 * before it: the writer is then spent), TIDAL_ERR_NOMEM. */
tidal_status tbevents_scalars(tbevents *w, int64_t step, double wall_time, const tbevents_scalar *v, size_t n);

/* The numeric members of JSON object `o` as scalars of one Event: each
 * number as it is, a boolean as 0 or 1; a null, a string, an array, an object
 * and the member named `skip` (NULL: none) are left out. Each tag is
 * `prefix` followed by the member's name. */
tidal_status tbevents_json(tbevents *w, int64_t step, double wall_time, const char *prefix, const json_t *o,
                           const char *skip);

/* One Event at `step` with one text value under `tag` for TensorBoard's text
 * plugin: a rank-1 string tensor of n texts (Markdown; the plugin shows them
 * as the rows of a table). n == 0 writes nothing. Errors as tbevents_scalars. */
tidal_status tbevents_texts(tbevents *w, int64_t step, double wall_time, const char *tag, const char *const *texts,
                            size_t n);

/* Close the file (NULL: no-op). */
void tbevents_close(tbevents *w);

#endif
