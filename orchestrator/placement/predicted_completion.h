// "predicted-completion", dgrid's placement policy: each candidate's predicted completion time is
// the work already on it plus this request's service time on its layout (planner::CostModel, scaled
// by the candidate's measured speed), and the candidate that finishes first wins. On top of that:
//   - deadline-aware: when no candidate (full ones included) can finish before the request's
//     deadline, DEADLINE_EXCEEDED at once, naming the best prediction; when only full candidates
//     could, RESOURCE_EXHAUSTED (waiting may still pay off);
//   - queue-aware: on a group that runs earliest-deadline-first (scheduling "edf") the request's
//     predicted start counts only the held work due before it, and a group where it would make an
//     accepted request miss its deadline is not used;
//   - deadline packing: with a deadline, the open group with the fewest GPU-seconds for the request
//     among those predicted to finish within kDeadlineMargin of the deadline (so small requests
//     leave the wide groups to the large ones); without one, the earliest completion;
//   - CFG: among candidates within kPreferenceSlack of the best completion, a true-CFG request
//     prefers a CFG-parallel group (cfg = 2) and a request without CFG a group without it (half of
//     a cfg = 2 group idles on it);
//   - in-flight limits: the worker's max_inflight, capped by
//   PlacementContext.max_inflight_per_group.
// Ties go to the smaller worker id. Immutable after construction; thread-safe.
#ifndef DGRID_ORCHESTRATOR_PLACEMENT_PREDICTED_COMPLETION_H_
#define DGRID_ORCHESTRATOR_PLACEMENT_PREDICTED_COMPLETION_H_

#include "orchestrator/placement/placement_policy.h"
#include "planner/cost_model.h"

namespace dgrid::orchestrator {

class PredictedCompletionPolicy : public PlacementPolicy {
 public:
  static constexpr absl::string_view kName = "predicted-completion";
  // Completion times within this fraction of the best count as equal for the CFG preference.
  static constexpr double kPreferenceSlack = 0.05;
  // Fraction of the time left that a cheaper group's prediction may use.
  static constexpr double kDeadlineMargin = 0.9;

  explicit PredictedCompletionPolicy(const PlacementContext& context);

  using PlacementPolicy::Choose;
  absl::string_view name() const override { return kName; }
  absl::StatusOr<size_t> Choose(const PlacementRequest& request,
                                const std::vector<PlacementCandidate>& candidates,
                                const std::set<std::string>& excluded) const override;

  // Service time alone (no queue), ms; infinity for a layout the model cannot run.
  double ServiceMs(const PlacementRequest& request,
                   const PlacementCandidate& candidate) const override;
  // Predicted completion (queue + service) of `request` on `candidate`, ms.
  absl::StatusOr<double> PredictMs(const PlacementRequest& request,
                                   const PlacementCandidate& candidate) const;
  // The same with whether placing it there would make a held request miss its deadline (an edf
  // group with known pending work, planner/scheduling.h).
  absl::StatusOr<planner::Admission> Predict(const PlacementRequest& request,
                                             const PlacementCandidate& candidate) const;

 private:
  // The cost model's request time on the candidate's layout, at the candidate's speed.
  absl::StatusOr<double> CostMs(const PlacementRequest& request,
                                const PlacementCandidate& candidate) const;

  PlacementContext context_;
  planner::CostModel cost_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PLACEMENT_PREDICTED_COMPLETION_H_
