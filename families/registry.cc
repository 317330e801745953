#include "families/registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "families/flux/flux_family.h"
#include "families/wan/wan_family.h"

namespace dgrid::families {

const std::vector<const ModelFamily*>& AllFamilies() {
  // The table. A new family: its folder under families/ and one entry here.
  static const auto* const kFamilies =
      new std::vector<const ModelFamily*>{&flux::FluxFamily(), &wan::WanFamily()};
  return *kFamilies;
}

const ModelFamily& DefaultFamily() { return *AllFamilies().front(); }

absl::StatusOr<const ModelFamily*> FindFamilyForPipeline(absl::string_view class_name) {
  std::vector<std::string> known;
  for (const ModelFamily* family : AllFamilies()) {
    for (const std::string& c : family->pipeline_classes()) {
      if (c == class_name) return family;
      known.push_back(c);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("pipeline class '", class_name,
                   "' is not served by dgrid (known: ", absl::StrJoin(known, ", "), ")"));
}

absl::StatusOr<const ModelFamily*> FindFamily(absl::string_view name) {
  std::vector<std::string> known;
  for (const ModelFamily* family : AllFamilies()) {
    if (family->name() == name) return family;
    known.emplace_back(family->name());
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model family '", name, "' (known: ", absl::StrJoin(known, ", "), ")"));
}

const ModelFamily& FamilyOf(const TransformerShape& shape) {
  for (const ModelFamily* family : AllFamilies()) {
    if (family->name() == shape.family) return *family;
  }
  return DefaultFamily();
}

std::vector<std::string> KnownShapeNames() {
  std::vector<std::string> names;
  for (const ModelFamily* family : AllFamilies()) {
    for (std::string& n : family->shape_names()) names.push_back(std::move(n));
  }
  return names;
}

absl::StatusOr<TransformerShape> LookupShape(absl::string_view name) {
  for (const ModelFamily* family : AllFamilies()) {
    absl::StatusOr<TransformerShape> shape = family->LookupShape(name);
    if (shape.ok() || shape.status().code() != absl::StatusCode::kNotFound) return shape;
  }
  return absl::NotFoundError(absl::StrCat(
      "unknown shape '", name, "' (known: ", absl::StrJoin(KnownShapeNames(), ", "), ")"));
}

}  // namespace dgrid::families
