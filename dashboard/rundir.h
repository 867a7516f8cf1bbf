/* rundir.h - the dashboard's API over a run directory's files
 * (docs/dashboard.md, "API"): what both the live controller's dashboard and
 * `tidal view` answer, one code path.
 *
 * Each answer is a JSON object read from RUN/metrics.jsonl, eval.jsonl,
 * samples.jsonl (and samples.1.jsonl, its rotated older half),
 * eval_samples.jsonl, spec.json and summary.json as they are on disk at the
 * time of the request, so a run being written is read as far as it got:
 * a line cut short (the writer mid-line, or a truncated file) is skipped and
 * counted in the answer's "bad_lines". A file that is not there yet gives an
 * empty answer, except where the answer is the file itself (spec.json,
 * summary.json: TIDAL_ERR_NOT_FOUND naming it; TIDAL_ERR_CORRUPT when it does
 * not parse). Failures carry the message
 * the dashboard sends as {"error": ...}; dash_http_code maps them to a status.
 */
#ifndef TIDAL_DASHBOARD_RUNDIR_H
#define TIDAL_DASHBOARD_RUNDIR_H

#include <jansson.h>

#include "base/status.h"
#include "dashboard/query.h"

/* run_dir must be a directory holding a run: spec.json or metrics.jsonl.
 * TIDAL_ERR_NOT_FOUND when it is not a directory, TIDAL_ERR_INVALID when it
 * holds neither (naming the directory). */
tidal_status dash_run_dir_check(const char *run_dir);

/* {"run_dir", "job", "steps", "group_size" (from spec.json), "finished":
 * summary.json is there, "files": {name: bytes}}. */
tidal_status dash_api_info(const char *run_dir, json_t **out);

/* {"rows": [metrics.jsonl rows with step > q->since, in file order], "bad_lines"}. */
tidal_status dash_api_metrics(const char *run_dir, const dash_query *q, json_t **out);

/* {"rows": [eval.jsonl rows], "bad_lines"}. */
tidal_status dash_api_eval(const char *run_dir, json_t **out);

/* {"groups": [newest first, at most q->limit: {"step", "version", "eval",
 * "group_id", "prompt_id", "prompt", "samples": [those that pass q's
 * reward, worker and version filters]}], "bad_lines"}; groups none of whose
 * samples pass are left out. From samples.jsonl, or eval_samples.jsonl when
 * q->eval. */
tidal_status dash_api_samples(const char *run_dir, const dash_query *q, json_t **out);

/* {"step", "version", "eval", "group_id", "prompt_id", "prompt", "sample"}
 * for the sample whose id is `id`, trained or evaluation; TIDAL_ERR_INVALID
 * for an id that cannot be one, TIDAL_ERR_NOT_FOUND naming it when no kept
 * sample has it. */
tidal_status dash_api_sample(const char *run_dir, const char *id, json_t **out);

/* {"hist": [samples per staleness 0, 1, ...] summed over the last q->last
 * steps of samples.jsonl, "steps", "from_step", "to_step"}. */
tidal_status dash_api_staleness(const char *run_dir, const dash_query *q, json_t **out);

/* The JSON file RUN/name (spec.json, summary.json) as it is;
 * TIDAL_ERR_NOT_FOUND naming it when it is not there (yet), TIDAL_ERR_CORRUPT
 * when it does not parse (cut short). */
tidal_status dash_api_file(const char *run_dir, const char *name, json_t **out);

/* The HTTP status for a failure: 400 invalid, 404 not found, 401 refused,
 * 422 a file cut short, 500 the rest. */
int dash_http_code(tidal_status st);

#endif
