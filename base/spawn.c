/* spawn.c - the one process spawner (see spawn.h). */
#define _GNU_SOURCE /* pipe2, F_DUPFD_CLOEXEC: Linux-only module (prctl) */
#include "base/spawn.h"

#include "base/str.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int is_executable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

tidal_status spawn_which(const char *name, char **out)
{
    *out = NULL;
    if (!name || !*name) return tidal_fail(TIDAL_ERR_INVALID, "spawn: empty program name");
    if (strchr(name, '/')) {
        struct stat st;
        if (stat(name, &st) != 0)
            return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: %s", name,
                              strerror(errno));
        if (!S_ISREG(st.st_mode) || access(name, X_OK) != 0)
            return tidal_fail(TIDAL_ERR_IO, "%s: not an executable file", name);
        *out = strdup(name);
        return *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", name);
    }
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        char *cand = len ? str_printf("%.*s/%s", (int)len, p, name) : str_printf("./%s", name);
        if (!cand) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", name);
        if (is_executable_file(cand)) {
            *out = cand;
            return TIDAL_OK;
        }
        free(cand);
        if (!colon) break;
        p = colon + 1;
    }
    return tidal_fail(TIDAL_ERR_NOT_FOUND, "\"%s\" not found on PATH", name);
}

char **spawn_env_with_defaults(char *const set[], int n)
{
    size_t have = 0;
    while (environ && environ[have]) have++;
    char **env = calloc(have + (size_t)n + 1, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < have; i++)
        if (!(env[k++] = strdup(environ[i]))) goto oom;
    for (int i = 0; i < n; i++) {
        const char *eq = strchr(set[i], '=');
        if (!eq) continue; /* not NAME=value: nothing to add */
        size_t name_len = (size_t)(eq - set[i]);
        bool present = false;
        for (size_t j = 0; j < have && !present; j++)
            present = strncmp(environ[j], set[i], name_len + 1) == 0;
        if (present) continue;
        if (!(env[k++] = strdup(set[i]))) goto oom;
    }
    return env;
oom:
    spawn_env_free(env);
    return NULL;
}

void spawn_env_free(char **env)
{
    if (!env) return;
    for (char **e = env; *e; e++) free(*e);
    free(env);
}

/* Give fd a number above stderr (so the child's dup2 onto 0..2 cannot clobber
 * it) and close-on-exec. Returns the new fd, or -1 with errno set. */
static int fd_above_stdio(int fd)
{
    if (fd < 0 || fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int e = errno;
    close(fd);
    errno = e;
    return moved;
}

/* In the child, between fork and exec: only async-signal-safe calls. Never
 * returns; on failure it writes errno to err_fd and _exits 127. */
static void child_exec(const spawn_opts *o, char *const envp[], int null_fd, int log_fd, int err_fd,
                       pid_t parent, int max_fd) __attribute__((noreturn));
static void child_exec(const spawn_opts *o, char *const envp[], int null_fd, int log_fd, int err_fd,
                       pid_t parent, int max_fd)
{
    int e;
    if (o->own_group) setpgid(0, 0);
    /* Die with the parent; if it is already gone, do not start at all. */
    if (o->die_with_parent && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)) _exit(127);

    /* Default signal state: handlers reset on exec, ignored signals and the
     * mask do not - a child must see SIGTERM and SIGINT. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl); /* memset is async-signal-safe since POSIX.1-2016 */
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, NULL);

    if (null_fd >= 0 && dup2(null_fd, 0) < 0) goto fail;
    if (log_fd >= 0 && (dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0)) goto fail;
    if (o->stdout_fd > 2 && dup2(o->stdout_fd, 1) < 0) goto fail;

    /* Leak none of the parent's other descriptors (sockets, pipes) into the
     * child: everything above stderr becomes close-on-exec. */
