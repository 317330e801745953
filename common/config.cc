#include "common/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/status.h"

namespace dgrid {
namespace {

std::string Canonical(absl::string_view name) { return absl::StrReplaceAll(name, {{"-", "_"}}); }

const char* TypeName(Setting::Type type) {
  switch (type) {
    case Setting::kString:
      return "string";
    case Setting::kInt:
      return "integer";
    case Setting::kDouble:
      return "number";
    case Setting::kBool:
      return "boolean";
  }
  return "?";
}

absl::StatusOr<Config::Value> ParseText(const Setting& setting, absl::string_view text) {
  switch (setting.type) {
    case Setting::kString:
      return Config::Value(std::string(text));
    case Setting::kInt: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) {
        return InvalidArgument("'", setting.name, "' must be an integer, got '", text, "'");
      }
      return Config::Value(v);
    }
    case Setting::kDouble: {
      double v;
      if (!absl::SimpleAtod(text, &v) || !std::isfinite(v)) {
        return InvalidArgument("'", setting.name, "' must be a finite number, got '", text, "'");
      }
      return Config::Value(v);
    }
    case Setting::kBool: {
      bool v;
      if (!absl::SimpleAtob(text, &v)) {
        return InvalidArgument("'", setting.name, "' must be true or false, got '", text, "'");
      }
      return Config::Value(v);
    }
  }
  return Internal("unknown setting type");
}

}  // namespace

Config::Config(std::vector<Setting> settings) : settings_(std::move(settings)) {
  for (Setting& s : settings_) {
    s.name = Canonical(s.name);
    absl::StatusOr<Value> v = ParseText(s, s.default_value);
    // A bad default is a programming error; fall back to the type's zero so Get* stays total.
    if (!v.ok()) {
      switch (s.type) {
        case Setting::kString:
          v = Value(std::string());
          break;
        case Setting::kInt:
          v = Value(int64_t{0});
          break;
        case Setting::kDouble:
          v = Value(0.0);
          break;
        case Setting::kBool:
          v = Value(false);
          break;
      }
    }
    values_[s.name] = *v;
  }
}

const Setting* Config::Find(absl::string_view name) const {
  const std::string canonical = Canonical(name);
  for (const Setting& s : settings_) {
    if (s.name == canonical) return &s;
  }
  return nullptr;
}

absl::Status Config::SetValue(const Setting& setting, Value value, absl::string_view source_name) {
  double number = 0;
  bool numeric = false;
  if (const auto* i = std::get_if<int64_t>(&value)) {
    number = static_cast<double>(*i);
    numeric = true;
  } else if (const auto* d = std::get_if<double>(&value)) {
    number = *d;
    numeric = true;
  }
  if (numeric &&
      ((setting.min && number < *setting.min) || (setting.max && number > *setting.max))) {
    return InvalidArgument(source_name, ": '", setting.name, "' = ", number, " is outside [",
                           setting.min ? absl::StrCat(*setting.min) : "-inf", ", ",
                           setting.max ? absl::StrCat(*setting.max) : "inf", "]");
  }
  values_[setting.name] = std::move(value);
  set_.insert(setting.name);
  return absl::OkStatus();
}

bool Config::WasSet(absl::string_view name) const { return set_.count(Canonical(name)) > 0; }

absl::Status Config::Set(absl::string_view name, absl::string_view text,
                         absl::string_view source_name) {
  const Setting* setting = Find(name);
  if (setting == nullptr) {
    return InvalidArgument(source_name, ": unknown setting '", name, "'");
  }
  absl::StatusOr<Value> value = ParseText(*setting, text);
  if (!value.ok()) return Annotate(value.status(), source_name);
  return SetValue(*setting, *std::move(value), source_name);
}

absl::Status Config::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot open config file '", path, "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return LoadJson(buffer.str(), path);
}

