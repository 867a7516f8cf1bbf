/* roles.c - the role subcommands: `tidal controller`, `tidal trainer`,
 * `tidal rollout`, `tidal status`, and `tidal run`, which starts them all.
 *
 * Each role process takes the job spec (JOB.yaml with --set overrides, or
 * the effective spec RUN/spec.json that `tidal run` writes) except rollout,
 * which needs only the bus and the job's name. SIGTERM / SIGINT set a flag
 * the role loops watch, so every role stops cleanly.
 */
#define _GNU_SOURCE /* prctl, strdup */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rollout/engine_cuda.h"
#include "base/spawn.h"
#include "base/threading.h"
#include "bench/bench_hold.h"
#include "cli/commands.h"
#include "cli/preflight.h"
#include "controller/controller.h"
#include "dashboard/dashboard.h"
#include "job/spec.h"
#include "kernels/cpu/ops.h"
#include "proto/codec.h"
#include "proto/enum_names.h"
#include "base/fs.h"
#include "job/names.h"
#include "bus/server.h"
#include "rollout/worker.h"
#include "trainer/loop.h"

#define MAX_SETS 64

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void catch_signals(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Options every spec-taking role shares. */
typedef struct role_args {
    const char *spec_file, *out, *bus;
    const char *sets[MAX_SETS];
    int n_sets;
    bool resume;
    const char *job, *id, *backend, *device, *user, *password, *token, *creds, *tls_ca, *tls_cert, *tls_key;
    const char *fault; /* rollout, test-only: a lying worker the trainer must quarantine */
    const char *endpoints, *dialect, *weights_dir; /* rollout, backend openai: this worker's servers */
    int metrics_port; /* rollout: /metrics (0: off) */
    int dashboard_port; /* controller, run: the dashboard (0: off, -1: any free port) */
    const char *dashboard_bind;
    double slowdown, tail, token_ms, part_gap_ms;
    int join_timeout_ms;
    int threads, share; /* --threads N, --share K (0: not given); base/threading.h */
    bool json;
    bool dry_run; /* --dry-run: check the arguments (and the spec), say what would start, start nothing */
} role_args;

enum { OPT_SET = 1000, OPT_OUT, OPT_BUS, OPT_RESUME, OPT_JOB, OPT_ID, OPT_BACKEND, OPT_DEVICE, OPT_USER, OPT_PASSWORD,
       OPT_TOKEN, OPT_CREDS, OPT_TLS_CA, OPT_TLS_CERT, OPT_TLS_KEY, OPT_SLOWDOWN, OPT_TAIL, OPT_TOKEN_MS, OPT_PART_GAP_MS, OPT_JOIN, OPT_JSON, OPT_ENDPOINT,
       OPT_FAULT, OPT_THREADS, OPT_SHARE, OPT_DIALECT, OPT_WEIGHTS_DIR, OPT_METRICS_PORT, OPT_DRY_RUN,
       OPT_DASHBOARD, OPT_DASHBOARD_BIND };

static const struct option role_long[] = {
    {"set", required_argument, 0, OPT_SET},         {"out", required_argument, 0, OPT_OUT},
    {"bus", required_argument, 0, OPT_BUS},         {"resume", no_argument, 0, OPT_RESUME},
    {"job", required_argument, 0, OPT_JOB},         {"id", required_argument, 0, OPT_ID},
    {"backend", required_argument, 0, OPT_BACKEND}, {"device", required_argument, 0, OPT_DEVICE},
    {"endpoint", required_argument, 0, OPT_ENDPOINT}, {"endpoints", required_argument, 0, OPT_ENDPOINT},
    {"dialect", required_argument, 0, OPT_DIALECT}, {"weights-dir", required_argument, 0, OPT_WEIGHTS_DIR},
    {"metrics-port", required_argument, 0, OPT_METRICS_PORT},
    {"dashboard", required_argument, 0, OPT_DASHBOARD}, {"dashboard-bind", required_argument, 0, OPT_DASHBOARD_BIND},
    {"user", required_argument, 0, OPT_USER},
    {"password", required_argument, 0, OPT_PASSWORD}, {"token", required_argument, 0, OPT_TOKEN},
    {"creds", required_argument, 0, OPT_CREDS},     {"tls-ca", required_argument, 0, OPT_TLS_CA},
    {"tls-cert", required_argument, 0, OPT_TLS_CERT}, {"tls-key", required_argument, 0, OPT_TLS_KEY},
    {"slowdown", required_argument, 0, OPT_SLOWDOWN}, {"tail", required_argument, 0, OPT_TAIL},
    {"token-ms", required_argument, 0, OPT_TOKEN_MS}, {"part-gap-ms", required_argument, 0, OPT_PART_GAP_MS},
    {"join-timeout-ms", required_argument, 0, OPT_JOIN}, {"fault", required_argument, 0, OPT_FAULT},
    {"threads", required_argument, 0, OPT_THREADS}, {"share", required_argument, 0, OPT_SHARE},
    {"json", no_argument, 0, OPT_JSON},             {"dry-run", no_argument, 0, OPT_DRY_RUN},
    {0, 0, 0, 0}};

/* --threads / --share: an integer 1 .. 4096, or exit 2 naming the flag. */
static bool parse_count(const char *role, const char *flag, const char *text, int *out)
{
    char *end = NULL;
    errno = 0;
    const long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > 4096) {
        fprintf(stderr, "tidal %s: --%s %s: want an integer from 1 to 4096\n", role, flag, text);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Parse argv (argv[0] = the subcommand). Returns 0, or 2 after printing why. */
static int parse_role_args(const char *role, int argc, char **argv, bool wants_spec, role_args *a)
{
    memset(a, 0, sizeof *a);
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "", role_long, NULL)) != -1;) {
        switch (c) {
        case OPT_SET:
            if (a->n_sets == MAX_SETS) {
                fprintf(stderr, "tidal %s: at most %d --set\n", role, MAX_SETS);
                return 2;
            }
            a->sets[a->n_sets++] = optarg;
            break;
        case OPT_OUT: a->out = optarg; break;
        case OPT_BUS: a->bus = optarg; break;
        case OPT_RESUME: a->resume = true; break;
        case OPT_JOB: a->job = optarg; break;
        case OPT_ID: a->id = optarg; break;
        case OPT_BACKEND: a->backend = optarg; break;
        case OPT_DEVICE: a->device = optarg; break;
        case OPT_ENDPOINT: a->endpoints = optarg; break;
        case OPT_DIALECT: a->dialect = optarg; break;
        case OPT_WEIGHTS_DIR: a->weights_dir = optarg; break;
        case OPT_METRICS_PORT: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < -1 || v > 65535) {
                fprintf(stderr, "tidal %s: --metrics-port %s: want a port, 0 (off) or -1 (any free port)\n", role, optarg);
                return 2;
            }
            a->metrics_port = (int)v;
            break;
        }
        case OPT_DASHBOARD: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < -1 || v > 65535 || v == 0) {
                fprintf(stderr, "tidal %s: --dashboard %s: want a port 1 .. 65535, or -1 (any free port)\n", role, optarg);
                return 2;
            }
            a->dashboard_port = (int)v;
            break;
        }
        case OPT_DASHBOARD_BIND: a->dashboard_bind = optarg; break;
        case OPT_USER: a->user = optarg; break;
        case OPT_PASSWORD: a->password = optarg; break;
        case OPT_TOKEN: a->token = optarg; break;
        case OPT_CREDS: a->creds = optarg; break;
        case OPT_TLS_CA: a->tls_ca = optarg; break;
        case OPT_TLS_CERT: a->tls_cert = optarg; break;
        case OPT_TLS_KEY: a->tls_key = optarg; break;
        case OPT_SLOWDOWN: a->slowdown = atof(optarg); break;
        case OPT_TAIL: a->tail = atof(optarg); break;
        case OPT_TOKEN_MS: a->token_ms = atof(optarg); break;
        case OPT_PART_GAP_MS: a->part_gap_ms = atof(optarg); break;
        case OPT_JOIN: a->join_timeout_ms = atoi(optarg); break;
        case OPT_JSON: a->json = true; break;
        case OPT_DRY_RUN: a->dry_run = true; break;
        case OPT_FAULT: a->fault = optarg; break;
        case OPT_THREADS:
            if (!parse_count(role, "threads", optarg, &a->threads)) return 2;
            break;
        case OPT_SHARE:
            if (!parse_count(role, "share", optarg, &a->share)) return 2;
            break;
        default:
            fprintf(stderr, "tidal %s: unknown option '%s' (see tidal %s --help)\n", role, argv[optind - 1], role);
            return 2;
        }
    }
    if (wants_spec) {
        if (optind < argc) a->spec_file = argv[optind++];
        if (!a->spec_file && !(a->resume && a->out)) {
            fprintf(stderr, "tidal %s: which job? (JOB.yaml)\n", role);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tidal %s: unexpected argument '%s'\n", role, argv[optind]);
        return 2;
    }
    if ((a->threads || a->share) && strcmp(role, "controller") && strcmp(role, "trainer") && strcmp(role, "rollout")) {
        fprintf(stderr, "tidal %s: --threads and --share are for tidal controller, trainer and rollout\n", role);
        return 2;
    }
    if ((a->dashboard_port || a->dashboard_bind) && strcmp(role, "controller") && strcmp(role, "run")) {
        fprintf(stderr, "tidal %s: --dashboard and --dashboard-bind are for tidal run and tidal controller "
                        "(tidal view RUN serves a finished run)\n", role);
        return 2;
    }
    if (a->dashboard_bind && !a->dashboard_port) {
        fprintf(stderr, "tidal %s: --dashboard-bind without --dashboard PORT\n", role);
        return 2;
    }
    if (a->dry_run && strcmp(role, "controller") && strcmp(role, "trainer") && strcmp(role, "rollout")) {
        fprintf(stderr, "tidal %s: --dry-run is for tidal controller, trainer and rollout (and tidal env serve)\n", role);
        return 2;
    }
    return 0;
}

