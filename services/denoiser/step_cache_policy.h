// The per-request decision of step caching (common/step_cache.h settings): which steps must run in
// full, and whether a step whose change was measured may reuse the cache. Free of tensors, so the
// rules are tested on their own; the loops (sampler.cc) measure the change and hold the cached
// tensors (flux_transformer.h flux::StepCacheTensors).
//
// The rules, for both methods:
//   - the first step, the first `warmup_steps` steps and the last step always run in full;
//   - after `max_skip` skipped steps in a row (when max_skip > 0) the next step runs in full;
//   - a threshold of 0 never skips.
// "fbcache" (ParaAttention's first-block cache, as diffusers' FirstBlockCacheHook applies it): a
// step is skipped when the first block's residual changed by less than `threshold` (relative mean
// absolute difference to the residual of the last step run in full).
// "teacache" (TeaCache, Liu et al. 2024, arXiv:2411.19108): the relative L1 change of the first
// block's modulated input since the previous step, through the model's fitted rescale polynomial,
// is added to an accumulator; a step is skipped while the accumulator stays under `threshold`, and
// a step run in full resets it.
//
// Ownership: one policy per request, owned by its loop. Not thread-safe (the loop's thread only).
#ifndef DGRID_SERVICES_DENOISER_STEP_CACHE_POLICY_H_
#define DGRID_SERVICES_DENOISER_STEP_CACHE_POLICY_H_

#include <vector>

#include "common/step_cache.h"

namespace dgrid {

class StepCachePolicy {
 public:
  // `rescale`: TeaCache's polynomial, coefficients from the highest degree down (numpy.poly1d's
  // order), applied to each measured change before it is accumulated; empty: the change as is.
  // fbcache ignores it.
  explicit StepCachePolicy(const StepCacheConfig& config, std::vector<double> rescale = {});

  const StepCacheConfig& config() const { return config_; }

  // Whether step `step` (0-based) of `total` may be skipped at all. False: the step runs in full
  // and the caller reports it with Computed() without measuring anything.
  bool MaySkip(int step, int total) const;
  // For a step MaySkip allowed: `change` is the measured relative change. Returns true when the
  // step reuses the cache; either way the outcome is recorded.
  bool Decide(double change);
  // A step MaySkip refused ran in full.
  void Computed();

  int skipped_steps() const { return skipped_; }
  // TeaCache's accumulator now (0 for fbcache); for tests and debug logs.
  double accumulated() const { return accumulated_; }

 private:
  double Rescale(double change) const;

  StepCacheConfig config_;
  std::vector<double> rescale_;
  bool computed_any_ = false;  // nothing is cached before the first full step
  int run_ = 0;                // skipped steps in a row so far
  int skipped_ = 0;
  double accumulated_ = 0;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_STEP_CACHE_POLICY_H_
