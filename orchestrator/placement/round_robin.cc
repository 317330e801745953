#include "orchestrator/placement/round_robin.h"

#include <algorithm>
#include <numeric>

#include "absl/status/status.h"
#include "common/status.h"

namespace dgrid::orchestrator {

absl::StatusOr<size_t> RoundRobinPolicy::Choose(const PlacementRequest& request,
                                                const std::vector<PlacementCandidate>& candidates,
                                                const std::set<std::string>& excluded) const {
  RETURN_IF_ERROR(CheckAnyCandidateLeft(candidates, excluded));
  // Worker-id order, so that the rotation does not depend on the order of the snapshot.
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return candidates[a].worker_id < candidates[b].worker_id; });
  const uint64_t start = next_.fetch_add(1);
  for (size_t k = 0; k < order.size(); ++k) {
    const PlacementCandidate& c = candidates[order[(start + k) % order.size()]];
    if (excluded.count(c.worker_id) > 0 || c.inflight >= c.max_inflight) continue;
    return order[(start + k) % order.size()];
  }
  return absl::ResourceExhaustedError("every serving worker is at its max_inflight");
}

}  // namespace dgrid::orchestrator
