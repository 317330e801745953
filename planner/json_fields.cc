#include "planner/json_fields.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace dgrid::planner {
namespace {

// The field, or nullptr when absent; INVALID_ARGUMENT when `object` is not an object.
absl::StatusOr<const nlohmann::json*> Find(const nlohmann::json& object, absl::string_view path,
                                           absl::string_view key) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.empty() ? std::string("(root)") : std::string(path), ": expected an object"));
  }
  auto it = object.find(std::string(key));
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status Missing(absl::string_view path, absl::string_view key) {
  return absl::InvalidArgumentError(absl::StrCat(FieldPath(path, key), ": missing"));
}

absl::Status WrongType(absl::string_view path, absl::string_view key, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(FieldPath(path, key), ": expected ", want));
}

}  // namespace

std::string FieldPath(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

absl::StatusOr<nlohmann::json> ParseJsonText(absl::string_view text, absl::string_view what) {
  nlohmann::json json = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                              /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not valid JSON"));
  }
  return json;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<double> NumberField(const nlohmann::json& object, absl::string_view path,
                                   absl::string_view key, const double* fallback) {
  const nlohmann::json* field;
  if (auto found = Find(object, path, key); !found.ok()) {
    return found.status();
  } else {
    field = *found;
  }
  if (field == nullptr) {
    if (fallback != nullptr) return *fallback;
    return Missing(path, key);
  }
  if (!field->is_number()) return WrongType(path, key, "a number");
  const double value = field->get<double>();
  if (!std::isfinite(value)) return WrongType(path, key, "a finite number");
  return value;
}

absl::StatusOr<int> IntField(const nlohmann::json& object, absl::string_view path,
                             absl::string_view key, const int* fallback) {
  const double fallback_value = fallback != nullptr ? *fallback : 0;
  absl::StatusOr<double> value =
      NumberField(object, path, key, fallback != nullptr ? &fallback_value : nullptr);
  if (!value.ok()) {
    if (absl::StrContains(value.status().message(), "expected")) {
      return WrongType(path, key, "an integer");
    }
    return value.status();
  }
  if (*value != std::floor(*value) || std::fabs(*value) > 1e9) {
    return WrongType(path, key, "an integer");
  }
  return static_cast<int>(*value);
}

absl::StatusOr<std::string> StringField(const nlohmann::json& object, absl::string_view path,
                                        absl::string_view key, const std::string* fallback) {
  const nlohmann::json* field;
  if (auto found = Find(object, path, key); !found.ok()) {
    return found.status();
  } else {
    field = *found;
  }
  if (field == nullptr) {
    if (fallback != nullptr) return *fallback;
    return Missing(path, key);
  }
  if (!field->is_string()) return WrongType(path, key, "a string");
  return field->get<std::string>();
}

absl::StatusOr<bool> BoolField(const nlohmann::json& object, absl::string_view path,
                               absl::string_view key, const bool* fallback) {
  const nlohmann::json* field;
  if (auto found = Find(object, path, key); !found.ok()) {
    return found.status();
  } else {
    field = *found;
  }
  if (field == nullptr) {
    if (fallback != nullptr) return *fallback;
    return Missing(path, key);
  }
  if (!field->is_boolean()) return WrongType(path, key, "true or false");
  return field->get<bool>();
}

absl::StatusOr<const nlohmann::json*> ArrayField(const nlohmann::json& object,
                                                 absl::string_view path, absl::string_view key) {
  const nlohmann::json* field;
  if (auto found = Find(object, path, key); !found.ok()) {
    return found.status();
  } else {
    field = *found;
  }
  if (field == nullptr) return Missing(path, key);
  if (!field->is_array()) return WrongType(path, key, "an array");
  return field;
}

}  // namespace dgrid::planner
