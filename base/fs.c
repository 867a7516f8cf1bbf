/* fs.c - shared file-system chores (fs.h). */
#define _GNU_SOURCE /* nftw */
#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

tidal_status fs_mkdirs(const char *path)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return tidal_fail(TIDAL_ERR_IO, "%s: path too long", path);
    for (char *c = p + 1;; c++) {
        const bool end = *c == '\0';
        if (*c == '/' || end) {
            *c = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return tidal_fail(TIDAL_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
            if (end) break;
            *c = '/';
        }
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return tidal_fail(TIDAL_ERR_IO, "%s: not a directory", path);
    return TIDAL_OK;
}

static const char *remove_who = "fs";

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT)
        tidal_log(TIDAL_LOG_WARN, "%s: cannot remove %s: %s", remove_who, path, strerror(errno));
    return 0; /* keep going: remove as much as we can */
}

void fs_remove_tree(const char *dir, const char *who)
{
    remove_who = who ? who : "fs"; /* nftw has no closure; callers are not concurrent */
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

tidal_status fs_write_file(const char *path, const void *data, size_t len)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return tidal_fail(TIDAL_ERR_IO, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return tidal_fail(TIDAL_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return tidal_fail(TIDAL_ERR_IO, "cannot write %s: %s", tmp, strerror(e));
        }
        p += n, left -= (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return tidal_fail(TIDAL_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    return TIDAL_OK;
}
