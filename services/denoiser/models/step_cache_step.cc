#include "services/denoiser/models/step_cache_step.h"

#include <ATen/ATen.h>

#include "common/status.h"

namespace dgrid {

absl::StatusOr<bool> AskStepCache(const StepCacheStep& cache, const at::Tensor& signal,
                                  int64_t real_tokens) {
  const at::Tensor& previous = cache.tensors->signal;
  if (!cache.decide || !previous.defined()) return false;
  // Float64 sums: the ratio must not depend on the activations' dtype or the token count.
  const at::Tensor now = signal.narrow(1, 0, real_tokens).to(at::kDouble);
  const at::Tensor before = previous.narrow(1, 0, real_tokens).to(at::kDouble);
  return cache.decide(at::stack({(now - before).abs().sum(), before.abs().sum()}));
}

absl::StatusOr<at::Tensor> FirstBlockCacheStep(StepCacheStep& cache, const at::Tensor& first_in,
                                               const at::Tensor& first_out, int64_t real_tokens,
                                               const std::function<at::Tensor()>& rest) {
  StepCacheTensors& kept = *cache.tensors;
  const at::Tensor first_residual = first_out - first_in;
  ASSIGN_OR_RETURN(const bool skip, AskStepCache(cache, first_residual, real_tokens));
  cache.skipped = skip && kept.residual.defined();
  if (cache.skipped) return first_out + kept.residual;
  const at::Tensor out = rest();
  kept.signal = first_residual;  // the reference stays the last step run in full
  kept.residual = out - first_out;
  return out;
}

absl::StatusOr<at::Tensor> TeaCacheStep(StepCacheStep& cache, const at::Tensor& in,
                                        const at::Tensor& signal, int64_t real_tokens,
                                        const std::function<at::Tensor()>& all) {
  StepCacheTensors& kept = *cache.tensors;
  ASSIGN_OR_RETURN(const bool skip, AskStepCache(cache, signal, real_tokens));
  kept.signal = signal;  // TeaCache compares consecutive steps
  cache.skipped = skip && kept.residual.defined();
  if (cache.skipped) return in + kept.residual;
  const at::Tensor out = all();
  kept.residual = out - in;
  return out;
}

}  // namespace dgrid
