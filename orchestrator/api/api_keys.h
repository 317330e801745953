// API keys of the public API: gRPC callers send metadata `authorization: Bearer <key>`, HTTP
// callers the header `Authorization: Bearer <key>`. No keys configured: every caller is let in
// (loopback development).
//
// A key file holds one key per line; blank lines and lines starting with '#' are skipped (a
// Kubernetes Secret mounted as a file fits). Keys are compared in constant time. Immutable after
// construction, so any thread may call Check.
#ifndef DGRID_ORCHESTRATOR_API_API_KEYS_H_
#define DGRID_ORCHESTRATOR_API_API_KEYS_H_

#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::orchestrator {

class ApiKeys {
 public:
  ApiKeys() = default;
  explicit ApiKeys(std::vector<std::string> keys) : keys_(std::move(keys)) {}
  // NOT_FOUND when the file cannot be read, INVALID_ARGUMENT when it holds no key.
  static absl::StatusOr<ApiKeys> FromFile(const std::string& path);

  bool enabled() const { return !keys_.empty(); }
  // OK when keys are off or `authorization` is "Bearer <a configured key>"; UNAUTHENTICATED
  // otherwise (the message never echoes what was sent).
  absl::Status Check(absl::string_view authorization) const;
  // Check() on the call's `authorization` metadata.
  absl::Status CheckCall(const grpc::ServerContextBase& context) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_API_KEYS_H_
