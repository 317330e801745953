#include "common/grpc_status.h"

#include <string>

#include "common/status.h"

namespace dgrid {

// Both enumerations use the canonical codes 0..16 with the same numbers.
grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  if (IsQueueFull(status)) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(status.message()),
                        kQueueFullDetails);
  }
  if (IsInputLost(status)) {
    return grpc::Status(grpc::StatusCode::ABORTED, std::string(status.message()),
                        kInputLostDetails);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  if (IsQueueFull(status)) return QueueFull(status.error_message());
  if (IsInputLost(status)) return InputLost(status.error_message());
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

bool IsQueueFull(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
         status.error_details() == kQueueFullDetails;
}

bool IsInputLost(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::ABORTED &&
         status.error_details() == kInputLostDetails;
}

}  // namespace dgrid