/* The threading a role runs with (base/threading.h), for one that does the
 * math itself: the count from its flags and the cores it may use, and
 * OMP_WAIT_POLICY=passive unless the user chose - applied by re-executing
 * this process once when the environment must change, so call it before any
 * thread starts or the bus is connected. Logs one line saying what it chose
 * and why. */
static void role_threading(const char *role, const role_args *a, bool one_thread)
{
    const threading_ask ask = {.threads = a->threads, .share = a->share, .one_thread = one_thread,
                               .env_threads = threading_user_env_threads(), .cores = threading_cores_now()};
    const threading_choice c = threading_choose(&ask);
    threading_policy p;
    threading_settle(c.threads, &p); /* may re-execute this process: nothing after it runs twice */
    cpu_set_threads(c.threads);     /* OpenBLAS too, when OPENBLAS_NUM_THREADS said otherwise */
    tidal_log(TIDAL_LOG_INFO, "%s: %d thread%s (%s; %s%s)", role, c.threads, c.threads == 1 ? "" : "s", c.why, p.wait,
              p.set_by_tidal ? ", set by tidal" : "");
    if (p.note[0])
        tidal_log(TIDAL_LOG_WARN, "%s: %s; set OMP_WAIT_POLICY=passive and OMP_NUM_THREADS=%d before starting it",
                  role, p.note, c.threads);
}

