#include "planner/scheduling.h"

#include <algorithm>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dgrid::planner {
namespace {

// A deadline as an EDF key: none sorts last.
double Key(double deadline_ms) {
  return deadline_ms > 0 ? deadline_ms : std::numeric_limits<double>::infinity();
}

}  // namespace

const char* GroupSchedulingName(GroupScheduling scheduling) {
  return scheduling == GroupScheduling::kEarliestDeadline ? "edf" : "fifo";
}

absl::StatusOr<GroupScheduling> ParseGroupScheduling(absl::string_view text,
                                                     absl::string_view field) {
  if (text.empty() || text == "fifo") return GroupScheduling::kFifo;
  if (text == "edf") return GroupScheduling::kEarliestDeadline;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": '", text, "' is not a group scheduling (fifo or edf)"));
}

Admission PredictAdmission(GroupScheduling scheduling, const std::vector<PendingWork>& pending,
                           double service_ms, double deadline_ms) {
  Admission out;
  if (scheduling == GroupScheduling::kFifo) {
    for (const PendingWork& p : pending) out.completion_ms += p.remaining_ms;
    out.completion_ms += service_ms;
    return out;
  }
  const double key = Key(deadline_ms);
  // Work that runs before the newcomer: everything with a deadline no later than its own (ties keep
  // arrival order, and every pending request arrived first).
  double ahead = 0;
  bool preempts_running = false;
  double running_step = 0;
  for (const PendingWork& p : pending) {
    if (Key(p.deadline_ms) <= key) {
      ahead += p.remaining_ms;
    } else if (p.running) {
      preempts_running = true;
      running_step = std::min(p.step_ms, p.remaining_ms);
    }
  }
  // The preempted request finishes its current step first; that part of it runs ahead.
  const double blocking = preempts_running ? running_step : 0;
  out.completion_ms = ahead + blocking + service_ms;
  // Each later-deadline request is delayed by the newcomer's service.
  for (size_t i = 0; i < pending.size(); ++i) {
    const PendingWork& p = pending[i];
    if (!(Key(p.deadline_ms) > key) || p.deadline_ms <= 0) continue;
    double before = 0;  // its predicted completion without the newcomer
    const double own = Key(p.deadline_ms);
    for (size_t j = 0; j < pending.size(); ++j) {
      const double other = Key(pending[j].deadline_ms);
      if (other < own || (other == own && j <= i)) before += pending[j].remaining_ms;
    }
    if (before <= p.deadline_ms && before + service_ms > p.deadline_ms) {
      out.delays_others = true;
      break;
    }
  }
  return out;
}

}  // namespace dgrid::planner
