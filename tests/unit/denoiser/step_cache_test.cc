// Step caching (#21 item 2): the settings and their errors (common/step_cache.h), the decision
// rules (services/denoiser/step_cache_policy.h), and the FLUX and Wan loops with each method on
// tiny random models: off and threshold 0 leave the latents bit for bit as without caching, a huge
// threshold skips every step the rules allow and reports each.
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/step_cache.h"
#include "dgrid/v1/generation.pb.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/step_cache_policy.h"
#include "tests/unit/denoiser/step_cache_threshold.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::Cache;

// The steps a policy skips over `total` steps when every measured change is `change`.
std::vector<int> SkippedSteps(StepCachePolicy& policy, int total, double change) {
  std::vector<int> skipped;
  for (int step = 0; step < total; ++step) {
    if (!policy.MaySkip(step, total)) {
      policy.Computed();
    } else if (policy.Decide(change)) {
      skipped.push_back(step);
    }
  }
  return skipped;
}

TEST(StepCachePolicyTest, WarmupMaxSkipAndTheLastStepAlwaysRun) {
  for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
    StepCachePolicy policy(Cache(method, 1e9, /*warmup=*/2, /*max_skip=*/2));
    // 0, 1: warm-up; 2, 3 skipped; 4 runs after two skips; 5, 6 skipped; 7 is the last.
    EXPECT_EQ(SkippedSteps(policy, 8, 0.01), (std::vector<int>{2, 3, 5, 6}));
    EXPECT_EQ(policy.skipped_steps(), 4);

    StepCachePolicy unlimited(Cache(method, 1e9, /*warmup=*/0, /*max_skip=*/0));
    // The first step always runs (nothing is cached yet), the last too.
    EXPECT_EQ(SkippedSteps(unlimited, 6, 0.01), (std::vector<int>{1, 2, 3, 4}));
  }
}

TEST(StepCachePolicyTest, ThresholdZeroAndOffNeverSkip) {
  StepCachePolicy zero(Cache(StepCacheMethod::kFirstBlock, 0, 0, 0));
  EXPECT_TRUE(SkippedSteps(zero, 10, 0.0).empty());
  StepCachePolicy tea_zero(Cache(StepCacheMethod::kTeaCache, 0, 0, 0));
  EXPECT_TRUE(SkippedSteps(tea_zero, 10, 0.0).empty());
  StepCachePolicy off(Cache(StepCacheMethod::kNone, 1e9, 0, 0));
  EXPECT_TRUE(SkippedSteps(off, 10, 0.0).empty());
}

TEST(StepCachePolicyTest, FirstBlockComparesEachChangeWithTheThreshold) {
  StepCachePolicy policy(Cache(StepCacheMethod::kFirstBlock, 0.1, 0, 0));
  policy.Computed();  // step 0
  EXPECT_TRUE(policy.Decide(0.05));
  EXPECT_TRUE(policy.Decide(0.099));
  EXPECT_FALSE(policy.Decide(0.1));
  EXPECT_FALSE(policy.Decide(std::numeric_limits<double>::quiet_NaN()));
  EXPECT_FALSE(policy.Decide(std::numeric_limits<double>::infinity()));
  EXPECT_EQ(policy.skipped_steps(), 2);
}

TEST(StepCachePolicyTest, TeaCacheAccumulatesRescaledChangesAndResetsWhenItComputes) {
  StepCachePolicy plain(Cache(StepCacheMethod::kTeaCache, 1.0, 0, 0));
  plain.Computed();
  EXPECT_TRUE(plain.Decide(0.4));   // 0.4
  EXPECT_TRUE(plain.Decide(0.4));   // 0.8
  EXPECT_FALSE(plain.Decide(0.4));  // 1.2: runs, back to 0
  EXPECT_DOUBLE_EQ(plain.accumulated(), 0.0);
  EXPECT_TRUE(plain.Decide(0.4));
  EXPECT_DOUBLE_EQ(plain.accumulated(), 0.4);

  // Rescaled by y = 2x^2 + 0.1 (coefficients from the highest degree down).
  StepCachePolicy rescaled(Cache(StepCacheMethod::kTeaCache, 1.0, 0, 0), {2.0, 0.0, 0.1});
  rescaled.Computed();
  EXPECT_TRUE(rescaled.Decide(0.5));  // 0.6
  EXPECT_DOUBLE_EQ(rescaled.accumulated(), 0.6);
  EXPECT_FALSE(rescaled.Decide(0.5));  // 1.2
}

