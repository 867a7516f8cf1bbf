/* bench.h - `tidal bench <what>`: benchmarks that run tidal and a peer in the
 * same invocation and end with one JSON line (figures, `peer`, `ratio`).
 *
 * Each entry point takes the arguments after `tidal bench <what>` (argv[0] is
 * "<what>") and returns the process exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef TIDAL_CLI_BENCH_H
#define TIDAL_CLI_BENCH_H

#include <stdbool.h>
#include <jansson.h>
#include <stddef.h>

#include "base/status.h"
#include "model/model.h"
#include "model/safetensors.h"

/* Debian's python3, where python3-torch lives (the PyTorch peers). */
#define BENCH_PYTHON "/usr/bin/python3"

/* Seconds on the monotonic clock; this process's peak resident set in MB. */
double bench_now_s(void);
double bench_peak_rss_mb(void);

/* CPU seconds (user + system) used so far by this process (all its threads),
 * and by process `pid` read from /proc/PID/stat (-1 when it cannot be read). */
double bench_cpu_s(void);
double bench_proc_cpu_s(int pid);

/* Make $TMPDIR/PREFIX-XXXXXX into buf (buf[0] = 0 on failure); remove it again
 * (a no-op for ""). `who` ("bench train") prefixes messages. */
tidal_status bench_temp_dir(const char *who, const char *prefix, char *buf, size_t cap);
void bench_remove_dir(const char *who, const char *dir);

/* Run a peer: `program` (a name on $PATH or a path) with argv, under `env`
 * (NULL: this process's environment), no shell involved, its stderr the
 * user's; *out is the JSON of its last stdout line (caller decrefs).
 * TIDAL_ERR_UNAVAILABLE when it exits non-zero or prints nothing,
 * TIDAL_ERR_NOT_FOUND when it is not installed. */
typedef struct bench_peer_env bench_peer_env;
tidal_status bench_run_peer(const char *who, const char *program, char *const argv[], const bench_peer_env *env,
                            json_t **out);

/* Write script_text to DIR/script_name and run it with BENCH_PYTHON under
 * `env` (NULL: this process's environment) with argv `args` (NULL-terminated)
 * after the script, no shell involved; *out is the JSON of its last stdout
 * line (caller decrefs). */
tidal_status bench_run_python(const char *who, const char *script_text, const char *script_name, const char *dir,
                              const bench_peer_env *env, char *const args[], json_t **out);

/* The environments a PyTorch peer runs under; each bench keeps the peer's
 * best figure, so a ratio never rests on a handicapped peer.
 *   - OpenMP's wait policy, default (spinning) and passive: Debian's torch
 *     pairs libgomp with the pthread build of OpenBLAS, whose threads and the
 *     spinning OpenMP threads can fight over the cores (4x at times).
 *   - OpenBLAS's kernels: where OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set
 *     (some machines pin the AVX2 kernels, older OpenBLAS builds being wrong
 *     on new CPUs), both policies run again with the two unset, on the
 *     kernels OpenBLAS picks itself (Cooperlake's AVX-512 ones on Zen 5).
 *     Each bench checks the peer's results against tidal's either way. */
struct bench_peer_env {
    bool passive;      /* OMP_WAIT_POLICY=PASSIVE */
    bool own_kernels;  /* OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset */
    const char *label; /* e.g. "passive, OpenBLAS's own kernels" */
};
int bench_peer_envs(const bench_peer_env **out);

/* The median of v[0..n-1] (n >= 1; v is sorted in place). For the ratio of
 * two paths timed back to back in each round: a burst of load on a shared
 * machine skews one round's ratio, not the median. */
double bench_median(double *v, int n);

/* Print o as the bench's last line (compact JSON) and release it. */
void bench_print_json(json_t *o);

/* The benches' model: Qwen2-shaped, ~29 M parameters (vocab 32,768, hidden
 * 512, 4 layers, 8 heads / 2 KV heads, FFN 1,536), created and initialised
 * from seed 1 (std 0.02) into *out. The peers build the same shape. */
tidal_status bench_model(model **out);

/* n token ids below vocab from a fixed LCG (the same ids every run). */
void bench_token_ids(int32_t *ids, size_t n, int vocab);

int bench_bus_main(int argc, char **argv);
int bench_weights_main(int argc, char **argv);

/* `tidal bench weights`, both transports (bench_weights.c parses, and runs
 * bus itself; bench_weights_http.c runs http): the options, the 127 M-parameter
 * model both move, and its safetensors image as weights_publish makes it. */
#define BENCH_WEIGHTS_MAX_WORKERS 8
typedef struct bench_weights_opts {
    const char *url;  /* --bus (bus only; NULL: a private nats-server) */
    int workers;      /* 1 .. BENCH_WEIGHTS_MAX_WORKERS, default 2 */
    int rounds;       /* default 4 */
    int parallel;     /* http: Range requests in flight per worker, 1 .. 64, default 4 */
    bool bf16, json;
} bench_weights_opts;
extern const model_config bench_weights_cfg;
tidal_status bench_weights_image(model *m, st_dtype dtype, void **image, size_t *len);
int bench_weights_http_run(const bench_weights_opts *o); /* bench_weights --transport http */
int bench_train_main(int argc, char **argv);
int bench_generate_main(int argc, char **argv);
int bench_tokenize_main(int argc, char **argv);
int bench_gemm_main(int argc, char **argv);
int bench_env_main(int argc, char **argv);
int bench_async_main(int argc, char **argv);
int bench_serve_main(int argc, char **argv);

#endif
