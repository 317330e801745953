// Step caching (#21 item 2) on denoiser groups (thread test seam): every rank of a group skips the
// same steps (the change is summed over the group, the conditional branch's shared with the
// unconditional one), and where the rules alone decide (a huge threshold) the group's latents
// equal one rank's cached run. Layouts with padded shards (15 image tokens), Ring, Ulysses and
// CFG parallel, true CFG on.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/sampler.h"
#include "tests/unit/parallel/sp_thread_communicator.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

struct CacheCase {
  std::string name;
  int cfg, ring, ulysses;
  StepCacheMethod method;
  double threshold;
};

struct RankResult {
  absl::StatusOr<at::Tensor> latents = absl::UnknownError("not run");
  std::vector<int> skipped;
};

class SequenceParallelStepCacheTest : public ::testing::TestWithParam<CacheCase> {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(1);  // Up to 4 rank threads on a 2-core CI machine.
    model_ = testing::TinyFluxModel(/*double_blocks=*/2).release();
  }
  static void TearDownTestSuite() { delete model_; }
  static FluxTransformer2DModel* model_;
};
FluxTransformer2DModel* SequenceParallelStepCacheTest::model_ = nullptr;

RankResult RunOne(const FluxTransformer2DModel& model, const FluxSamplerRequest& request,
                  const SequenceParallelContext* sp) {
  RankResult r;
  FluxSamplerHooks hooks;
  hooks.on_cached_step = [&](int step) { r.skipped.push_back(step); };
  r.latents = RunFluxSampler(model, testing::TinyFluxScheduler(), request, hooks, sp);
  return r;
}

TEST_P(SequenceParallelStepCacheTest, EveryRankSkipsTheSameSteps) {
  ASSERT_NE(model_, nullptr);
  const CacheCase c = GetParam();
  FluxSamplerRequest request = testing::TinyFluxRequest(10, 6, /*true_cfg=*/true);
  request.num_inference_steps = 8;
  request.cache.method = c.method;
  request.cache.threshold = c.threshold;
  request.cache.warmup_steps = 1;
  request.cache.max_skip = 3;
  const RankResult one = RunOne(*model_, request, nullptr);
  ASSERT_TRUE(one.latents.ok()) << one.latents.status();

  const int size = c.cfg * c.ring * c.ulysses;
  std::mutex mu;
  std::vector<RankResult> got(size);
  testing::RunOnThreadGroup(size, [&](int rank, Communicator& world) {
    RankResult result;
    auto layout = ParallelLayout::Create(c.cfg, c.ring, c.ulysses, rank);
    if (!layout.ok()) {
      result.latents = layout.status();
    } else if (auto group = SplitSequenceParallelGroup(world, *layout); !group.ok()) {
      result.latents = group.status();
    } else {
      result = RunOne(*model_, request, &(*group)->context);
    }
    std::lock_guard<std::mutex> lock(mu);
    got[rank] = std::move(result);
  });
  for (int r = 0; r < size; ++r) {
    ASSERT_TRUE(got[r].latents.ok()) << "rank " << r << ": " << got[r].latents.status();
    EXPECT_EQ(got[r].skipped, got[0].skipped) << c.name << " rank " << r;
    EXPECT_TRUE(at::equal(*got[r].latents, *got[0].latents)) << c.name << " rank " << r;
  }
  if (c.threshold >= 1e9) {
    // The rules alone decide: warm-up 1, runs of 3, the last step computed.
    EXPECT_EQ(got[0].skipped, (std::vector<int>{1, 2, 3, 5, 6})) << c.name;
    EXPECT_EQ(one.skipped, got[0].skipped) << c.name;
    EXPECT_LT(testing::RelativeError(*got[0].latents, *one.latents), 1e-5) << c.name;
  } else {
    // A measured threshold (picked for this tiny random model, whose steps change by ~0.5-1):
    // some steps skip and some that the rules allow do not.
    EXPECT_GE(got[0].skipped.size(), 1u) << c.name;
    EXPECT_LE(got[0].skipped.size(), 4u) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, SequenceParallelStepCacheTest,
    ::testing::Values(
        CacheCase{"U2_fbcache_all", 1, 1, 2, StepCacheMethod::kFirstBlock, 1e9},
        CacheCase{"R2_teacache_all", 1, 2, 1, StepCacheMethod::kTeaCache, 1e9},
        CacheCase{"CFG2_fbcache_all", 2, 1, 1, StepCacheMethod::kFirstBlock, 1e9},
        CacheCase{"U2_fbcache_measured", 1, 1, 2, StepCacheMethod::kFirstBlock, 0.9},
        CacheCase{"R2_teacache_measured", 1, 2, 1, StepCacheMethod::kTeaCache, 32},
        CacheCase{"CFG2U2_fbcache_measured", 2, 1, 2, StepCacheMethod::kFirstBlock, 0.9},
        CacheCase{"CFG2R2_teacache_measured", 2, 2, 1, StepCacheMethod::kTeaCache, 32}),
    [](const ::testing::TestParamInfo<CacheCase>& info) { return info.param.name; });

// Wan2.1 (tiny, classifier-free guidance on) on a CFG 2 x Ulysses 2 group: the same agreement;
// 2 x 3 x 5 = 30 video tokens, measured thresholds.
TEST(SequenceParallelWanStepCacheTest, EveryRankSkipsTheSameSteps) {
  at::set_num_threads(1);
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(testing::TinyWanVariant::kT2V);
  ASSERT_NE(p.transformer, nullptr);
  for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
    WanSamplerRequest request =
        testing::TinyWanRequest(testing::TinyWanVariant::kT2V, 5, 48, 80, /*cfg=*/true);
    request.num_inference_steps = 8;
    request.cache.method = method;
    request.cache.threshold = 1.0;  // skips some steps of this tiny model, not all
    request.cache.max_skip = 2;
    std::mutex mu;
    std::vector<absl::StatusOr<at::Tensor>> latents(4, absl::UnknownError("not run"));
    std::vector<std::vector<int>> skipped(4);
    testing::RunOnThreadGroup(4, [&](int rank, Communicator& world) {
      auto layout = ParallelLayout::Create(2, 1, 2, rank);
      auto group = SplitSequenceParallelGroup(world, *layout);
      std::vector<int> steps;
      WanSamplerHooks hooks;
      hooks.on_cached_step = [&](int step) { steps.push_back(step); };
      absl::StatusOr<at::Tensor> out =
          group.ok() ? RunWanSampler(*p.transformer, nullptr, p.pipeline, p.scheduler, request,
                                     hooks, &(*group)->context)
                     : group.status();
      std::lock_guard<std::mutex> lock(mu);
      latents[rank] = std::move(out);
      skipped[rank] = steps;
    });
    EXPECT_GE(skipped[0].size(), 1u) << StepCacheMethodName(method);
    EXPECT_LE(skipped[0].size(), 4u) << StepCacheMethodName(method);
    for (int r = 0; r < 4; ++r) {
      ASSERT_TRUE(latents[r].ok()) << "rank " << r << ": " << latents[r].status();
      EXPECT_EQ(skipped[r], skipped[0]) << StepCacheMethodName(method) << " rank " << r;
      EXPECT_TRUE(at::equal(*latents[r], *latents[0])) << StepCacheMethodName(method);
    }
  }
}

}  // namespace
}  // namespace dgrid
