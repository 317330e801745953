// FluxBatchedSampler (services/denoiser/batched_sampler.h) on the tiny random FLUX transformer of
// the sequence-parallel tests (tests/unit/parallel/sp_tiny_flux.h; it has a guidance embedding):
// every member of a batch ends with the latents of its lone RunFluxSampler run (within 1e-5 of the
// largest latent in float32: the batched forward's kernels may round a batch of B unlike a batch
// of 1, and true CFG scales that difference by its scale), whatever the
// batch mixes (prompts, seeds, step counts, guidance, img2img, true CFG), when a member joins
// mid-way, and when another is cancelled or fails mid-way; step reports are each member's own.
// Step caching in a batch (#21 item 2): uncached, fbcache and teacache members (with or without
// true CFG) each end with the latents and the skipped steps of their lone cached run, also when a
// cached member joins or leaves mid-way; with threshold 0 a cached batch is bit for bit the
// uncached batch. Driven step by step: no threads, no timing.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/dit_offload_flags.h"
#include "common/step_cache.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/layerwise_offload.h"
#include "services/denoiser/sampler.h"
#include "tests/unit/denoiser/batch_test_harness.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

using testing::Cache;
using testing::Drain;
using testing::ExpectClose;
using testing::Range;

class FluxBatchedSamplerTest
    : public ::testing::Test,
      public testing::BatchSamplerHarness<FluxBatchedSamplerTest, FluxSamplerRequest> {
 public:
  // The lone run; `skipped` (optional) gets the steps its cache skipped.
  at::Tensor Alone(const FluxSamplerRequest& r, std::vector<int>* skipped = nullptr) const {
    SamplerHooks hooks;
    if (skipped != nullptr)
      hooks.on_cached_step = [skipped](int step) { skipped->push_back(step); };
    auto out = RunFluxSampler(*model_, scheduler_, r, hooks);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : at::Tensor();
  }

  // An empty batch over `model` (by default the tiny model).
  FluxBatchedSampler NewBatch(const FluxTransformer2DModel* model = nullptr) const {
    return FluxBatchedSampler(model ? *model : *model_, scheduler_, [](const DenoiseInput&) {
      return absl::StatusOr<FluxSamplerRequest>(absl::UnimplementedError("not used"));
    });
  }

 protected:
  void SetUp() override {
    model_ = testing::TinyFluxModel();
    ASSERT_NE(model_, nullptr);
    scheduler_ = testing::TinyFluxScheduler();
  }

  // A request with its own prompt (random embeddings from `prompt`), seed, steps and guidance.
  FluxSamplerRequest Request(const std::string& id, int prompt, uint64_t seed, int steps,
                             double guidance) const {
    FluxSamplerRequest r;
    r.request_id = id;
    r.height = 48;
    r.width = 64;
    r.num_inference_steps = steps;
    r.seed = seed;
    r.guidance_scale = guidance;
    at::manual_seed(100 + prompt);
    r.prompt_embeds = at::randn({1, 5, 32});
    r.pooled_prompt_embeds = at::randn({1, 24});
    return r;
  }

  static void WithNegative(FluxSamplerRequest& r, double scale, int prompt) {
    at::manual_seed(200 + prompt);
    r.true_cfg_scale = scale;
    r.negative_prompt_embeds = at::randn({1, 5, 32});
    r.negative_pooled_prompt_embeds = at::randn({1, 24});
  }

  std::unique_ptr<FluxTransformer2DModel> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
};

TEST_F(FluxBatchedSamplerTest, MixedBatchEqualsLoneRuns) {
  std::vector<FluxSamplerRequest> requests = {
      Request("a", 0, 1, 4, 3.5), Request("b", 1, 2, 6, 5.0), Request("c", 2, 3, 3, 1.5)};
  // An image-to-image member: a later start in its own schedule.
  FluxSamplerRequest d = Request("d", 3, 4, 5, 2.0);
  at::manual_seed(9);
  d.image_latents = at::randn({1, 4, 6, 8});
  d.strength = 0.6;
  requests.push_back(d);
  FluxBatchedSampler batch = NewBatch();
  AddRecorded(batch, requests);
  EXPECT_EQ(batch.size(), 4);
  ExpectEachAlone(Drain(batch), requests);
  EXPECT_EQ(steps_[0], Range(4));
  EXPECT_EQ(steps_[1], Range(6));
  EXPECT_EQ(steps_[2], Range(3));
  EXPECT_EQ(steps_[3], Range(3));  // int(5 * 0.6) steps of the 5
  EXPECT_EQ(totals_[1], 6);
  EXPECT_EQ(totals_[3], 3);
}

