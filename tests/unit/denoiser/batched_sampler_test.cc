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
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

constexpr double kTolerance = 1e-5;

class FluxBatchedSamplerTest : public ::testing::Test {
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

  // The lone run; `skipped` (optional) gets the steps its cache skipped.
  at::Tensor Alone(const FluxSamplerRequest& r, std::vector<int>* skipped = nullptr) const {
    SamplerHooks hooks;
    if (skipped != nullptr)
      hooks.on_cached_step = [skipped](int step) { skipped->push_back(step); };
    auto out = RunFluxSampler(*model_, scheduler_, r, hooks);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : at::Tensor();
  }

  // Hooks recording member `id`'s step reports (and optionally stopping it before step `stop`).
  SamplerHooks Recording(int64_t id, int stop = -1) {
    SamplerHooks h;
    h.on_step = [this, id](int step, int total, double seconds) {
      EXPECT_GE(seconds, 0.0);
      steps_[id].push_back(step);
      totals_[id] = total;
    };
    h.on_cached_step = [this, id](int step) {
      // Reported before the step's on_step, as the lone loop reports it.
      EXPECT_EQ(static_cast<int>(steps_[id].size()), step);
      skipped_[id].push_back(step);
    };
    if (stop >= 0) {
      h.is_cancelled = [this, id, stop] { return static_cast<int>(steps_[id].size()) >= stop; };
    }
    return h;
  }

  // Steps `batch` until it is empty (at most `max_steps` steps); the results by member id.
  std::map<int64_t, absl::StatusOr<at::Tensor>> Drain(BatchedSampler& batch, int max_steps = 100) {
    std::map<int64_t, absl::StatusOr<at::Tensor>> out;
    for (int i = 0; i < max_steps && batch.size() > 0; ++i) {
      for (BatchedSampler::Ended& e : batch.Step()) out.emplace(e.id, std::move(e.result));
    }
    return out;
  }

  static void ExpectClose(const absl::StatusOr<at::Tensor>& got, const at::Tensor& want,
                          const std::string& what) {
    ASSERT_TRUE(got.ok()) << what << ": " << got.status();
    ASSERT_EQ(got->sizes(), want.sizes()) << what;
    // Relative to the largest latent, as the sequence-parallel tests measure their 1e-5.
    const double error = testing::RelativeError(*got, want);
    EXPECT_LE(error, kTolerance) << what << " differs from its lone run by " << error;
  }

  FluxBatchedSampler NewBatch() const {
    return FluxBatchedSampler(*model_, scheduler_, [](const DenoiseInput&) {
      return absl::StatusOr<FluxSamplerRequest>(absl::UnimplementedError("not used"));
    });
  }

  std::unique_ptr<FluxTransformer2DModel> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
  std::map<int64_t, std::vector<int>> steps_;
  std::map<int64_t, int> totals_;
  std::map<int64_t, std::vector<int>> skipped_;
};

std::vector<int> Range(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

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
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(batch.AddRequest(static_cast<int64_t>(i), requests[i], Recording(i)).ok());
  }
  EXPECT_EQ(batch.size(), 4);
  auto results = Drain(batch);
  ASSERT_EQ(results.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ExpectClose(results.at(i), Alone(requests[i]), requests[i].request_id);
  }
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
  SamplerHooks throwing = Recording(2);
  throwing.is_cancelled = [this] {
    if (steps_[2].size() == 3) TORCH_CHECK(false, "a hook failed");
    return false;
  };
  ASSERT_TRUE(batch.AddRequest(2, c, throwing).ok());
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
  EXPECT_EQ(batch.size(), 1);
  auto results = Drain(batch);
  ASSERT_EQ(results.size(), 1u);
  ExpectClose(results.at(0), Alone(a), "a");
}

