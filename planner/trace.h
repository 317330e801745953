// A user's own traffic, recorded, for the simulator and `dgrid plan` to replay instead of a
// built-in mix: one request per line (JSON Lines; blank lines and lines starting with # are
// skipped):
//
//   {"arrival_s": 0.00, "width": 1024, "height": 1024, "steps": 28, "cfg": false}
//   {"arrival_s": 0.35, "model": "FLUX.1-dev", "width": 512, "height": 512, "deadline_ms": 8000}
//   {"arrival_s": 0.90, "width": 832, "height": 480, "frames": 81, "steps": 50, "cfg": true}
//
// arrival_s (required): seconds from the trace's start; lines may come in any order (they are
// sorted, stably). width / height (required): multiples of the family's size step. steps (default
// the default family's), cfg (default false: true CFG runs two passes a step), frames (default 1;
// more is a video request) and deadline_ms (default 0: the SLO's deadline, see SimOptions) as in
// a request; cache and skipped_steps (a step-cached request and how many steps its result says
// were skipped; ReadStepCacheFields in workload.h) make the simulator charge its skipped steps at
// their cost (in a batch: the rows that run, CostModel::RequestMs). model (optional) is kept for
// filtering: a trace of several models is replayed for one with ReplayFor's `model`.
//
// Plain values; thread-compatible. Errors: INVALID_ARGUMENT "<file>:<line>: <field>: ...".
#ifndef DGRID_PLANNER_TRACE_H_
#define DGRID_PLANNER_TRACE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "planner/cost_model.h"
#include "planner/simulation.h"
#include "planner/workload.h"

namespace dgrid::planner {

struct TraceRequest {
  double arrival_ms = 0;
  std::string model;  // "" when the line names none
  RequestShape shape;
  double deadline_ms = 0;  // 0 = none given
};

struct Trace {
  std::string source;                  // file name, for messages and reports
  std::vector<TraceRequest> requests;  // by arrival
};

absl::StatusOr<Trace> ParseTrace(absl::string_view text, absl::string_view source);
absl::StatusOr<Trace> ReadTraceFile(const std::string& path);

// A trace as the simulator replays it: a workload with one class per distinct request shape
// (named like ParseWorkloadJson's default names, sorted by first arrival; share = its fraction of
// the requests; arrival rate = requests / span), and each request's arrival, class and deadline.
struct TraceReplay {
  Workload workload;
  std::vector<TraceArrival> arrivals;
  int skipped_other_models = 0;  // lines naming a model other than ReplayFor's
};

// The requests of `model` ("" = every line) and those naming no model. `slo_factor` becomes the
// workload's. INVALID_ARGUMENT when no request is left.
absl::StatusOr<TraceReplay> ReplayFor(const Trace& trace, absl::string_view model,
                                      double slo_factor = 1.2);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_TRACE_H_
