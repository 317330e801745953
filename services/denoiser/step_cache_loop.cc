#include "services/denoiser/step_cache_loop.h"

#include <limits>
#include <utility>

#include <ATen/ATen.h>

#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/models/sequence_parallel.h"

namespace dgrid {

StepCacheLoop::StepCacheLoop(const StepCacheConfig& config, std::vector<double> rescale,
                             const SequenceParallelContext* sp)
    : policy_(config, std::move(rescale)), sp_(sp) {
  for (size_t i = 0; i < passes_.size(); ++i) {
    passes_[i].method = config.method;
    passes_[i].tensors = &tensors_[i];
  }
}

void StepCacheLoop::BeginStep(int step, int total) {
  may_skip_ = policy_.MaySkip(step, total);
  decided_ = false;
  skip_ = false;
}

StepCacheStep* StepCacheLoop::Pass(int pass) {
  if (!enabled()) return nullptr;
  StepCacheStep& s = passes_[pass];
  s.skipped = false;
  s.decide = nullptr;
  if (may_skip_) s.decide = [this](const at::Tensor& sums) { return Decide(sums); };
  return &s;
}

absl::StatusOr<bool> StepCacheLoop::Decide(const at::Tensor& sums) {
  if (decided_) return skip_;  // a later pass of the step follows the first
  ASSIGN_OR_RETURN(const double change, GroupRelativeChange(sums, sp_));
  decided_ = true;
  skip_ = policy_.Decide(change);
  return skip_;
}

bool StepCacheLoop::EndStep() {
  if (!enabled()) return false;
  // A step the policy was not asked about (nothing to compare with) ran in full.
  if (!decided_) policy_.Computed();
  bool skipped = false;
  for (const StepCacheStep& s : passes_) skipped = skipped || s.skipped;
  return skipped;
}

void StepCacheLoop::Invalidate() {
  for (StepCacheTensors& t : tensors_) t.Clear();
}

absl::StatusOr<double> GroupRelativeChange(at::Tensor sums, const SequenceParallelContext* sp) {
  if (sp != nullptr) {
    const ParallelLayout& layout = sp->layout;
    RETURN_IF_ERROR(TorchCall("step cache metric", [&] { sums = sums.contiguous(); }));
    if (layout.ulysses() > 1) RETURN_IF_ERROR(sp->ulysses->AllReduceSum(sums));
    if (layout.ring() > 1) RETURN_IF_ERROR(sp->ring->AllReduceSum(sums));
    if (layout.cfg() > 1) {
      if (layout.coords().cfg != 0) {
        RETURN_IF_ERROR(TorchCall("step cache metric", [&] { sums.zero_(); }));
      }
      RETURN_IF_ERROR(sp->cfg->AllReduceSum(sums));
    }
  }
  return TorchCall("step cache metric", [&] {
    const at::Tensor host = sums.to(at::kCPU);
    const double change = host[0].item<double>(), base = host[1].item<double>();
    if (base > 0) return change / base;
    return change > 0 ? std::numeric_limits<double>::infinity() : 0.0;
  });
}

}  // namespace dgrid
