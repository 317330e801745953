// Placement: which replica of a stage (for the denoiser: which denoiser group) serves the next
// call of a request.
//
// A PlacementPolicy is a choice over a snapshot of candidates. It is called by
// WorkerRegistry::Reserve under the registry's lock (and by the simulator, planner/simulation.h,
// through orchestrator/placement/sim_placer.h), so implementations must be fast, must not block
// and must not call back into the registry; Choose may be called from several threads at once.
// Policies are selected by name (dgrid-orchestrator / dgrid up `--policy`) through
// MakePlacementPolicy; add one by implementing the interface and naming it there.
//
// Policies: "least-loaded" (fewest calls in flight), "round-robin", and "predicted-completion"
// (dgrid's: lowest predicted queue + service time from the planner's cost model, deadline-aware,
// CFG requests prefer CFG-parallel groups). docs/placement.md explains them.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "families/registry.h"
#include "planner/cost_model.h"
#include "planner/model_shape.h"
#include "planner/scheduling.h"

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
  // Denoiser groups: the group's layout (WorkerInfo.layout, 1/1/1 when not reported) and the
  // links its axes run on (from WorkerInfo.interconnect).
  planner::GroupShape layout;
  // Predicted work already on the worker, ms, when the caller knows it (the simulator does, and
  // the registry for the calls it placed); < 0 = unknown, policies then estimate inflight x this
  // request's service time.
  double outstanding_ms = -1;
  // The same per held request (running first, then arrival order), when known; with it and
  // `scheduling` a policy can tell where a newcomer would run (planner/scheduling.h).
  std::vector<planner::PendingWork> pending;
  // How the worker orders what it holds (WorkerInfo.scheduling).
  planner::GroupScheduling scheduling = planner::GroupScheduling::kFifo;
  // The worker's measured step time over the cost model's (1 = as predicted, or not measured yet);
  // cost-model policies scale their service times by it.
  double speed = 1;
};

// What is being placed. Width 0 = unknown (the policy then treats the request as the default size
// of the model's family, 1024^2 for FLUX.1).
struct PlacementRequest {
  int width = 0;
  int height = 0;
  int steps = families::DefaultFamily().defaults().steps;
  bool cfg = false;  // true CFG (two passes per step)
  int frames = 0;    // a video's frames; 0: the family's default
  // Time left before the request's deadline, ms; 0 = no deadline.
  double deadline_ms = 0;
};

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  // The name under which the policy is selected in the config.
  virtual absl::string_view name() const = 0;
  // Returns the index in `candidates` of the worker to use. Workers in `excluded` (by worker id;
  // e.g. replicas that already failed this request) are never chosen. Errors: UNAVAILABLE when no
  // candidate is left after exclusion (nobody serves the model), RESOURCE_EXHAUSTED when every
  // remaining candidate is at its max_inflight (the caller may wait), DEADLINE_EXCEEDED when a
  // deadline-aware policy predicts that no candidate can finish in time (do not wait).
  virtual absl::StatusOr<size_t> Choose(const PlacementRequest& request,
                                        const std::vector<PlacementCandidate>& candidates,
                                        const std::set<std::string>& excluded) const = 0;
  // Predicted service time (no queue) of `request` on `candidate` (at its `speed`), ms; < 0 when
  // the policy has no cost model (the registry then cannot track the worker's pending work).
  virtual double ServiceMs(const PlacementRequest& /*request*/,
                           const PlacementCandidate& /*candidate*/) const {
    return -1;
  }
  // The same for a request the caller knows nothing about.
  absl::StatusOr<size_t> Choose(const std::vector<PlacementCandidate>& candidates,
                                const std::set<std::string>& excluded) const {
    return Choose(PlacementRequest(), candidates, excluded);
  }
};

// What the cost-model-based policies need; the defaults are the default family's default shape
// (FLUX.1-dev) on H100 SXM links.
struct PlacementContext {
  planner::ModelShape model = planner::DefaultModelShape();
  planner::Calibration calibration;
  planner::LinkSpeeds links;
  // Extra per-group in-flight cap applied on top of each worker's max_inflight (0 = none).
  int max_inflight_per_group = 0;
};

// The context of a deployment: `model` is a shape name ("flux-dev") or a Diffusers folder;
// `calibration` lists bench JSON files or folders (comma-separated) of the serving card, whose
// one-GPU rows fit the compute rate (and multi-GPU rows, when present, the per-collective latency);
// empty keeps the built-in H100 calibration. Errors name the flag: `--placement-model`,
// `--placement-calibration`.
absl::StatusOr<PlacementContext> MakePlacementContext(absl::string_view model,
                                                      absl::string_view calibration);

// Names accepted by MakePlacementPolicy.
std::vector<std::string> PlacementPolicyNames();

// Creates the policy called `name`; INVALID_ARGUMENT naming `policy` for an unknown name.
absl::StatusOr<std::unique_ptr<PlacementPolicy>> MakePlacementPolicy(
    absl::string_view name, const PlacementContext& context = PlacementContext());

// A group's shape from what a worker registers: degrees (0 read as 1) and its interconnect
// string ("nvlink", "pcie", "nvlink+ib", "pcie+ib", "tcp"; unknown or empty = "nvlink").
planner::GroupShape GroupShapeFromRegistration(int cfg, int ring, int ulysses,
                                               absl::string_view interconnect);

// The candidates a policy may consider: not excluded. UNAVAILABLE (naming the exclusions) when
// none is left. Shared by the policies.
absl::Status CheckAnyCandidateLeft(const std::vector<PlacementCandidate>& candidates,
                                   const std::set<std::string>& excluded);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_PLACEMENT_POLICY_H_
