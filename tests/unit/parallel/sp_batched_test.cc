// Step-level batching on a denoiser group (thread test seam): FluxBatchedSampler with the group's
// SequenceParallelContext on every rank (CFG2, U2, R2) runs a batch mixing prompts, seeds, step
// counts, guidance, true-CFG scales and step caches, with a member joining after the first step
// and one cancelled after its second; every member ends with its lone group run's latents (within
// 1e-5 of the largest latent) and skipped steps, and with one process's lone run's latents
// (within the sequence-parallel tests' 1e-5), on every rank alike.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/sampler.h"
#include "tests/unit/parallel/sp_batch_harness.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

using testing::RelativeError;

constexpr double kTolerance = 1e-5;
constexpr int64_t kJoiner = testing::kBatchJoiner;
constexpr int64_t kCancelled = testing::kBatchCancelled;

struct Case {
  std::string name;
  int cfg, ring, ulysses;
};

struct Outcome {
  absl::StatusOr<at::Tensor> latents = absl::UnknownError("not run");
  std::vector<int> skipped;
};

// Four requests of one batch key (10x6 latents, true CFG, the tiny model's text lengths).
std::map<int64_t, FluxSamplerRequest> Requests() {
  std::map<int64_t, FluxSamplerRequest> r;
  r[0] = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
  for (int64_t id = 1; id < 4; ++id) {
    FluxSamplerRequest q = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
    at::manual_seed(100 + id);  // another prompt
    q.prompt_embeds = at::randn({1, 5, 32});
    q.pooled_prompt_embeds = at::randn({1, 24});
    q.negative_prompt_embeds = at::randn({1, 4, 32});
    q.negative_pooled_prompt_embeds = at::randn({1, 24});
    q.seed = 7 * id;
    q.num_inference_steps = 3 + static_cast<int>(id);
    q.guidance_scale = 1.5 * static_cast<double>(id);
    q.true_cfg_scale = 1.5 + 0.5 * static_cast<double>(id);
    r[id] = q;
  }
  // Step caches decided by the rules alone (a huge threshold), so that rounding flips nothing.
  r[1].cache.method = StepCacheMethod::kTeaCache;
  r[kJoiner].cache.method = StepCacheMethod::kFirstBlock;
  for (int64_t id : {int64_t{1}, kJoiner}) {
    r[id].cache.threshold = 1e9;
    r[id].cache.warmup_steps = 1;
    r[id].cache.max_skip = 1;
  }
  return r;
}

class SequenceParallelBatchTest : public ::testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(1);  // rank threads on a 2-core CI machine
    model_ = testing::TinyFluxModel(/*double_blocks=*/2).release();
  }
  static void TearDownTestSuite() { delete model_; }
  static FluxTransformer2DModel* model_;
};
FluxTransformer2DModel* SequenceParallelBatchTest::model_ = nullptr;

// Runs fn(rank, context) on the case's group of threads.
void OnGroup(const Case& c, const std::function<void(int, const SequenceParallelContext&)>& fn) {
  testing::RunOnLayoutGroup(c.cfg, c.ring, c.ulysses, fn);
}

TEST_P(SequenceParallelBatchTest, EveryMemberMatchesItsLoneGroupRun) {
  ASSERT_NE(model_, nullptr);
  const Case c = GetParam();
  const int size = c.cfg * c.ring * c.ulysses;
  const std::map<int64_t, FluxSamplerRequest> requests = Requests();
  std::mutex mu;
  // [rank][id]
  std::vector<std::map<int64_t, Outcome>> batched(size), alone(size);

  OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
    std::map<int64_t, Outcome> mine;
    const FlowMatchEulerSchedulerConfig scheduler = testing::TinyFluxScheduler();  // outlives it
    FluxBatchedSampler batch(*model_, scheduler, nullptr, &sp);
    auto results = testing::RunJoiningBatch(
        batch,
        [&](int64_t id, SamplerHooks hooks) {
          return batch.AddRequest(id, requests.at(id), std::move(hooks));
        },
        [&mine](int64_t id) {
          SamplerHooks hooks;
          hooks.on_cached_step = [&mine, id](int step) { mine[id].skipped.push_back(step); };
          return hooks;
        });
    for (auto& [id, result] : results) mine[id].latents = std::move(result);
    std::lock_guard<std::mutex> lock(mu);
    batched[rank] = std::move(mine);
  });
  for (const auto& [id, request] : requests) {
    if (id == kCancelled) continue;
    OnGroup(c, [&](int rank, const SequenceParallelContext& sp) {
      Outcome o;
      SamplerHooks hooks;
      hooks.on_cached_step = [&o](int step) { o.skipped.push_back(step); };
      o.latents = RunFluxSampler(*model_, testing::TinyFluxScheduler(), request, hooks, &sp);
      std::lock_guard<std::mutex> lock(mu);
      alone[rank][id] = std::move(o);
    });
  }

  for (int rank = 0; rank < size; ++rank) {
    const Outcome& cancelled = batched[rank][kCancelled];
    EXPECT_EQ(cancelled.latents.status().code(), absl::StatusCode::kCancelled)
        << c.name << " rank " << rank << ": " << cancelled.latents.status();
    for (const auto& [id, request] : requests) {
      if (id == kCancelled) continue;
      const Outcome& got = batched[rank][id];
      const Outcome& want = alone[rank][id];
      ASSERT_TRUE(got.latents.ok()) << c.name << " member " << id << ": " << got.latents.status();
      ASSERT_TRUE(want.latents.ok()) << want.latents.status();
      EXPECT_LE(RelativeError(*got.latents, *want.latents), kTolerance)
          << c.name << " rank " << rank << " member " << id;
      EXPECT_EQ(got.skipped, want.skipped) << c.name << " rank " << rank << " member " << id;
      // Every rank ends with the same latents.
      EXPECT_TRUE(at::equal(*got.latents, *batched[0][id].latents)) << c.name << " rank " << rank;
    }
  }
  // And one process's lone run (step caches skip by the rules alone: the same steps).
  for (const auto& [id, request] : requests) {
    if (id == kCancelled || !batched[0][id].latents.ok()) continue;
    auto one = RunFluxSampler(*model_, testing::TinyFluxScheduler(), request);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_LE(RelativeError(*batched[0][id].latents, *one), kTolerance) << c.name << " " << id;
  }
  // The cached members did skip steps (so the per-row caches ran with the group's context).
  EXPECT_FALSE(batched[0][1].skipped.empty());
  EXPECT_FALSE(batched[0][kJoiner].skipped.empty());
}

// 10x6 latents: 15 image tokens, padded on every layout.
INSTANTIATE_TEST_SUITE_P(Layouts, SequenceParallelBatchTest,
                         ::testing::Values(Case{"CFG2", 2, 1, 1}, Case{"U2", 1, 1, 2},
                                           Case{"R2", 1, 2, 1}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace dgrid
