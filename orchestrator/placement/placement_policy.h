// Placement: which replica of a stage serves the next call of a request.
//
// A PlacementPolicy is a pure choice over a snapshot of candidates; it holds no state of its own
// and is called by WorkerRegistry::Reserve under the registry's lock, so implementations must be
// fast, must not block and must not call back into the registry. Policies are selected by name
// (config "policy") through MakePlacementPolicy; add a new one by implementing the interface and
// naming it there.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::orchestrator {

// One serving worker of the requested stage that has the requested model.
struct PlacementCandidate {
  std::string worker_id;
  std::string address;
  // Calls this orchestrator has running on the worker now.
  int32_t inflight = 0;
  // The worker's declared limit (WorkerInfo.max_inflight, at least 1).
  int32_t max_inflight = 1;
  // Last load the worker reported in a heartbeat (its own view; informational for policies).
  int32_t reported_inflight = 0;
  int32_t reported_queued = 0;
};

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  // The name under which the policy is selected in the config.
  virtual absl::string_view name() const = 0;
  // Returns the index in `candidates` of the worker to use. Workers in `excluded` (by worker id;
  // e.g. replicas that already failed this request) are never chosen. Errors: UNAVAILABLE when no
  // candidate is left after exclusion (nobody serves the model), RESOURCE_EXHAUSTED when every
  // remaining candidate is at its max_inflight.
  virtual absl::StatusOr<size_t> Choose(const std::vector<PlacementCandidate>& candidates,
                                        const std::set<std::string>& excluded) const = 0;
};

// Names accepted by MakePlacementPolicy.
std::vector<std::string> PlacementPolicyNames();

// Creates the policy called `name`; INVALID_ARGUMENT naming `policy` for an unknown name.
absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(absl::string_view name);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_
