// Process configuration: declared settings filled from defaults, then a JSON config file, then
// command-line flags (later sources win).
//
//   Config config({{"port", Setting::kInt, "50051", "gRPC port", 1, 65535},
//                  {"model", Setting::kString, "", "model folder"}});
//   RETURN_IF_ERROR(config.ParseArgs(argc, argv));   // handles --config=file.json too
//   ASSIGN_OR_RETURN(int64_t port, config.GetInt("port"));
//
// A config file is a JSON object whose keys are declared settings ("-" and "_" are interchangeable
// in names). Unknown keys, values of the wrong type, out-of-range numbers and malformed JSON are
// INVALID_ARGUMENT naming the file and the key. Not thread-safe while parsing; const methods may be
// called from any thread afterwards.
#ifndef DGRID_COMMON_CONFIG_H_
#define DGRID_COMMON_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dgrid {

struct Setting {
  enum Type { kString, kInt, kDouble, kBool };
  std::string name;
  Type type = kString;
  // Default in flag syntax ("8", "0.5", "true", "text"); empty string for kString means "".
  // Every declared setting has a value, so Get* never fails for a lack of one.
  std::string default_value;
  std::string help;
  // Inclusive bounds for kInt and kDouble.
  std::optional<double> min;
  std::optional<double> max;
};

class Config {
 public:
  using Value = std::variant<std::string, int64_t, double, bool>;

  // Declares the settings. "config" and "help" are reserved: --config=FILE loads a file,
  // --help sets help_requested().
  explicit Config(std::vector<Setting> settings);

  // Parses argv[1..]. Accepts --name=value, --name value, --flag / --no-flag for booleans, and "--"
  // to end flags. Other words are positional. A --config file is loaded before any flag is applied,
  // wherever it appears.
  [[nodiscard]] absl::Status ParseArgs(int argc, const char* const* argv);
  [[nodiscard]] absl::Status ParseArgs(const std::vector<std::string>& args);

  // Loads a JSON object of settings from a file or from text (`source_name` names it in errors).
  [[nodiscard]] absl::Status LoadFile(const std::string& path);
  [[nodiscard]] absl::Status LoadJson(absl::string_view text, absl::string_view source_name);

  // Sets one setting from its flag-syntax text, validating type and range.
  [[nodiscard]] absl::Status Set(absl::string_view name, absl::string_view text,
                                 absl::string_view source_name);

  // Typed reads. NOT_FOUND for an undeclared name; INVALID_ARGUMENT for the wrong type.
  absl::StatusOr<std::string> GetString(absl::string_view name) const;
  absl::StatusOr<int64_t> GetInt(absl::string_view name) const;
  absl::StatusOr<double> GetDouble(absl::string_view name) const;
  absl::StatusOr<bool> GetBool(absl::string_view name) const;

  // Whether a config file or a flag gave the setting (not only its default): "--negative-prompt ''"
  // is given, and empty.
  bool WasSet(absl::string_view name) const;

  const std::vector<std::string>& positional() const { return positional_; }
  bool help_requested() const { return help_requested_; }
  // One line per setting: name, type, default, help.
  std::string Usage() const;

 private:
  const Setting* Find(absl::string_view name) const;
  absl::Status SetValue(const Setting& setting, Value value, absl::string_view source_name);

  std::vector<Setting> settings_;
  std::map<std::string, Value, std::less<>> values_;
  std::set<std::string, std::less<>> set_;  // names given by a file or a flag
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace dgrid

#endif  // DGRID_COMMON_CONFIG_H_
