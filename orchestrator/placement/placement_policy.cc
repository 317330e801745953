#include "orchestrator/placement/placement_policy.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "orchestrator/placement/least_loaded.h"

namespace dgrid::orchestrator {

std::vector<std::string> PlacementPolicyNames() { return {std::string(LeastLoadedPolicy::kName)}; }

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(absl::string_view name) {
  if (name == LeastLoadedPolicy::kName) return std::make_unique<LeastLoadedPolicy>();
  return absl::InvalidArgumentError(
      absl::StrCat("policy: unknown placement policy '", name,
                   "' (known: ", absl::StrJoin(PlacementPolicyNames(), ", "), ")"));
}

}  // namespace dgrid::orchestrator
