/* bench_common.c - what every `tidal bench` needs: a clock, peak memory, a
 * temp dir, the Python peer runner, and the final JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"


double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double bench_peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

double bench_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

double bench_proc_cpu_s(int pid)
{
    if (pid <= 0) return -1;
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    /* "pid (comm) state ..." - comm may hold spaces, so count fields after the last ')';
     * utime and stime are fields 14 and 15, the 12th and 13th after it. */
    const char *p = strrchr(line, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (double)(ut + st) / (double)hz : -1;
}

tidal_status bench_temp_dir(const char *who, const char *prefix, char *buf, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, cap, "%s/%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix);
    if (!mkdtemp(buf)) {
        tidal_status s = tidal_fail(TIDAL_ERR_IO, "%s: cannot make a temp dir %s", who, buf);
        buf[0] = '\0';
        return s;
    }
    return TIDAL_OK;
}

void bench_remove_dir(const char *who, const char *dir)
{
    if (!dir || !dir[0]) return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "%s: could not remove %s\n", who, dir);
}

tidal_status bench_run_python(const char *who, const char *script_text, const char *script_name, const char *dir,
                              const char *env, const char *args, json_t **out)
{
    *out = NULL;
    char script[600], cmd[2048];
    snprintf(script, sizeof script, "%s/%s", dir, script_name);
    FILE *f = fopen(script, "w");
    if (!f || fputs(script_text, f) < 0 || fclose(f) != 0) return tidal_fail(TIDAL_ERR_IO, "%s: cannot write %s", who, script);
    snprintf(cmd, sizeof cmd, "%s %s '%s' %s", env ? env : "", BENCH_PYTHON, script, args);
    FILE *p = popen(cmd, "r");
    if (!p) return tidal_fail(TIDAL_ERR_IO, "%s: cannot run %s", who, BENCH_PYTHON);
    char *line = NULL, *last = NULL;
    size_t cap = 0;
    for (ssize_t n; (n = getline(&line, &cap, p)) > 0;) {
        free(last);
        last = strdup(line);
    }
    free(line);
    int st = pclose(p);
    if (st != 0 || !last) {
        free(last);
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "%s: the PyTorch peer failed (exit %d): is python3-torch installed? (make deps)",
                          who, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    json_error_t jerr;
    *out = json_loads(last, 0, &jerr);
    tidal_status s = *out ? TIDAL_OK : tidal_fail(TIDAL_ERR_DECODE, "%s: peer printed no JSON: %.200s", who, last);
    free(last);
    return s;
}

int bench_peer_envs(const bench_peer_env **out)
{
#define OWN "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
    static const bench_peer_env all[4] = {
        {"", "default"},
        {"OMP_WAIT_POLICY=PASSIVE", "passive"},
        {OWN, "default, OpenBLAS's own kernels"},
        {OWN "OMP_WAIT_POLICY=PASSIVE", "passive, OpenBLAS's own kernels"},
    };
#undef OWN
    *out = all;
    return getenv("OPENBLAS_CORETYPE") || getenv("OPENBLAS_L2_SIZE") ? 4 : 2;
}

void bench_print_json(json_t *o)
{
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    if (line) printf("%s\n", line);
    free(line);
    json_decref(o);
}
