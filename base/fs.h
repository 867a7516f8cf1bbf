/* fs.h - the few file-system chores several roles share: make a directory
 * path, remove a tree, write a file whole (temp + rename).
 */
#ifndef TIDAL_BASE_FS_H
#define TIDAL_BASE_FS_H

#include <stddef.h>

#include "base/status.h"

/* mkdir -p: every missing directory of `path` (0755). TIDAL_ERR_IO naming
 * the part that could not be made. */
tidal_status fs_mkdirs(const char *path);

/* Delete a directory tree without following symlinks; what cannot be
 * removed is logged (as `who`: ...) and skipped. */
void fs_remove_tree(const char *dir, const char *who);

/* Write len bytes to PATH.tmp, fsync, rename to PATH: readers see the old
 * file or the new one, never a torn one. */
tidal_status fs_write_file(const char *path, const void *data, size_t len);

#endif
