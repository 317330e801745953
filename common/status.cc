#include "common/status.h"

#include <cstring>

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

absl::Status ErrnoStatus(int errno_value, absl::string_view context) {
  return absl::ErrnoToStatus(errno_value, context);
}

}  // namespace dgrid
