/* test_spawn.c - the one process spawner (base/spawn.h): a child's output read
 * whole through a pipe (more than any pipe buffer holds), arguments that a shell
 * would split or unquote passed through untouched, exit codes and signals, a
 * missing program reported by name, the log file, and environment defaults
 * that never override what the user set. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/spawn.h"
#include "check.h"

static void test_capture_large_output(void)
{
    /* 300,000 bytes: the reader must drain while the child writes (a pipe holds 64 KiB). */
    char *argv[] = {"sh", "-c", "i=0; while [ $i -lt 3000 ]; do printf '%099d\\n' $i; i=$((i+1)); done", NULL};
    char *out = NULL;
    size_t len = 0;
    int code = -1;
    CHECK_OK(spawn_capture("sh", argv, NULL, &out, &len, &code));
    CHECK_MSG(code == 0 && len == 300000, "exit %d, %zu bytes", code, len);
    CHECK(out[len] == '\0' && !strncmp(out + len - 100, "0000", 4) && out[len - 1] == '\n');
    CHECK(!strncmp(out + 99 * 100, "00000", 5) && out[100 * 100 - 2] == '9'); /* line 99 ends in ...99 */
    free(out);
}

static void test_arguments_untouched(void)
{
    const char *odd = "it's a \"path\" with $HOME; `and` spaces";
    char *argv[] = {"printf", "%s", (char *)odd, NULL};
    char *out = NULL;
    size_t len = 0;
    int code = -1;
    CHECK_OK(spawn_capture("printf", argv, NULL, &out, &len, &code));
    CHECK_MSG(code == 0 && len == strlen(odd) && !strcmp(out, odd), "got '%s'", out ? out : "");
    free(out);
}

static void test_exit_codes(void)
{
    char *out = NULL;
    size_t len = 0;
    int code = -1;
    char *fail3[] = {"sh", "-c", "echo partial; exit 3", NULL};
    CHECK_OK(spawn_capture("sh", fail3, NULL, &out, &len, &code));
    CHECK(code == 3 && !strcmp(out, "partial\n"));
    free(out);
    char *killed[] = {"sh", "-c", "kill -9 $$", NULL};
    CHECK_OK(spawn_capture("sh", killed, NULL, &out, &len, &code));
    CHECK_MSG(code == 128 + SIGKILL && len == 0, "exit %d", code);
    free(out);
}

static void test_missing_program(void)
{
    char *argv[] = {"tidal-no-such-program", NULL};
    char *out = (char *)"untouched";
    size_t len = 7;
    int code = 0;
    CHECK_STATUS(spawn_capture("tidal-no-such-program", argv, NULL, &out, &len, &code), TIDAL_ERR_NOT_FOUND);
    CHECK(out == NULL && len == 0 && code == -1);
    CHECK(strstr(tidal_errmsg(), "tidal-no-such-program") != NULL);
    CHECK_STATUS(spawn_capture("/nonexistent/dir/prog", argv, NULL, &out, &len, &code), TIDAL_ERR_NOT_FOUND);
}

static void test_log_and_environment(void)
{
    char log[] = "/tmp/tidal-test-spawn-XXXXXX";
    int fd = mkstemp(log);
    CHECK(fd >= 0);
    close(fd);
    setenv("TIDAL_SPAWN_USER", "mine", 1);
    char *defaults[] = {"TIDAL_SPAWN_USER=default", "TIDAL_SPAWN_NEW=added"};
    char **env = spawn_env_with_defaults(defaults, 2);
    CHECK(env != NULL);
    char *sh = NULL;
    CHECK_OK(spawn_which("sh", &sh));
    char *argv[] = {"sh", "-c", "echo \"$TIDAL_SPAWN_USER $TIDAL_SPAWN_NEW\"; echo err >&2", NULL};
    spawn_opts o = {.binary = sh, .argv = argv, .envp = env, .log_path = log, .stdin_null = true};
    pid_t pid = -1;
    tidal_status st = spawn_process(&o, &pid);
    int code = st == TIDAL_OK ? spawn_wait(pid) : -1;
    spawn_env_free(env);
    free(sh);
    CHECK_OK(st);
    CHECK(code == 0);
    FILE *f = fopen(log, "r");
    char text[128] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    unlink(log);
    text[n] = '\0';
    CHECK_MSG(!strcmp(text, "mine added\nerr\n"), "log holds '%s'", text);
}

int main(void)
{
    RUN(test_capture_large_output);
    RUN(test_arguments_untouched);
    RUN(test_exit_codes);
    RUN(test_missing_program);
    RUN(test_log_and_environment);
    return check_summary();
}
