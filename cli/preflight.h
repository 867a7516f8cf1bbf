/* preflight.h - a job checked before `tidal run` starts a server or a role. */
#ifndef TIDAL_CLI_PREFLIGHT_H
#define TIDAL_CLI_PREFLIGHT_H

#include "base/status.h"
#include "job/spec.h"

/* Do, without a bus, what the roles do first with spec s (read from
 * spec_file): spec_check_paths; the model's shape and tokenizer load and the
 * model embeds every id the tokenizer makes; data.template resolves; the data
 * opens (every JSONL row an object with data.prompt_key); a built-in env
 * accepts env.config. TIDAL_ERR_INVALID (or the loader's status)
 * "SPEC_FILE: KEY: what is wrong" on the first problem. Nothing is written. */
tidal_status run_preflight(const job_spec *s, const char *spec_file);

/* Where the trainer will run (tidal run, tidal trainer --dry-run; not the
 * controller's dry run, which may be on another machine): trainer.device cuda
 * needs a usable GPU here, else TIDAL_ERR_UNAVAILABLE naming the key and why. */
tidal_status run_preflight_device(const job_spec *s, const char *spec_file);

/* Where tidal run's own rollout workers will generate: rollout.device cuda
 * (with the built-in backend) needs a usable GPU here, else
 * TIDAL_ERR_UNAVAILABLE naming the key and why. */
tidal_status run_preflight_rollout_device(const job_spec *s, const char *spec_file);

#endif
