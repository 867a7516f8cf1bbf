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
#include "base/fs.h"
#include "base/spawn.h"


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
    fs_remove_tree(dir, who);
}

extern char **environ;

/* This process's environment as `e` asks: NULL-terminated, the caller frees
 * it with spawn_env_free; NULL when out of memory. */
static char **peer_environment(const bench_peer_env *e)
{
    size_t have = 0;
    while (environ[have]) have++;
    char **env = calloc(have + 2, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < have; i++) {
        const char *v = environ[i];
        if (e->own_kernels && (!strncmp(v, "OPENBLAS_CORETYPE=", 18) || !strncmp(v, "OPENBLAS_L2_SIZE=", 17)))
            continue;
        if (e->passive && !strncmp(v, "OMP_WAIT_POLICY=", 16)) continue;
        if (!(env[k++] = strdup(v))) goto oom;
    }
    if (e->passive && !(env[k++] = strdup("OMP_WAIT_POLICY=PASSIVE"))) goto oom;
    return env;
oom:
    spawn_env_free(env);
    return NULL;
}

tidal_status bench_run_peer(const char *who, const char *program, char *const argv[], const bench_peer_env *e,
                            json_t **out)
{
    *out = NULL;
    char **env = e ? peer_environment(e) : NULL, *text = NULL;
    if (e && !env) return tidal_fail(TIDAL_ERR_NOMEM, "%s: out of memory", who);
    size_t len = 0;
    int code = -1;
    tidal_status st = spawn_capture(program, argv, env, &text, &len, &code);
    spawn_env_free(env);
    TRY_WRAP(st, "%s: the peer: ", who);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r')) text[--len] = '\0';
    const char *last = strrchr(text, '\n');
    last = last ? last + 1 : text;
    json_error_t jerr;
    if (code != 0 || !*last)
        st = tidal_fail(TIDAL_ERR_UNAVAILABLE, "%s: the peer (%s) failed (exit %d); its message is above", who, program,
                        code);
    else if (!(*out = json_loads(last, 0, &jerr)))
        st = tidal_fail(TIDAL_ERR_DECODE, "%s: the peer printed no JSON: %.200s", who, last);
    free(text);
    return st;
}

tidal_status bench_run_python(const char *who, const char *script_text, const char *script_name, const char *dir,
                              const bench_peer_env *e, char *const args[], json_t **out)
{
    *out = NULL;
    char script[600], *argv[16] = {BENCH_PYTHON, script};
    int argc = 2;
    for (int i = 0; args && args[i]; i++) {
        if (argc + 1 >= (int)(sizeof argv / sizeof argv[0]))
            return tidal_fail(TIDAL_ERR_INVALID, "%s: too many peer arguments", who);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    snprintf(script, sizeof script, "%s/%s", dir, script_name);
    TRY_WRAP(fs_write_file(script, script_text, strlen(script_text)), "%s: ", who);
    tidal_status st = bench_run_peer(who, BENCH_PYTHON, argv, e, out);
    if (st == TIDAL_ERR_UNAVAILABLE) {
        char why[512];
        snprintf(why, sizeof why, "%s", tidal_errmsg());
        return tidal_fail(st, "%s: is python3-torch installed? (make deps)", why);
    }
    return st;
}

int bench_peer_envs(const bench_peer_env **out)
{
    static const bench_peer_env all[4] = {
        {false, false, "default"},
        {true, false, "passive"},
        {false, true, "default, OpenBLAS's own kernels"},
        {true, true, "passive, OpenBLAS's own kernels"},
    };
    *out = all;
    return getenv("OPENBLAS_CORETYPE") || getenv("OPENBLAS_L2_SIZE") ? 4 : 2;
}

double bench_median(double *v, int n)
{
    for (int i = 1; i < n; i++) /* insertion sort: a handful of rounds */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            const double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_print_json(json_t *o)
{
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    if (line) printf("%s\n", line);
    free(line);
    json_decref(o);
}

tidal_status bench_model(model **out)
{
    const model_config cfg = {.type = MODEL_QWEN2, .vocab_size = 32768, .hidden_size = 512, .num_layers = 4,
                              .num_heads = 8, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 1536,
                              .max_position_embeddings = 65536, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                              .tie_word_embeddings = true, .qkv_bias = true, .o_bias = false,
                              .bos_token_id = -1, .eos_token_id = -1};
    TRY(model_create(&cfg, out));
    model_init_random(*out, 1, 0.02f, true);
    return TIDAL_OK;
}

void bench_token_ids(int32_t *ids, size_t n, int vocab)
{
    uint64_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)vocab);
    }
}
