// Argument checks shared by the Communicator backends (internal to parallel/). Each returns
// INVALID_ARGUMENT naming the operation and the mismatch, or OK.
#ifndef DGRID_PARALLEL_TENSOR_CHECKS_H_
#define DGRID_PARALLEL_TENSOR_CHECKS_H_

#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dgrid::parallel_internal {

// Defined, contiguous and of at least one dimension.
absl::Status CheckTensor(absl::string_view op, absl::string_view name, const at::Tensor& t);
// Same dtype and device for `a` and `b`.
absl::Status CheckSameKind(absl::string_view op, const at::Tensor& a, const at::Tensor& b);
// AllToAll: same shape, dim 0 divisible by `size`.
absl::Status CheckAllToAll(const at::Tensor& in, const at::Tensor& out, int size);
// AllGather: out is [size * n, ...] for in [n, ...].
absl::Status CheckAllGather(const at::Tensor& in, const at::Tensor& out, int size);
// A rank argument in [0, size).
absl::Status CheckRank(absl::string_view op, int rank, int size);
// Split's ranks: non-empty, distinct, each in [0, size).
absl::Status CheckSplitRanks(const std::vector<int>& ranks, int size);

}  // namespace dgrid::parallel_internal

#endif  // DGRID_PARALLEL_TENSOR_CHECKS_H_
