// Typed reads of JSON fields that name the field's path in their errors
// ("nodes[1].gpus[0].memory_gb: expected a number"). Shared by the planner's file parsers.
// Stateless functions; thread-safe.
#ifndef DGRID_PLANNER_JSON_FIELDS_H_
#define DGRID_PLANNER_JSON_FIELDS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace dgrid::planner {

// Parses `text`; INVALID_ARGUMENT "<what>: not valid JSON (...)" otherwise.
absl::StatusOr<nlohmann::json> ParseJsonText(absl::string_view text, absl::string_view what);
// Reads a whole file; NOT_FOUND when it cannot be opened.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// `object[key]` at `path` ("" for the root). Missing: `fallback` when given (optional field),
// else INVALID_ARGUMENT "<path>.<key>: missing". Wrong type: INVALID_ARGUMENT "... expected ...".
absl::StatusOr<double> NumberField(const nlohmann::json& object, absl::string_view path,
                                   absl::string_view key, const double* fallback = nullptr);
absl::StatusOr<int> IntField(const nlohmann::json& object, absl::string_view path,
                             absl::string_view key, const int* fallback = nullptr);
absl::StatusOr<std::string> StringField(const nlohmann::json& object, absl::string_view path,
                                        absl::string_view key,
                                        const std::string* fallback = nullptr);
absl::StatusOr<bool> BoolField(const nlohmann::json& object, absl::string_view path,
                               absl::string_view key, const bool* fallback = nullptr);
// An array field (required).
absl::StatusOr<const nlohmann::json*> ArrayField(const nlohmann::json& object,
                                                 absl::string_view path, absl::string_view key);

// "<path>.<key>" without a leading dot at the root.
std::string FieldPath(absl::string_view path, absl::string_view key);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_JSON_FIELDS_H_