TEST(StepCacheConfigTest, ProtoDefaultsAndErrorsNameTheField) {
  v1::StepCache proto;
  absl::StatusOr<StepCacheConfig> off = StepCacheFromProto(proto);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->enabled());

  proto.set_method("fbcache");
  absl::StatusOr<StepCacheConfig> fb = StepCacheFromProto(proto);
  ASSERT_TRUE(fb.ok()) << fb.status();
  EXPECT_EQ(fb->method, StepCacheMethod::kFirstBlock);
  EXPECT_DOUBLE_EQ(fb->threshold, DefaultStepCacheThreshold(StepCacheMethod::kFirstBlock));
  proto.set_threshold(0);  // set: 0 stays 0 (never skips)
  EXPECT_EQ(StepCacheFromProto(proto)->threshold, 0.0);

  const auto message = [](const v1::StepCache& p) {
    return std::string(StepCacheFromProto(p).status().message());
  };
  v1::StepCache bad = proto;
  bad.set_method("fast");
  EXPECT_EQ(message(bad).rfind("cache.method:", 0), 0u) << message(bad);
  bad = proto;
  bad.set_threshold(-0.5f);
  EXPECT_EQ(message(bad).rfind("cache.threshold:", 0), 0u) << message(bad);
  bad = proto;
  bad.set_warmup_steps(-1);
  EXPECT_EQ(message(bad).rfind("cache.warmup_steps:", 0), 0u) << message(bad);
  bad = proto;
  bad.set_max_skip(-1);
  EXPECT_EQ(message(bad).rfind("cache.max_skip:", 0), 0u) << message(bad);

  StepCacheConfig config = Cache(StepCacheMethod::kTeaCache, 0.4, 2, 3);
  v1::StepCache round;
  StepCacheToProto(config, &round);
  absl::StatusOr<StepCacheConfig> back = StepCacheFromProto(round);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->method, StepCacheMethod::kTeaCache);
  EXPECT_FLOAT_EQ(static_cast<float>(back->threshold), 0.4f);
  EXPECT_EQ(back->warmup_steps, 2);
  EXPECT_EQ(back->max_skip, 3);
}

TEST(StepCacheConfigTest, SpecStrings) {
  absl::StatusOr<StepCacheConfig> c = ParseStepCacheSpec("teacache:0.4:2:3", "--cache");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->method, StepCacheMethod::kTeaCache);
  EXPECT_DOUBLE_EQ(c->threshold, 0.4);
  EXPECT_EQ(c->warmup_steps, 2);
  EXPECT_EQ(c->max_skip, 3);
  EXPECT_EQ(StepCacheSpec(*c), "teacache:0.4:2:3");
  c = ParseStepCacheSpec("fbcache", "--cache");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->threshold, 0.08);
  c = ParseStepCacheSpec("none", "--cache");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->enabled());
  EXPECT_EQ(StepCacheSpec(*c), "none");
  for (const char* bad : {"fast", "fbcache:x", "fbcache:-1", "fbcache:0.1:-1", "fbcache:0.1:1:-1",
                          "fbcache:0.1:1:2:3", "fbcache:0.1:1.5"}) {
    absl::StatusOr<StepCacheConfig> s = ParseStepCacheSpec(bad, "--cache");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.status().message().rfind("--cache: '", 0), 0u) << s.status();
  }
}

