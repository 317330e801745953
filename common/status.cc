#include "common/status.h"

#include <cstring>

#include "absl/strings/cord.h"

namespace dgrid {

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok() || context.empty()) return status;
  absl::Status annotated(status.code(), absl::StrCat(context, ": ", status.message()));
  // Payloads (e.g. retry hints) travel with the annotated status.
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) {
    annotated.SetPayload(url, payload);
  });
  return annotated;
}

namespace {
// The payload key of QueueFull (absl::Status payloads are keyed by a type URL).
constexpr char kQueueFullPayload[] = "type.dgrid.dev/queue-full";
constexpr char kInputLostPayload[] = "type.dgrid.dev/input-lost";
}  // namespace

absl::Status QueueFull(absl::string_view message) {
  absl::Status status = absl::ResourceExhaustedError(message);
  status.SetPayload(kQueueFullPayload, absl::Cord("1"));
  return status;
}

bool IsQueueFull(const absl::Status& status) {
  return absl::IsResourceExhausted(status) && status.GetPayload(kQueueFullPayload).has_value();
}

absl::Status InputLost(absl::string_view message) {
  absl::Status status = absl::AbortedError(message);
  status.SetPayload(kInputLostPayload, absl::Cord("1"));
  return status;
}

bool IsInputLost(const absl::Status& status) {
  return absl::IsAborted(status) && status.GetPayload(kInputLostPayload).has_value();
}

absl::Status ErrnoStatus(int errno_value, absl::string_view context) {
  return absl::ErrnoToStatus(errno_value, context);
}

}  // namespace dgrid
