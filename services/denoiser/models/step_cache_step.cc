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

absl::StatusOr<bool> FirstBlockCacheDecide(StepCacheStep& cache, const at::Tensor& first_residual,
                                           int64_t real_tokens) {
  ASSIGN_OR_RETURN(const bool skip, AskStepCache(cache, first_residual, real_tokens));
  cache.skipped = skip && cache.tensors->residual.defined();
  return cache.skipped;
}

void FirstBlockCacheKeep(StepCacheStep& cache, const at::Tensor& first_residual,
                         const at::Tensor& first_out, const at::Tensor& out) {
  cache.tensors->signal = first_residual;  // the reference stays the last step run in full
  cache.tensors->residual = out - first_out;
}

absl::StatusOr<at::Tensor> FirstBlockCacheStep(StepCacheStep& cache, const at::Tensor& first_in,
                                               const at::Tensor& first_out, int64_t real_tokens,
                                               const std::function<at::Tensor()>& rest) {
  const at::Tensor first_residual = first_out - first_in;
  ASSIGN_OR_RETURN(const bool skip, FirstBlockCacheDecide(cache, first_residual, real_tokens));
  if (skip) return first_out + cache.tensors->residual;
  const at::Tensor out = rest();
  FirstBlockCacheKeep(cache, first_residual, first_out, out);
  return out;
}

absl::StatusOr<bool> TeaCacheDecide(StepCacheStep& cache, const at::Tensor& signal,
                                    int64_t real_tokens) {
  ASSIGN_OR_RETURN(const bool skip, AskStepCache(cache, signal, real_tokens));
  cache.tensors->signal = signal;  // TeaCache compares consecutive steps
  cache.skipped = skip && cache.tensors->residual.defined();
  return cache.skipped;
}

void TeaCacheKeep(StepCacheStep& cache, const at::Tensor& in, const at::Tensor& out) {
  cache.tensors->residual = out - in;
}

absl::StatusOr<at::Tensor> TeaCacheStep(StepCacheStep& cache, const at::Tensor& in,
                                        const at::Tensor& signal, int64_t real_tokens,
                                        const std::function<at::Tensor()>& all) {
  ASSIGN_OR_RETURN(const bool skip, TeaCacheDecide(cache, signal, real_tokens));
  if (skip) return in + cache.tensors->residual;
  const at::Tensor out = all();
  TeaCacheKeep(cache, in, out);
  return out;
}

}  // namespace dgrid
