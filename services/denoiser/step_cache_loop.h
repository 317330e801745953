// The sampler loop's side of step caching (#21 item 2) for one request: the decision rules
// (step_cache_policy.h), the tensors each pass keeps (models/step_cache_step.h), and, in a denoiser
// group, the agreement of every rank. FLUX's and Wan's loops use it alike:
//
//   StepCacheLoop cache(request.cache, rescale, sp);
//   for each step i:
//     cache.BeginStep(i, total);
//     model.Forward(..., cache.Pass(0));   // [cache.Pass(1) for the unconditional pass]
//     if (cache.EndStep()) report the skip;
//
// The first pass asked in a step decides; the step's other passes follow that decision (each with
// its own tensors). In a group (`sp` set) the deciding pass's change sums are added over the
// branch's Ulysses and Ring ranks, then the CFG branch with coordinate 0 (the conditional pass)
// gives its sums to the other branch, so every rank divides the same two numbers and skips the
// same steps. Collectives run only on steps the rules allow to skip, which are the same on every
// rank.
//
// Ownership: owned by the loop; `sp` must outlive it. Threads: the loop's thread only.
#ifndef DGRID_SERVICES_DENOISER_STEP_CACHE_LOOP_H_
#define DGRID_SERVICES_DENOISER_STEP_CACHE_LOOP_H_

#include <array>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/step_cache.h"
#include "services/denoiser/models/step_cache_step.h"
#include "services/denoiser/step_cache_policy.h"

namespace dgrid {

struct SequenceParallelContext;  // services/denoiser/models/sequence_parallel.h

class StepCacheLoop {
 public:
  // `rescale`: TeaCache's polynomial for the family (StepCachePolicy). With config off, Pass
  // returns null and nothing else happens.
  StepCacheLoop(const StepCacheConfig& config, std::vector<double> rescale,
                const SequenceParallelContext* sp);

  bool enabled() const { return policy_.config().enabled(); }
  const StepCacheConfig& config() const { return policy_.config(); }

  // Before step `step` (0-based) of `total`.
  void BeginStep(int step, int total);
  // The cache argument of this step's pass `pass` (0: conditional, 1: unconditional; each keeps
  // its own tensors); null when caching is off (Forward then runs its uncached path).
  StepCacheStep* Pass(int pass);
  // After the step's passes: whether the step reused the cache.
  bool EndStep();
  // Drops every pass's tensors, so that the next step runs in full (a loop that switches models
  // between steps, as Wan2.2's two experts, must not reuse one model's residuals in the other).
  void Invalidate();

  int skipped_steps() const { return policy_.skipped_steps(); }

 private:
  absl::StatusOr<bool> Decide(const at::Tensor& sums);

  StepCachePolicy policy_;
  const SequenceParallelContext* sp_;
  std::array<StepCacheTensors, 2> tensors_;
  std::array<StepCacheStep, 2> passes_;
  bool may_skip_ = false;
  bool decided_ = false;
  bool skip_ = false;
};

// The relative change from one rank's sums [2] (AskStepCache): in a group, summed as described
// above; sum |a - b| / sum |b| on the host (0 when both are 0, infinity when only the base is).
// Errors: the collectives' (DEADLINE_EXCEEDED, UNAVAILABLE), INTERNAL from LibTorch.
absl::StatusOr<double> GroupRelativeChange(at::Tensor sums, const SequenceParallelContext* sp);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_STEP_CACHE_LOOP_H_
