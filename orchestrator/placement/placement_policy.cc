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

absl::StatusOr<PlacementContext> MakePlacementContext(absl::string_view model,
                                                      absl::string_view calibration) {
  PlacementContext context;
  absl::StatusOr<planner::ModelShape> shape = planner::ResolveModelShape(std::string(model));
  if (!shape.ok()) {
    return absl::Status(shape.status().code(),
                        absl::StrCat("--placement-model: ", shape.status().message()));
  }
  context.model = *shape;
  if (calibration.empty()) return context;
  auto annotate = [](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("--placement-calibration: ", s.message()));
  };
  absl::StatusOr<std::vector<planner::MeasuredRow>> rows =
      planner::ReadBenchRows(planner::ExpandJsonPaths(calibration));
  if (!rows.ok()) return annotate(rows.status());
  absl::StatusOr<planner::Calibration> fitted = planner::FitCalibration(context.model, *rows);
  if (!fitted.ok()) return annotate(fitted.status());
  context.calibration = *fitted;
  absl::StatusOr<double> latency =
      planner::FitCollectiveLatencyUs(context.model, context.calibration, context.links, *rows);
  if (latency.ok()) context.links.latency_us = *latency;  // only with multi-GPU rows
  return context;
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
