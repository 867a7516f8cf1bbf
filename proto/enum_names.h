/* enum_names.h - the names people read for the wire enums of
 * proto/tidal.proto, one function per enum.
 *
 * Logs, `tidal status` and every other output a person reads print these
 * names, never the enum's number: "generating", not 2; "stop", not 4. A name
 * is the proto value's name without its enum prefix, in lower case
 * (WORKER_STATE_QUARANTINED -> "quarantined"); a value this build does not
 * know (a newer peer's) is "unknown". The returned strings are static.
 */
#ifndef TIDAL_PROTO_ENUM_NAMES_H
#define TIDAL_PROTO_ENUM_NAMES_H

#include "tidal.pb-c.h"

const char *proto_worker_state_name(Tidal__V1__WorkerState s);
const char *proto_control_command_name(Tidal__V1__ControlCommand c);
const char *proto_finish_reason_name(Tidal__V1__FinishReason f);
const char *proto_trajectory_status_name(Tidal__V1__TrajectoryStatus s);
const char *proto_env_op_name(Tidal__V1__EnvOp op);

#endif
