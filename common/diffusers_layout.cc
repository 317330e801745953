// Reading the Diffusers on-disk layout.
//
// Ref: diffusers DiffusionPipeline.from_pretrained / ConfigMixin.load_config
// (pipelines/pipeline_utils.py, configuration_utils.py) and huggingface_hub's cache layout
// (models--org--name/{refs/main, snapshots/<commit>/...}).
#include "common/diffusers_layout.h"

#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status.h"

namespace dgrid {
namespace {

using Json = nlohmann::json;

constexpr char kModelIndex[] = "model_index.json";

// An int64 out of a JSON integer, or nullopt for any other type or an out-of-range unsigned.
std::optional<int64_t> AsInt(const Json& value) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return std::nullopt;
}

}  // namespace

// JsonConfig
// ---------------------------------------------------------------------------------------

absl::StatusOr<JsonConfig> JsonConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return FromText(text, path);
}

absl::StatusOr<JsonConfig> JsonConfig::FromText(absl::string_view text, std::string source) {
  JsonConfig config;
  config.json_ = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (config.json_.is_discarded()) return InvalidArgument(source, ": not valid JSON");
  if (!config.json_.is_object()) {
    return InvalidArgument(source, ": a JSON ", config.json_.type_name(), ", not an object");
  }
  config.source_ = std::move(source);
  return config;
}

bool JsonConfig::Has(absl::string_view key) const {
  auto it = json_.find(std::string(key));
  return it != json_.end() && !it->is_null();
}

// Getters: a missing key or null gives the default (diffusers fills absent config keys from the
// __init__ defaults), any other type is an error naming the file and key.
absl::StatusOr<int64_t> JsonConfig::GetInt(absl::string_view key, int64_t default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  std::optional<int64_t> v = AsInt(value);
  if (!v.has_value()) {
    return InvalidArgument(source_, ": '", key, "' must be an integer, got ", value.dump());
  }
  return *v;
}

absl::StatusOr<double> JsonConfig::GetDouble(absl::string_view key, double default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  if (!value.is_number()) {
    return InvalidArgument(source_, ": '", key, "' must be a number, got ", value.dump());
  }
  return value.get<double>();
}

absl::StatusOr<bool> JsonConfig::GetBool(absl::string_view key, bool default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  if (!value.is_boolean()) {
    return InvalidArgument(source_, ": '", key, "' must be true or false, got ", value.dump());
  }
  return value.get<bool>();
}

absl::StatusOr<std::string> JsonConfig::GetString(absl::string_view key,
                                                  std::string default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  if (!value.is_string()) {
    return InvalidArgument(source_, ": '", key, "' must be a string, got ", value.dump());
  }
  return value.get<std::string>();
}

