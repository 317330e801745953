#include "services/encoder/models/component_files.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"

namespace dgrid::encoder {

absl::StatusOr<ComponentFiles> ReadComponentFiles(const std::string& folder,
                                                  const LoadOptions& options) {
  ASSIGN_OR_RETURN(JsonConfig config, JsonConfig::FromFile(folder + "/config.json"));
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(folder, options));
  return ComponentFiles{std::move(config), std::move(weights)};
}

void WarnUnusedWeights(const WeightMap& weights, absl::string_view model_name) {
  const std::vector<std::string> rest = weights.RemainingNames();
  if (rest.empty()) return;
  constexpr size_t kShown = 8;
  std::vector<std::string> shown(rest.begin(), rest.begin() + std::min(rest.size(), kShown));
  DG_LOG_WARN("", "%s: %d unused parameters in %s: %s%s", std::string(model_name),
              static_cast<int>(rest.size()), weights.source(), absl::StrJoin(shown, ", "),
              rest.size() > kShown ? ", ..." : "");
}

}  // namespace dgrid::encoder