// The FLUX loop on a tiny random model with two double blocks (so that the first block has
// blocks after it) and one single block, float32 on the CPU.
class FluxStepCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = testing::TinyFluxModel(/*double_blocks=*/2).release(); }
  static void TearDownTestSuite() { delete model_; }

  void SetUp() override { ASSERT_NE(model_, nullptr); }

  static FluxSamplerRequest Request(bool true_cfg, int steps) {
    FluxSamplerRequest r = testing::TinyFluxRequest(8, 12, true_cfg);
    r.num_inference_steps = steps;
    return r;
  }

  // Runs the loop; the steps that reused the cache go to `skipped`.
  static at::Tensor Run(const FluxSamplerRequest& request, std::vector<int>* skipped = nullptr) {
    FluxSamplerHooks hooks;
    std::vector<int> steps;
    hooks.on_cached_step = [&](int step) { steps.push_back(step); };
    absl::StatusOr<at::Tensor> latents =
        RunFluxSampler(*model_, testing::TinyFluxScheduler(), request, hooks);
    EXPECT_TRUE(latents.ok()) << latents.status();
    if (skipped != nullptr) *skipped = steps;
    return latents.ok() ? *latents : at::Tensor();
  }

  static FluxTransformer2DModel* model_;
};
FluxTransformer2DModel* FluxStepCacheTest::model_ = nullptr;

TEST_F(FluxStepCacheTest, OffAndThresholdZeroAreBitwiseTheUncachedLoop) {
  for (bool true_cfg : {false, true}) {
    const FluxSamplerRequest plain = Request(true_cfg, 6);
    const at::Tensor want = Run(plain);
    ASSERT_TRUE(want.defined());
    FluxSamplerRequest none = plain;
    none.cache = Cache(StepCacheMethod::kNone, 1e9, 0, 0);
    EXPECT_TRUE(at::equal(Run(none), want));
    for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
      // Threshold 0 never skips; a tiny positive one measures every step (the metric runs) and
      // still never skips: both must compute exactly the uncached velocity at every step.
      for (double threshold : {0.0, 1e-300}) {
        FluxSamplerRequest cached = plain;
        cached.cache = Cache(method, threshold, 0, 0);
        std::vector<int> skipped;
        const at::Tensor got = Run(cached, &skipped);
        EXPECT_TRUE(skipped.empty()) << StepCacheMethodName(method) << " " << threshold;
        EXPECT_TRUE(at::equal(got, want))
            << StepCacheMethodName(method) << " " << threshold << " cfg " << true_cfg;
      }
    }
  }
}

TEST_F(FluxStepCacheTest, HugeThresholdSkipsWhatTheRulesAllowAndReportsIt) {
  for (bool true_cfg : {false, true}) {
    const FluxSamplerRequest plain = Request(true_cfg, 8);
    const at::Tensor uncached = Run(plain);
    for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
      FluxSamplerRequest cached = plain;
      cached.cache = Cache(method, 1e9, /*warmup=*/2, /*max_skip=*/2);
      std::vector<int> skipped;
      const at::Tensor got = Run(cached, &skipped);
      EXPECT_EQ(skipped, (std::vector<int>{2, 3, 5, 6})) << StepCacheMethodName(method);
      ASSERT_TRUE(got.defined());
      EXPECT_EQ(got.sizes(), uncached.sizes());
      EXPECT_TRUE(at::isfinite(got).all().item<bool>());
      // Skipping changes the result, but it stays an estimate of the same latents.
      EXPECT_FALSE(at::equal(got, uncached)) << StepCacheMethodName(method);
      EXPECT_LT(testing::RelativeError(got, uncached), 1.0) << StepCacheMethodName(method);

      cached.cache.max_skip = 0;  // no limit: everything but the warm-up and the last step
      Run(cached, &skipped);
      EXPECT_EQ(skipped, (std::vector<int>{2, 3, 4, 5, 6})) << StepCacheMethodName(method);
    }
  }
}

TEST_F(FluxStepCacheTest, AModerateThresholdSkipsSomeStepsAndIsDeterministic) {
  FluxSamplerRequest request = Request(/*true_cfg=*/false, 12);
  // This tiny random model's first-block residual changes by ~0.5-1 a step.
  request.cache = Cache(StepCacheMethod::kFirstBlock, 1.0, 1, 0);
  std::vector<int> first, second;
  const at::Tensor a = Run(request, &first);
  const at::Tensor b = Run(request, &second);
  EXPECT_FALSE(first.empty());
  EXPECT_LT(first.size(), 10u);  // not every step the rules allow
  EXPECT_EQ(first, second);
  EXPECT_TRUE(at::equal(a, b));
  for (int step : first) {
    EXPECT_GE(step, 1);
    EXPECT_LT(step, 11);
  }
}

