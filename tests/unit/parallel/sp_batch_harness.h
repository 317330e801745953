// What the group batching tests (sp_batched_test.cc for FLUX, sp_wan_batched_test.cc for Wan)
// share: running a function on the ranks of a layout's thread group, and driving one batch through
// a member joining mid-way and one cancelled mid-way.
#ifndef DGRID_TESTS_UNIT_PARALLEL_SP_BATCH_HARNESS_H_
#define DGRID_TESTS_UNIT_PARALLEL_SP_BATCH_HARNESS_H_

#include <cstdint>
#include <functional>
#include <map>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/sequence_parallel.h"

namespace dgrid::testing {

// Runs fn(rank, context) on the cfg x ring x ulysses ranks of a fresh thread group (layout rank =
// group rank) and joins them.
void RunOnLayoutGroup(int cfg, int ring, int ulysses,
                      const std::function<void(int, const SequenceParallelContext&)>& fn);

inline constexpr int64_t kBatchJoiner = 2;     // joins after the batch's first step
inline constexpr int64_t kBatchCancelled = 3;  // stops before its third step

// Members 0, 1 and kBatchCancelled join before the first step, kBatchJoiner after it; steps until
// the batch is empty. `add(id, hooks)` adds member `id` with `hooks`: those `hooks_for(id)` gives
// (if set), with on_step and (kBatchCancelled) is_cancelled set here. An add that fails fails the
// test. Returns every member's result by id.
std::map<int64_t, absl::StatusOr<at::Tensor>> RunJoiningBatch(
    BatchedSampler& batch, const std::function<absl::Status(int64_t, SamplerHooks)>& add,
    const std::function<SamplerHooks(int64_t)>& hooks_for = nullptr);

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_PARALLEL_SP_BATCH_HARNESS_H_
