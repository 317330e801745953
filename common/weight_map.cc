#include "common/weight_map.h"

#include <utility>

#include <ATen/core/Tensor.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace dgrid {
namespace {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.end(), ", "), "]");
}

bool ShapeMatches(c10::IntArrayRef actual, const std::vector<int64_t>& expected) {
  if (actual.size() != expected.size()) return false;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != -1 && expected[i] != actual[i]) return false;
  }
  return true;
}

}  // namespace

void WeightMap::Insert(std::string name, at::Tensor tensor) {
  tensors_.insert_or_assign(std::move(name), std::move(tensor));
}

bool WeightMap::Contains(absl::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

absl::StatusOr<at::Tensor> WeightMap::Take(absl::string_view name, std::vector<int64_t> shape) {
  if (!Contains(name)) return NotFound(source_, ": missing parameter '", name, "'");
  return TakeOptional(name, std::move(shape));
}

absl::StatusOr<at::Tensor> WeightMap::TakeOptional(absl::string_view name,
                                                   std::vector<int64_t> shape) {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return at::Tensor();
  // A shape mismatch leaves the entry in place, so the caller's error report can still list it.
  if (!shape.empty() && !ShapeMatches(it->second.sizes(), shape)) {
    return InvalidArgument(source_, ": parameter '", name, "' has shape ",
                           ShapeString(it->second.sizes()), ", expected ", ShapeString(shape));
  }
  at::Tensor tensor = std::move(it->second);
  tensors_.erase(it);
  return tensor;
}

std::vector<std::string> WeightMap::RemainingNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  return names;
}

WeightMap TakenWeights(const WeightMap& before, const WeightMap& after) {
  WeightMap taken(before.source());
  for (const auto& [name, tensor] : before.tensors()) {
    if (!after.Contains(name)) taken.Insert(name, tensor);
  }
  return taken;
}

}  // namespace dgrid
