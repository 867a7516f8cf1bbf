/* debug.h - what the parity hooks (`tidal debug fwdbwd`, debug.c; `tidal debug
 * step`, debug_step.c) share: reading their input tensors. */
#ifndef TIDAL_CLI_DEBUG_H
#define TIDAL_CLI_DEBUG_H

#include "model/safetensors.h"
#include "base/status.h"

/* Tensor `name` of IN (read from `path`, for the message) with dtype dt and
 * one dimension into *out; TIDAL_ERR_INVALID naming it when missing or not so. */
tidal_status debug_input_1d(const st_file *in, const char *path, const char *name, st_dtype dt,
                            const st_tensor **out);

/* A malloc'd copy of t's elements (the mapping may be unaligned); NULL when
 * out of memory. */
void *debug_copy_out(const st_tensor *t);

#endif
