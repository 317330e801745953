// Fuzz target for the JSON files a model folder and a deployment bring: model_index.json
// (dgrid::ParseModelIndex), every component's config.json / scheduler_config.json
// (dgrid::JsonConfig and its typed getters, which the model and scheduler configs read through),
// and the process config file (dgrid::Config::LoadJson).
//
// The input is one JSON text, given to all three. The target aborts when a reader breaks its
// contract: an error other than INVALID_ARGUMENT or one that does not name the file; a getter that
// fails on a key that is absent or null, or succeeds with a value of the wrong type; a model index
// that is accepted without a pipeline class; a config value accepted outside its declared range.
// Memory errors, leaks and undefined behaviour are caught by the sanitizers it is built with.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/config.h"
#include "common/diffusers_layout.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using dgrid::fuzz::Check;

void CheckError(const absl::Status& status, absl::string_view file) {
  Check(status.code() == absl::StatusCode::kInvalidArgument, "unexpected status code");
  Check(absl::StrContains(status.message(), file), "error does not name the file");
}

template <typename T>
void CheckGetter(const dgrid::JsonConfig& config, const std::string& key,
                 const absl::StatusOr<T>& value) {
  if (!config.Has(key)) {
    Check(value.ok(), "absent or null key is not its default");
    return;
  }
  if (!value.ok()) CheckError(value.status(), config.source());
}

// Keys the model and scheduler configs read, plus every key the text has.
void ReadConfig(absl::string_view text) {
  constexpr absl::string_view kFile = "fuzz/transformer/config.json";
  absl::StatusOr<dgrid::JsonConfig> config = dgrid::JsonConfig::FromText(text, std::string(kFile));
  if (!config.ok()) {
    CheckError(config.status(), kFile);
    return;
  }
  std::vector<std::string> keys = {
      "num_layers",           "attention_head_dim", "axes_dims_rope", "shift",
      "use_dynamic_shifting", "_class_name",        "patch_size",     "eps"};
  for (const auto& [key, value] : config->json().items()) keys.push_back(key);
  for (const std::string& key : keys) {
    CheckGetter(*config, key, config->GetInt(key, 1));
    CheckGetter(*config, key, config->GetDouble(key, 1.0));
    CheckGetter(*config, key, config->GetBool(key, false));
    CheckGetter(*config, key, config->GetString(key, "x"));
    CheckGetter(*config, key, config->GetIntList(key, {1}));
    CheckGetter(*config, key, config->GetStringList(key, {"x"}));
    CheckGetter(*config, key, config->GetOptionalDouble(key));
    absl::StatusOr<int64_t> i = config->GetInt(key, 1);
    if (i.ok()) {
      const absl::Status positive = config->CheckPositive(key, *i);
      Check(positive.ok() == (*i > 0), "CheckPositive disagrees with the value");
    }
  }
}

void ReadModelIndex(absl::string_view text) {
  constexpr absl::string_view kFile = "fuzz/model_index.json";
  absl::StatusOr<dgrid::ModelIndex> index = dgrid::ParseModelIndex(text, std::string(kFile));
  if (!index.ok()) {
    CheckError(index.status(), kFile);
    return;
  }
  Check(!index->pipeline_class.empty(), "model index accepted without _class_name");
  Check(index->root.empty(), "ParseModelIndex set a root");
  for (const auto& [name, component] : index->components) {
    Check(!absl::StartsWith(name, "_"), "metadata key taken for a component");
  }
}

void ReadProcessConfig(absl::string_view text) {
  constexpr absl::string_view kFile = "fuzz/stage.json";
  dgrid::Config config({{"port", dgrid::Setting::kInt, "50051", "port", 1, 65535},
                        {"model", dgrid::Setting::kString, "", "model folder"},
                        {"max_queue", dgrid::Setting::kInt, "8", "queue", 0, std::nullopt},
                        {"guidance", dgrid::Setting::kDouble, "3.5", "scale", 0.0, 100.0},
                        {"ucx", dgrid::Setting::kBool, "false", "use UCX"}});
  const absl::Status loaded = config.LoadJson(text, kFile);
  if (!loaded.ok()) CheckError(loaded, kFile);
  // Whatever was accepted is within its declared range and of its declared type.
  absl::StatusOr<int64_t> port = config.GetInt("port");
  Check(port.ok() && *port >= 1 && *port <= 65535, "port outside its range");
  absl::StatusOr<int64_t> queue = config.GetInt("max_queue");
  Check(queue.ok() && *queue >= 0, "max_queue outside its range");
  absl::StatusOr<double> guidance = config.GetDouble("guidance");
  Check(guidance.ok() && *guidance >= 0 && *guidance <= 100, "guidance outside its range");
  Check(config.GetString("model").ok() && config.GetBool("ucx").ok(), "typed read failed");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  ReadConfig(text);
  ReadModelIndex(text);
  ReadProcessConfig(text);
  return 0;
}
