// Conversion of UCX status codes into absl statuses.
#ifndef DGRID_COMMON_UCX_STATUS_H_
#define DGRID_COMMON_UCX_STATUS_H_

#include "absl/strings/string_view.h"

#include <ucs/type/status.h>

#include "absl/status/status.h"

namespace dgrid {

// UCS_OK -> OK. A peer that went away (unreachable, connection reset, endpoint timeout, rejected)
// -> UNAVAILABLE, so the orchestrator can retry elsewhere; UCS_ERR_TIMED_OUT -> DEADLINE_EXCEEDED;
// UCS_ERR_CANCELED -> CANCELLED; out of memory or resources -> RESOURCE_EXHAUSTED; invalid
// parameters
// -> INVALID_ARGUMENT; the rest -> INTERNAL. The message is "context: <ucs_status_string>".
[[nodiscard]] absl::Status UcxStatus(ucs_status_t status, absl::string_view context);

}  // namespace dgrid

#endif  // DGRID_COMMON_UCX_STATUS_H_