/* JOB.yaml (with --set) or an effective spec.json. */
static tidal_status load_spec(const role_args *a, job_spec *s)
{
    const char *file = a->spec_file;
    const size_t n = strlen(file);
    if (n > 5 && !strcmp(file + n - 5, ".json")) {
        json_error_t e;
        json_t *j = json_load_file(file, 0, &e);
        if (!j) return tidal_fail(TIDAL_ERR_INVALID, "%s:%d: %s", file, e.line, e.text);
        tidal_status st = spec_from_json(j, file, s);
        json_decref(j);
        if (st != TIDAL_OK || !a->n_sets) return st;
        /* --set over a JSON spec: not supported (the YAML is the source); refuse rather than ignore */
        return tidal_fail(TIDAL_ERR_INVALID, "%s: --set applies to a YAML spec, not to an effective spec.json", file);
    }
    return spec_load(file, a->sets, a->n_sets, s);
}

static bus_opts bus_from(const role_args *a, const job_spec *s)
{
    bus_opts o = {.urls = a->bus ? a->bus : (s && s->bus.url[0] ? s->bus.url : getenv("TIDAL_BUS"))};
#define PICK(field, flag, spec_field) o.field = a->flag ? a->flag : (s && s->bus.spec_field[0] ? s->bus.spec_field : NULL)
    PICK(user, user, user);
    PICK(password, password, password);
    PICK(token, token, token);
    PICK(creds_file, creds, creds);
    PICK(tls_ca, tls_ca, tls_ca);
    PICK(tls_cert, tls_cert, tls_cert);
    PICK(tls_key, tls_key, tls_key);
#undef PICK
    o.replicas = s ? s->bus.replicas : 0;
    return o;
}

static int exit_for(tidal_status st) { return st == TIDAL_OK ? 0 : st == TIDAL_ERR_INVALID ? 2 : 1; }

/* tidal run: runs/JOB-YYYYmmdd-HHMMSS, a fresh directory per run. A role
 * started by hand: runs/JOB, so a controller and a trainer of one job agree. */
