// "round-robin": candidates in worker-id order, starting one further at each call, skipping
// excluded and full ones. Holds one atomic counter; thread-safe.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_ROUND_ROBIN_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_ROUND_ROBIN_H_

#include <atomic>
#include <cstdint>

#include "orchestrator/placement/placement_policy.h"

namespace dgrid::orchestrator {

class RoundRobinPolicy : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "round-robin";
  using PlacementPolicy::Choose;
  absl::string_view name() const override { return kName; }
  absl::StatusOr<size_t> Choose(const PlacementRequest& request,
                                const std::vector<PlacementCandidate>& candidates,
                                const std::set<std::string>& excluded) const override;

 private:
  mutable std::atomic<uint64_t> next_{0};
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_ROUND_ROBIN_H_
