// "least-loaded": the candidate with the fewest calls in flight from this orchestrator; ties go to
// the smallest worker id so that choices are deterministic (and testable). Stateless, thread-safe.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_LEAST_LOADED_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_LEAST_LOADED_H_

#include "orchestrator/placement/placement_policy.h"

namespace dgrid::orchestrator {

class LeastLoadedPolicy : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "least-loaded";
  using PlacementPolicy::Choose;
  absl::string_view name() const override { return kName; }
  absl::StatusOr<size_t> Choose(const PlacementRequest& request,
                                const std::vector<PlacementCandidate>& candidates,
                                const std::set<std::string>& excluded) const override;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_LEAST_LOADED_H_
