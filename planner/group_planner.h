// Planning denoiser groups for a topology and a request mix (`dgrid plan`).
//
// Rules (each a consequence of the cost model, and stated in the plan's reasons):
//   - a group's ranks are consecutive GPUs of one NVLink island where it fits, so the Ulysses
//     all-to-all (4 per attention layer) stays on NVLink; the layout inside a group is the
//     cfg x ring x ulysses factorisation with the lowest mix-weighted request time, which puts
//     Ulysses inside the island and Ring across islands or nodes (Ring traffic overlaps attention);
//   - CFG parallel (cfg = 2) is considered when part of the mix uses true CFG;
//   - the split of each node into groups (a mix of sizes for a mix of request sizes) is chosen by
//     simulating every candidate split with the real placement policy and keeping the one with the
//     most requests within slo_factor x isolated latency (ties: lower p99).
//
// Thread-compatible. Errors: INVALID_ARGUMENT when no layout of the model fits the topology (e.g.
// the weights do not fit a GPU's memory, or no group size divides the heads), or for an invalid
// workload.
#ifndef DGRID_PLANNER_GROUP_PLANNER_H_
#define DGRID_PLANNER_GROUP_PLANNER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"
#include "planner/simulation.h"
#include "planner/topology.h"
#include "planner/workload.h"

namespace dgrid::planner {

// Every layout of `size` GPUs starting in one node of `topology` (size <= node GPUs), or spanning
// size / node-GPUs whole nodes, with the link class of each axis. Layouts whose ulysses degree does
// not divide the heads are left out; cfg = 2 only when `allow_cfg`.
std::vector<GroupShape> CandidateLayouts(const Topology& topology, const ModelShape& model,
                                         int size, bool allow_cfg);

// The subset of CandidateLayouts the planner deploys: per CFG degree, Ulysses as wide as the
// heads allow inside one NVLink island and Ring for the rest.
std::vector<GroupShape> PlannableLayouts(const Topology& topology, const ModelShape& model,
                                         int size, bool allow_cfg);

// The request's latency alone on the best plannable layout of the topology (the SLO unit).
absl::StatusOr<double> IsolatedLatencyMs(const Topology& topology, const ModelShape& model,
                                         const CostModel& cost, const RequestShape& request);

// What "isolated latency" (the SLO unit) means: the request alone on the fastest layout the
// topology allows, or alone on one GPU.
enum class SloReference { kBestLayout, kSingleGpu };
const char* SloReferenceName(SloReference reference);

// Isolated latency of every class of `workload` under `reference`.
absl::StatusOr<std::vector<double>> ReferenceLatenciesMs(const Topology& topology,
                                                         const ModelShape& model,
                                                         const CostModel& cost,
                                                         const Workload& workload,
                                                         SloReference reference);

struct PlanOptions {
  SloReference slo_reference = SloReference::kBestLayout;
  int max_inflight = 4;     // per group (running + queued)
  int sim_requests = 2000;  // per candidate split
  uint64_t seed = 7;
  double deadline_factor = 0;  // deadlines given to simulated requests (0 = none)
  // How the planned groups order their requests (the denoisers' --scheduling).
  GroupScheduling scheduling = GroupScheduling::kFifo;
  // Requests of one shape a planned group runs as one batch (the denoisers' --max-batch).
  int max_batch = 1;
  // Candidates are scored on these requests (a recorded trace, planner/trace.h, whose classes are
  // the workload's) instead of sim_requests Poisson arrivals.
  const std::vector<TraceArrival>* trace = nullptr;
};

struct CandidateScore {
  std::string split;  // e.g. "8 = 4+2+2 per node"
  double slo_attainment = 0;
  double p99_ms = 0;
};

struct Plan {
  std::vector<PlannedGroup> groups;
  std::vector<std::string> reasons;
  std::vector<CandidateScore> candidates;  // best first
  Workload workload;                       // with the arrival rate used
  std::vector<double> reference_ms;        // isolated latency per class

  nlohmann::json ToJson() const;
  std::string ToText() const;
};

using PlacerFactory = std::function<std::unique_ptr<SimPlacer>()>;

absl::StatusOr<Plan> PlanGroups(const Topology& topology, const ModelShape& model,
                                const CostModel& cost, const Workload& workload,
                                const PlacerFactory& make_placer, const PlanOptions& options = {});

// Groups of one fixed layout everywhere (the baselines "SP=1 x8", "SP=8 x1"): every node split into
// groups of `size` GPUs with the best non-CFG layout for the mix. INVALID_ARGUMENT when `size`
// does not divide a node's GPUs.
absl::StatusOr<std::vector<PlannedGroup>> FixedGroups(const Topology& topology,
                                                      const ModelShape& model,
                                                      const CostModel& cost,
                                                      const Workload& workload, int size,
                                                      int max_inflight);

// Arrival rate at which the mix would keep `load` of every GPU busy serving SP=1 (req/s).
double Sp1ArrivalRate(const Topology& topology, const ModelShape& model, const CostModel& cost,
                      const Workload& workload, double load);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_GROUP_PLANNER_H_
