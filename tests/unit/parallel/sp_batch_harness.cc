#include "tests/unit/parallel/sp_batch_harness.h"

#include <gtest/gtest.h>

#include <utility>

#include "tests/unit/parallel/sp_thread_communicator.h"

namespace dgrid::testing {

void RunOnLayoutGroup(int cfg, int ring, int ulysses,
                      const std::function<void(int, const SequenceParallelContext&)>& fn) {
  RunOnThreadGroup(cfg * ring * ulysses, [&](int rank, Communicator& world) {
    auto layout = ParallelLayout::Create(cfg, ring, ulysses, rank);
    ASSERT_TRUE(layout.ok()) << layout.status();
    auto group = SplitSequenceParallelGroup(world, *layout);
    ASSERT_TRUE(group.ok()) << group.status();
    fn(rank, (*group)->context);
  });
}

std::map<int64_t, absl::StatusOr<at::Tensor>> RunJoiningBatch(
    BatchedSampler& batch, const std::function<absl::Status(int64_t, SamplerHooks)>& add,
    const std::function<SamplerHooks(int64_t)>& hooks_for) {
  std::map<int64_t, absl::StatusOr<at::Tensor>> results;
  std::map<int64_t, int> steps_done;
  auto join = [&](int64_t id) {
    SamplerHooks hooks = hooks_for ? hooks_for(id) : SamplerHooks{};
    hooks.on_step = [&steps_done, id](int, int, double) { ++steps_done[id]; };
    if (id == kBatchCancelled) {
      hooks.is_cancelled = [&steps_done] { return steps_done[kBatchCancelled] >= 2; };
    }
    const absl::Status added = add(id, std::move(hooks));
    EXPECT_TRUE(added.ok()) << "member " << id << ": " << added;
  };
  for (int64_t id : {int64_t{0}, int64_t{1}, kBatchCancelled}) join(id);
  for (int step = 0; batch.size() > 0; ++step) {
    for (BatchedSampler::Ended& e : batch.Step()) {
      results.insert_or_assign(e.id, std::move(e.result));
    }
    if (step == 0) join(kBatchJoiner);
  }
  return results;
}

}  // namespace dgrid::testing
