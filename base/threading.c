/* threading.c - a role's thread count and wait policy (see threading.h). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT_S */
#include "base/threading.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Set in the environment just before the re-exec, naming what this module set
 * ("wait", "threads" or both); read and removed by the re-executed process. */
#define MARKER "TIDAL_THREADING_SET"
#define MAX_THREADS 4096

/* CPUs in this process's affinity mask (a taskset, a cpuset); 0 when unknown. */
static int affinity_count(void)
{
    for (int n = 1024; n <= 1 << 16; n *= 2) { /* masks larger than cpu_set_t on huge machines */
        cpu_set_t *set = CPU_ALLOC(n);
        if (!set) return 0;
        const size_t size = CPU_ALLOC_SIZE(n);
        CPU_ZERO_S(size, set);
        const int rc = sched_getaffinity(0, size, set);
        const int count = rc == 0 ? CPU_COUNT_S(size, set) : 0;
        CPU_FREE(set);
        if (rc == 0 || errno != EINVAL) return count;
    }
    return 0;
}

/* The smallest cgroup v2 cpu.max quota on this process's cgroup path, rounded
 * up to whole cores; 0 when there is none (or cgroup v2 is not mounted). */
static int cgroup_quota_cores(void)
{
    char line[4096], path[4400];
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    char cg[4096] = "";
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "0::", 3)) {
            snprintf(cg, sizeof cg, "%s", line + 3);
            cg[strcspn(cg, "\n")] = 0;
        }
    fclose(f);
    if (!cg[0]) return 0;
    int best = 0;
    for (;;) { /* the cgroup, then each parent: any of them may hold the limit */
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/cpu.max", strcmp(cg, "/") ? cg : "");
        FILE *q = fopen(path, "r");
        long long quota = 0, period = 0;
        char first[32] = "";
        if (q && fscanf(q, "%31s %lld", first, &period) == 2 && strcmp(first, "max") && period > 0) {
            quota = atoll(first);
            const int c = quota > 0 ? (int)((quota + period - 1) / period) : 0;
            if (c > 0 && (!best || c < best)) best = c;
        }
        if (q) fclose(q);
        if (!strcmp(cg, "/")) break;
        char *slash = strrchr(cg, '/');
        if (!slash) break;
        if (slash == cg) slash[1] = 0;
        else *slash = 0;
    }
    return best;
}

threading_cores threading_cores_now(void)
{
    threading_cores c = {0};
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    c.online = online > 0 ? (int)online : 1;
    c.cores = c.online;
    const int aff = affinity_count();
    if (aff > 0 && aff < c.cores) c.cores = aff, c.limit = "affinity";
    const int quota = cgroup_quota_cores();
    if (quota > 0 && quota < c.cores) c.cores = quota, c.limit = "cgroup cpu.max";
    if (c.cores < 1) c.cores = 1;
    return c;
}

/* OMP_NUM_THREADS's first number ("4" or "4,2" for nested levels) when it is
 * 1 .. MAX_THREADS; 0 otherwise. */
static int env_threads_value(const char *v)
{
    if (!v) return 0;
    while (*v == ' ') v++;
    char *end = NULL;
    errno = 0;
    const long n = strtol(v, &end, 10);
    while (end && *end == ' ') end++;
    if (errno || end == v || (end && *end && *end != ',') || n < 1 || n > MAX_THREADS) return 0;
    return (int)n;
}

threading_choice threading_choose(const threading_ask *a)
{
    threading_choice c = {.threads = 1};
    const int cores = a->cores.cores > 0 ? a->cores.cores : 1;
    char cores_s[96];
    if (a->cores.limit)
        snprintf(cores_s, sizeof cores_s, "%d core%s (%s; %d online)", cores, cores == 1 ? "" : "s", a->cores.limit,
                 a->cores.online);
    else
        snprintf(cores_s, sizeof cores_s, "%d core%s", cores, cores == 1 ? "" : "s");
    const int env = env_threads_value(a->env_threads);
    if (a->threads > 0) {
        c.threads = a->threads;
        snprintf(c.why, sizeof c.why, "--threads %d; %s", a->threads, cores_s);
    } else if (a->share > 0) {
        c.threads = cores / a->share > 0 ? cores / a->share : 1;
        snprintf(c.why, sizeof c.why, "--share %d: %s / %d", a->share, cores_s, a->share);
    } else if (env) {
        c.threads = env;
        snprintf(c.why, sizeof c.why, "OMP_NUM_THREADS=%s from the environment; %s", a->env_threads, cores_s);
    } else if (a->one_thread) {
        c.threads = 1;
        snprintf(c.why, sizeof c.why, "it runs no model; %s", cores_s);
    } else if (a->beside > 1) {
        c.threads = cores / a->beside > 0 ? cores / a->beside : 1;
        snprintf(c.why, sizeof c.why, "%s / %d workers", cores_s, a->beside);
    } else {
        c.threads = cores;
        snprintf(c.why, sizeof c.why, "all of %s", cores_s);
    }
    if (a->env_threads && !env && a->threads <= 0 && a->share <= 0) {
        const size_t n = strlen(c.why);
        snprintf(c.why + n, sizeof c.why - n, "; OMP_NUM_THREADS=%.32s ignored: not 1 .. %d", a->env_threads,
                 MAX_THREADS);
    }
    return c;
}

