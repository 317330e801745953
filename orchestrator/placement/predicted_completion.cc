#include "orchestrator/placement/predicted_completion.h"

#include <algorithm>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "families/registry.h"

namespace dgrid::orchestrator {
namespace {

planner::RequestShape ShapeOf(const PlacementRequest& request, const planner::ModelShape& model) {
  // Unknown size or steps: plan for the family's defaults (1024^2, 28 steps for FLUX.1) rather
  // than refusing to choose.
  const families::GenerationDefaults& defaults = families::FamilyOf(model).defaults();
  planner::RequestShape shape;
  shape.width = request.width > 0 ? request.width : defaults.width;
  shape.height = request.height > 0 ? request.height : defaults.height;
  shape.steps = request.steps > 0 ? request.steps : defaults.steps;
  shape.cfg = request.cfg;
  shape.frames = request.frames > 0 ? request.frames : defaults.num_frames;
  return shape;
}

}  // namespace

PredictedCompletionPolicy::PredictedCompletionPolicy(const PlacementContext& context)
    : context_(context), cost_(context.calibration, context.links) {}

absl::StatusOr<double> PredictedCompletionPolicy::CostMs(
    const PlacementRequest& request, const PlacementCandidate& candidate) const {
  ASSIGN_OR_RETURN(double ms, cost_.RequestMs(context_.model, ShapeOf(request, context_.model),
                                              candidate.layout));
  return ms * (candidate.speed > 0 ? candidate.speed : 1);
}

double PredictedCompletionPolicy::ServiceMs(const PlacementRequest& request,
                                            const PlacementCandidate& candidate) const {
  absl::StatusOr<double> ms = CostMs(request, candidate);
  return ms.ok() ? *ms : std::numeric_limits<double>::infinity();
}

absl::StatusOr<planner::Admission> PredictedCompletionPolicy::Predict(
    const PlacementRequest& request, const PlacementCandidate& candidate) const {
  ASSIGN_OR_RETURN(double service, CostMs(request, candidate));
  if (!candidate.pending.empty()) {
    return planner::PredictAdmission(candidate.scheduling, candidate.pending, service,
                                     request.deadline_ms);
  }
  // Without a measured backlog, assume every call in flight costs what this one does.
  const double queue =
      candidate.outstanding_ms >= 0 ? candidate.outstanding_ms : candidate.inflight * service;
  planner::Admission admission;
  admission.completion_ms = queue + service;
  return admission;
}

absl::StatusOr<double> PredictedCompletionPolicy::PredictMs(
    const PlacementRequest& request, const PlacementCandidate& candidate) const {
  ASSIGN_OR_RETURN(planner::Admission admission, Predict(request, candidate));
  return admission.completion_ms;
}

absl::StatusOr<size_t> PredictedCompletionPolicy::Choose(
    const PlacementRequest& request, const std::vector<PlacementCandidate>& candidates,
    const std::set<std::string>& excluded) const {
  RETURN_IF_ERROR(CheckAnyCandidateLeft(candidates, excluded));
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> predicted(candidates.size(), kInf);
  std::vector<bool> open(candidates.size(), false);
  double best_open = kInf, best_any = kInf;
  size_t best_any_index = 0;
  bool others_late = false;  // some group could make it only by delaying an accepted request
  for (size_t i = 0; i < candidates.size(); ++i) {
    const PlacementCandidate& c = candidates[i];
    if (excluded.count(c.worker_id) > 0) continue;
    absl::StatusOr<planner::Admission> admission = Predict(request, c);
    if (!admission.ok()) continue;  // a layout this model cannot run: never chosen
    if (admission->delays_others) {
      others_late = true;
      continue;  // accepted requests keep their predicted deadlines
    }
    const double ms = admission->completion_ms;
    predicted[i] = ms;
    int limit = c.max_inflight;
    if (context_.max_inflight_per_group > 0)
      limit = std::min(limit, context_.max_inflight_per_group);
    open[i] = c.inflight < limit;
    if (ms < best_any) {
      best_any = ms;
      best_any_index = i;
    }
    if (open[i]) best_open = std::min(best_open, ms);
  }
  if (best_any == kInf && others_late) {
    return absl::DeadlineExceededError(
        "no group can finish before the deadline without making an accepted request late");
  }
  if (best_any == kInf) {
    return absl::FailedPreconditionError(
        "no serving group has a layout this model can run (heads not divisible by ulysses?)");
  }
  if (request.deadline_ms > 0 && best_any > request.deadline_ms) {
    return absl::DeadlineExceededError(
        absl::StrFormat("no group can finish before the deadline: best predicted completion "
                        "%.0f ms on a group of %d GPUs, deadline in %.0f ms",
                        best_any, candidates[best_any_index].layout.size(), request.deadline_ms));
  }
  if (best_open == kInf || (request.deadline_ms > 0 && best_open > request.deadline_ms)) {
    return absl::ResourceExhaustedError(
        "every group that could meet the request is at its in-flight limit");
  }
  // With a deadline, the cheapest group (fewest GPU-seconds) that still finishes with a margin
  // wins: small requests then leave the wide groups to the requests that need them.
  if (request.deadline_ms > 0) {
    size_t cheapest = candidates.size();
    double cheapest_cost = kInf;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!open[i] || predicted[i] > kDeadlineMargin * request.deadline_ms) continue;
      const double service = ServiceMs(request, candidates[i]);
      const double gpu_ms = service * candidates[i].layout.size();
      if (gpu_ms < cheapest_cost * (1 - 1e-9) ||
          (gpu_ms <= cheapest_cost * (1 + 1e-9) && cheapest < candidates.size() &&
           predicted[i] < predicted[cheapest])) {
        cheapest = i;
        cheapest_cost = gpu_ms;
      }
    }
    if (cheapest < candidates.size()) return cheapest;
  }
  // Among open candidates close to the best, prefer the CFG match, then the earliest completion,
  // then the smaller id.
  const double cutoff = best_open * (1 + kPreferenceSlack);
  size_t best = candidates.size();
  auto better = [&](size_t a, size_t b) {
    const bool a_match = (candidates[a].layout.cfg == 2) == request.cfg;
    const bool b_match = (candidates[b].layout.cfg == 2) == request.cfg;
    if (a_match != b_match) return a_match;
    if (predicted[a] != predicted[b]) return predicted[a] < predicted[b];
    return candidates[a].worker_id < candidates[b].worker_id;
  };
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!open[i] || predicted[i] > cutoff) continue;
    if (best == candidates.size() || better(i, best)) best = i;
  }
  return best;
}

}  // namespace dgrid::orchestrator
