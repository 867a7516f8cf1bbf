/* publish_dir.c - weights versions as directories under weights.dir (see publish_dir.h). */
#include "trainer/publish_dir.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"

#define MAX_LISTED 4096

static int cmp_desc(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The versions of ROOT's step_<v> directories, newest first (at most max). */
static int list_versions(const char *root, uint64_t *out, int max)
{
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (strncmp(e->d_name, "step_", 5) != 0) continue;
        char *end = NULL;
        errno = 0;
        const unsigned long long v = strtoull(e->d_name + 5, &end, 10);
        if (errno || end == e->d_name + 5 || *end) continue; /* step_3.tmp, step_x: not a version */
        out[n++] = (uint64_t)v;
    }
    closedir(d);
    qsort(out, (size_t)n, sizeof *out, cmp_desc);
    return n;
}

tidal_status publish_dir_write(const char *root, uint64_t v, const char *config_json, const void *image, size_t len,
                               const hf_files *hf, int keep, char *path, size_t cap)
{
    char dir[4096], tmp[4096], file[4200];
    if (snprintf(dir, sizeof dir, "%s/step_%" PRIu64, root, v) >= (int)sizeof dir ||
        snprintf(tmp, sizeof tmp, "%s/.step_%" PRIu64 ".tmp", root, v) >= (int)sizeof tmp || strlen(dir) >= cap)
        return tidal_fail(TIDAL_ERR_INVALID, "weights.dir %.200s...: the path is too long", root);
    TRY_WRAP(fs_mkdirs(root), "weights.dir");
    fs_remove_tree(tmp, "weights dir"); /* left by a trainer that died writing it */
    TRY_WRAP(fs_mkdirs(tmp), "weights.dir");
    tidal_status st = TIDAL_OK;
    snprintf(file, sizeof file, "%s/config.json", tmp);
    TRY_GOTO(fs_write_file(file, config_json, strlen(config_json)));
    snprintf(file, sizeof file, "%s/model.safetensors", tmp);
    TRY_GOTO(fs_write_file(file, image, len));
    if (hf) TRY_GOTO(hf_files_write(hf, tmp));
    fs_remove_tree(dir, "weights dir"); /* the same version from an earlier life of the trainer */
    if (rename(tmp, dir) != 0) {
        st = tidal_fail(TIDAL_ERR_IO, "rename %s to %s: %s", tmp, dir, strerror(errno));
        goto cleanup;
    }
    snprintf(path, cap, "%s", dir);
    uint64_t vs[MAX_LISTED];
    const int n = list_versions(root, vs, MAX_LISTED);
    for (int i = keep > 0 ? keep : 1; i < n; i++) {
        if (vs[i] == v) continue;
        snprintf(file, sizeof file, "%s/step_%" PRIu64, root, vs[i]);
        fs_remove_tree(file, "weights dir");
    }
cleanup:
    if (st != TIDAL_OK) {
        fs_remove_tree(tmp, "weights dir");
        return tidal_wrap(st, "weights v%" PRIu64 ": weights.dir %s", v, root);
    }
    return TIDAL_OK;
}