absl::StatusOr<std::vector<int64_t>> JsonConfig::GetIntList(
    absl::string_view key, std::vector<int64_t> default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  if (!value.is_array()) {
    return InvalidArgument(source_, ": '", key, "' must be a list of integers, got ", value.dump());
  }
  std::vector<int64_t> out;
  for (size_t i = 0; i < value.size(); ++i) {
    std::optional<int64_t> v = AsInt(value[i]);
    if (!v.has_value()) {
      return InvalidArgument(source_, ": '", key, "'[", i, "] must be an integer, got ",
                             value[i].dump());
    }
    out.push_back(*v);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> JsonConfig::GetStringList(
    absl::string_view key, std::vector<std::string> default_value) const {
  if (!Has(key)) return default_value;
  const Json& value = json_.at(std::string(key));
  if (!value.is_array()) {
    return InvalidArgument(source_, ": '", key, "' must be a list of strings, got ", value.dump());
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_string()) {
      return InvalidArgument(source_, ": '", key, "'[", i, "] must be a string, got ",
                             value[i].dump());
    }
    out.push_back(value[i].get<std::string>());
  }
  return out;
}

absl::StatusOr<std::optional<double>> JsonConfig::GetOptionalDouble(absl::string_view key) const {
  if (!Has(key)) return std::optional<double>();
  const Json& value = json_.at(std::string(key));
  if (!value.is_number()) {
    return InvalidArgument(source_, ": '", key, "' must be a number or null, got ", value.dump());
  }
  return std::optional<double>(value.get<double>());
}

absl::Status JsonConfig::CheckPositive(absl::string_view key, int64_t value) const {
  if (value > 0) return absl::OkStatus();
  return InvalidArgument(source_, ": '", key, "' must be positive, got ", value);
}

absl::Status JsonConfig::CheckNonNegative(absl::string_view key, int64_t value) const {
  if (value >= 0) return absl::OkStatus();
  return InvalidArgument(source_, ": '", key, "' must not be negative, got ", value);
}

// ModelIndex
// ---------------------------------------------------------------------------------------

bool ModelIndex::HasComponent(absl::string_view name) const {
  return components.find(std::string(name)) != components.end();
}

absl::StatusOr<std::string> ModelIndex::ComponentPath(absl::string_view name) const {
  if (!HasComponent(name)) {
    return NotFound(root, "/", kModelIndex, ": no component '", name, "'");
  }
  std::string path = JoinPath(root, name);
  if (!IsDirectory(path)) {
    return NotFound(root, "/", kModelIndex, ": component '", name, "' has no folder ", path);
  }
  return path;
}

absl::StatusOr<std::string> ResolveModelRoot(const std::string& path) {
  // A plain folder, or a snapshot folder (whose files are symlinks into the cache's blobs/). The
  // root is made absolute but symlinks are not resolved, so that names stay those of the snapshot.
  if (IsRegularFile(JoinPath(path, kModelIndex))) return AbsolutePath(path);

  // A Hugging Face cache entry: refs/main holds the commit hash of the snapshot to use.
  const std::string snapshots = JoinPath(path, "snapshots");
  if (IsDirectory(snapshots)) {
    const std::string ref = JoinPath(path, "refs/main");
    if (IsRegularFile(ref)) {
      ASSIGN_OR_RETURN(std::string hash, ReadFileToString(ref));
      hash = std::string(absl::StripAsciiWhitespace(hash));
      if (hash.empty() || absl::StrContains(hash, '/') || hash == "." || hash == "..") {
        return InvalidArgument(ref, ": '", hash, "' is not a snapshot name");
      }
      const std::string snapshot = JoinPath(snapshots, hash);
      if (IsRegularFile(JoinPath(snapshot, kModelIndex))) return AbsolutePath(snapshot);
      return NotFound(path, ": refs/main names snapshot ", hash, ", which has no ", kModelIndex);
    }
    // No refs/main (e.g. downloaded by revision only): accept a single snapshot.
    std::vector<std::string> candidates;
    absl::StatusOr<std::vector<std::string>> names = ListDirectory(snapshots);
    for (const std::string& name : names.ok() ? *names : std::vector<std::string>()) {
      const std::string snapshot = JoinPath(snapshots, name);
      if (IsRegularFile(JoinPath(snapshot, kModelIndex))) candidates.push_back(snapshot);
    }
    if (candidates.size() == 1) return AbsolutePath(candidates[0]);
    if (candidates.size() > 1) {
      return NotFound(path, ": no refs/main and ", candidates.size(), " snapshots with a ",
                      kModelIndex, "; pass the snapshot folder");
    }
  }
  return NotFound(path, ": neither a Diffusers model folder (no ", kModelIndex,
                  ") nor a Hugging Face cache entry");
}

absl::StatusOr<ModelIndex> ReadModelIndex(const std::string& path) {
  ASSIGN_OR_RETURN(std::string root, ResolveModelRoot(path));
  const std::string file = JoinPath(root, kModelIndex);
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  ASSIGN_OR_RETURN(ModelIndex index, ParseModelIndex(text, file));
  index.root = std::move(root);
  return index;
}

absl::StatusOr<ModelIndex> ParseModelIndex(absl::string_view text, const std::string& file) {
  ModelIndex index;
  ASSIGN_OR_RETURN(JsonConfig config, JsonConfig::FromText(text, file));
  ASSIGN_OR_RETURN(index.pipeline_class, config.GetString("_class_name", ""));
  if (index.pipeline_class.empty()) return InvalidArgument(file, ": '_class_name' is missing");

  for (const auto& [key, value] : config.json().items()) {
    // "_class_name", "_diffusers_version", "_name_or_path": metadata, not components.
    if (absl::StartsWith(key, "_")) continue;
    // Non-list values are pipeline options (e.g. "requires_safety_checker": true), as in diffusers.
    if (!value.is_array()) continue;
    if (value.size() != 2) {
      return InvalidArgument(file, ": component '", key, "' must be [library, class], got ",
                             value.dump());
    }
    if (value[0].is_null() && value[1].is_null()) continue;  // An optional component left out.
    if (!value[0].is_string() || !value[1].is_string()) {
      return InvalidArgument(file, ": component '", key, "' must be [library, class], got ",
                             value.dump());
    }
    index.components[key] = {value[0].get<std::string>(), value[1].get<std::string>()};
  }
  return index;
}

}  // namespace dgrid
