// Named parameters of a model while it is being built from a checkpoint.
//
// Models Take() each parameter by its diffusers/transformers name, with the shape they expect; what
// is left afterwards is reported (diffusers warns about unexpected keys). Not thread-safe.
#ifndef DGRID_COMMON_WEIGHT_MAP_H_
#define DGRID_COMMON_WEIGHT_MAP_H_

#include <map>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dgrid {

class WeightMap {
 public:
  WeightMap() = default;
  // `source` names where the weights came from (a folder), used in errors.
  explicit WeightMap(std::string source) : source_(std::move(source)) {}

  // Adds or replaces a tensor.
  void Insert(std::string name, at::Tensor tensor);
  bool Contains(absl::string_view name) const;
  size_t size() const { return tensors_.size(); }
  const std::string& source() const { return source_; }

  // Removes and returns `name`. NOT_FOUND ("<source>: missing parameter 'x'") when absent;
  // INVALID_ARGUMENT ("<source>: parameter 'x' has shape [a, b], expected [c, d]") when `shape` is
  // non-empty and differs. An entry of -1 in `shape` matches any size.
  absl::StatusOr<at::Tensor> Take(absl::string_view name, std::vector<int64_t> shape = {});
  // Like Take, but an absent name gives an undefined tensor instead of an error.
  absl::StatusOr<at::Tensor> TakeOptional(absl::string_view name, std::vector<int64_t> shape = {});

  // Names not taken yet, sorted.
  std::vector<std::string> RemainingNames() const;

  // Read-only access, e.g. for tests.
  const std::map<std::string, at::Tensor, std::less<>>& tensors() const { return tensors_; }

 private:
  std::string source_;
  std::map<std::string, at::Tensor, std::less<>> tensors_;
};

// The entries of `before` that `after` no longer holds: what a model's FromWeights took out of a
// copy of `before` (the tensors are shared, not copied). Model offload (common/model_offload.h)
// keeps them to build the model again on its device.
WeightMap TakenWeights(const WeightMap& before, const WeightMap& after);

}  // namespace dgrid

#endif  // DGRID_COMMON_WEIGHT_MAP_H_
