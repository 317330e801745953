// Discrete-event simulation of denoiser groups serving a request mix, used by
// dgrid-bench-simulate (bench/simulate.cc) and by the planner to score candidate layouts. Service
// times come from the CostModel; the choice of group is delegated to a SimPlacer, which the callers
// implement over the orchestrator's real placement policies (orchestrator/placement/sim_placer.h),
// so the simulated decisions are the production code's.
//
// Model of a group: one request runs at a time, step by step; a group holds at most max_inflight
// requests (running + queued). A fifo group runs them in arrival order; an edf group, at every step
// boundary, runs the request with the earliest deadline (planner/scheduling.h), so a newcomer with
// an earlier deadline starts after the running request's current step. With max_batch > 1
// (continuous batching, dgrid-denoiser --max-batch), the request so chosen leads a batch: held
// requests of its class (same shape) join it at every step boundary, in the group's order, up to
// max_batch, and each step costs the cost model's step of that batch (RequestShape::batch); a
// step-cached class (RequestShape::cache) batches as well, each step at its batch's mean (the
// expected rows that run, CostModel::RequestMs). The
// placer still sees each request's lone step time (as the orchestrator's registry does). When the
// placer answers RESOURCE_EXHAUSTED the request waits in the orchestrator's FIFO and is placed
// again when a group finishes (as WorkerRegistry::ReserveWaiting does); any other error rejects the
// request at once (it counts as an SLO miss).
//
// Simulate() is a pure function of its arguments (seeded); thread-compatible.
#ifndef DGRID_PLANNER_SIMULATION_H_
#define DGRID_PLANNER_SIMULATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"
#include "planner/scheduling.h"
#include "planner/workload.h"

namespace dgrid::planner {

// A denoiser group of a plan: its GPUs ("node:index") and layout.
struct PlannedGroup {
  std::string id;
  std::vector<std::string> gpus;
  GroupShape layout;
  int max_inflight = 4;
  GroupScheduling scheduling = GroupScheduling::kFifo;
  int max_batch = 1;  // requests of one class sharing a step (see the header comment)
};

struct SimRequest {
  int64_t id = 0;
  int class_index = 0;
  RequestShape shape;
  double arrival_ms = 0;
  // Time left to the deadline when placed, ms; 0 = none.
  double deadline_left_ms = 0;
};

// A group as the placer sees it when a request is placed.
struct SimGroupView {
  const PlannedGroup* group = nullptr;
  int inflight = 0;                  // running + queued
  double outstanding_ms = 0;         // predicted work left on it (running remainder + queued)
  std::vector<PendingWork> pending;  // the same, per request (running first, then arrival order)
};

class SimPlacer {
 public:
  virtual ~SimPlacer() = default;
  virtual std::string name() const = 0;
  // Index into `groups`, or an error (see the header comment).
  virtual absl::StatusOr<size_t> Place(const SimRequest& request,
                                       const std::vector<SimGroupView>& groups) = 0;
};

enum class ArrivalProcess { kPoisson, kBursty };

// One request of a replayed trace (planner/trace.h): when it arrives, its workload class and the
// deadline it was sent with (ms after its arrival; 0 = none given).
struct TraceArrival {
  double arrival_ms = 0;
  int class_index = 0;
  double deadline_ms = 0;
};

struct SimOptions {
  int num_requests = 3000;
  double rate_per_s = 1;
  // Bursty: a two-state modulated Poisson process, alternating (exponential sojourns, mean
  // burst_period_s) between burst_high x and burst_low x the mean rate (same long-run mean).
  ArrivalProcess process = ArrivalProcess::kPoisson;
  double burst_high = 1.75;
  double burst_low = 0.25;
  double burst_period_s = 20;
  uint64_t seed = 1;
  // Requests carry a deadline of deadline_factor x their class's isolated latency (0 = none).
  double deadline_factor = 0;
  // When set, the requests are these (a user's trace) instead of num_requests drawn at rate_per_s;
  // a request's own deadline_ms, where it has one, replaces deadline_factor's.
  const std::vector<TraceArrival>* trace = nullptr;
  std::vector<double> slo_factors = {1.0, 1.2, 1.5};
};

struct SimResult {
  int arrived = 0;
  int completed = 0;
  int rejected = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  std::vector<double> slo_attainment;  // per SimOptions::slo_factors, over all arrivals
  std::vector<std::vector<double>> class_slo_attainment;  // [class][factor]
  double gpu_utilisation = 0;  // GPU-time allocated to requests / (GPUs x simulated span)
  double span_s = 0;

  nlohmann::json ToJson(const SimOptions& options, const Workload& workload) const;
};

// Runs the simulation. `reference_ms[c]` is class c's isolated latency (the SLO unit).
// INVALID_ARGUMENT for no groups, a layout the cost model rejects, or mismatched sizes.
absl::StatusOr<SimResult> Simulate(const ModelShape& model, const CostModel& cost,
                                   const std::vector<PlannedGroup>& groups,
                                   const Workload& workload,
                                   const std::vector<double>& reference_ms, SimPlacer& placer,
                                   const SimOptions& options);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_SIMULATION_H_
