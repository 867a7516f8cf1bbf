/* enum_names.c - names of the wire enums (enum_names.h). The tables follow
 * proto/tidal.proto's numbering; test_codec checks every value the schema
 * declares has its name here. */
#include "proto/enum_names.h"

#include <stddef.h>

/* names[v] when v is inside the table, else "unknown" */
static const char *lookup(const char *const *names, size_t n, int v)
{
    return v >= 0 && (size_t)v < n && names[v] ? names[v] : "unknown";
}

#define LOOKUP(names, v) lookup(names, sizeof names / sizeof names[0], (int)(v))

const char *proto_worker_state_name(Tidal__V1__WorkerState s)
{
    static const char *const names[] = {"unspecified", "idle", "generating", "syncing", "draining", "quarantined"};
    return LOOKUP(names, s);
}

const char *proto_control_command_name(Tidal__V1__ControlCommand c)
{
    static const char *const names[] = {"unspecified", "pause", "resume", "drain", "stop", "quarantine"};
    return LOOKUP(names, c);
}

const char *proto_finish_reason_name(Tidal__V1__FinishReason f)
{
    static const char *const names[] = {"unspecified", "stop", "length", "env_done", "error", "aborted"};
    return LOOKUP(names, f);
}

const char *proto_trajectory_status_name(Tidal__V1__TrajectoryStatus s)
{
    static const char *const names[] = {"unspecified", "ok", "env_error", "env_timeout", "generation_error"};
    return LOOKUP(names, s);
}

const char *proto_env_op_name(Tidal__V1__EnvOp op)
{
    static const char *const names[] = {"unspecified", "reset", "step"};
    return LOOKUP(names, op);
}
