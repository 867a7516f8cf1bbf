/* serve.c - `tidal serve`: a model directory behind the HTTP routes of vLLM
 * and SGLang (serve/serve.h), until SIGINT or SIGTERM. The first line on
 * stdout is the server's URL, so a script (or a test) that asked for port 0
 * learns which port it got. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"
#include "base/threading.h"
#include "cli/commands.h"
#include "job/jobmodel.h"
#include "job/spec.h"
#include "kernels/cpu/ops.h"
#include "serve/serve.h"

const char serve_usage[] =
    "usage: tidal serve --model DIR [--host ADDR] [--port N] [options]\n"
    "  --model DIR           a Hugging Face model directory (config.json, safetensors; tokenizer.json\n"
    "                        for text prompts and chat)\n"
    "  --host ADDR           IPv4 address to listen on (default 127.0.0.1)\n"
    "  --port N              port (default 8000; 0: any free port)\n"
    "  --token T             every request must carry \"Authorization: Bearer T\" (default: the\n"
    "                        environment's TIDAL_SERVE_TOKEN; none when unset)\n"
    "  --served-name NAME    the model's name in responses (default: the directory's name)\n"
    "  --weight-version V    the version of DIR's weights (default 0)\n"
    "  --slots N             sequences decoded together (default 16)\n"
    "  --max-len N           tokens per sequence, prompt and completion (default: the model's, <= 2048)\n"
    "  --threads N           CPU threads (default: all cores)\n"
    "Routes: /v1/completions, /v1/chat/completions, /v1/models (OpenAI, vLLM), /generate (SGLang),\n"
    "/update_weights_from_disk, /pause_generation, /continue_generation, /get_model_info, /health,\n"
    "and vLLM's dev-mode /pause, /resume, /collective_rpc reload_weights (docs/inference.md).\n";

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

int serve_main(int argc, char **argv)
{
    serve_opts o = {.port = 8000, .token = getenv("TIDAL_SERVE_TOKEN")};
    int threads = 0;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"host", required_argument, 0, 'H'},
                                         {"port", required_argument, 0, 'p'},
                                         {"token", required_argument, 0, 't'},
                                         {"served-name", required_argument, 0, 'n'},
                                         {"weight-version", required_argument, 0, 'v'},
                                         {"slots", required_argument, 0, 's'},
                                         {"max-len", required_argument, 0, 'l'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    int li = -1;
    for (int c; (c = getopt_long(argc, argv, "m:H:p:t:n:v:s:l:j:h", opts, &li)) != -1; li = -1) {
        int ok = 1;
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'H': o.host = optarg; break;
        case 'p': ok = parse_int(optarg, 0, 65535, &o.port); break;
        case 't': o.token = optarg; break;
        case 'n': o.served_name = optarg; break;
        case 'v': o.weight_version = optarg; ok = strlen(optarg) < 64; break;
        case 's': ok = parse_int(optarg, 1, 4096, &o.slots); break;
        case 'l': ok = parse_int(optarg, 2, 1 << 20, &o.max_len); break;
        case 'j': ok = parse_int(optarg, 0, 4096, &threads); break;
        case 'h': fputs(serve_usage, stdout); return 0;
        default: ok = 0;
        }
        if (!ok) {
            if (c != '?' && li >= 0) fprintf(stderr, "tidal serve: bad value for --%s: %s\n", opts[li].name, optarg);
            fputs(serve_usage, stderr);
            return 2;
        }
    }
    if (optind < argc || !o.model_dir) {
        fprintf(stderr, "tidal serve: need --model DIR\n");
        fputs(serve_usage, stderr);
        return 2;
    }
    /* as a role does (cli/roles.c): passive OpenMP waiting, threads from the cores - it shares its
     * machine with its sidecar worker at least */
    const threading_ask ask = {.threads = threads, .env_threads = threading_user_env_threads(),
                               .cores = threading_cores_now()};
    const threading_choice tc = threading_choose(&ask);
    threading_policy tp;
    threading_settle(tc.threads, &tp); /* may re-execute this process: nothing above it must not run twice */
    cpu_set_threads(tc.threads);
    fprintf(stderr, "tidal serve: %d thread%s (%s; %s%s)\n", tc.threads, tc.threads == 1 ? "" : "s", tc.why, tp.wait,
            tp.set_by_tidal ? ", set by tidal" : "");
    /* the signals are taken by sigwait below: block them before any thread starts */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that goes away mid-response is not a reason to die */
    serve_server *s = NULL;
    tidal_status st = serve_start(&o, &s);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal serve: %s\n", tidal_errmsg());
        return st == TIDAL_ERR_INVALID || st == TIDAL_ERR_NOT_FOUND ? 2 : 1;
    }
    printf("http://%s:%d\n", o.host ? o.host : "127.0.0.1", serve_port(s));
    fflush(stdout);
    fprintf(stderr, "tidal serve: %s on http://%s:%d%s\n", o.model_dir, o.host ? o.host : "127.0.0.1", serve_port(s),
            o.token && *o.token ? " (bearer token required)" : "");
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "tidal serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    serve_stop(s);
    return 0;
}

/* ---------------------------------------------------------------- init-model */

const char init_model_usage[] =
    "usage: tidal init-model JOB.yaml --out DIR [--set key=value]...\n"
    "Write the job's initial weights (version 0: model.path's, or model.init's from its seed) as a\n"
    "Hugging Face directory DIR (config.json, model.safetensors, the tokenizer files there are), for\n"
    "starting an inference server the job's workers then reload (docs/inference.md).\n";

int init_model_main(int argc, char **argv)
{
    const char *out = NULL, *file = NULL;
    const char *sets[64];
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--set") && i + 1 < argc && n_sets < 64) sets[n_sets++] = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            fputs(init_model_usage, stdout);
            return 0;
        } else if (argv[i][0] != '-' && !file) file = argv[i];
        else {
            fprintf(stderr, "tidal init-model: unexpected argument '%s'\n", argv[i]);
            fputs(init_model_usage, stderr);
            return 2;
        }
    }
    if (!file || !out) {
        fputs(init_model_usage, stderr);
        return 2;
    }
    job_spec s;
    model *m = NULL;
    hf_files hf = {0};
    tidal_status st = spec_load(file, sets, n_sets, &s);
    int rc = 2;
    if (st != TIDAL_OK) goto cleanup;
    rc = 1;
    TRY_GOTO(job_model_initial(&s, &m));
    TRY_GOTO(fs_mkdirs(out));
    TRY_GOTO(model_save(m, out, !strcmp(s.weights.dtype, "bf16") ? ST_BF16 : ST_F32));
    TRY_GOTO(job_hf_files(&s, &hf));
    TRY_GOTO(hf_files_write(&hf, out));
    fprintf(stderr, "tidal init-model: %s: version 0 of job %s\n", out, s.job.name);
    rc = 0;
cleanup:
    if (rc) fprintf(stderr, "tidal init-model: %s\n", tidal_errmsg());
    model_free(m);
    hf_files_clear(&hf);
    spec_release(&s);
    return rc;
}