absl::Status Config::LoadJson(absl::string_view text, absl::string_view source_name) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return InvalidArgument(source_name, ": not valid JSON");
  }
  if (!doc.is_object()) {
    return InvalidArgument(source_name, ": must be a JSON object of settings");
  }
  for (const auto& [key, json_value] : doc.items()) {
    const Setting* setting = Find(key);
    if (setting == nullptr) {
      return InvalidArgument(source_name, ": unknown setting '", key, "'");
    }
    Value value;
    switch (setting->type) {
      case Setting::kString:
        if (!json_value.is_string()) break;
        value = json_value.get<std::string>();
        RETURN_IF_ERROR(SetValue(*setting, std::move(value), source_name));
        continue;
      case Setting::kInt:
        if (!json_value.is_number_integer()) break;
        RETURN_IF_ERROR(SetValue(*setting, json_value.get<int64_t>(), source_name));
        continue;
      case Setting::kDouble:
        if (!json_value.is_number()) break;
        RETURN_IF_ERROR(SetValue(*setting, json_value.get<double>(), source_name));
        continue;
      case Setting::kBool:
        if (!json_value.is_boolean()) break;
        RETURN_IF_ERROR(SetValue(*setting, json_value.get<bool>(), source_name));
        continue;
    }
    return InvalidArgument(source_name, ": '", key, "' must be of type ", TypeName(setting->type),
                           ", got ", json_value.dump());
  }
  return absl::OkStatus();
}

absl::Status Config::ParseArgs(int argc, const char* const* argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return ParseArgs(args);
}

absl::Status Config::ParseArgs(const std::vector<std::string>& args) {
  struct Flag {
    std::string name;
    std::optional<std::string> value;
  };
  std::vector<Flag> flags;
  std::optional<std::string> config_file;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 3 || arg.rfind("--", 0) != 0) {
      if (arg == "--") {
        flags_done = true;
      } else {
        positional_.push_back(arg);
      }
      continue;
    }
    std::string body = arg.substr(2);
    Flag flag;
    const size_t eq = body.find('=');
    if (eq != std::string::npos) {
      flag.name = Canonical(body.substr(0, eq));
      flag.value = body.substr(eq + 1);
    } else {
      flag.name = Canonical(body);
    }
    if (flag.name == "help") {
      help_requested_ = true;
      continue;
    }
    const bool is_config = flag.name == "config";
    const Setting* setting = is_config ? nullptr : Find(flag.name);
    const bool negated_bool = setting == nullptr && flag.name.rfind("no_", 0) == 0 &&
                              Find(flag.name.substr(3)) != nullptr &&
                              Find(flag.name.substr(3))->type == Setting::kBool;
    if (!is_config && setting == nullptr && !negated_bool) {
      return InvalidArgument("unknown flag '--", body.substr(0, eq), "'");
    }
    if (negated_bool) {
      if (flag.value) return InvalidArgument("flag '--", flag.name, "' takes no value");
      flag.name = flag.name.substr(3);
      flag.value = "false";
    } else if (!flag.value) {
      if (setting != nullptr && setting->type == Setting::kBool) {
        flag.value = "true";
      } else if (i + 1 < args.size()) {
        flag.value = args[++i];
      } else {
        return InvalidArgument("flag '--", flag.name, "' needs a value");
      }
    }
    if (is_config) {
      config_file = flag.value;
    } else {
      flags.push_back(std::move(flag));
    }
  }
  if (config_file) RETURN_IF_ERROR(LoadFile(*config_file));
  for (const Flag& flag : flags) {
    RETURN_IF_ERROR(Set(flag.name, *flag.value, "command line"));
  }
  return absl::OkStatus();
}

namespace {
template <typename T>
absl::StatusOr<T> GetAs(const std::map<std::string, Config::Value, std::less<>>& values,
                        const Setting* setting, absl::string_view name, const char* wanted) {
  if (setting == nullptr) return NotFound("setting '", name, "' is not declared");
  const auto it = values.find(setting->name);
  if (const T* v = std::get_if<T>(&it->second)) return *v;
  return InvalidArgument("setting '", name, "' is a ", TypeName(setting->type), ", not a ", wanted);
}
}  // namespace

absl::StatusOr<std::string> Config::GetString(absl::string_view name) const {
  return GetAs<std::string>(values_, Find(name), name, "string");
}
absl::StatusOr<int64_t> Config::GetInt(absl::string_view name) const {
  return GetAs<int64_t>(values_, Find(name), name, "integer");
}
absl::StatusOr<double> Config::GetDouble(absl::string_view name) const {
  return GetAs<double>(values_, Find(name), name, "number");
}
absl::StatusOr<bool> Config::GetBool(absl::string_view name) const {
  return GetAs<bool>(values_, Find(name), name, "boolean");
}

std::string Config::Usage() const {
  std::string out;
  for (const Setting& s : settings_) {
    absl::StrAppend(&out, "  --", absl::StrReplaceAll(s.name, {{"_", "-"}}), " (", TypeName(s.type),
                    ", default '", s.default_value, "')  ", s.help, "\n");
  }
  absl::StrAppend(&out, "  --config FILE  JSON object of the settings above\n");
  return out;
}

}  // namespace dgrid
