/* server.c - a private nats-server run as a child process (see server.h).
 *
 * Used by `tidal run` (the embedded bus), `tidal bench` and the integration
 * tests. One tidal_server owns one child process and one work directory
 * (mkdtemp under $TMPDIR or /tmp) that holds the ports file, tidal's default
 * config, and - unless the caller names them - the JetStream store and the log.
 *
 * Start-up: the child is `nats-server -c CONFIG -a HOST -p PORT|-1
 * --ports_file_dir WORK -js -sd STORE -l LOG` with stdin from /dev/null and
 * stdout/stderr appended to LOG (so a config parse error, which nats-server
 * prints before its logger exists, lands in the log too). The parent reads the
 * port from the child's ports file (`<binary>_<pid>.ports`, JSON) and waits
 * until a TCP connection to it reads an `INFO {...}` line with
 * "jetstream":true. Every failure says which binary, which port and which log
 * file, and quotes the log's last lines.
 *
 * Fork safety: the caller may be multithreaded (nats.c runs its own threads),
 * so everything the child needs - resolved binary path, argv, file
 * descriptors - is prepared before fork(), and the child makes only
 * async-signal-safe calls before execve(). An exec failure is reported back
 * through a close-on-exec pipe, so a bad binary fails at once and clearly.
 *
 * The child dies with its parent: PR_SET_PDEATHSIG(SIGKILL). Linux delivers it
 * when the *thread* that forked exits, so start and restart servers from a
 * thread that outlives them (the main thread). The child runs in its own
 * process group, so a terminal Ctrl-C reaches only the parent, which can then
 * shut its roles down before the bus.
 *
 * A tidal_server is not thread-safe: one thread at a time may use it.
 */
#define _GNU_SOURCE /* pipe2, nftw: Linux-only module (prctl) */
#include "bus/server.h"

#include "base/fs.h"
#include "base/spawn.h"
#include "base/str.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_BINARY "nats-server"
#define DEFAULT_START_TIMEOUT_MS 10000
#define STOP_GRACE_MS 5000
#define POLL_INTERVAL_MS 20
#define LOG_TAIL_LINES 8
#define LOG_TAIL_CHARS 560 /* the status message holds 1 KiB in all */
#define DEFAULT_CONFIG                                                    \
    "# tidal's default nats-server config (written by bus/server.c).\n" \
    "# 4 MiB blob chunks plus headers need more than the 1 MB default.\n" \
    "max_payload: 8MB\n"                                                   \
    "# a trainer reading a burst of trajectories or weight chunks must not\n" \
    "# be cut off as a slow consumer at the 64 MB default.\n"             \
    "max_pending: 512MB\n"                                                \
    "write_deadline: \"10s\"\n"

#define SERVER_MAX_ARGS 16

struct tidal_server {
    pid_t pid;            /* the running child, or -1 */
    int port;             /* 0 until the first start has read it */
    char url[64];         /* "nats://HOST:PORT" */
    char host[INET_ADDRSTRLEN]; /* listen and probe address (opts.host or 127.0.0.1) */
    struct in_addr host_addr;
    char *binary;         /* resolved path that is exec'd (owned) */
    char *work_dir;       /* mkdtemp dir, removed by stop (owned) */
    char *store_dir;      /* JetStream store (owned copy) */
    char *args[SERVER_MAX_ARGS]; /* tidal_server_opts.args (owned copies) */
    int n_args;
    char *config_file;    /* caller's config or WORK/nats-server.conf (owned copy) */
    char *log_file;       /* caller's log or WORK/nats-server.log (owned copy) */
    int log_is_temp;      /* log_file lives in work_dir (gone after a failed start) */
    int start_timeout_ms;
};

/* ---- small helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* The port as a phrase for error messages: "port 4222" or "a random port". */
static const char *port_phrase(const tidal_server *s, char *buf, size_t cap)
{
    if (s->port > 0) snprintf(buf, cap, "port %d", s->port);
    else snprintf(buf, cap, "a random port");
    return buf;
}

/* Strip nats-server's "[pid] YYYY/MM/DD HH:MM:SS.uuuuuu " prefix from a log
 * line so more of the message fits in the error; other lines are unchanged. */
static const char *strip_log_prefix(const char *line)
{
    if (line[0] != '[') return line;
    const char *p = strchr(line, ']');
    if (!p || p[1] != ' ') return line;
    p += 2;
    for (int field = 0; field < 2; field++) { /* date, then time */
        if (*p < '0' || *p > '9') return line;
        p = strchr(p, ' ');
        if (!p) return line;
        p++;
    }
    return p;
}

