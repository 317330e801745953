// How a denoiser group orders the requests it holds, and what that means for a new one.
//
//   fifo  one request at a time, in arrival order (what fixed-degree servers do).
//   edf   earliest deadline first, preemptive at step boundaries: before every sampler step the
//         group's leader runs any queued request whose deadline is earlier than the running one's
//         to completion first (services/denoiser: DenoiserEngineOptions.scheduling), so a
//         request that arrives behind a long one with slack to spare is not held behind it.
//         Requests without a deadline come last, in arrival order.
//
// PredictAdmission is the one place that turns a group's pending work into a predicted completion
// for a new request; the placement policy (orchestrator/placement) uses it for real groups and the
// simulator (planner/simulation.h) for simulated ones. Pure functions; thread-safe.
#ifndef DGRID_PLANNER_SCHEDULING_H_
#define DGRID_PLANNER_SCHEDULING_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::planner {

enum class GroupScheduling { kFifo, kEarliestDeadline };

// "fifo", "edf".
const char* GroupSchedulingName(GroupScheduling scheduling);
// INVALID_ARGUMENT naming `field` for anything but "fifo" / "edf" (empty = fifo).
absl::StatusOr<GroupScheduling> ParseGroupScheduling(absl::string_view text,
                                                     absl::string_view field);

// A request a group holds: running (first, at most one) or waiting, in the order it arrived.
struct PendingWork {
  double remaining_ms = 0;  // predicted service left
  double deadline_ms = 0;   // time left to its deadline; 0 = none
  double step_ms = 0;       // one sampler step of it
  // Running request: time until its current step ends (what a preempting request waits for);
  // 0 = unknown, then a whole step is assumed.
  double step_left_ms = 0;
  bool running = false;
};

struct Admission {
  double completion_ms = 0;  // from now, for the new request
  // Some pending request predicted to meet its deadline would miss it because of the new one
  // (edf only: under fifo a newcomer never delays earlier requests).
  bool delays_others = false;
};

// The new request (service `service_ms`, deadline in `deadline_ms`, 0 = none) on a group holding
// `pending`. fifo: everything pending, then the request. edf: the rest of the running request's
// current step (step_left_ms, or a whole step_ms when unknown: a group switches requests only
// between steps), then the pending requests with a deadline no later than the new one's, then the
// request; delays_others compares every held request's completion in that order with and without
// the newcomer.
Admission PredictAdmission(GroupScheduling scheduling, const std::vector<PendingWork>& pending,
                           double service_ms, double deadline_ms);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_SCHEDULING_H_
