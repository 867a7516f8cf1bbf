/* weights_token.c - the HTTP weights token from the environment (see weights_token.h). */
#include "job/weights_token.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A token goes into an HTTP header: printable ASCII without spaces. */
static tidal_status check_token(const char *t, const char *from)
{
    if (!t[0]) return tidal_fail(TIDAL_ERR_INVALID, "%s: the weights token is empty", from);
    for (const char *c = t; *c; c++)
        if (*c <= ' ' || *c > '~')
            return tidal_fail(TIDAL_ERR_INVALID, "%s: the weights token has a character outside printable ASCII "
                              "(or a space) at byte %zu", from, (size_t)(c - t));
    return TIDAL_OK;
}

tidal_status weights_token_from_env(char **out)
{
    *out = NULL;
    const char *v = getenv(WEIGHTS_TOKEN_ENV);
    if (v) {
        TRY(check_token(v, WEIGHTS_TOKEN_ENV));
        if (!(*out = strdup(v))) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", WEIGHTS_TOKEN_ENV);
        return TIDAL_OK;
    }
    const char *path = getenv(WEIGHTS_TOKEN_FILE_ENV);
    if (!path) return TIDAL_OK;
    FILE *f = fopen(path, "r");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "%s: %s: %s", WEIGHTS_TOKEN_FILE_ENV, path, strerror(errno));
    char line[1024] = "";
    const bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!got) return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: the file is empty", WEIGHTS_TOKEN_FILE_ENV, path);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = '\0';
    char from[1200];
    snprintf(from, sizeof from, "%s: %s", WEIGHTS_TOKEN_FILE_ENV, path);
    TRY(check_token(line, from));
    if (!(*out = strdup(line))) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", WEIGHTS_TOKEN_FILE_ENV);
    return TIDAL_OK;
}
