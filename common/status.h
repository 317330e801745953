// Status helpers shared by every dgrid library.
//
// Every fallible dgrid call returns absl::Status or absl::StatusOr<T>. Failures of third-party
// calls (LibTorch, CUDA, NCCL, UCX, gRPC) are converted at the call site into a status that says
// what was being done; no exception crosses a module boundary. This header is free of torch, CUDA
// and gRPC so that any translation unit can include it; the conversions live in the *_status.h
// headers beside it.
#ifndef DGRID_COMMON_STATUS_H_
#define DGRID_COMMON_STATUS_H_

#include <string>
#include <utility>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function when not OK.
#define RETURN_IF_ERROR(expr)                                          \
  do {                                                                 \
    ::absl::Status dgrid_status_ = (expr);                             \
    if (ABSL_PREDICT_FALSE(!dgrid_status_.ok())) return dgrid_status_; \
  } while (false)

#define DGRID_STATUS_CONCAT_INNER_(a, b) a##b
#define DGRID_STATUS_CONCAT_(a, b) DGRID_STATUS_CONCAT_INNER_(a, b)

// `ASSIGN_OR_RETURN(lhs, expr)`: evaluates `expr` (an absl::StatusOr<T>); on error returns its
// status, otherwise moves the value into `lhs`, which may be a declaration (`auto x`) or an
// existing variable.
#define ASSIGN_OR_RETURN(lhs, expr) \
  DGRID_ASSIGN_OR_RETURN_IMPL_(DGRID_STATUS_CONCAT_(dgrid_statusor_, __LINE__), lhs, expr)
#define DGRID_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)                      \
  auto statusor = (expr);                                                      \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

namespace dgrid {

// Returns `status` with "context: " put in front of its message; OK stays OK. The code is kept.
[[nodiscard]] absl::Status Annotate(const absl::Status& status, absl::string_view context);

// Shorthands for the codes dgrid uses most; each takes pieces joined with absl::StrCat.
template <typename... Args>
[[nodiscard]] absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}
template <typename... Args>
[[nodiscard]] absl::Status Internal(const Args&... args) {
  return absl::InternalError(absl::StrCat(args...));
}
template <typename... Args>
[[nodiscard]] absl::Status DataLoss(const Args&... args) {
  return absl::DataLossError(absl::StrCat(args...));
}
template <typename... Args>
[[nodiscard]] absl::Status NotFound(const Args&... args) {
  return absl::NotFoundError(absl::StrCat(args...));
}
template <typename... Args>
[[nodiscard]] absl::Status Unavailable(const Args&... args) {
  return absl::UnavailableError(absl::StrCat(args...));
}
template <typename... Args>
[[nodiscard]] absl::Status FailedPrecondition(const Args&... args) {
  return absl::FailedPreconditionError(absl::StrCat(args...));
}

// Back-pressure: RESOURCE_EXHAUSTED marked as "this worker's queue is full", which says that the
// work was refused before anything was done and may be offered again later (to this worker or
// another). Other RESOURCE_EXHAUSTED statuses (out of memory, say) carry no mark. The mark
// survives the trip between dgrid processes (common/grpc_status.h); inside the cluster the caller
// holds the request and tries again instead of failing it.
[[nodiscard]] absl::Status QueueFull(absl::string_view message);
bool IsQueueFull(const absl::Status& status);

// An input of a stage call is gone: the tensor it names can no longer be pulled (its producer died
// or is unreachable, its lease expired or was released, its bytes arrived corrupt). ABORTED with a
// mark, like QueueFull's, that survives the trip between processes: the worker itself is healthy,
// and the caller must produce the input again (the orchestrator re-runs the stage that made it)
// rather than retry the same call elsewhere. `message` should name the field.
[[nodiscard]] absl::Status InputLost(absl::string_view message);
bool IsInputLost(const absl::Status& status);

// Returns the status of a POSIX call that failed with `errno_value`, e.g. ErrnoStatus(errno, "open
// x"). ENOENT maps to NOT_FOUND, EACCES/EPERM to PERMISSION_DENIED, the rest to UNKNOWN/INTERNAL as
// absl does.
[[nodiscard]] absl::Status ErrnoStatus(int errno_value, absl::string_view context);

}  // namespace dgrid

#endif  // DGRID_COMMON_STATUS_H_