TEST_F(FluxBatchedSamplerTest, NonFiniteMemberFailsAloneAtTheEnd) {
  const FluxSamplerRequest a = Request("a", 0, 1, 3, 3.5);
  FluxSamplerRequest poisoned = Request("p", 1, 2, 3, 3.5);
  poisoned.prompt_embeds = at::full({1, 5, 32}, std::nan(""));
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, {}).ok());
  ASSERT_TRUE(batch.AddRequest(1, poisoned, {}).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  EXPECT_EQ(results.at(1).status().code(), absl::StatusCode::kInternal) << results.at(1).status();
}

// Step caching in a batch: each member keeps its own StepCacheLoop.
StepCacheConfig Cache(StepCacheMethod method, double threshold, int warmup, int max_skip) {
  StepCacheConfig c;
  c.method = method;
  c.threshold = threshold;
  c.warmup_steps = warmup;
  c.max_skip = max_skip;
  return c;
}

class FluxBatchedCacheTest : public FluxBatchedSamplerTest {
 protected:
  void SetUp() override {
    model_ = testing::TinyFluxModel(/*double_blocks=*/2);  // so that blocks follow the first one
    ASSERT_NE(model_, nullptr);
    scheduler_ = testing::TinyFluxScheduler();
  }

  // `r` with `method` at a threshold at which its lone run skips some steps (`skipped`), but not
  // every step the rules allow (so its own measured changes decide), and skips the same steps at
  // 0.95x and 1.05x of it. Equal decisions mean equal histories, so every change the run compared
  // with the threshold lies outside [0.95x, 1.05x) of it: a batch's rounding (about 1e-6 of the
  // latents) cannot flip a decision, and the batched member must skip exactly the same steps.
  FluxSamplerRequest Moderate(FluxSamplerRequest r, StepCacheMethod method,
                              std::vector<int>& skipped) const {
    r.cache = Cache(method, 1e9, 0, 0);
    std::vector<int> every;
    Alone(r, &every);
    for (double t = 0.5; t < 100; t *= 1.1) {
      std::vector<int> at_t, below, above;
      r.cache.threshold = t;
      Alone(r, &at_t);
      if (at_t.empty() || at_t == every) continue;
      r.cache.threshold = 0.95 * t;
      Alone(r, &below);
      r.cache.threshold = 1.05 * t;
      Alone(r, &above);
      if (below != at_t || above != at_t) continue;
      r.cache.threshold = t;
      skipped = at_t;
      return r;
    }
    ADD_FAILURE() << r.request_id << ": no threshold far from every decision";
    return r;
  }
};

