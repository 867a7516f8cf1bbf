/* main.c - `tidal`, the multi-call entry point: one subcommand per role.
 *
 * A table maps each subcommand to a one-line summary, its usage text and a
 * handler. Subcommands not built yet say so and exit 2 rather
 * than pretend. Help is built in: `tidal --help`, `tidal help [CMD]` and
 * `tidal CMD --help` print to stdout and exit 0; a usage error prints usage
 * to stderr and exits 2. Exit statuses (docs/design.md): 0 success, 2 usage or
 * configuration error, 1 any other failure.
 */
#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "cli/commands.h"
#include "base/status.h"

#ifndef TIDAL_VERSION
#define TIDAL_VERSION "unknown"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

struct command;
/* A handler gets the arguments after the subcommand name (argv[0] is the
 * subcommand) and returns the process exit status. */
typedef int (*command_fn)(const struct command *cmd, int argc, char **argv);

struct command {
    const char *name;
    const char *summary; /* one line for the table */
    const char *usage;   /* full usage text, ends with a newline */
    command_fn run;
};

static int cmd_unavailable(const struct command *cmd, int argc, char **argv);
static int cmd_bench(const struct command *cmd, int argc, char **argv);
static int cmd_version(const struct command *cmd, int argc, char **argv);
static int cmd_debug(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return debug_main(argc, argv);
}
static int cmd_tokenize(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return tokenize_main(argc, argv);
}
static int cmd_env(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return env_main(argc, argv);
}

#define ROLE(fn, entry)                                                  \
    static int fn(const struct command *cmd, int argc, char **argv)      \
    {                                                                    \
        (void)cmd;                                                       \
        return entry(argc, argv);                                        \
    }
ROLE(cmd_run, run_main)
ROLE(cmd_controller, controller_main)
ROLE(cmd_trainer, trainer_main)
ROLE(cmd_rollout, rollout_main)
ROLE(cmd_status, status_main)
ROLE(cmd_creds, creds_main)
#undef ROLE

static int cmd_generate(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return generate_main(argc, argv);
}

static int cmd_serve(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return serve_main(argc, argv);
}

static int cmd_init_model(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return init_model_main(argc, argv);
}

static int cmd_view(const struct command *cmd, int argc, char **argv)
{
    (void)cmd;
    return view_main(argc, argv);
}

