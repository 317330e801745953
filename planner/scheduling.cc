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
  // The running request's current step ends first whatever else is held (the group only switches
  // between steps); after it, everything runs in deadline order (ties: arrival order, and the
  // newcomer arrived last).
  double first = 0;
  struct Item {
    double key;
    double work;
    size_t order;  // pending index; pending.size() = the newcomer
  };
  std::vector<Item> items;
  items.reserve(pending.size() + 1);
  for (size_t i = 0; i < pending.size(); ++i) {
    const PendingWork& p = pending[i];
    double work = p.remaining_ms;
    if (p.running) {
      first = std::min(p.step_left_ms > 0 ? p.step_left_ms : p.step_ms, p.remaining_ms);
      work -= first;
    }
    items.push_back({Key(p.deadline_ms), work, i});
  }
  items.push_back({Key(deadline_ms), service_ms, pending.size()});
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.key < b.key || (a.key == b.key && a.order < b.order);
  });
  // Each held request's completion without and with the newcomer: one that would have met its
  // deadline and no longer does is made late by it.
  double without = first, with = first;
  for (const Item& item : items) {
    with += item.work;
    if (item.order == pending.size()) {
      out.completion_ms = with;
      continue;
    }
    without += item.work;
    const double due = pending[item.order].deadline_ms;
    if (due > 0 && without <= due && with > due) out.delays_others = true;
  }
  return out;
}

}  // namespace dgrid::planner