static void default_run_dir(const job_spec *s, bool stamped, char *out, size_t n)
{
    if (!stamped) {
        snprintf(out, n, "runs/%s", s->job.name);
        return;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    snprintf(out, n, "runs/%s-%s", s->job.name, stamp);
}

/* ---------------------------------------------------------------- --dry-run */

/* --dry-run: every file a role would open at start that came from its flags
 * (credentials, TLS) must be readable; their contents are the bus's to judge
 * when it connects. Prints why and returns false when one is not. */
static bool dry_run_files(const char *role, const bus_opts *bo)
{
    const char *flag[] = {"creds", "tls-ca", "tls-cert", "tls-key"};
    const char *file[] = {bo->creds_file, bo->tls_ca, bo->tls_cert, bo->tls_key};
    for (int i = 0; i < 4; i++)
        if (file[i] && access(file[i], R_OK) != 0) {
            fprintf(stderr, "tidal %s: --%s %s: %s\n", role, flag[i], file[i], strerror(errno));
            return false;
        }
    return true;
}

/* --dry-run's report on stdout: what the role would start with, one
 * "key: value" line each (threads as the role would choose them here). */
static void dry_run_print(const char *role, const role_args *a, const bus_opts *bo, bool one_thread)
{
    const threading_ask ask = {.threads = a->threads, .share = a->share, .one_thread = one_thread,
                               .env_threads = threading_user_env_threads(), .cores = threading_cores_now()};
    const threading_choice c = threading_choose(&ask);
    printf("tidal %s --dry-run: the arguments parse; it would start with\n", role);
    printf("  bus: %s\n", bo->urls);
    printf("  credentials: %s\n", bo->creds_file ? bo->creds_file
                               : bo->user      ? "user and password"
                               : bo->token     ? "token"
                                               : "none");
    if (bo->tls_ca || bo->tls_cert) printf("  tls: ca %s, cert %s\n", bo->tls_ca ? bo->tls_ca : "-", bo->tls_cert ? bo->tls_cert : "-");
    printf("  threads: %d (%s)\n", c.threads, c.why);
}

/* ---------------------------------------------------------------- controller, trainer */

/* The dashboard of --dashboard PORT over run_dir, workers from the bus; its
 * token from $TIDAL_DASHBOARD_TOKEN (never a flag, which ps shows). Logs its
 * URL and writes it to RUN/dashboard.url (port -1: which port it took). */
static tidal_status start_dashboard(const role_args *a, const job_spec *s, const bus_opts *bo, const char *run_dir,
                                    dashboard **out)
{
    const char *token = getenv("TIDAL_DASHBOARD_TOKEN");
    const dashboard_opts o = {.run_dir = run_dir, .bind = a->dashboard_bind, .port = a->dashboard_port > 0 ? a->dashboard_port : 0,
                              .token = token, .bus = bo, .job = s->job.name};
    TRY(dashboard_start(&o, out));
    char url[512], path[4200];
    snprintf(url, sizeof url, "http://%s:%d/%s\n", a->dashboard_bind ? a->dashboard_bind : "127.0.0.1",
             dashboard_port(*out), token && *token ? "?token=..." : "");
    tidal_log(TIDAL_LOG_INFO, "controller: dashboard on %.*s", (int)strlen(url) - 1, url);
    TRY(fs_mkdirs(run_dir));
    snprintf(path, sizeof path, "%s/dashboard.url", run_dir);
    return fs_write_file(path, url, strlen(url));
}

static int spec_role(const char *role, int argc, char **argv)
{
    role_args a;
    int rc = parse_role_args(role, argc, argv, true, &a);
    if (rc) return rc;
    tidal_log_set_role(role);
    job_spec s;
    char path[4200];
    if (!a.spec_file) { /* --resume with --out only: the run's own spec */
        snprintf(path, sizeof path, "%s/spec.json", a.out);
        a.spec_file = path;
    }
    tidal_status st = load_spec(&a, &s);
    if (st != TIDAL_OK) { /* a spec that cannot be read or is wrong: a usage error */
        fprintf(stderr, "tidal %s: %s\n", role, tidal_errmsg());
        return 2;
    }
    char run_dir[4096];
    if (a.out) snprintf(run_dir, sizeof run_dir, "%s", a.out);
    else default_run_dir(&s, false, run_dir, sizeof run_dir);
    bus_opts bo = bus_from(&a, &s);
    if (!bo.urls || !*bo.urls) {
        fprintf(stderr, "tidal %s: no bus: give --bus URL or bus.url in the spec (tidal run starts one)\n", role);
        spec_release(&s);
        return 2;
    }
    if (a.dry_run) { /* the spec as tidal run checks it before it starts anything; nothing is started */
        bool ok = run_preflight(&s, a.spec_file) == TIDAL_OK &&
                  (strcmp(role, "trainer") != 0 || run_preflight_device(&s, a.spec_file) == TIDAL_OK);
        if (!ok) fprintf(stderr, "tidal %s: %s\n", role, tidal_errmsg());
        ok = ok && dry_run_files(role, &bo);
        if (ok) {
            const bool ctl = !strcmp(role, "controller");
            const int port = ctl ? s.metrics.controller_port : s.metrics.trainer_port;
            dry_run_print(role, &a, &bo, ctl);
            printf("  job: %s (spec %s)\n", s.job.name, a.spec_file);
            printf("  env: %s (%s)\n", s.env.name, s.env.remote ? "served on the bus: tidal env serve" : "in each worker");
            printf("  run directory: %s%s\n", run_dir, a.resume ? " (--resume: from its newest checkpoint)" : "");
            if (port) printf("  metrics: http://%s:%d/metrics%s\n", s.metrics.bind, port > 0 ? port : 0, port < 0 ? " (any free port)" : "");
            else printf("  metrics: off\n");
        }
        spec_release(&s);
        return ok ? 0 : 2;
    }
    role_threading(role, &a, !strcmp(role, "controller"));
    catch_signals();
    if (!strcmp(role, "controller")) {
        dashboard *dash = NULL;
        if (a.dashboard_port) { /* the run's dashboard beside the controller (docs/dashboard.md) */
            st = start_dashboard(&a, &s, &bo, run_dir, &dash);
            if (st != TIDAL_OK) {
                fprintf(stderr, "tidal %s: --dashboard: %s\n", role, tidal_errmsg());
                spec_release(&s);
                return 2;
            }
        }
        controller_opts co = {.spec = &s, .bus = bo, .run_dir = run_dir, .stop = &g_stop};
        st = controller_run(&co);
        char err[1024] = ""; /* the controller's failure, before stopping the dashboard can overwrite it */
        if (st != TIDAL_OK) snprintf(err, sizeof err, "%s", tidal_errmsg());
        dashboard_stop(dash);
        if (st != TIDAL_OK) tidal_fail(st, "%s", err);
    } else {
        trainer_opts to = {.spec = &s, .bus = bo, .run_dir = run_dir, .resume = a.resume, .stop = &g_stop};
        st = trainer_run(&to);
    }
    if (st != TIDAL_OK) fprintf(stderr, "tidal %s: %s\n", role, tidal_errmsg());
    spec_release(&s);
    return exit_for(st);
}

int controller_main(int argc, char **argv) { return spec_role("controller", argc, argv); }
int trainer_main(int argc, char **argv) { return spec_role("trainer", argc, argv); }

/* ---------------------------------------------------------------- rollout */

int rollout_main(int argc, char **argv)
{
    role_args a;
    int rc = parse_role_args("rollout", argc, argv, false, &a);
    if (rc) return rc;
    rollout_fault fault = ROLLOUT_FAULT_NONE; /* --fault: test-only, not in the help */
    if (a.fault && !rollout_fault_parse(a.fault, &fault)) {
        fprintf(stderr, "tidal rollout: --fault %s: not logprob-noise, temperature or stale-weights\n", a.fault);
        return 2;
    }
    if (!a.job) {
        fprintf(stderr, "tidal rollout: --job NAME is required\n");
        return 2;
    }
    if (a.backend && strcmp(a.backend, "builtin") && strcmp(a.backend, "openai")) {
        fprintf(stderr, "tidal rollout: --backend %s: want builtin or openai (with --endpoints)\n", a.backend);
        return 2;
    }
    /* --device cpu-ref: test-only, not in the help (the GPU engine's logic on the CPU references) */
    if (a.device && strcmp(a.device, "cpu") && strcmp(a.device, "cuda") && strcmp(a.device, "auto") &&
        strcmp(a.device, "cpu-ref")) {
        fprintf(stderr, "tidal rollout: --device %s: want cpu, cuda or auto (where the built-in engine runs)\n", a.device);
        return 2;
    }
    if (a.dialect && strcmp(a.dialect, "vllm") && strcmp(a.dialect, "sglang")) {
        fprintf(stderr, "tidal rollout: --dialect %s: want vllm or sglang\n", a.dialect);
        return 2;
    }
    if (a.device && !strcmp(a.device, "cuda") && !a.dry_run) { /* refused before the bus: no GPU, no worker */
        engine_device d;
        if (engine_device_resolve(a.device, &d, NULL, 0) != TIDAL_OK) {
            fprintf(stderr, "tidal rollout: %s\n", tidal_errmsg());
            return 1;
        }
    }
    bus_opts bo = bus_from(&a, NULL);
    if (!bo.urls || !*bo.urls) {
        fprintf(stderr, "tidal rollout: --bus URL (or $TIDAL_BUS) is required\n");
        return 2;
    }
    if (a.dry_run) { /* the spec comes from the bus: only the flags are checked */
        if (!dry_run_files("rollout", &bo)) return 2;
        dry_run_print("rollout", &a, &bo, false);
        printf("  job: %s (spec and weights from the bus)\n", a.job);
        printf("  worker id: %s\n", a.id ? a.id : "HOST-PID");
        printf("  backend: %s\n", a.backend ? a.backend : "the spec's rollout.backend");
        printf("  device: %s\n", a.device ? a.device : "the spec's rollout.device");
        if (a.metrics_port) printf("  metrics: port %d on the spec's metrics.bind%s\n", a.metrics_port > 0 ? a.metrics_port : 0, a.metrics_port < 0 ? " (any free port)" : "");
        else printf("  metrics: off\n");
        return 0;
    }
    tidal_log_set_role("rollout");
    role_threading("rollout", &a, false);
    catch_signals();
    /* --slowdown, --tail, --token-ms: a benchmark's simulated hardware, through the worker's bench hook */
    const bench_hold_knobs knobs = {.slowdown = a.slowdown, .tail = a.tail, .token_ms = a.token_ms,
                                    .part_gap_ms = a.part_gap_ms};
    rollout_bench_hook hook;
    worker_opts wo = {.bus = bo, .job = a.job, .id = a.id, .join_timeout_ms = a.join_timeout_ms,
                      .bench = bench_hold_hook(&knobs, &hook), .fault = fault, .stop = &g_stop,
                      .backend = a.backend, .endpoints = a.endpoints, .dialect = a.dialect,
                      .weights_dir = a.weights_dir, .endpoint_token = getenv("TIDAL_ENDPOINT_TOKEN"),
                      .metrics_port = a.metrics_port, .device = a.device};
    tidal_status st = worker_run(&wo);
    if (st != TIDAL_OK) fprintf(stderr, "tidal rollout: %s\n", tidal_errmsg());
    return exit_for(st);
}

/* ---------------------------------------------------------------- status */

static json_t *kv_json(bus_kv *kv, const char *key)
{
    void *v = NULL;
    size_t n = 0;
    json_t *j = NULL;
    if (bus_kv_get(kv, key, &v, &n, NULL) == TIDAL_OK) {
        j = json_loadb(v, n, 0, NULL);
        if (!j) j = json_stringn(v, n);
    }
    free(v);
    return j ? j : json_null();
}

int status_main(int argc, char **argv)
{
    role_args a;
    int rc = parse_role_args("status", argc, argv, false, &a);
    if (rc) return rc;
    bus_opts bo = bus_from(&a, NULL);
    if (!a.job || !bo.urls || !*bo.urls) {
        fprintf(stderr, "tidal status: --bus URL and --job NAME are required\n");
        return 2;
    }
    job_names n;
    tidal_bus *b = NULL;
    bus_kv *kv = NULL, *wkv = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(job_names_init(&n, a.job));
    bo.name = "status";
    TRY_GOTO(bus_connect(&b, &bo));
    TRY_GOTO(bus_kv_open(b, n.kv_bucket, &kv));
    /* what follows is shown when it can be read, left out when it cannot */
    json_t *o = json_object(), *workers = json_array();
    json_object_set_new(o, "job", json_string(a.job));
    json_object_set_new(o, "state", kv_json(kv, JOB_KEY_STATE));
    json_object_set_new(o, "trainer", kv_json(kv, JOB_KEY_GROUPS));
    json_object_set_new(o, "worker_check", kv_json(kv, JOB_KEY_WORKER_CHECK)); /* mismatch, quarantined with why */
    json_object_set_new(o, "cursor", kv_json(kv, JOB_KEY_CURSOR));
    json_object_set_new(o, "weights_public_key", kv_json(kv, JOB_KEY_PUBKEY)); /* what workers verify with */
    uint64_t pending = 0, ack_pending = 0, traj = 0;
    if (bus_consumer_state(b, n.prompts_stream, JOB_CONSUMER_ROLLOUT, &pending, &ack_pending) == TIDAL_OK) {
        json_object_set_new(o, "prompts_waiting", json_integer((json_int_t)pending));
        json_object_set_new(o, "prompts_in_generation", json_integer((json_int_t)ack_pending));
    }
    if (bus_stream_state(b, n.traj_stream, &traj, NULL) == TIDAL_OK)
        json_object_set_new(o, "trajectory_messages_unacked", json_integer((json_int_t)traj)); /* groups or parts of one */
    if (bus_kv_open(b, n.workers_bucket, &wkv) == TIDAL_OK) {
        bus_kv_watcher *w = NULL;
        bus_kv_event ev;
        if (bus_kv_watch(wkv, NULL, &w) == TIDAL_OK) {
            while (bus_kv_watch_next(w, 500, &ev) == TIDAL_OK && ev.kind != BUS_KV_INITIAL_DONE) {
                Tidal__V1__WorkerStatus *s = NULL;
                if (ev.kind == BUS_KV_PUT && codec_decode_worker_status(ev.value, ev.len, &s) == TIDAL_OK) {
                    json_array_append_new(
                        workers, json_pack("{s:s, s:s, s:s, s:I, s:f, s:I, s:I, s:I}", "id", s->worker_id, "host", s->host,
                                           "state", proto_worker_state_name(s->state), /* a name: docs/protocol.md */
                                           "weights_version", (json_int_t)s->weights_version,
                                           "tokens_per_s", s->tokens_per_s, "trajectories",
                                           (json_int_t)s->trajectories, "weights_refused",
                                           (json_int_t)s->weights_refused, "updated_unix_ms",
                                           (json_int_t)s->updated_unix_ms));
                    tidal__v1__worker_status__free_unpacked(s, NULL);
                }
                bus_kv_event_clear(&ev);
            }
            bus_kv_watch_stop(w);
        }
        bus_kv_close(wkv);
    }
    json_object_set_new(o, "workers", workers);
    char *text = json_dumps(o, a.json ? JSON_COMPACT : JSON_INDENT(2));
    printf("%s\n", text ? text : "{}");
    free(text);
    json_decref(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal status: job %s: %s\n", a.job, tidal_errmsg());
    bus_kv_close(kv);
    bus_close(b);
    return exit_for(st);
}

/* ---------------------------------------------------------------- run */

typedef struct child {
    const char *role;
    char name[64];
    char id[64]; /* a rollout worker's --id; empty for the controller and the trainer */
    pid_t pid;
    int status;
    bool exited;
    int64_t exit_unix_ms; /* when tidal run saw it exit */
} child;

/* A role of `tidal run`, logging to RUN/logs/NAME.log. */
static pid_t spawn(const char *run_dir, const char *log_name, char *const argv[], int threads)
{
    char log[4200];
    snprintf(log, sizeof log, "%s/logs/%s.log", run_dir, log_name);
    pid_t pid = -1;
    if (spawn_self(log, argv, threads, &pid) != TIDAL_OK) fprintf(stderr, "tidal run: %s\n", tidal_errmsg());
    return pid;
}

/* The last line of a role's log: why it failed, as the user wants to see it first. */
static void print_last_line(const char *run_dir, const char *name)
{
    char path[4200], line[2048], last[2048] = "";
    snprintf(path, sizeof path, "%s/logs/%s.log", run_dir, name);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (line[0] != '\n') snprintf(last, sizeof last, "%s", line);
    if (f) fclose(f);
    if (last[0]) fprintf(stderr, "  %s", last);
}

/* How a child ended, for people: "exit 3", "killed by signal 9". */
static void describe_exit(int status, char *out, size_t n)
{
    if (WIFSIGNALED(status)) snprintf(out, n, "killed by signal %d", WTERMSIG(status));
    else if (WIFEXITED(status)) snprintf(out, n, "exit %d", WEXITSTATUS(status));
    else snprintf(out, n, "status %d", status);
}

/* Rollout workers are elastic: one that dies is lost, not a failure of the
 * run. RUN/summary.json (the controller's, written when the job ended) gets
 * "workers_lost": [{id, name, exit_code, signal, unix_ms}] for each of
 * tidal run's own workers that ended other than with exit 0 - tidal run is the
 * one process that saw them exit. Without a summary (the controller failed
 * before writing one) there is nothing to add to; a failure here is logged,
 * the run's exit status is the job's. */
static void add_workers_lost(const char *run_dir, const child *kids, int n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/summary.json", run_dir);
    json_t *o = json_load_file(path, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return;
    }
    json_t *lost = json_array();
    for (int i = 0; i < n; i++) {
        const child *k = &kids[i];
        if (strcmp(k->role, "rollout") || !k->exited || (WIFEXITED(k->status) && WEXITSTATUS(k->status) == 0))
            continue;
        json_array_append_new(
            lost, json_pack("{s:s, s:s, s:o, s:o, s:I}", "id", k->id, "name", k->name, "exit_code",
                            WIFEXITED(k->status) ? json_integer(WEXITSTATUS(k->status)) : json_null(), "signal",
                            WIFSIGNALED(k->status) ? json_integer(WTERMSIG(k->status)) : json_null(), "unix_ms",
                            (json_int_t)k->exit_unix_ms));
    }
    json_object_set_new(o, "workers_lost", lost);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!text || fs_write_file(path, text, strlen(text)) != TIDAL_OK)
        fprintf(stderr, "tidal run: cannot add workers_lost to %s: %s\n", path, text ? tidal_errmsg() : "out of memory");
    free(text);
}

/* The controller's alert (a failing env, ...) on a line of its own: when it
 * appears, then every 10 s while it lasts (its text, with counts, changes each
 * second), and once when it ends. */
static void progress_alert(const char *alert, bool tty, double now)
{
    static bool on;
    static double last_s;
    if (*alert && on && now - last_s < 10) return;
    if (!*alert && !on) return;
    if (*alert) fprintf(stderr, "%stidal run: %s\n", tty ? "\r" : "", alert);
    else fprintf(stderr, "%stidal run: the alert is over (the controller's log has the details)\n", tty ? "\r" : "");
    on = *alert != '\0';
    last_s = now;
}

static void progress_line(tidal_bus *b, bus_sub *sub, bool tty, int lost, double *last_print)
{
    bus_msg *m = NULL;
    Tidal__V1__Metric *mt = NULL;
    while (bus_next(sub, 1, &m) == TIDAL_OK) {
        if (mt) tidal__v1__metric__free_unpacked(mt, NULL), mt = NULL;
        if (codec_decode_metric(bus_msg_data(m), (size_t)bus_msg_len(m), &mt) != TIDAL_OK) mt = NULL;
        bus_msg_destroy(m);
    }
    (void)b;
    if (!mt) return;
    double v[8] = {0};
    const char *keys[8] = {"version", "steps", "reward_mean", "staleness_mean", "samples_per_s", "workers", "eta_s", 0};
    for (size_t i = 0; i < mt->n_values; i++)
        for (int k = 0; keys[k]; k++)
            if (!strcmp(mt->values[i]->key, keys[k])) v[k] = mt->values[i]->value;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const double now = ts.tv_sec + ts.tv_nsec / 1e9;
    progress_alert(mt->alert ? mt->alert : "", tty, now);
    if (tty || now - *last_print >= 10) {
        char eta[32] = "-";
        if (v[6] >= 0) snprintf(eta, sizeof eta, "%.0fs", v[6]);
        char lost_s[32] = "";
        if (lost > 0) snprintf(lost_s, sizeof lost_s, " (%d lost)", lost);
        char reward[32] = "-"; /* no step trained yet: no reward (never a 0 that was not earned) */
        if (isfinite(v[2])) snprintf(reward, sizeof reward, "%.3f", v[2]);
        fprintf(stderr, "%sstep %.0f/%.0f  version %.0f  reward %s  staleness %.2f  samples/s %.1f  workers %.0f%s  ETA %s%s",
                tty ? "\r" : "", v[0], v[1], v[0], reward, v[3], v[4], v[5], lost_s, eta,
                tty ? "   " : "\n");
        fflush(stderr);
        *last_print = now;
    }
    tidal__v1__metric__free_unpacked(mt, NULL);
}

/* tidal run: a private nats-server (unless the spec names a bus), then the
 * controller, the trainer and rollout.workers workers as children, until the
 * controller ends. Exit 0 when the job completed - rollout workers are
 * elastic, one that dies is lost (summary.json workers_lost), not a failure;
 * 1 when the controller or the trainer failed; 2 for a usage error. */
int run_main(int argc, char **argv)
{
    role_args a;
    int rc = parse_role_args("run", argc, argv, true, &a);
    if (rc) return rc;
    job_spec s;
    char run_dir[4096], path[4300];
    const bool resume = a.resume;
    if (resume && !a.out && a.spec_file) { /* tidal run --resume RUN */
        a.out = a.spec_file;
        a.spec_file = NULL;
    }
    if (!a.spec_file) {
        snprintf(path, sizeof path, "%s/spec.json", a.out);
        a.spec_file = path;
    }
    tidal_status st = load_spec(&a, &s);
    if (st == TIDAL_OK) st = run_preflight(&s, a.spec_file); /* before a server or a role starts */
    if (st == TIDAL_OK) st = run_preflight_device(&s, a.spec_file);
    if (st == TIDAL_OK && s.rollout.workers > 0) st = run_preflight_rollout_device(&s, a.spec_file);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal run: %s\n", tidal_errmsg());
        spec_release(&s);
        return 2;
    }
    if (a.out) snprintf(run_dir, sizeof run_dir, "%s", a.out);
    else default_run_dir(&s, true, run_dir, sizeof run_dir);
    snprintf(path, sizeof path, "%s/spec.json", run_dir);
    struct stat held;
    if (!resume && stat(path, &held) == 0) { /* its bus state (cursor, streams) would mix with the new run's */
        fprintf(stderr, "tidal run: %s holds a run already: `tidal run --resume %s` continues it, or give another --out\n",
                run_dir, run_dir);
        spec_release(&s);
        return 2;
    }
    rc = 1;
    tidal_server *srv = NULL;
    child *kids = NULL;
    tidal_bus *b = NULL;
    bus_sub *sub = NULL;
    char *text = NULL;
    char logs[4200];
    snprintf(logs, sizeof logs, "%s/logs", run_dir);
    TRY_GOTO(fs_mkdirs(logs));
    /* the effective spec the children read */
    json_t *sj = spec_to_json(&s);
    text = sj ? json_dumps(sj, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(sj);
    char spec_path[4200];
    snprintf(spec_path, sizeof spec_path, "%s/spec.json", run_dir);
    if (!text) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    TRY_GOTO(fs_write_file(spec_path, text, strlen(text)));
    char url[SPEC_STR + 64];
    if (!s.bus.url[0] && !a.bus) { /* the embedded default: a private server, store in the run */
        char store[4200], nlog[4200];
        snprintf(store, sizeof store, "%s/nats", run_dir);
        snprintf(nlog, sizeof nlog, "%s/logs/nats-server.log", run_dir);
        tidal_server_opts so = {.store_dir = store, .log_file = nlog};
        TRY_GOTO(tidal_server_start(&srv, &so));
        snprintf(url, sizeof url, "%s", tidal_server_url(srv));
    } else {
        snprintf(url, sizeof url, "%s", a.bus ? a.bus : s.bus.url);
    }
    catch_signals();
    const int nw = s.rollout.workers;
    /* each role's threads by the rule a role started by hand follows (base/threading.h), passed down as
     * --threads: the controller one, the trainer every core, the workers split the cores among them */
    const threading_cores cores = threading_cores_now();
    const char *env_threads = threading_user_env_threads();
    const threading_ask ctl_ask = {.one_thread = true, .env_threads = env_threads, .cores = cores};
    const threading_ask tr_ask = {.env_threads = env_threads, .cores = cores};
    const threading_ask w_ask = {.beside = nw, .env_threads = env_threads, .cores = cores};
    const threading_choice ctl_t = threading_choose(&ctl_ask), tr_t = threading_choose(&tr_ask),
                           w_t = threading_choose(&w_ask);
    char ctl_n[16], tr_n[16], w_n[16];
    snprintf(ctl_n, sizeof ctl_n, "%d", ctl_t.threads);
    snprintf(tr_n, sizeof tr_n, "%d", tr_t.threads);
    snprintf(w_n, sizeof w_n, "%d", w_t.threads);
    kids = calloc((size_t)(2 + nw), sizeof *kids);
    char dash_n[16];
    snprintf(dash_n, sizeof dash_n, "%d", a.dashboard_port);
    char *ctl_argv[] = {"tidal", "controller", spec_path, "--out", run_dir, "--bus", url, "--threads", ctl_n,
                        a.dashboard_port ? "--dashboard" : NULL, dash_n,
                        a.dashboard_bind ? "--dashboard-bind" : NULL, (char *)a.dashboard_bind, NULL};
    char *tr_argv[] = {"tidal", "trainer", spec_path, "--out", run_dir, "--bus", url, "--threads", tr_n,
                       resume ? "--resume" : NULL, NULL};
    kids[0] = (child){.role = "controller", .pid = spawn(run_dir, "controller", ctl_argv, ctl_t.threads)};
    kids[1] = (child){.role = "trainer", .pid = spawn(run_dir, "trainer", tr_argv, tr_t.threads)};
    snprintf(kids[0].name, sizeof kids[0].name, "controller");
    snprintf(kids[1].name, sizeof kids[1].name, "trainer");
    for (int i = 0; i < nw; i++) {
        char *id = kids[2 + i].id;
        snprintf(id, sizeof kids[2 + i].id, "w%d-%d", i, (int)getpid());
        char *w_argv[] = {"tidal", "rollout", "--bus", url, "--job", s.job.name, "--id", id, "--threads", w_n, NULL};
        snprintf(kids[2 + i].name, sizeof kids[2 + i].name, "rollout-%d", i);
        kids[2 + i].role = "rollout";
        kids[2 + i].pid = spawn(run_dir, kids[2 + i].name, w_argv, w_t.threads);
    }
    snprintf(path, sizeof path, "%s/pids", run_dir);
    FILE *pf = fopen(path, "w");
    if (pf) {
        if (srv) fprintf(pf, "nats-server %s\n", url);
        for (int i = 0; i < 2 + nw; i++) fprintf(pf, "%s %d\n", kids[i].name, (int)kids[i].pid);
        fclose(pf);
    }
    fprintf(stderr, "tidal run: job %s, run directory %s, bus %s%s, %d rollout workers\n", s.job.name, run_dir, url,
            srv ? " (private)" : "", nw);
    if (a.dashboard_port > 0)
        fprintf(stderr, "tidal run: dashboard on http://%s:%d/ (served by the controller while the job runs; "
                        "`tidal view %s` after)\n", a.dashboard_bind ? a.dashboard_bind : "127.0.0.1", a.dashboard_port, run_dir);
    else if (a.dashboard_port)
        fprintf(stderr, "tidal run: dashboard on a free port: %s/dashboard.url names it\n", run_dir);
    fprintf(stderr, "tidal run: threads: controller %d (%s), trainer %d (%s), rollout %d each (%s)\n", ctl_t.threads,
            ctl_t.why, tr_t.threads, tr_t.why, w_t.threads, w_t.why);
    /* the progress line: the controller's Metric each second */
    job_names names;
    job_names_init(&names, s.job.name);
    bus_opts bo = bus_from(&a, &s);
    bo.urls = url, bo.name = "run";
    char subj[200];
    snprintf(subj, sizeof subj, "%s.controller", names.metrics_prefix);
    if (bus_connect(&b, &bo) == TIDAL_OK) bus_subscribe_sync(b, subj, NULL, &sub); /* else no progress line: the run goes on */
    const bool tty = isatty(2);
    double last_print = 0;
    bool stopping = false, failed = false, child_failed = false;
    int running = 2 + nw, lost = 0;
    for (int i = 0; i < 2 + nw; i++)
        if (kids[i].pid < 0) { /* never started (spawn said why): nothing to wait for or signal */
            kids[i].exited = true, kids[i].status = 127 << 8;
            running--;
            failed = child_failed = true;
        }
    while (running > 0) {
        int status = 0;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            for (int i = 0; i < 2 + nw; i++)
                if (kids[i].pid == pid && !kids[i].exited) {
                    kids[i].exited = true, kids[i].status = status, kids[i].exit_unix_ms = tidal_unix_ms();
                    running--;
                    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                    char how[64];
                    describe_exit(status, how, sizeof how);
                    if (i < 2) {
                        fprintf(stderr, "%stidal run: %s %s (%s/logs/%s.log)\n", tty ? "\n" : "", kids[i].name,
                                ok ? "finished" : "failed", run_dir, kids[i].name);
                        if (!ok) print_last_line(run_dir, kids[i].name);
                    } else if (!ok) { /* elastic: the job goes on with the others (and any that join) */
                        lost++;
                        fprintf(stderr, "%stidal run: %s (worker %s) lost: %s; the job goes on (%s/logs/%s.log)\n",
                                tty ? "\n" : "", kids[i].name, kids[i].id, how, run_dir, kids[i].name);
                        print_last_line(run_dir, kids[i].name);
                        if (lost == nw && !stopping)
                            fprintf(stderr, "tidal run: no worker of its own is left: the job waits for workers "
                                            "started by hand (tidal rollout --bus %s --job %s)\n", url, s.job.name);
                    }
                    if (!ok && i < 2 && !stopping) failed = true; /* the job cannot go on without it */
                    if (!ok && i < 2) child_failed = true;    /* a controller or trainer that failed fails the run */
                    if (i == 0 && !stopping) { /* the controller is done (summary written): stop the rest */
                        stopping = true;
                        for (int k = 1; k < 2 + nw; k++)
                            if (!kids[k].exited) kill(kids[k].pid, SIGTERM);
                    }
                }
        if ((g_stop || failed) && !stopping) {
            stopping = true;
            for (int k = 0; k < 2 + nw; k++)
                if (!kids[k].exited) kill(kids[k].pid, SIGTERM);
        }
        if (sub) progress_line(b, sub, tty, lost, &last_print);
        usleep(50 * 1000);
    }
    if (tty) fprintf(stderr, "\n");
    const int ctl_status = kids[0].status;
    rc = failed || child_failed ? 1 : WIFEXITED(ctl_status) ? WEXITSTATUS(ctl_status) : 1;
    add_workers_lost(run_dir, kids, 2 + nw);
    if (lost) fprintf(stderr, "tidal run: %d of %d rollout workers lost (summary.json workers_lost)\n", lost, nw);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal run: %s\n", tidal_errmsg());
    bus_unsubscribe(sub);
    bus_close(b);
    tidal_server_stop(srv);
    free(kids);
    free(text);
    if (st == TIDAL_OK) { /* the roles ran */
        snprintf(path, sizeof path, "%s/summary.json", run_dir);
        struct stat sb;
        if (stat(path, &sb) == 0) fprintf(stderr, "tidal run: %s\n", path);
    }
    spec_release(&s);
    return rc;
}
