#include "orchestrator/placement/placement_policy.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "orchestrator/placement/least_loaded.h"
#include "orchestrator/placement/predicted_completion.h"
#include "orchestrator/placement/round_robin.h"

namespace dgrid::orchestrator {

std::vector<std::string> PlacementPolicyNames() {
  return {std::string(LeastLoadedPolicy::kName), std::string(RoundRobinPolicy::kName),
          std::string(PredictedCompletionPolicy::kName)};
}

absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(
    absl::string_view name, const PlacementContext& context) {
  if (name == LeastLoadedPolicy::kName) return std::make_unique<LeastLoadedPolicy>();
  if (name == RoundRobinPolicy::kName) return std::make_unique<RoundRobinPolicy>();
  if (name == PredictedCompletionPolicy::kName) {
    return std::make_unique<PredictedCompletionPolicy>(context);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("policy: unknown placement policy '", name,
                   "' (known: ", absl::StrJoin(PlacementPolicyNames(), ", "), ")"));
}

planner::GroupShape GroupShapeFromRegistration(int cfg, int ring, int ulysses,
                                               absl::string_view interconnect) {
  planner::GroupShape shape;
  shape.cfg = cfg > 0 ? cfg : 1;
  shape.ring = ring > 0 ? ring : 1;
  shape.ulysses = ulysses > 0 ? ulysses : 1;
  const std::string lower = absl::AsciiStrToLower(interconnect);
  const bool pcie = absl::StartsWith(lower, "pcie");
  const bool crosses_nodes = absl::StrContains(lower, "ib") || absl::StrContains(lower, "tcp") ||
                             absl::StrContains(lower, "ethernet") ||
                             absl::StrContains(lower, "inter-node");
  shape.ulysses_link = pcie ? planner::LinkClass::kPcie : planner::LinkClass::kNvlink;
  if (absl::StartsWith(lower, "tcp")) shape.ulysses_link = planner::LinkClass::kInterNode;
  shape.ring_link = crosses_nodes ? planner::LinkClass::kInterNode : shape.ulysses_link;
  return shape;
}

absl::Status CheckAnyCandidateLeft(const std::vector<PlacementCandidate>& candidates,
                                   const std::set<std::string>& excluded) {
  for (const PlacementCandidate& c : candidates) {
    if (excluded.count(c.worker_id) == 0) return absl::OkStatus();
  }
  return absl::UnavailableError(
      excluded.empty() ? std::string("no serving worker")
                       : absl::StrCat("no serving worker besides ", absl::StrJoin(excluded, ", ")));
}

}  // namespace dgrid::orchestrator
