#include "orchestrator/placement/sim_placer.h"

namespace dgrid::orchestrator {
namespace {

class OwningSimPlacer : public planner::SimPlacer {
 public:
  explicit OwningSimPlacer(std::unique_ptr<PlacementPolicy> policy)
      : policy_(std::move(policy)), placer_(policy_.get()) {}
  std::string name() const override { return placer_.name(); }
  absl::StatusOr<size_t> Place(const planner::SimRequest& request,
                               const std::vector<planner::SimGroupView>& groups) override {
    return placer_.Place(request, groups);
  }

 private:
  std::unique_ptr<PlacementPolicy> policy_;
  PolicySimPlacer placer_;
};

}  // namespace

absl::StatusOr<size_t> PolicySimPlacer::Place(const planner::SimRequest& request,
                                              const std::vector<planner::SimGroupView>& groups) {
  candidates_.resize(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    PlacementCandidate& c = candidates_[i];
    c.worker_id = groups[i].group->id;
    c.inflight = groups[i].inflight;
    c.max_inflight = groups[i].group->max_inflight;
    c.layout = groups[i].group->layout;
    c.outstanding_ms = groups[i].outstanding_ms;
    c.pending = groups[i].pending;
    c.scheduling = groups[i].group->scheduling;
  }
  PlacementRequest r;
  r.width = request.shape.width;
  r.height = request.shape.height;
  r.steps = request.shape.steps;
  r.cfg = request.shape.cfg;
  r.frames = request.shape.frames;
  r.deadline_ms = request.deadline_left_ms;
  return policy_->Choose(r, candidates_, {});
}

std::unique_ptr<planner::SimPlacer> MakeOwningSimPlacer(std::unique_ptr<PlacementPolicy> policy) {
  return std::make_unique<OwningSimPlacer>(std::move(policy));
}

}  // namespace dgrid::orchestrator