TEST_F(FluxStepCacheTest, TheCacheLivesWithTheRequest) {
  // A request after a cached one gives what it gives alone: nothing carries across requests.
  FluxSamplerRequest cached = Request(false, 6);
  cached.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
  const at::Tensor alone = Run(cached);
  FluxSamplerRequest other = Request(false, 6);
  other.seed = 9;
  other.cache = cached.cache;
  Run(other);
  EXPECT_TRUE(at::equal(Run(cached), alone));
}

// The Wan loop: Wan2.1 (UniPC), Wan2.2 A14B (two experts: the cache is dropped when the expert
// changes) and TI2V (per-token timesteps), with classifier-free guidance.
class WanStepCacheTest : public ::testing::TestWithParam<testing::TinyWanVariant> {
 protected:
  static at::Tensor Run(const testing::TinyWanPipeline& p, const WanSamplerRequest& request,
                        std::vector<int>* skipped = nullptr) {
    WanSamplerHooks hooks;
    std::vector<int> steps;
    hooks.on_cached_step = [&](int step) { steps.push_back(step); };
    absl::StatusOr<at::Tensor> latents = RunWanSampler(*p.transformer, p.transformer_2.get(),
                                                       p.pipeline, p.scheduler, request, hooks);
    EXPECT_TRUE(latents.ok()) << latents.status();
    if (skipped != nullptr) *skipped = steps;
    return latents.ok() ? *latents : at::Tensor();
  }
};

TEST_P(WanStepCacheTest, OffThresholdZeroAndHugeThreshold) {
  const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(GetParam());
  ASSERT_NE(p.transformer, nullptr);
  WanSamplerRequest plain = testing::TinyWanRequest(GetParam(), 5, 32, 48, /*cfg=*/true);
  plain.num_inference_steps = 8;
  const at::Tensor want = Run(p, plain);
  ASSERT_TRUE(want.defined());
  for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
    for (double threshold : {0.0, 1e-300}) {
      WanSamplerRequest cached = plain;
      cached.cache = Cache(method, threshold, 0, 0);
      std::vector<int> skipped;
      EXPECT_TRUE(at::equal(Run(p, cached, &skipped), want))
          << StepCacheMethodName(method) << " " << threshold;
      EXPECT_TRUE(skipped.empty());
    }
    WanSamplerRequest cached = plain;
    cached.cache = Cache(method, 1e9, /*warmup=*/1, /*max_skip=*/2);
    std::vector<int> skipped;
    const at::Tensor got = Run(p, cached, &skipped);
    ASSERT_TRUE(got.defined());
    EXPECT_TRUE(at::isfinite(got).all().item<bool>());
    if (GetParam() == testing::TinyWanVariant::kA14B) {
      // The first step of the second expert runs in full; the rules still hold.
      EXPECT_FALSE(skipped.empty());
      for (size_t k = 0; k < skipped.size(); ++k) {
        EXPECT_TRUE(skipped[k] >= 1 && skipped[k] < 7) << skipped[k];
        // No run of three skipped steps.
        if (k >= 2) {
          EXPECT_NE(skipped[k] - skipped[k - 2], 2) << skipped[k];
        }
      }
    } else {
      EXPECT_EQ(skipped, (std::vector<int>{1, 2, 4, 5})) << StepCacheMethodName(method);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, WanStepCacheTest,
                         ::testing::Values(testing::TinyWanVariant::kT2V,
                                           testing::TinyWanVariant::kA14B,
                                           testing::TinyWanVariant::kTI2V),
                         [](const ::testing::TestParamInfo<testing::TinyWanVariant>& info) {
                           switch (info.param) {
                             case testing::TinyWanVariant::kA14B:
                               return std::string("A14B");
                             case testing::TinyWanVariant::kTI2V:
                               return std::string("TI2V");
                             default:
                               return std::string("T2V");
                           }
                         });

}  // namespace
}  // namespace dgrid
