// Conversion of CUDA runtime and NCCL results into absl statuses. Only built with DGRID_WITH_CUDA.
#ifndef DGRID_COMMON_GPU_STATUS_H_
#define DGRID_COMMON_GPU_STATUS_H_

#include "absl/strings/string_view.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "absl/status/status.h"

namespace dgrid {

// cudaSuccess -> OK; cudaErrorMemoryAllocation -> RESOURCE_EXHAUSTED; cudaErrorInvalidValue ->
// INVALID_ARGUMENT; others INTERNAL. The message names the CUDA error and `context`.
[[nodiscard]] absl::Status CudaStatus(cudaError_t error, absl::string_view context);

// ncclSuccess -> OK; ncclSystemError / ncclRemoteError (a peer died or the network failed) ->
// UNAVAILABLE; ncclInvalidArgument / ncclInvalidUsage -> INVALID_ARGUMENT; others INTERNAL. When
// `comm` is given, ncclGetLastError's text is appended.
[[nodiscard]] absl::Status NcclStatus(ncclResult_t result, absl::string_view context,
                                      ncclComm_t comm = nullptr);

}  // namespace dgrid

#define RETURN_IF_CUDA_ERROR(expr, context) RETURN_IF_ERROR(::dgrid::CudaStatus((expr), (context)))

#endif  // DGRID_COMMON_GPU_STATUS_H_