/* Write the last lines of `path` into buf (NUL-terminated, at most cap-1
 * characters), each on its own line indented by two spaces. When the lines do
 * not fit, the oldest are dropped and the newest kept. "(log is empty)" or
 * "(cannot read log: ...)" when there is nothing to show. */
static void log_tail(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(buf, cap, "  (cannot read log: %s)", strerror(errno));
        return;
    }
    char raw[4096];
    size_t n = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        long from = size > (long)sizeof raw - 1 ? size - (long)sizeof raw + 1 : 0;
        if (fseek(f, from, SEEK_SET) == 0) n = fread(raw, 1, sizeof raw - 1, f);
    }
    fclose(f);
    /* Keep the text printable (nats-server can print a NUL in a parse error). */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)raw[i];
        if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f) raw[i] = '?';
    }
    raw[n] = '\0';

    /* Split into lines (the first may be partial when we seeked into it). */
    char *lines[64];
    int count = 0;
    for (char *save = NULL, *tok = strtok_r(raw, "\r\n", &save); tok;
         tok = strtok_r(NULL, "\r\n", &save)) {
        if (count == 64) {
            memmove(lines, lines + 1, sizeof lines[0] * 63);
            count = 63;
        }
        lines[count++] = tok;
    }
    if (count == 0) {
        snprintf(buf, cap, "  (log is empty)");
        return;
    }
    /* Take lines from the end while they fit. */
    int first = count;
    size_t used = 0;
    while (first > 0 && count - first < LOG_TAIL_LINES) {
        size_t len = strlen(strip_log_prefix(lines[first - 1])) + 3; /* "  " + "\n" */
        if (used + len >= cap) {
            if (first == count) first--; /* always show the newest line, cut below */
            break;
        }
        used += len;
        first--;
    }
    size_t off = 0;
    for (int i = first; i < count && off + 1 < cap; i++) {
        int w = snprintf(buf + off, cap - off, "%s  %s", i > first ? "\n" : "",
                         strip_log_prefix(lines[i]));
        if (w < 0) break;
        off += (size_t)w;
        if (off >= cap) off = cap - 1;
    }
}

/* ---- binary resolution ---- */

/* Resolve which nats-server to run: opts->binary, else $TIDAL_NATS_SERVER when
 * non-empty, else "nats-server" on $PATH - before any fork, where malloc is
 * allowed. On success *out is a heap path the caller frees. */
static tidal_status resolve_binary(const char *want, char **out)
{
    const char *name = want;
    const char *source = "opts.binary";
    if (!name || !*name) {
        const char *env = getenv("TIDAL_NATS_SERVER");
        if (env && *env) {
            name = env;
            source = "$TIDAL_NATS_SERVER";
        } else {
            name = DEFAULT_BINARY;
            source = NULL;
        }
    }
    tidal_status st = spawn_which(name, out);
    if (st == TIDAL_ERR_NOT_FOUND && !strchr(name, '/'))
        return tidal_fail(st, "nats-server binary \"%s\"%s%s not found on PATH (install nats-server, "
                              "or set TIDAL_NATS_SERVER to its path)",
                          name, source ? " from " : "", source ? source : "");
    return tidal_wrap(st, "nats-server binary (from %s)", source ? source : "default");
}

/* ---- the child ---- */

/* Start the server with `port_arg` ("-1" or a number) and record its pid in
 * s->pid. Returns once exec has succeeded or failed; it does not wait for the
 * server to answer (wait_ready does). */
static tidal_status spawn(tidal_server *s, const char *port_arg)
{
    char *argv[20 + SERVER_MAX_ARGS];
    int argc = 0;
    argv[argc++] = s->binary;
    argv[argc++] = "-c";
    argv[argc++] = s->config_file;
    argv[argc++] = "-a";
    argv[argc++] = s->host;
    argv[argc++] = "-p";
    argv[argc++] = (char *)port_arg;
    argv[argc++] = "--ports_file_dir";
    argv[argc++] = s->work_dir;
    argv[argc++] = "-js";
    argv[argc++] = "-sd";
    argv[argc++] = s->store_dir;
    argv[argc++] = "-l";
    argv[argc++] = s->log_file;
    for (int i = 0; i < s->n_args; i++) argv[argc++] = s->args[i];
    argv[argc] = NULL;
    spawn_opts o = {.binary = s->binary,
                    .argv = argv,
                    .log_path = s->log_file,
                    .stdin_null = true,
                    .own_group = true,
                    .die_with_parent = true};
    pid_t pid;
    TRY_WRAP(spawn_process(&o, &pid), "nats-server");
    s->pid = pid;
    return TIDAL_OK;
}

