/* job/weights_token.h: the HTTP weights token from the environment - the
 * variable, else the file's first line (trimmed), neither = none, and bad
 * input (an unreadable or empty file, a space or control character) an
 * error naming the variable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "job/weights_token.h"

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) exit(1);
    fputs(text, f);
    fclose(f);
}

static void test_token_sources(void)
{
    char path[] = "/tmp/tidal-token-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    char *t = NULL;
    unsetenv(WEIGHTS_TOKEN_ENV);
    unsetenv(WEIGHTS_TOKEN_FILE_ENV);
    CHECK_OK(weights_token_from_env(&t));
    CHECK(t == NULL); /* neither: no token */

    setenv(WEIGHTS_TOKEN_ENV, "s3cret-token", 1);
    setenv(WEIGHTS_TOKEN_FILE_ENV, path, 1); /* the variable wins */
    CHECK_OK(weights_token_from_env(&t));
    CHECK(t && !strcmp(t, "s3cret-token"));
    free(t);

    unsetenv(WEIGHTS_TOKEN_ENV);
    write_text(path, "from-the-file \r\nsecond line\n");
    CHECK_OK(weights_token_from_env(&t));
    CHECK(t && !strcmp(t, "from-the-file"));
    free(t);

    write_text(path, "");
    CHECK_STATUS(weights_token_from_env(&t), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), WEIGHTS_TOKEN_FILE_ENV) && strstr(tidal_errmsg(), "empty"));
    write_text(path, "two words\n");
    CHECK_STATUS(weights_token_from_env(&t), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "printable ASCII"));
    unlink(path);
    CHECK_STATUS(weights_token_from_env(&t), TIDAL_ERR_IO);
    CHECK(strstr(tidal_errmsg(), path) != NULL);

    unsetenv(WEIGHTS_TOKEN_FILE_ENV);
    setenv(WEIGHTS_TOKEN_ENV, "", 1);
    CHECK_STATUS(weights_token_from_env(&t), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), WEIGHTS_TOKEN_ENV) != NULL);
    unsetenv(WEIGHTS_TOKEN_ENV);
}

int main(void)
{
    RUN(test_token_sources);
    return check_summary();
}
