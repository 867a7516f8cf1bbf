/* creds.c - `tidal creds`: per-role NATS credentials for one job
 * (job/creds.h, docs/deployment.md).
 *
 *   tidal creds JOB.yaml [--set key=value]... --out DIR [--env NAME] [--force]
 *   tidal creds --job NAME [--env NAME] --out DIR [--force]
 *
 * With a spec, the job's name and, when env.remote is set, its environment
 * come from it; with --job, --env names the environment served on the bus
 * (none: no env role, and workers may call none).
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "job/creds.h"
#include "job/names.h"
#include "job/spec.h"
#include "proto/codec.h"

#define MAX_SETS 64

const char creds_usage[] =
    "usage: tidal creds JOB.yaml [--set key=value]... --out DIR [--env NAME] [--force]\n"
    "       tidal creds --job NAME [--env NAME] --out DIR [--force]\n"
    "\n"
    "Write one NATS user (an nkey) per role of the job, each allowed only what the role\n"
    "does on the bus: DIR/controller.creds, trainer.creds, rollout.creds, status.creds\n"
    "(a read-only observer) and, when the job's environment is served on the bus\n"
    "(env.remote, or --env NAME), env.creds; and DIR/nats-auth.conf, the authorization\n"
    "block for nats-server (public keys only) to include in its configuration.\n"
    "Each role then connects with --creds DIR/ROLE.creds. The .creds files are secret\n"
    "(mode 0600). Existing files are kept unless --force (then replace the server's\n"
    "nats-auth.conf too). See docs/deployment.md.\n";

int creds_main(int argc, char **argv)
{
    const char *out = NULL, *job = NULL, *env = NULL, *spec_file = NULL;
    const char *sets[MAX_SETS];
    int n_sets = 0;
    bool force = false;
    enum { OPT_SET = 1000, OPT_OUT, OPT_JOB, OPT_ENV, OPT_FORCE };
    static const struct option opts[] = {{"set", required_argument, 0, OPT_SET}, {"out", required_argument, 0, OPT_OUT},
                                         {"job", required_argument, 0, OPT_JOB}, {"env", required_argument, 0, OPT_ENV},
                                         {"force", no_argument, 0, OPT_FORCE},   {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case OPT_SET:
            if (n_sets == MAX_SETS) {
                fprintf(stderr, "tidal creds: at most %d --set\n", MAX_SETS);
                return 2;
            }
            sets[n_sets++] = optarg;
            break;
        case OPT_OUT: out = optarg; break;
        case OPT_JOB: job = optarg; break;
        case OPT_ENV: env = optarg; break;
        case OPT_FORCE: force = true; break;
        default:
            fprintf(stderr, "tidal creds: unknown option '%s' (see tidal creds --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) spec_file = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "tidal creds: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!out || !*out || (!spec_file == !job) || (n_sets && !spec_file)) {
        fprintf(stderr, "tidal creds: give JOB.yaml or --job NAME (one of them), and --out DIR\n");
        return 2;
    }
    job_spec s;
    char env_name[256] = "", job_name[JOB_NAME_MAX] = "";
    if (spec_file) {
        if (spec_load(spec_file, sets, n_sets, &s) != TIDAL_OK) {
            fprintf(stderr, "tidal creds: %s\n", tidal_errmsg());
            return 2;
        }
        snprintf(job_name, sizeof job_name, "%s", s.job.name);
        if (s.env.remote) snprintf(env_name, sizeof env_name, "%s", s.env.name);
        spec_release(&s);
    } else {
        snprintf(job_name, sizeof job_name, "%s", job);
    }
    if (env) snprintf(env_name, sizeof env_name, "%s", env);
    job_names n;
    tidal_status st = job_names_init(&n, job_name);
    if (st == TIDAL_OK && env_name[0]) st = codec_check_name("env.name", env_name);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal creds: %s\n", tidal_errmsg());
        return 2;
    }
    job_creds_opts o = {.dir = out, .env_name = env_name[0] ? env_name : NULL, .force = force};
    st = job_creds_write(&n, &o);
    if (st != TIDAL_OK) {
        fprintf(stderr, "tidal creds: %s\n", tidal_errmsg());
        return st == TIDAL_ERR_CONFLICT || st == TIDAL_ERR_INVALID ? 2 : 1;
    }
    printf("credentials for job %s written to %s/:\n", n.job, out);
    printf("  nats-auth.conf     the server's authorization block: add  include \"%s/nats-auth.conf\"  to\n"
           "                     nats-server's configuration (JetStream on) and reload it (nats-server --signal reload)\n",
           out);
    printf("  controller.creds   tidal controller JOB.yaml --creds %s/controller.creds\n", out);
    printf("  trainer.creds      tidal trainer JOB.yaml --creds %s/trainer.creds\n", out);
    printf("  rollout.creds      tidal rollout --bus URL --job %s --creds %s/rollout.creds\n", n.job, out);
    if (o.env_name) printf("  env.creds          tidal env serve %s --bus URL --creds %s/env.creds\n", o.env_name, out);
    printf("  status.creds       tidal status --bus URL --job %s --creds %s/status.creds\n", n.job, out);
    printf("The .creds files are secrets: hand each role only its own.\n");
    return 0;
}