TEST_F(FluxBatchedCacheTest, UncachedFbcacheAndTeacacheMembersEqualTheirLoneRuns) {
  std::vector<int> fb_alone, tea_alone;
  const FluxSamplerRequest plain = Request("plain", 0, 1, 6, 3.5);
  const FluxSamplerRequest fb =
      Moderate(Request("fb", 1, 2, 10, 5.0), StepCacheMethod::kFirstBlock, fb_alone);
  const FluxSamplerRequest tea =
      Moderate(Request("tea", 2, 3, 8, 1.5), StepCacheMethod::kTeaCache, tea_alone);
  ASSERT_FALSE(fb_alone.empty());
  ASSERT_FALSE(tea_alone.empty());
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, plain, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, fb, Recording(1)).ok());
  ASSERT_TRUE(batch.AddRequest(2, tea, Recording(2)).ok());
  auto results = Drain(batch);
  ASSERT_EQ(results.size(), 3u);
  ExpectClose(results.at(0), Alone(plain), "plain");
  ExpectClose(results.at(1), Alone(fb), "fb");
  ExpectClose(results.at(2), Alone(tea), "tea");
  EXPECT_TRUE(skipped_[0].empty());
  EXPECT_EQ(skipped_[1], fb_alone);
  EXPECT_EQ(skipped_[2], tea_alone);
  EXPECT_EQ(steps_[0], Range(6));
  EXPECT_EQ(steps_[1], Range(10));
  EXPECT_EQ(steps_[2], Range(8));
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
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok()) << offload.status();
  ASSERT_TRUE(offloaded.OffloadBlocks("cpu", *offload).ok());
  std::vector<int64_t> handed;
  offloaded.SetOffloadObserverForTesting(
      [&](int64_t layer, const std::vector<int64_t>&) { handed.push_back(layer); });
  // Both teacache, huge thresholds: a skips {1, 2, 3, 4}, b {1, 2}.
  FluxSamplerRequest a = Request("a", 0, 1, 6, 3.5), b = Request("b", 1, 2, 5, 2.0);
  a.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
  b.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 0, 2);
  FluxBatchedSampler batch(offloaded, scheduler_, [](const DenoiseInput&) {
    return absl::StatusOr<FluxSamplerRequest>(absl::UnimplementedError("not used"));
  });
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  std::map<int64_t, absl::StatusOr<at::Tensor>> results;
  std::vector<std::vector<int64_t>> per_step;
  while (batch.size() > 0 && per_step.size() < 10) {
    handed.clear();
    for (BatchedSampler::Ended& e : batch.Step()) results.emplace(e.id, std::move(e.result));
    per_step.push_back(handed);
  }
  // Steps 1 and 2: both skip; only block 0's modulation weights (teacache's signal) are read.
  const std::vector<int64_t> all = {0, 1, 2}, signal_only = {0};
  EXPECT_EQ(per_step,
            (std::vector<std::vector<int64_t>>{all, signal_only, signal_only, all, all, all}));
  std::vector<int> a_alone, b_alone;
  ExpectClose(results.at(0), Alone(a, &a_alone), "a");
  ExpectClose(results.at(1), Alone(b, &b_alone), "b");
  EXPECT_EQ(skipped_[0], a_alone);
  EXPECT_EQ(skipped_[1], b_alone);
  EXPECT_EQ(a_alone, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(b_alone, (std::vector<int>{1, 2}));
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
  FluxBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, plain, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, tea, Recording(1)).ok());
  ASSERT_TRUE(batch.AddRequest(3, gone, Recording(3, /*stop=*/4)).ok());  // leaves before step 5
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(batch.Step().empty());
  ASSERT_TRUE(batch.AddRequest(2, fb, Recording(2)).ok());  // joins at a step boundary
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(plain), "plain");
  ExpectClose(results.at(1), Alone(tea), "tea");
  ExpectClose(results.at(2), Alone(fb), "fb");
  EXPECT_EQ(results.at(3).status().code(), absl::StatusCode::kCancelled) << results.at(3).status();
  EXPECT_EQ(steps_[3], Range(4));
  EXPECT_EQ(skipped_[3], (std::vector<int>{1, 2, 3}));  // every step it ran after the first
  EXPECT_EQ(skipped_[1], tea_alone);
  EXPECT_EQ(skipped_[2], fb_alone);
  EXPECT_TRUE(skipped_[0].empty());
}

TEST_F(FluxBatchedCacheTest, ThresholdZeroIsBitwiseTheUncachedBatch) {
  const std::vector<FluxSamplerRequest> plain = {
      Request("a", 0, 1, 4, 3.5), Request("b", 1, 2, 5, 2.0), Request("c", 2, 3, 3, 4.5)};
  std::vector<FluxSamplerRequest> cached = plain;
  cached[1].cache = Cache(StepCacheMethod::kFirstBlock, 0, 0, 0);
  cached[2].cache = Cache(StepCacheMethod::kTeaCache, 0, 0, 0);
  FluxBatchedSampler uncached_batch = NewBatch(), cached_batch = NewBatch();
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_TRUE(uncached_batch.AddRequest(static_cast<int64_t>(i), plain[i], {}).ok());
    ASSERT_TRUE(cached_batch.AddRequest(static_cast<int64_t>(i), cached[i], Recording(i)).ok());
  }
  auto want = Drain(uncached_batch);
  auto got = Drain(cached_batch);
  for (int64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(want.at(i).ok() && got.at(i).ok()) << i;
    EXPECT_TRUE(at::equal(*got.at(i), *want.at(i))) << plain[i].request_id;
    EXPECT_TRUE(skipped_[i].empty());
  }
}

}  // namespace
}  // namespace dgrid
