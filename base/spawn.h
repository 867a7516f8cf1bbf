/* spawn.h - the one way tidal starts a child process.
 *
 * The callers are multithreaded (nats.c runs threads of its own), so between
 * fork() and exec() only async-signal-safe calls are allowed: no malloc, no
 * setenv, no stdio. Everything the child needs - the binary's path, argv, the
 * environment, the descriptors - is therefore prepared before the fork, and the
 * child only rearranges descriptors, resets signals and execs. An exec that
 * fails is reported back through a close-on-exec pipe, so a bad binary is an
 * error at spawn time naming the binary, never a silent exit 127 later.
 *
 * Used by the private nats-server launcher (bus/server.c), by `tidal run`, which
 * starts its roles as children of one parent (cli/roles.c), by the benches that
 * run a peer and read its answer, and by the controller's plot. No shell is
 * involved anywhere, so a path with a quote or a space in it is just a path.
 */
#ifndef TIDAL_BASE_SPAWN_H
#define TIDAL_BASE_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

#include "base/status.h"

typedef struct spawn_opts {
    const char *binary;     /* path of the program to exec (required; see spawn_which) */
    char *const *argv;      /* NULL-terminated; argv[0] is what the child sees */
    char *const *envp;      /* NULL-terminated; NULL: this process's environment */
    const char *log_path;   /* stdout and stderr appended here (created 0644); NULL: inherited */
    bool stdin_null;        /* stdin from /dev/null instead of inherited */
    int stdout_fd;          /* > 2: the child's stdout (not its stderr) goes to this descriptor,
                             * e.g. a pipe's end; 0: as log_path says */
    bool own_group;         /* setpgid(0, 0): a terminal's Ctrl-C reaches only the parent */
    bool die_with_parent;   /* PR_SET_PDEATHSIG(SIGKILL); Linux delivers it when the forking
                             * *thread* exits, so spawn from a thread that outlives the child */
} spawn_opts;

/* Start the child and return once exec has succeeded or failed. On success
 * *pid is the child's (the caller reaps it). The child starts with default
 * signal dispositions and an empty mask, and inherits no descriptor above
 * stderr. TIDAL_ERR_NOT_FOUND when the binary does not exist, TIDAL_ERR_IO for
 * any other failure, naming the binary and the log file. */
tidal_status spawn_process(const spawn_opts *o, pid_t *pid);

/* Resolve a program name as execvp would, but before any fork: a name with a
 * '/' is checked as is, otherwise each $PATH entry is tried. On success *out is
 * a heap path the caller frees. TIDAL_ERR_NOT_FOUND naming the name. */
tidal_status spawn_which(const char *name, char **out);

/* A copy of this process's environment with each "NAME=value" of `set` added
 * unless NAME is already set (the user's choice wins). NULL-terminated; free it
 * with spawn_env_free. NULL when out of memory. */
char **spawn_env_with_defaults(char *const set[], int n);
void spawn_env_free(char **env);

/* Start this same binary (/proc/self/exe) as a role of `tidal run` or a bench:
 * argv[0] is ignored, stdout and stderr appended to `log`, stdin /dev/null, dying
 * with the parent. The roles share the machine, so the child gets
 * OMP_WAIT_POLICY=passive (a spinning OpenMP thread of one role takes a core
 * from another) and, when threads > 0, OMP_NUM_THREADS=threads - unless the
 * user set them. */
/* Wait for child `pid` (retrying EINTR). Returns its exit status, or 128 + the
 * signal that killed it, or -1 when it cannot be waited for. */
int spawn_wait(pid_t pid);

/* Run `program` (a name looked up on $PATH, or a path) with argv and envp (NULL:
 * this process's environment), stdin from /dev/null, stderr inherited so its
 * messages reach the user, and its stdout read whole into *out (heap,
 * NUL-terminated, *len bytes; the caller frees it). *exit_code is spawn_wait's
 * answer. Returns an error only when the program cannot be started or read
 * (TIDAL_ERR_NOT_FOUND naming it when it is not installed); a program that ran
 * and failed is TIDAL_OK with its exit code, for the caller to judge. */
tidal_status spawn_capture(const char *program, char *const argv[], char *const envp[], char **out, size_t *len,
                           int *exit_code);

tidal_status spawn_self(const char *log, char *const argv[], int threads, pid_t *pid);

#endif