/* ---- waiting until it answers ---- */

/* Path of the ports file the child `pid` wrote into s->work_dir (any name
 * ending in "_<pid>.ports": nats-server names it after its argv[0]), malloc'd;
 * NULL while there is none. */
static char *ports_file_path(const tidal_server *s, pid_t pid)
{
    char suffix[32];
    snprintf(suffix, sizeof suffix, "_%ld.ports", (long)pid);
    size_t slen = strlen(suffix);
    DIR *d = opendir(s->work_dir);
    if (!d) return NULL;
    char *path = NULL;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        size_t len = strlen(de->d_name);
        if (len > slen && strcmp(de->d_name + len - slen, suffix) == 0) {
            path = str_printf("%s/%s", s->work_dir, de->d_name);
            break;
        }
    }
    closedir(d);
    return path;
}

/* Read the client port from the child's ports file. Returns the port, 0 while
 * the file is absent or incomplete. */
static int read_ports_file(const tidal_server *s, pid_t pid)
{
    char *path = ports_file_path(s, pid);
    if (!path) return 0;
    int port = 0;
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr); /* may be half-written: retry later */
    free(path);
    if (!root) return 0;
    json_t *urls = json_object_get(root, "nats");
    const char *url = json_string_value(json_array_get(urls, 0));
    const char *colon = url ? strrchr(url, ':') : NULL;
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (end != colon + 1 && *end == '\0' && v > 0 && v < 65536) port = (int)v;
    }
    json_decref(root);
    return port;
}

/* Remove the ports file a killed child left behind (a clean stop removes it). */
static void remove_ports_file(const tidal_server *s, pid_t pid)
{
    char *path = ports_file_path(s, pid);
    if (path) unlink(path);
    free(path);
}

typedef enum { PROBE_NO_ANSWER, PROBE_NO_JETSTREAM, PROBE_READY } probe_result;

/* Connect to host:port and read the server's first line, waiting at most
 * timeout_ms. PROBE_READY when it is `INFO {...}` with "jetstream":true. */
static probe_result probe(struct in_addr host, int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return PROBE_NO_ANSWER;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr = host;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return PROBE_NO_ANSWER;
    }
    char line[8192];
    size_t n = 0;
    int64_t deadline = now_ms() + timeout_ms;
    char *nl = NULL;
    while (!nl && n < sizeof line - 1) {
        int64_t left = deadline - now_ms();
        if (left <= 0) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        ssize_t got = read(fd, line + n, sizeof line - 1 - n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        n += (size_t)got;
        line[n] = '\0';
        nl = strchr(line, '\n');
    }
    close(fd);
    if (!nl || strncmp(line, "INFO ", 5) != 0) return PROBE_NO_ANSWER;
    json_error_t jerr;
    json_t *info = json_loadb(line + 5, (size_t)(nl - line - 5), 0, &jerr);
    if (!info) return PROBE_NO_ANSWER;
    probe_result r = json_is_true(json_object_get(info, "jetstream")) ? PROBE_READY : PROBE_NO_JETSTREAM;
    json_decref(info);
    return r;
}

/* Kill and reap the child after a failed start. */
static void reap_hard(tidal_server *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL);
    while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {}
    remove_ports_file(s, s->pid);
    s->pid = -1;
}

/* Wait until the child s->pid has written its ports file and its port answers
 * with INFO and JetStream on, for at most s->start_timeout_ms. Sets s->port and
 * s->url. On failure the child is killed and reaped, and the message names
 * the binary, the port and the log, and quotes the log's tail. */