static const struct command commands[] = {
    {"run", "run a whole job on this machine",
     "usage: tidal run JOB.yaml [--set key=value]... [--out DIR]\n"
     "       tidal run --resume RUN\n"
     "\n"
     "Run the job JOB.yaml on this machine: start a private nats-server unless the spec\n"
     "names a bus (or --bus URL), then the controller, the trainer and rollout.workers\n"
     "rollout workers as child processes, with a live progress line. Writes DIR/spec.json,\n"
     "DIR/metrics.jsonl, DIR/summary.json, DIR/reward.svg, DIR/checkpoints/ and DIR/logs/.\n"
     "Ctrl-C stops every role cleanly (the summary is still written).\n"
     "  --set key=value  override any key of the spec (e.g. --set trainer.steps=10)\n"
     "  --out DIR        a new run directory (default runs/JOB_NAME-YYYYmmdd-HHMMSS)\n"
     "  --resume RUN     continue run directory RUN from its newest checkpoint\n"
     "  --dashboard PORT serve the run's dashboard at http://127.0.0.1:PORT/ while it runs (the\n"
     "                   controller does; -1: any free port, DIR/dashboard.url names it; docs/dashboard.md)\n"
     "  --dashboard-bind ADDR  listen on ADDR instead of 127.0.0.1 ($TIDAL_DASHBOARD_TOKEN: a token asked)\n",
     cmd_run},
    {"controller", "the controller role: dispatch, eval, metrics",
     "usage: tidal controller JOB.yaml|RUN/spec.json [--set key=value]... [--out DIR] [--bus URL] [--dry-run]\n"
     "\n"
     "Run the controller of a job as its own process (`tidal run` starts it for you).\n"
     "--dry-run: read the flags, check the spec as `tidal run` does before it starts (its paths, model\n"
     "shape, tokenizer, data, env config), print what it would start and exit 0 (2 when wrong);\n"
     "connects to nothing and writes nothing (deploy/k8s's test checks its commands with it).\n"
     "Credentials: --creds FILE (`tidal creds`, docs/deployment.md), --user/--password, --token.\n"
     "Threads: OMP_WAIT_POLICY=passive unless set (the process re-executes itself once to\n"
     "apply it) and one thread by default (it runs no model):\n"
     "  --threads N      exactly N threads (else OMP_NUM_THREADS when set)\n"
     "  --share K        cores / K threads (at least 1): K busy processes share this machine\n"
     "One log line says what was chosen and why (docs/architecture.md, \"Threads of a role\").\n"
     "  --dashboard PORT serve the run's dashboard at http://127.0.0.1:PORT/ (-1: any free port;\n"
     "                   DIR/dashboard.url names it); --dashboard-bind ADDR, $TIDAL_DASHBOARD_TOKEN\n",
     cmd_controller},
    {"rollout", "a rollout worker (joins and leaves at will)",
     "usage: tidal rollout --bus URL --job NAME [--id ID] [--backend builtin|openai] [--device cpu|cuda|auto] [--dry-run]\n"
     "\n"
     "Join job NAME on the bus at URL as a rollout worker; workers may come and go.\n"
     "The spec and the weights come from the bus. SIGTERM returns the group in progress.\n"
     "Credentials: --user/--password, --token, --creds FILE (a NATS .creds or a `tidal creds` file);\n"
     "TLS: --tls-ca/--tls-cert/--tls-key.\n"
     "--dry-run: read the flags, print what it would start and exit 0 (2 when they are wrong);\n"
     "connects to nothing and writes nothing (deploy/k8s's test checks its commands with it).\n"
     "Inference servers (rollout.backend openai; docs/inference.md): the worker is their sidecar.\n"
     "  --endpoints URLS  the servers' base URLs, comma-separated (else the spec's rollout.endpoints)\n"
     "  --dialect D       vllm or sglang (else the spec's rollout.dialect)\n"
     "  --weights-dir DIR where each version is written for the servers to load\n"
     "                    (else rollout.weights_dir; $TIDAL_ENDPOINT_TOKEN: their bearer token)\n"
     "  --metrics-port N  serve Prometheus metrics at http://METRICS.BIND:N/metrics (-1: any free port)\n"
     "  --slowdown F     hold each group (F - 1) x its generation time longer (simulated slower\n"
     "                   hardware, for benchmarks)\n"
     "  --tail A         and a Pareto(alpha A) multiple of it (simulated long-tailed completions)\n"
     "  --token-ms T     hold each group T ms per generated token (x F x the tail): a simulated\n"
     "                   GPU worker\n"
     "  --part-gap-ms G  wait G ms between two parts of a group sent in parts (a slow link)\n"
     "Threads: OMP_WAIT_POLICY=passive unless set (the process re-executes itself once to\n"
     "apply it) and every core it may use by default (affinity, cgroup quota):\n"
     "  --threads N      exactly N threads (else OMP_NUM_THREADS when set)\n"
     "  --share K        cores / K threads (at least 1): K busy processes share this machine\n"
     "One log line says what was chosen and why (docs/architecture.md, \"Threads of a role\").\n",
     cmd_rollout},
    {"trainer", "the trainer role: buffer, updates, weights",
     "usage: tidal trainer JOB.yaml|RUN/spec.json [--set key=value]... [--out DIR] [--bus URL] [--resume] [--dry-run]\n"
     "\n"
     "Run the trainer (and its replay buffer) of a job as its own process; --resume\n"
     "continues from the newest checkpoint under DIR/checkpoints.\n"
     "Credentials: --creds FILE (`tidal creds`, docs/deployment.md), --user/--password, --token.\n"
     "--dry-run: read the flags, check the spec as `tidal run` does before it starts (its paths, model\n"
     "shape, tokenizer, data, env config), print what it would start and exit 0 (2 when wrong);\n"
     "connects to nothing and writes nothing (deploy/k8s's test checks its commands with it).\n"
     "Threads: OMP_WAIT_POLICY=passive unless set (the process re-executes itself once to\n"
     "apply it) and every core it may use by default (affinity, cgroup quota):\n"
     "  --threads N      exactly N threads (else OMP_NUM_THREADS when set)\n"
     "  --share K        cores / K threads (at least 1): K busy processes share this machine\n"
     "One log line says what was chosen and why (docs/architecture.md, \"Threads of a role\").\n",
     cmd_trainer},
    {"env", "list, serve or call environments on the bus", env_usage, cmd_env},
    {"view", "the dashboard of a run directory (no bus needed)", view_usage, cmd_view},
    {"status", "show a job's state and its workers",
     "usage: tidal status --bus URL --job NAME [--json]\n"
     "\n"
     "Print the job's state, trainer version and counts, prompts waiting and in\n"
     "generation, and the live rollout workers, as JSON.\n"
     "Credentials: --creds FILE (`tidal creds`, docs/deployment.md), --user/--password, --token.\n",
     cmd_status},
    {"creds", "per-role NATS credentials for a job, and the server's authorization", creds_usage, cmd_creds},
    {"bench", "benchmarks against a peer (last line: JSON)",
     "usage: tidal bench bus|weights|train|generate|env|async|tokenize|gemm|serve [--json]\n"
     "\n"
     "Run a benchmark and its peer in the same invocation; the last line printed is one\n"
     "JSON object with the figures, `peer` and `ratio` (tidal / peer, higher is better).\n"
     "  bus       JetStream trajectories with acks vs raw core-NATS publish/subscribe\n"
     "  weights   a 500 MB model trainer -> 2 workers over the bus vs raw core-NATS chunks\n"
     "            (--transport http: the trainer's HTTP server vs nginx + curl)\n"
     "  train     trainer step throughput\n"
     "  generate  built-in generation\n"
     "  env       environment requests over the bus vs in-process\n"
     "  async     asynchronous vs synchronous training\n"
     "  tokenize  tokenizer encode MB/s vs Hugging Face's JavaScript tokenizer\n"
     "  gemm      the CPU GEMM kernels (AVX-512) vs OpenBLAS on the bench model's shapes\n"
     "  serve     the engine in-process vs behind `tidal serve` over HTTP (the openai backend)\n"
     "`tidal bench WHAT --help` shows a benchmark's own options.\n",
     cmd_bench},
    {"tokenize", "text lines to token ids, or back",
     "usage: tidal tokenize --tokenizer PATH [--jsonl] [--decode] [--add-special]\n"
     "\n"
     "Read one text per line on stdin (with --jsonl, one JSON string per line, so texts\n"
     "may hold newlines) and print one JSON array of token ids per line; no BOS or\n"
     "other added tokens unless --add-special. With --decode, read JSON arrays of ids\n"
     "and print the texts. PATH is a tokenizer.json or a directory holding one.\n",
     cmd_tokenize},
    {"generate", "generate with the built-in engine", generate_usage, cmd_generate},
    {"serve", "the built-in engine behind vLLM's and SGLang's HTTP routes", serve_usage, cmd_serve},
    {"init-model", "write a job's initial weights as a model directory", init_model_usage, cmd_init_model},
    {"debug", "developer hooks (fwdbwd: the model's parity hook; step: the trainer step's)",
     "usage: tidal debug fwdbwd --model DIR --input IN.safetensors --out OUT.safetensors\n"
     "       tidal debug step --model DIR --input IN.safetensors --out OUT.safetensors [--set k=v]...\n"
     "\n"
     "fwdbwd: one forward and backward pass: tokens and targets in; logits, per-token\n"
     "logprobs, loss and grad.<parameter name> out (`tidal debug fwdbwd --help`).\n"
     "step: one trainer step on trajectories given as tensors, configured by job-spec\n"
     "keys; gradients, parameters and metrics out (`tidal debug step --help`).\n",
     cmd_debug},
    {"version", "print tidal's and its libraries' versions",
     "usage: tidal version\n"
     "\n"
     "Print tidal's version, whether it was built with CUDA, and the nats.c and\n"
     "protobuf-c versions it runs with.\n",
     cmd_version},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* The benchmarks (docs/benchmarks.md); a NULL entry point is not built yet. */
static const struct {
    const char *name;
    int (*entry)(int argc, char **argv);
} benches[] = {
    {"bus", bench_bus_main}, {"weights", bench_weights_main}, {"train", bench_train_main},
    {"generate", bench_generate_main}, {"env", bench_env_main}, {"async", bench_async_main}, {"tokenize", bench_tokenize_main},
    {"gemm", bench_gemm_main}, {"serve", bench_serve_main},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static int is_help_flag(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

/* The summary table. Commands not yet in this build are marked. */
static void print_usage(FILE *f)
{
    fputs("usage: tidal <command> [arguments]\n"
          "\n"
          "tidal: asynchronous RL post-training for language models over a NATS bus.\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-11s %s%s\n", commands[i].name, commands[i].summary,
                commands[i].run == cmd_unavailable ? " (not yet available)" : "");
    fputs("\n"
          "`tidal help <command>` or `tidal <command> --help` shows a command's usage.\n"
          "Exit status: 0 success, 2 usage or configuration error, 1 other failure.\n",
          f);
}

static int cmd_unavailable(const struct command *cmd, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "tidal %s: not yet available in this build\n", cmd->name);
    return EXIT_USAGE;
}

/* `tidal bench WHAT ...`: hand the arguments from WHAT on to that benchmark. */
static int cmd_bench(const struct command *cmd, int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "tidal bench: which benchmark?\n%s", cmd->usage);
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
        if (strcmp(benches[i].name, argv[1]) != 0) continue;
        if (!benches[i].entry) {
            fprintf(stderr, "tidal bench %s: not yet available in this build\n", argv[1]);
            return EXIT_USAGE;
        }
        return benches[i].entry(argc - 1, argv + 1);
    }
    fprintf(stderr, "tidal bench: unknown benchmark '%s'\n%s", argv[1], cmd->usage);
    return EXIT_USAGE;
}