TEST_F(FluxBatchedSamplerTest, TrueCfgBatchEqualsLoneRuns) {
  FluxSamplerRequest a = Request("a", 0, 1, 3, 3.5), b = Request("b", 1, 2, 4, 2.0);
  WithNegative(a, 2.0, 0);
  WithNegative(b, 4.5, 1);
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  ExpectClose(results.at(1), Alone(b), "b");
  // A request without true CFG does not fit a CFG batch (different forwards).
  EXPECT_EQ(NewBatch().size(), 0);
  FluxBatchedSampler cfg = NewBatch();
  ASSERT_TRUE(cfg.AddRequest(0, a, {}).ok());
  const absl::Status mixed = cfg.AddRequest(1, Request("plain", 2, 3, 3, 3.5), {});
  EXPECT_EQ(mixed.code(), absl::StatusCode::kInvalidArgument) << mixed;
  EXPECT_EQ(cfg.size(), 1);
}

TEST_F(FluxBatchedSamplerTest, JoiningMidwayLeavesTheOthersUnchanged) {
  const FluxSamplerRequest a = Request("a", 0, 1, 5, 3.5), b = Request("b", 1, 2, 4, 4.0);
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  std::map<int64_t, absl::StatusOr<at::Tensor>> results;
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(batch.Step().empty());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());  // at a step boundary
  EXPECT_EQ(steps_[0], Range(2));
  results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  ExpectClose(results.at(1), Alone(b), "b");
  EXPECT_EQ(steps_[0], Range(5));
  EXPECT_EQ(steps_[1], Range(4));
}

TEST_F(FluxBatchedSamplerTest, CancelledOrFailingMemberLeavesAlone) {
  const FluxSamplerRequest a = Request("a", 0, 1, 5, 3.5), b = Request("b", 1, 2, 5, 2.5),
                           c = Request("c", 2, 3, 4, 3.0);
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1, /*stop=*/2)).ok());  // cancelled before step 3
  ASSERT_TRUE(batch.AddRequest(2, c, Throwing(2, /*steps=*/3)).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  EXPECT_EQ(results.at(1).status().code(), absl::StatusCode::kCancelled) << results.at(1).status();
  EXPECT_EQ(steps_[1], Range(2));
  EXPECT_FALSE(results.at(2).ok());
  EXPECT_NE(results.at(2).status().message().find("a hook failed"), std::string::npos)
      << results.at(2).status();
  EXPECT_EQ(steps_[2], Range(3));
}

TEST_F(FluxBatchedSamplerTest, BadRequestFailsOnlyItself) {
  const FluxSamplerRequest a = Request("a", 0, 1, 3, 3.5);
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, {}).ok());
  FluxSamplerRequest bad = Request("bad", 1, 2, 3, 3.5);
  bad.pooled_prompt_embeds = at::randn({1, 23});
  EXPECT_EQ(batch.AddRequest(1, bad, {}).code(), absl::StatusCode::kInvalidArgument);
  FluxSamplerRequest other_size = Request("big", 1, 2, 3, 3.5);
  other_size.width = 96;
  EXPECT_EQ(batch.AddRequest(2, other_size, {}).code(), absl::StatusCode::kInvalidArgument);
  ExpectOnlyMemberEndsAlone(batch, a);
}

TEST_F(FluxBatchedSamplerTest, NonFiniteMemberFailsAloneAtTheEnd) {
  const FluxSamplerRequest a = Request("a", 0, 1, 3, 3.5);
  FluxSamplerRequest poisoned = Request("p", 1, 2, 3, 3.5);
  poisoned.prompt_embeds = at::full({1, 5, 32}, std::nan(""));
  ExpectNonFiniteMemberFailsAlone(a, poisoned);
}

// Step caching in a batch: each member keeps its own StepCacheLoop.
class FluxBatchedCacheTest : public FluxBatchedSamplerTest {
 protected:
  void SetUp() override {
    model_ = testing::TinyFluxModel(/*double_blocks=*/2);  // so that blocks follow the first one
    ASSERT_NE(model_, nullptr);
    scheduler_ = testing::TinyFluxScheduler();
  }
};

TEST_F(FluxBatchedCacheTest, UncachedFbcacheAndTeacacheMembersEqualTheirLoneRuns) {
  std::vector<int> fb_alone, tea_alone;
  const FluxSamplerRequest plain = Request("plain", 0, 1, 6, 3.5);
  const FluxSamplerRequest fb =
      Moderate(Request("fb", 1, 2, 10, 5.0), StepCacheMethod::kFirstBlock, fb_alone);
  const FluxSamplerRequest tea =
      Moderate(Request("tea", 2, 3, 8, 1.5), StepCacheMethod::kTeaCache, tea_alone);
  ExpectCachedMixAsAlone(plain, fb, fb_alone, tea, tea_alone);
}