static tidal_status wait_ready(tidal_server *s, int first_start)
{
    int64_t deadline = now_ms() + s->start_timeout_ms;
    int port = 0;
    probe_result last = PROBE_NO_ANSWER;
    /* A failed first start removes the work dir, and a default log with it. */
    const char *gone = first_start && s->log_is_temp ? " (a temp file, removed)" : "";
    char tail[LOG_TAIL_CHARS], pbuf[32];
    for (;;) {
        int status = 0;
        pid_t w = waitpid(s->pid, &status, WNOHANG);
        int reaped_elsewhere = w < 0 && errno == ECHILD; /* SIGCHLD ignored by the caller */
        if (w == s->pid || reaped_elsewhere) {
            remove_ports_file(s, s->pid);
            s->pid = -1;
            char how[48];
            if (reaped_elsewhere) snprintf(how, sizeof how, "exited");
            else if (WIFEXITED(status)) snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
            else if (WIFSIGNALED(status)) snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
            else snprintf(how, sizeof how, "stopped");
            log_tail(s->log_file, tail, sizeof tail);
            return tidal_fail(TIDAL_ERR_IO, "nats-server %s (%s) %s during start-up; log %s%s ends:\n%s",
                              s->binary, port_phrase(s, pbuf, sizeof pbuf), how, s->log_file, gone, tail);
        }
        if (!port) {
            port = read_ports_file(s, s->pid);
            if (port && s->port && port != s->port) {
                reap_hard(s);
                return tidal_fail(TIDAL_ERR_IO, "nats-server %s: asked for port %d, listens on %d; log %s",
                                  s->binary, s->port, port, s->log_file);
            }
        }
        int64_t left = deadline - now_ms();
        if (port) {
            last = probe(s->host_addr, port, left > 1000 ? 1000 : (left > 0 ? (int)left : 1));
            if (last == PROBE_READY) {
                s->port = port;
                snprintf(s->url, sizeof s->url, "nats://%s:%d", s->host, port);
                return TIDAL_OK;
            }
        }
        if (now_ms() >= deadline) break;
        sleep_ms(POLL_INTERVAL_MS);
    }
    reap_hard(s);
    log_tail(s->log_file, tail, sizeof tail);
    const char *why = !port ? "wrote no ports file"
                      : last == PROBE_NO_JETSTREAM ? "answered without JetStream"
                                                   : "did not answer";
    if (port && !s->port) snprintf(pbuf, sizeof pbuf, "port %d", port);
    else port_phrase(s, pbuf, sizeof pbuf);
    return tidal_fail(TIDAL_ERR_TIMEOUT, "nats-server %s (%s) %s within %d ms; log %s%s ends:\n%s",
                      s->binary, pbuf, why, s->start_timeout_ms, s->log_file, gone, tail);
}

/* ---- clean-up ---- */

static void server_free(tidal_server *s)
{
    if (!s) return;
    if (s->work_dir) fs_remove_tree(s->work_dir, "nats-server");
    free(s->binary);
    free(s->work_dir);
    free(s->store_dir);
    free(s->config_file);
    free(s->log_file);
    for (int i = 0; i < s->n_args; i++) free(s->args[i]);
    free(s);
}

/* ---- public API ---- */

tidal_status tidal_server_start(tidal_server **out, const tidal_server_opts *opts)
{
    static const tidal_server_opts no_opts;
    if (!out) return tidal_fail(TIDAL_ERR_INVALID, "nats-server: start: NULL result pointer");
    *out = NULL;
    if (!opts) opts = &no_opts;
    if (opts->port < 0 || opts->port > 65535)
        return tidal_fail(TIDAL_ERR_INVALID, "nats-server: start: port %d out of range", opts->port);

    tidal_server *s = calloc(1, sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "nats-server: out of memory");
    s->pid = -1;
    s->port = opts->port;
    s->start_timeout_ms = opts->start_timeout_ms > 0 ? opts->start_timeout_ms : DEFAULT_START_TIMEOUT_MS;
    const char *host = opts->host && *opts->host ? opts->host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &s->host_addr) != 1) {
        free(s);
        return tidal_fail(TIDAL_ERR_INVALID, "nats-server: start: host \"%s\" is not an IPv4 address", host);
    }
    snprintf(s->host, sizeof s->host, "%s", host);

    tidal_status st = TIDAL_OK;
    TRY_GOTO(resolve_binary(opts->binary, &s->binary));

    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    s->work_dir = str_printf("%s/tidal-nats-XXXXXX", tmp);
    if (!s->work_dir) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "nats-server: out of memory");
        goto cleanup;
    }
    if (!mkdtemp(s->work_dir)) {
        int e = errno;
        st = tidal_fail(TIDAL_ERR_IO, "nats-server %s: create work dir %s: %s", s->binary, s->work_dir,
                        strerror(e));
        free(s->work_dir);
        s->work_dir = NULL; /* nothing to remove */
        goto cleanup;
    }

    s->store_dir = opts->store_dir ? strdup(opts->store_dir) : str_printf("%s/store", s->work_dir);
    s->log_file = opts->log_file ? strdup(opts->log_file) : str_printf("%s/nats-server.log", s->work_dir);
    s->config_file = opts->config_file ? strdup(opts->config_file)
                                       : str_printf("%s/nats-server.conf", s->work_dir);
    if (!s->store_dir || !s->log_file || !s->config_file) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "nats-server: out of memory");
        goto cleanup;
    }
    s->log_is_temp = !opts->log_file;
    for (int i = 0; opts->args && opts->args[i]; i++) {
        if (i == SERVER_MAX_ARGS) {
            st = tidal_fail(TIDAL_ERR_INVALID, "nats-server: more than %d extra arguments", SERVER_MAX_ARGS);
            goto cleanup;
        }
        if (!(s->args[s->n_args++] = strdup(opts->args[i]))) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "nats-server: out of memory");
            goto cleanup;
        }
    }

    if (!opts->config_file) {
        FILE *f = fopen(s->config_file, "w");
        int ok = f && fputs(DEFAULT_CONFIG, f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        if (!ok) {
            st = tidal_fail(TIDAL_ERR_IO, "nats-server %s: write default config %s: %s", s->binary,
                            s->config_file, strerror(errno));
            goto cleanup;
        }
    } else if (access(opts->config_file, R_OK) != 0) {
        st = tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO,
                        "nats-server %s: config file %s: %s", s->binary, opts->config_file, strerror(errno));
        goto cleanup;
    }

    char port_arg[16];
    snprintf(port_arg, sizeof port_arg, "%d", s->port > 0 ? s->port : -1);
    TRY_GOTO(spawn(s, port_arg));
    TRY_GOTO(wait_ready(s, 1));
    tidal_log(TIDAL_LOG_DEBUG, "nats-server %s pid %ld on %s, store %s, log %s", s->binary, (long)s->pid,
              s->url, s->store_dir, s->log_file);
    *out = s;
    s = NULL;
