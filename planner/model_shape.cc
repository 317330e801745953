#include "planner/model_shape.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "families/registry.h"
#include "planner/json_fields.h"

namespace dgrid::planner {
namespace {

// The family of the pipeline folder `dir`: the one its model_index.json's "_class_name" names,
// the default family when there is no model_index.json (a bare transformer folder).
absl::StatusOr<const families::ModelFamily*> FamilyOfFolder(const std::string& dir) {
  const std::string index = (std::filesystem::path(dir) / "model_index.json").string();
  if (!std::filesystem::exists(index)) return &families::DefaultFamily();
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(index));
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(text, index));
  absl::StatusOr<std::string> class_name = StringField(json, "", "_class_name");
  if (!class_name.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(index, ": ", class_name.status().message()));
  }
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(*class_name);
  if (!family.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index, ": _class_name: ", family.status().message()));
  }
  return family;
}

}  // namespace

std::vector<std::string> KnownModelShapes() { return families::KnownShapeNames(); }

absl::StatusOr<ModelShape> LookupModelShape(absl::string_view name) {
  absl::StatusOr<ModelShape> shape = families::LookupShape(name);
  if (shape.ok() || shape.status().code() != absl::StatusCode::kNotFound) return shape;
  return absl::NotFoundError(absl::StrCat("model: unknown shape '", name,
                                          "' (known: ", absl::StrJoin(KnownModelShapes(), ", "),
                                          "; or a Diffusers model folder)"));
}

ModelShape DefaultModelShape() { return families::DefaultFamily().DefaultShape(); }

absl::StatusOr<ModelShape> ReadModelShape(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string config = (fs::path(dir) / "transformer" / "config.json").string();
  if (!fs::exists(config)) config = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(config));
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(text, config));
  ASSIGN_OR_RETURN(const families::ModelFamily* family, FamilyOfFolder(dir));
  ASSIGN_OR_RETURN(ModelShape shape, family->ShapeFromConfig(json, config));
  shape.name = fs::path(dir).filename().string();
  return shape;
}

absl::StatusOr<ModelShape> ResolveModelShape(const std::string& name_or_dir) {
  absl::StatusOr<ModelShape> shape = LookupModelShape(name_or_dir);
  if (!shape.ok() && std::filesystem::is_directory(name_or_dir)) {
    shape = ReadModelShape(name_or_dir);
  }
  if (!shape.ok()) return shape;
  // Families only the single-process pipeline runs cannot be placed on stages.
  const families::ModelFamily& family = families::FamilyOf(*shape);
  if (!family.stages_serve()) {
    return absl::UnimplementedError(absl::StrCat("model: ", name_or_dir, " is of the ",
                                                 family.name(),
                                                 " family, which the stages do not serve yet"));
  }
  return shape;
}

}  // namespace dgrid::planner
