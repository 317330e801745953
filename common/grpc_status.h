// Conversion between absl::Status and grpc::Status, and gRPC settings every dgrid process shares.
#ifndef DGRID_COMMON_GRPC_STATUS_H_
#define DGRID_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace dgrid {

// Largest gRPC message dgrid sends or accepts (inline tensors and images exceed gRPC's 4 MiB
// default).
inline constexpr int kMaxGrpcMessageBytes = 512 * 1024 * 1024;

// Same code and message; OK maps to OK. A QueueFull or InputLost status (common/status.h) keeps its
// mark as the grpc::Status's error_details (kQueueFullDetails, kInputLostDetails), which
// FromGrpcStatus, IsQueueFull and IsInputLost read.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
inline constexpr char kQueueFullDetails[] = "dgrid:queue-full";
bool IsQueueFull(const grpc::Status& status);
inline constexpr char kInputLostDetails[] = "dgrid:input-lost";
bool IsInputLost(const grpc::Status& status);

}  // namespace dgrid

#endif  // DGRID_COMMON_GRPC_STATUS_H_
