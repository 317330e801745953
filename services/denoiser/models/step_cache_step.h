// What a transformer's Forward sees of step caching (services/denoiser/step_cache_policy.h has the
// rules, step_cache_loop.h the loop's side): the tensors one pass keeps between steps, and the
// question "skip this step?" that Forward asks once it has measured its signal. Family-neutral:
// FLUX and Wan use it alike.
//
// Ownership: the sampler loop owns both structs for the length of one request; Forward reads and
// refreshes them on the loop's thread. Nothing here is shared between requests.
#ifndef DGRID_SERVICES_DENOISER_MODELS_STEP_CACHE_STEP_H_
#define DGRID_SERVICES_DENOISER_MODELS_STEP_CACHE_STEP_H_

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/step_cache.h"

namespace dgrid {

// The tensors of one pass (the conditional one, or classifier-free guidance's unconditional one)
// of one request. Only the stream the output layers read is kept (FLUX's image tokens, Wan's video
// tokens), this rank's shard of it in a denoiser group.
struct StepCacheTensors {
  // fbcache: the first block's residual (its output minus its input) at the last step run in
  // full. teacache: the first block's modulated input at the previous step.
  at::Tensor signal;
  // What the skipped blocks add to their input: fbcache the last block's output minus the first
  // block's; teacache the last block's output minus the first block's input (the block stack's
  // residual, before the output norm and projection).
  at::Tensor residual;

  void Clear() { signal = residual = at::Tensor(); }
};

// Step caching at one Forward call.
struct StepCacheStep {
  StepCacheMethod method = StepCacheMethod::kNone;
  StepCacheTensors* tensors = nullptr;
  // Empty: this step runs in full and only refreshes `tensors`. Otherwise called (at most once)
  // with this rank's float64 [2] sums (sum |signal - previous signal|, sum |previous signal|)
  // over its real tokens, on the model's device, to say whether to skip; in a group every rank
  // must get the same answer (step_cache_loop.h sums over the group).
  std::function<absl::StatusOr<bool>(const at::Tensor& sums)> decide;
  bool skipped = false;  // Out: the step reused the cache.
};

// Forward's question: compares `signal` [B, L, C] with cache.tensors->signal over the first
// `real_tokens` rows of dimension 1 (a group's padding is at the end of a shard) and asks
// cache.decide. False (run in full) when there is no decide or nothing kept yet. Throws c10::Error
// on mismatched shapes (call inside TorchCall).
absl::StatusOr<bool> AskStepCache(const StepCacheStep& cache, const at::Tensor& signal,
                                  int64_t real_tokens);

// The two methods' steps, shared by the families' transformers (the block stack is theirs):
//
// fbcache, once the first block ran (`first_in` its input, `first_out` its output): asks with the
// first block's residual; a skip returns first_out + the kept residual, otherwise `rest` runs the
// other blocks on first_out and the residual and signal are kept.
absl::StatusOr<at::Tensor> FirstBlockCacheStep(StepCacheStep& cache, const at::Tensor& first_in,
                                               const at::Tensor& first_out, int64_t real_tokens,
                                               const std::function<at::Tensor()>& rest);
// teacache, before any block (`in` the stack's input, `signal` the first block's modulated
// input): asks with `signal` and keeps it; a skip returns in + the kept residual, otherwise `all`
// runs the whole stack and its residual is kept.
absl::StatusOr<at::Tensor> TeaCacheStep(StepCacheStep& cache, const at::Tensor& in,
                                        const at::Tensor& signal, int64_t real_tokens,
                                        const std::function<at::Tensor()>& all);

// The same two steps cut where the blocks run, for a batch whose rows (dimension 0) are separate
// requests with caches of their own (FluxTransformer2DModel::ForwardCachedRows): each row decides
// alone, then the blocks run once for the rows that do not skip, then each such row keeps its
// tensors. All tensors here are one row's ([1, L, C]). FirstBlockCacheStep and TeaCacheStep are
// these halves around `rest` / `all`, so a row computes what the lone step computes on it.
//
// fbcache: asks with the row's first-block residual (first_out - first_in); sets and returns
// cache.skipped (a skipping row's output is first_out + cache.tensors->residual).
absl::StatusOr<bool> FirstBlockCacheDecide(StepCacheStep& cache, const at::Tensor& first_residual,
                                           int64_t real_tokens);
// fbcache, for a row that ran the other blocks (`out` their output): keeps its residuals.
void FirstBlockCacheKeep(StepCacheStep& cache, const at::Tensor& first_residual,
                         const at::Tensor& first_out, const at::Tensor& out);
// teacache: asks with the row's `signal` and keeps it; sets and returns cache.skipped (a skipping
// row's output is in + cache.tensors->residual).
absl::StatusOr<bool> TeaCacheDecide(StepCacheStep& cache, const at::Tensor& signal,
                                    int64_t real_tokens);
// teacache, for a row that ran the whole stack (`in` its input, `out` its output).
void TeaCacheKeep(StepCacheStep& cache, const at::Tensor& in, const at::Tensor& out);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_STEP_CACHE_STEP_H_
