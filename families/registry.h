// The model families dgrid serves, in one explicit table (registry.cc): adding a family adds its
// folder and one line there. A model's family is chosen by model_index.json's "_class_name".
//
// Every function is thread-safe; the families live until exit (families/model_family.h).
#ifndef DGRID_FAMILIES_REGISTRY_H_
#define DGRID_FAMILIES_REGISTRY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "families/model_family.h"

namespace dgrid::families {

// Every family, the default one first.
const std::vector<const ModelFamily*>& AllFamilies();
// The family assumed where nothing names one (FLUX): placement and planning defaults, models whose
// workers registered no pipeline class.
const ModelFamily& DefaultFamily();

// The family serving the pipeline class `class_name` ("FluxPipeline"); INVALID_ARGUMENT naming the
// class and listing the known ones otherwise.
absl::StatusOr<const ModelFamily*> FindFamilyForPipeline(absl::string_view class_name);
// The family called `name` ("flux"); NOT_FOUND listing the known names otherwise.
absl::StatusOr<const ModelFamily*> FindFamily(absl::string_view name);
// The family of `shape` (shape.family); the default family when that is empty or unknown (a shape
// built field by field).
const ModelFamily& FamilyOf(const TransformerShape& shape);

// Every family's shape names, in table order.
std::vector<std::string> KnownShapeNames();
// A shape by name or alias from whichever family knows it; NOT_FOUND when none does.
absl::StatusOr<TransformerShape> LookupShape(absl::string_view name);

}  // namespace dgrid::families

#endif  // DGRID_FAMILIES_REGISTRY_H_
