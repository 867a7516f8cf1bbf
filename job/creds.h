/* creds.h - per-role NATS credentials for one job (`tidal creds`,
 * docs/deployment.md).
 *
 * Each role of job J gets its own NATS user, an nkey (bus/nkey.h), allowed
 * to publish and subscribe only what that role does on the bus: a rollout
 * worker fetches prompts, publishes trajectories, reads weights and the
 * job's KV and writes its heartbeat, and cannot publish weights, prompts or
 * control messages. The subjects come from job_names, so they follow the
 * job's names wherever those are defined. The lists were read off what each
 * role sends (nats-server -V traces of a whole job), not guessed: a role that
 * starts sending something new needs its list here extended, and the e2e
 * scenario `creds` fails until it is.
 */
#ifndef TIDAL_JOB_CREDS_H
#define TIDAL_JOB_CREDS_H

#include <stdbool.h>

#include "base/status.h"
#include "job/names.h"

/* The roles that get credentials, in the order files are written. "env" is
 * an environment service (tidal env serve, libtidal_env); "status" a
 * read-only observer (tidal status, dashboards). */
#define JOB_CREDS_N_ROLES 5
extern const char *const job_creds_roles[JOB_CREDS_N_ROLES];

/* One role's permissions: subjects it may publish to and subscribe to
 * (NULL-terminated, malloc'd), and whether it may answer requests sent to
 * it (NATS allow_responses: publish to the reply subject of a message it
 * received, once). */
typedef struct job_perms {
    char **publish;
    char **subscribe;
    bool responses;
} job_perms;

/* The permissions of `role` in job n. env_name is the job's environment when
 * it is served on the bus (the worker's requests go to tidal.env.<env_name>
 * and the env role serves it), or NULL. TIDAL_ERR_INVALID for an unknown
 * role, or for the env role without env_name. */
tidal_status job_creds_permissions(const job_names *n, const char *env_name, const char *role, job_perms *out);
void job_perms_clear(job_perms *p);

typedef struct job_creds_opts {
    const char *dir;      /* written here (made when missing) */
    const char *env_name; /* as for job_creds_permissions; NULL: no env role */
    bool force;           /* replace files that exist (else TIDAL_ERR_CONFLICT naming one) */
} job_creds_opts;

/* Write DIR/ROLE.creds for every role (the role's nkey seed, mode 0600) and
 * DIR/nats-auth.conf (nats-server's `authorization` block: each role's public
 * key and permissions). Each file is written whole or not at all (temp +
 * rename). */
tidal_status job_creds_write(const job_names *n, const job_creds_opts *o);

#endif
