/* weights_token.h - the bearer token of `weights.transport: http`, from the
 * environment (never from the spec, so it is not in the job's files or on the
 * bus): the trainer's server requires it, workers send it.
 */
#ifndef TIDAL_JOB_WEIGHTS_TOKEN_H
#define TIDAL_JOB_WEIGHTS_TOKEN_H

#include "base/status.h"

#define WEIGHTS_TOKEN_ENV "TIDAL_WEIGHTS_HTTP_TOKEN"
#define WEIGHTS_TOKEN_FILE_ENV "TIDAL_WEIGHTS_HTTP_TOKEN_FILE"

/* TIDAL_WEIGHTS_HTTP_TOKEN, else the first line of the file
 * TIDAL_WEIGHTS_HTTP_TOKEN_FILE names (trailing whitespace dropped); *out is
 * malloc'd, NULL when neither is set. A file that cannot be read, an empty
 * token, or one with characters outside printable ASCII is an error naming
 * the variable. */
tidal_status weights_token_from_env(char **out);

#endif