static int cmd_version(const struct command *cmd, int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "tidal version: takes no arguments\n%s", cmd->usage);
        return EXIT_USAGE;
    }
#if defined(TIDAL_HAVE_CUDA) && TIDAL_HAVE_CUDA
    const char *cuda = "yes";
#else
    const char *cuda = "no";
#endif
    printf("tidal %s (cuda: %s)\n", TIDAL_VERSION, cuda);
    printf("nats.c %s\n", nats_GetVersion());
    printf("protobuf-c %s\n", protobuf_c_version());
    return EXIT_OK;
}

/* `tidal help [CMD]`. */
static int cmd_help(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return EXIT_OK;
    }
    const struct command *cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "tidal help: unknown command '%s'\n\n", argv[1]);
        print_usage(stderr);
        return EXIT_USAGE;
    }
    fputs(cmd->usage, stdout);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (is_help_flag(name)) {
        print_usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(name, "help") == 0) {
        tidal_log_set_role("help");
        return cmd_help(argc - 1, argv + 1);
    }
    if (strcmp(name, "--version") == 0) name = "version";

    const struct command *cmd = find_command(name);
    if (!cmd) {
        fprintf(stderr, "tidal: unknown command '%s'\n\n", name);
        print_usage(stderr);
        return EXIT_USAGE;
    }
    tidal_log_set_role(cmd->name);
    if (argc > 2 && is_help_flag(argv[2])) {
        fputs(cmd->usage, stdout);
        return EXIT_OK;
    }
    int rc = cmd->run(cmd, argc - 1, argv + 1);
    fflush(stdout);
    return rc;
}
