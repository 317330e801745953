#include "services/denoiser/step_cache_policy.h"

#include <utility>

namespace dgrid {

StepCachePolicy::StepCachePolicy(const StepCacheConfig& config, std::vector<double> rescale)
    : config_(config), rescale_(std::move(rescale)) {}

bool StepCachePolicy::MaySkip(int step, int total) const {
  if (!config_.enabled() || config_.threshold <= 0 || !computed_any_) return false;
  if (step < config_.warmup_steps || step >= total - 1) return false;
  return config_.max_skip == 0 || run_ < config_.max_skip;
}

double StepCachePolicy::Rescale(double change) const {
  if (rescale_.empty()) return change;
  double y = 0;  // Horner's rule, highest degree first.
  for (double c : rescale_) y = y * change + c;
  return y;
}

bool StepCachePolicy::Decide(double change) {
  bool skip = false;
  if (config_.method == StepCacheMethod::kTeaCache) {
    accumulated_ += Rescale(change);
    skip = accumulated_ < config_.threshold;
  } else {
    skip = change < config_.threshold;
  }
  if (!skip) {
    Computed();
    return false;
  }
  ++run_;
  ++skipped_;
  return true;
}

void StepCachePolicy::Computed() {
  computed_any_ = true;
  run_ = 0;
  accumulated_ = 0;
}

}  // namespace dgrid
