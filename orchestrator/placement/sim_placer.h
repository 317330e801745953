// Adapts a PlacementPolicy to the simulator's SimPlacer (planner/simulation.h), so that
// dgrid-bench-simulate and `dgrid plan` drive the orchestrator's real policies: each simulated
// group becomes a PlacementCandidate (id, in-flight count, max_inflight, layout, predicted
// backlog) and each simulated request a PlacementRequest. Not thread-safe (one simulation at a
// time); the policy is not owned and must outlive the placer.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_SIM_PLACER_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_SIM_PLACER_H_

#include <memory>
#include <string>
#include <vector>

#include "orchestrator/placement/placement_policy.h"
#include "planner/simulation.h"

namespace dgrid::orchestrator {

class PolicySimPlacer : public planner::SimPlacer {
 public:
  explicit PolicySimPlacer(const PlacementPolicy* policy) : policy_(policy) {}
  std::string name() const override { return std::string(policy_->name()); }
  absl::StatusOr<size_t> Place(const planner::SimRequest& request,
                               const std::vector<planner::SimGroupView>& groups) override;

 private:
  const PlacementPolicy* policy_;
  std::vector<PlacementCandidate> candidates_;  // reused between calls
};

// A placer that owns its policy (for planner::PlacerFactory).
std::unique_ptr<planner::SimPlacer> MakeOwningSimPlacer(std::unique_ptr<PlacementPolicy> policy);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_SIM_PLACER_H_