#if defined(SYS_close_range)
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) != 0)
#endif
    {
        for (int fd = 3; fd < max_fd; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    execve(o->binary, o->argv, envp);
fail:
    e = errno;
    while (write(err_fd, &e, sizeof e) < 0 && errno == EINTR) {}
    _exit(127);
}

tidal_status spawn_process(const spawn_opts *o, pid_t *pid)
{
    *pid = -1;
    if (!o->binary || !o->argv || !o->argv[0])
        return tidal_fail(TIDAL_ERR_INVALID, "spawn: no binary or argv");
    char *const *envp = o->envp ? o->envp : environ;
    int null_fd = -1, log_fd = -1, err_pipe[2] = {-1, -1};
    if (o->stdin_null && (null_fd = fd_above_stdio(open("/dev/null", O_RDONLY | O_CLOEXEC))) < 0)
        return tidal_fail(TIDAL_ERR_IO, "%s: open /dev/null: %s", o->binary, strerror(errno));
    if (o->log_path &&
        (log_fd = fd_above_stdio(open(o->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644))) < 0) {
        int e = errno;
        if (null_fd >= 0) close(null_fd);
        return tidal_fail(TIDAL_ERR_IO, "%s: open log file %s: %s", o->binary, o->log_path, strerror(e));
    }
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        int e = errno;
        if (null_fd >= 0) close(null_fd);
        if (log_fd >= 0) close(log_fd);
        return tidal_fail(TIDAL_ERR_IO, "%s: pipe: %s", o->binary, strerror(e));
    }
    struct rlimit rl;
    int max_fd = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max_fd = rl.rlim_cur > 65536 ? 65536 : (int)rl.rlim_cur;
    pid_t parent = getpid();

    pid_t child = fork();
    if (child == 0) child_exec(o, envp, null_fd, log_fd, err_pipe[1], parent, max_fd);
    int fork_errno = errno;
    close(err_pipe[1]);
    if (null_fd >= 0) close(null_fd);
    if (log_fd >= 0) close(log_fd);
    if (child < 0) {
        close(err_pipe[0]);
        return tidal_fail(TIDAL_ERR_IO, "%s: fork: %s", o->binary, strerror(fork_errno));
    }

    /* EOF means exec succeeded (the pipe closed on exec); an int is errno. */
    int child_errno = 0;
    ssize_t n;
    while ((n = read(err_pipe[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR) {}
    close(err_pipe[0]);
    if (n > 0) {
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        return tidal_fail(child_errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "%s: exec: %s",
                          o->binary, n == (ssize_t)sizeof child_errno ? strerror(child_errno) : "failed");
    }
    *pid = child;
    return TIDAL_OK;
}

int spawn_wait(pid_t pid)
{
    int ws = 0;
    pid_t r;
    while ((r = waitpid(pid, &ws, 0)) < 0 && errno == EINTR) {}
    if (r < 0) return -1;
    if (WIFEXITED(ws)) return WEXITSTATUS(ws);
    return WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : -1;
}

tidal_status spawn_capture(const char *program, char *const argv[], char *const envp[], char **out, size_t *len,
                           int *exit_code)
{
    *out = NULL, *len = 0, *exit_code = -1;
    char *binary = NULL, *buf = NULL;
    int fds[2] = {-1, -1};
    pid_t pid = -1;
    size_t n = 0, cap = 0;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(spawn_which(program, &binary));
    /* Both ends above stderr and close-on-exec: the child's dup2 onto 1 is the
     * only copy it keeps, so EOF arrives when the child exits. */
    if (pipe2(fds, O_CLOEXEC) != 0 || (fds[0] = fd_above_stdio(fds[0])) < 0 ||
        (fds[1] = fd_above_stdio(fds[1])) < 0) {
        st = tidal_fail(TIDAL_ERR_IO, "%s: pipe: %s", program, strerror(errno));
        goto cleanup;
    }
    spawn_opts o = {.binary = binary, .argv = argv, .envp = envp, .stdin_null = true, .stdout_fd = fds[1]};
    TRY_GOTO(spawn_process(&o, &pid));
    close(fds[1]);
    fds[1] = -1;
    for (;;) {
        if (cap - n < 4096) {
            char *grown = realloc(buf, cap = cap ? 2 * cap : 65536);
            if (!grown) {
                st = tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory reading its output", program);
                goto cleanup;
            }
            buf = grown;
        }
        ssize_t got = read(fds[0], buf + n, cap - n - 1);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            st = tidal_fail(TIDAL_ERR_IO, "%s: reading its output: %s", program, strerror(errno));
            goto cleanup;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    buf[n] = '\0';
cleanup:
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
    if (pid > 0) *exit_code = spawn_wait(pid); /* after closing the pipe: a child still writing gets EPIPE */
    free(binary);
    if (st == TIDAL_OK) {
        *out = buf, *len = n;
    } else {
        free(buf);
    }
    return st;
}

tidal_status spawn_self(const char *log, char *const argv[], int threads, pid_t *pid)
{
    char nt[40];
    snprintf(nt, sizeof nt, "OMP_NUM_THREADS=%d", threads);
    char *defaults[] = {"OMP_WAIT_POLICY=passive", nt};
    char **env = spawn_env_with_defaults(defaults, threads > 0 ? 2 : 1);
    if (!env) return tidal_fail(TIDAL_ERR_NOMEM, "spawn %s: out of memory", argv[1] ? argv[1] : "tidal");
    spawn_opts o = {.binary = "/proc/self/exe",
                    .argv = argv,
                    .envp = env,
                    .log_path = log,
                    .stdin_null = true,
                    .die_with_parent = true};
    tidal_status st = spawn_process(&o, pid);
    spawn_env_free(env);
    return tidal_wrap(st, "start %s", argv[1] ? argv[1] : "tidal");
}