TEST_F(FluxBatchedCacheTest, TrueCfgMembersFollowTheirOwnConditionalPass) {
  // A huge threshold skips every step the rules allow whatever the changes (no decision to flip);
  // the rules differ per member, so on a step some members skip and others run: teacache skips
  // {1, 2, 3, 4}; fbcache {2, 4}; the uncached member none.
  FluxSamplerRequest tea = Request("tea", 0, 1, 6, 3.5), fb = Request("fb", 1, 2, 7, 4.0),
                     plain = Request("plain", 2, 3, 5, 2.0);
  WithNegative(tea, 2.0, 0);
  WithNegative(fb, 1.5, 1);
  WithNegative(plain, 3.0, 2);
  tea.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
  fb.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 2, 1);
  std::vector<int> tea_alone, fb_alone;
  const at::Tensor tea_want = Alone(tea, &tea_alone), fb_want = Alone(fb, &fb_alone);
  EXPECT_EQ(tea_alone, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(fb_alone, (std::vector<int>{2, 4}));
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, tea, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, fb, Recording(1)).ok());
  ASSERT_TRUE(batch.AddRequest(2, plain, Recording(2)).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), tea_want, "tea");
  ExpectClose(results.at(1), fb_want, "fb");
  ExpectClose(results.at(2), Alone(plain), "plain");
  EXPECT_EQ(skipped_[0], tea_alone);
  EXPECT_EQ(skipped_[1], fb_alone);
  EXPECT_TRUE(skipped_[2].empty());
}

TEST_F(FluxBatchedCacheTest, WhenEveryMemberSkipsNoBlockRuns) {
  // Layerwise offload on the CPU computes as the plain model, bit for bit, and shows which blocks
  // a step hands to compute (layers 0, 1: double blocks; 2: the single block).
  FluxTransformer2DModel offloaded = *model_;
  std::vector<int64_t> handed;
  ASSERT_NO_FATAL_FAILURE(
      testing::ObserveBlocks(offloaded, [&](int64_t layer) { handed.push_back(layer); }));
  // Both teacache, huge thresholds: a skips {1, 2, 3, 4}, b {1, 2}.
  FluxSamplerRequest a = Request("a", 0, 1, 6, 3.5), b = Request("b", 1, 2, 5, 2.0);
  a.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
  b.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 0, 2);
  FluxBatchedSampler batch = NewBatch(&offloaded);
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  testing::BatchResults results;
  const std::vector<std::vector<int64_t>> per_step =
      testing::DrainObserving(batch, handed, results);
  // Steps 1 and 2: both skip; only block 0's modulation weights (teacache's signal) are read.
  const std::vector<int64_t> all = {0, 1, 2}, signal_only = {0};
  EXPECT_EQ(per_step,
            (std::vector<std::vector<int64_t>>{all, signal_only, signal_only, all, all, all}));
  ExpectPairSkipsAsAlone(results, a, b, {1, 2, 3, 4}, {1, 2});
}

TEST_F(FluxBatchedCacheTest, CachedMembersJoiningAndLeavingLeaveTheOthersUnchanged) {
  std::vector<int> fb_alone, tea_alone;
  const FluxSamplerRequest plain = Request("plain", 0, 1, 7, 3.5);
  const FluxSamplerRequest tea =
      Moderate(Request("tea", 1, 2, 8, 2.5), StepCacheMethod::kTeaCache, tea_alone);
  const FluxSamplerRequest fb =
      Moderate(Request("fb", 2, 3, 9, 4.0), StepCacheMethod::kFirstBlock, fb_alone);
  FluxSamplerRequest gone = Request("gone", 3, 4, 8, 3.0);
  gone.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 0, 0);
  ExpectCachedJoiningAndLeaving(plain, tea, tea_alone, fb, fb_alone, gone);
}

TEST_F(FluxBatchedCacheTest, ThresholdZeroIsBitwiseTheUncachedBatch) {
  const std::vector<FluxSamplerRequest> plain = {
      Request("a", 0, 1, 4, 3.5), Request("b", 1, 2, 5, 2.0), Request("c", 2, 3, 3, 4.5)};
  ExpectThresholdZeroBitwise(plain);
}

}  // namespace
}  // namespace dgrid
