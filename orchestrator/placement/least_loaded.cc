#include "orchestrator/placement/least_loaded.h"

#include "absl/status/status.h"
#include "common/status.h"

namespace dgrid::orchestrator {

absl::StatusOr<size_t> LeastLoadedPolicy::Choose(const PlacementRequest& request,
                                                 const std::vector<PlacementCandidate>& candidates,
                                                 const std::set<std::string>& excluded) const {
  RETURN_IF_ERROR(CheckAnyCandidateLeft(candidates, excluded));
  bool found = false;
  size_t best = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const PlacementCandidate& c = candidates[i];
    if (excluded.count(c.worker_id) > 0 || c.inflight >= c.max_inflight) continue;
    if (!found || c.inflight < candidates[best].inflight ||
        (c.inflight == candidates[best].inflight && c.worker_id < candidates[best].worker_id)) {
      best = i;
      found = true;
    }
  }
  if (!found) return absl::ResourceExhaustedError("every serving worker is at its max_inflight");
  return best;
}

}  // namespace dgrid::orchestrator