const char *threading_user_env_threads(void)
{
    const char *mark = getenv(MARKER);
    if (mark && strstr(mark, "threads")) return NULL; /* the value is ours, from before the re-exec */
    return getenv("OMP_NUM_THREADS");
}

static void describe_wait(threading_policy *p)
{
    const char *wp = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT");
    if (wp && sc) snprintf(p->wait, sizeof p->wait, "OMP_WAIT_POLICY=%.24s, GOMP_SPINCOUNT=%.24s", wp, sc);
    else if (wp) snprintf(p->wait, sizeof p->wait, "OMP_WAIT_POLICY=%.48s", wp);
    else if (sc) snprintf(p->wait, sizeof p->wait, "GOMP_SPINCOUNT=%.48s", sc);
    else snprintf(p->wait, sizeof p->wait, "OMP_WAIT_POLICY unset: idle threads spin");
}

/* This process's argv from /proc/self/cmdline: a NULL-terminated array whose
 * strings live in *buf. NULL when it cannot be read. */
static char **own_argv(char **buf)
{
    *buf = NULL;
    FILE *f = fopen("/proc/self/cmdline", "r");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *b = malloc(cap + 1);
    for (size_t n; b && (n = fread(b + len, 1, cap - len, f)) > 0;) {
        len += n;
        if (len == cap) {
            char *g = realloc(b, cap * 2 + 1);
            if (!g) {
                free(b);
                b = NULL;
                break;
            }
            b = g, cap *= 2;
        }
    }
    fclose(f);
    if (!b || !len) {
        free(b);
        return NULL;
    }
    b[len] = 0;
    size_t argc = 0;
    for (size_t i = 0; i < len; i++) argc += b[i] == 0;
    if (b[len - 1] != 0) argc++; /* no final NUL */
    char **argv = calloc(argc + 1, sizeof *argv);
    if (!argv) {
        free(b);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < len && k < argc; i += strlen(b + i) + 1) argv[k++] = b + i;
    *buf = b;
    return argv;
}

void threading_settle(int threads, threading_policy *p)
{
    memset(p, 0, sizeof *p);
    char nt[16];
    snprintf(nt, sizeof nt, "%d", threads > 0 ? threads : 1);
    const char *mark = getenv(MARKER);
    if (mark) { /* the re-executed process: what was to be set is set; never again */
        p->set_by_tidal = strstr(mark, "wait") != NULL;
        unsetenv(MARKER); /* processes this one starts decide for themselves */
        describe_wait(p);
        return;
    }
    const bool want_wait = !getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT");
    const char *cur = getenv("OMP_NUM_THREADS");
    const bool want_threads = !cur || strcmp(cur, nt);
    if (!want_wait && !want_threads) {
        describe_wait(p);
        return;
    }
    char *buf = NULL, **argv = own_argv(&buf);
    char *saved = cur ? strdup(cur) : NULL;
    if (argv && (!cur || saved)) {
        if (want_threads) setenv("OMP_NUM_THREADS", nt, 1);
        if (want_wait) setenv("OMP_WAIT_POLICY", "passive", 1);
        setenv(MARKER, want_wait && want_threads ? "wait,threads" : want_wait ? "wait" : "threads", 1);
        fflush(stdout);
        fflush(stderr);
        execv("/proc/self/exe", argv);
        snprintf(p->note, sizeof p->note, "cannot re-execute /proc/self/exe (%s)", strerror(errno));
        /* this process's OpenMP runtime keeps what it read at load: say so, and let its children see the same */
        unsetenv(MARKER);
        if (want_wait) unsetenv("OMP_WAIT_POLICY");
        if (want_threads && saved) setenv("OMP_NUM_THREADS", saved, 1);
        else if (want_threads) unsetenv("OMP_NUM_THREADS");
    } else {
        snprintf(p->note, sizeof p->note, "cannot read /proc/self/cmdline to re-execute");
    }
    free(saved);
    free(argv);
    free(buf);
    describe_wait(p);
}
