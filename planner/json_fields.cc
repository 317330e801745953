#include "planner/json_fields.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

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

namespace {

// The shared part of the typed reads: the field if present and of the wanted JSON type, nullptr
// when absent (the caller applies its fallback), an error otherwise.
absl::StatusOr<const nlohmann::json*> TypedField(const nlohmann::json& object,
                                                 absl::string_view path, absl::string_view key,
                                                 bool (nlohmann::json::*is_type)() const noexcept,
                                                 absl::string_view want) {
  ASSIGN_OR_RETURN(const nlohmann::json* field, Find(object, path, key));
  if (field != nullptr && !(field->*is_type)()) return WrongType(path, key, want);
  return field;
}

template <typename T>
absl::StatusOr<T> Fallback(const T* fallback, absl::string_view path, absl::string_view key) {
  if (fallback != nullptr) return *fallback;
  return Missing(path, key);
}

}  // namespace

absl::StatusOr<double> NumberField(const nlohmann::json& object, absl::string_view path,
                                   absl::string_view key, const double* fallback) {
  ASSIGN_OR_RETURN(const nlohmann::json* field,
                   TypedField(object, path, key, &nlohmann::json::is_number, "a number"));
  if (field == nullptr) return Fallback(fallback, path, key);
  const double value = field->get<double>();
  if (!std::isfinite(value)) return WrongType(path, key, "a finite number");
  return value;
}

absl::StatusOr<int> IntField(const nlohmann::json& object, absl::string_view path,
                             absl::string_view key, const int* fallback) {
  ASSIGN_OR_RETURN(const nlohmann::json* field,
                   TypedField(object, path, key, &nlohmann::json::is_number, "an integer"));
  if (field == nullptr) return Fallback(fallback, path, key);
  const double value = field->get<double>();
  if (!std::isfinite(value) || value != std::floor(value) || std::fabs(value) > 1e9) {
    return WrongType(path, key, "an integer");
  }
  return static_cast<int>(value);
}

absl::StatusOr<std::string> StringField(const nlohmann::json& object, absl::string_view path,
                                        absl::string_view key, const std::string* fallback) {
  ASSIGN_OR_RETURN(const nlohmann::json* field,
                   TypedField(object, path, key, &nlohmann::json::is_string, "a string"));
  if (field == nullptr) return Fallback(fallback, path, key);
  return field->get<std::string>();
}

absl::StatusOr<bool> BoolField(const nlohmann::json& object, absl::string_view path,
                               absl::string_view key, const bool* fallback) {
  ASSIGN_OR_RETURN(const nlohmann::json* field,
                   TypedField(object, path, key, &nlohmann::json::is_boolean, "true or false"));
  if (field == nullptr) return Fallback(fallback, path, key);
  return field->get<bool>();
}

absl::StatusOr<const nlohmann::json*> ArrayField(const nlohmann::json& object,
                                                 absl::string_view path, absl::string_view key) {
  ASSIGN_OR_RETURN(const nlohmann::json* field,
                   TypedField(object, path, key, &nlohmann::json::is_array, "an array"));
  if (field == nullptr) return Missing(path, key);
  return field;
}

}  // namespace dgrid::planner