cleanup:
    server_free(s);
    return st;
}

const char *tidal_server_url(const tidal_server *s) { return s ? s->url : NULL; }

int tidal_server_port(const tidal_server *s) { return s ? s->port : 0; }

int tidal_server_pid(const tidal_server *s) { return s ? (int)s->pid : -1; }

const char *tidal_server_store_dir(const tidal_server *s) { return s ? s->store_dir : NULL; }

tidal_status tidal_server_kill(tidal_server *s)
{
    if (!s) return tidal_fail(TIDAL_ERR_INVALID, "nats-server: kill: NULL server");
    if (s->pid <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "nats-server %s (port %d): kill: not running", s->binary, s->port);
    if (kill(s->pid, SIGKILL) != 0 && errno != ESRCH)
        return tidal_fail(TIDAL_ERR_IO, "nats-server %s (port %d, pid %ld): kill: %s", s->binary, s->port,
                          (long)s->pid, strerror(errno));
    while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {}
    remove_ports_file(s, s->pid);
    s->pid = -1;
    return TIDAL_OK;
}

tidal_status tidal_server_restart(tidal_server *s)
{
    if (!s) return tidal_fail(TIDAL_ERR_INVALID, "nats-server: restart: NULL server");
    if (s->pid > 0) {
        pid_t w = waitpid(s->pid, NULL, WNOHANG);
        if (w == 0)
            return tidal_fail(TIDAL_ERR_INVALID, "nats-server %s (port %d, pid %ld): restart: still running",
                              s->binary, s->port, (long)s->pid);
        remove_ports_file(s, s->pid); /* it died by itself: start it again */
        s->pid = -1;
    }
    char port_arg[16];
    snprintf(port_arg, sizeof port_arg, "%d", s->port);
    TRY_WRAP(spawn(s, port_arg), "restart");
    TRY_WRAP(wait_ready(s, 0), "restart");
    tidal_log(TIDAL_LOG_DEBUG, "nats-server %s restarted, pid %ld on %s", s->binary, (long)s->pid, s->url);
    return TIDAL_OK;
}

void tidal_server_stop(tidal_server *s)
{
    if (!s) return;
    if (s->pid > 0) {
        int exited = 0;
        if (kill(s->pid, SIGTERM) == 0) {
            int64_t deadline = now_ms() + STOP_GRACE_MS;
            while (now_ms() < deadline) {
                pid_t w = waitpid(s->pid, NULL, WNOHANG);
                if (w == s->pid || (w < 0 && errno == ECHILD)) {
                    exited = 1;
                    break;
                }
                sleep_ms(10);
            }
        }
        if (!exited) {
            tidal_log(TIDAL_LOG_WARN, "nats-server %s (port %d, pid %ld) ignored SIGTERM for %d ms: SIGKILL",
                      s->binary, s->port, (long)s->pid, STOP_GRACE_MS);
            kill(s->pid, SIGKILL);
            while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {}
        }
        s->pid = -1;
    }
    server_free(s);
}
