// The Diffusers on-disk layout: model_index.json at the root, one folder per component with its
// config.json and weights. A root may be a plain folder or a Hugging Face cache entry
// (".../models--org--name" with refs/ and snapshots/, or a snapshot folder itself).
#ifndef DGRID_COMMON_DIFFUSERS_LAYOUT_H_
#define DGRID_COMMON_DIFFUSERS_LAYOUT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dgrid {

// A parsed config.json with typed getters. A missing key (or JSON null) gives the default, as
// diffusers' register_to_config defaults do; a key of the wrong type, or a value a check rejects,
// is INVALID_ARGUMENT naming the file and key. Unknown keys are ignored, as diffusers does.
class JsonConfig {
 public:
  static absl::StatusOr<JsonConfig> FromFile(const std::string& path);
  static absl::StatusOr<JsonConfig> FromText(absl::string_view text, std::string source);

  const std::string& source() const { return source_; }
  const nlohmann::json& json() const { return json_; }
  bool Has(absl::string_view key) const;

  absl::StatusOr<int64_t> GetInt(absl::string_view key, int64_t default_value) const;
  absl::StatusOr<double> GetDouble(absl::string_view key, double default_value) const;
  absl::StatusOr<bool> GetBool(absl::string_view key, bool default_value) const;
  absl::StatusOr<std::string> GetString(absl::string_view key, std::string default_value) const;
  absl::StatusOr<std::vector<int64_t>> GetIntList(absl::string_view key,
                                                  std::vector<int64_t> default_value) const;
  absl::StatusOr<std::vector<std::string>> GetStringList(
      absl::string_view key, std::vector<std::string> default_value) const;
  // Optional number: nullopt when absent or null.
  absl::StatusOr<std::optional<double>> GetOptionalDouble(absl::string_view key) const;

  // Helpers for range checks, e.g. RETURN_IF_ERROR(config.CheckPositive("num_layers", v)).
  absl::Status CheckPositive(absl::string_view key, int64_t value) const;
  absl::Status CheckNonNegative(absl::string_view key, int64_t value) const;

 private:
  std::string source_;
  nlohmann::json json_;
};

struct ModelIndex {
  // Absolute path of the resolved root folder (snapshot folder for a HF cache entry).
  std::string root;
  // "_class_name", e.g. "FluxPipeline".
  std::string pipeline_class;
  // component name -> (library, class), e.g. "transformer" -> ("diffusers",
  // "FluxTransformer2DModel"). Components set to [null, null] in model_index.json are absent.
  std::map<std::string, std::pair<std::string, std::string>> components;

  bool HasComponent(absl::string_view name) const;
  // "<root>/<name>"; NOT_FOUND when the component is absent or its folder does not exist.
  absl::StatusOr<std::string> ComponentPath(absl::string_view name) const;
};

// Resolves `path` (folder, HF cache entry, or snapshot folder) to the folder holding
// model_index.json. NOT_FOUND naming the path otherwise.
absl::StatusOr<std::string> ResolveModelRoot(const std::string& path);

// ResolveModelRoot + parse model_index.json.
absl::StatusOr<ModelIndex> ReadModelIndex(const std::string& path);

// Parses the text of a model_index.json; `file` names it in errors, `root` is left empty. Any
// malformed text is INVALID_ARGUMENT naming `file`.
absl::StatusOr<ModelIndex> ParseModelIndex(absl::string_view text, const std::string& file);

}  // namespace dgrid

#endif  // DGRID_COMMON_DIFFUSERS_LAYOUT_H_
