// WanBatchedSampler (services/denoiser/wan_batched_sampler.h) on the tiny random Wan models of the
// sequence-parallel tests (tests/unit/parallel/sp_tiny_wan.h): every member of a batch ends with
// the latents of its lone RunWanSampler run (within 1e-5 of the largest latent in float32: the
// batched forward's kernels may round a batch of B unlike a batch of 1, and CFG scales that
// difference by its scale) for Wan2.1 T2V (UniPC and flow-match Euler), Wan2.2 TI2V (a timestep per
// token) and Wan2.2 A14B, whatever the batch mixes (prompts, seeds, step counts, guidance), when a
// member joins mid-way, and when another is cancelled or fails mid-way. On A14B, members on
// different experts at one step run one CFG pair of forwards per expert, each serving all of that
// expert's members (counted through the layerwise-offload observer, which computes bit for bit as
// the plain model). Step caching in a batch (#21 item 2): uncached, fbcache and teacache members
// (thresholds of their own, with or without guidance, on every variant) each end with the latents
// and the skipped steps of their lone cached run, also when a cached member joins or leaves
// mid-way; when every member skips no block runs; with threshold 0 a cached batch is bit for bit
// the uncached batch; and the CUDA pair's layout (a member's two rows under one cache) decides at
// the model as the lone pair. Then WanDenoiser's BatchKey, and the engine (--max-batch) on a tiny
// A14B checkpoint written here: requests, cached or not, join a running batch and end with their
// lone results and skipped steps. Driven step by step or by events (step reports): no timing.
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/dit_offload_flags.h"
#include "common/step_cache.h"
#include "families/wan/wan_family.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/step_cache_loop.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/common/safetensors_writer.h"
#include "tests/unit/denoiser/batch_test_harness.h"
#include "tests/unit/denoiser/tiny_wan_checkpoint.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::Cache;
using testing::Drain;
using testing::ExpectClose;
using testing::kBatchTolerance;
using testing::OneTo;
using testing::Range;
using testing::TinyWanVariant;
using testing::Tracked;

// 5 frames of 32x32 (2 x 2 x 2 tokens); its own prompt (random embeddings from `prompt`), seed,
// steps and guidance; with guidance > 1 a negative prompt of another text length.
WanSamplerRequest Request(const std::string& id, int prompt, uint64_t seed, int steps,
                          double guidance, std::optional<double> guidance_2 = {}) {
  WanSamplerRequest r;
  r.request_id = id;
  r.num_frames = 5;
  r.height = 32;
  r.width = 32;
  r.num_inference_steps = steps;
  r.seed = seed;
  r.guidance_scale = guidance;
  r.guidance_scale_2 = guidance_2;
  at::manual_seed(100 + prompt);
  r.prompt_embeds = at::randn({1, 7, 24});
  if (guidance > 1) r.negative_prompt_embeds = at::randn({1, 5, 24});
  return r;
}

// Every variant of the tiny pipeline, as the parameterized suites run them.
const auto kVariants = ::testing::Values(TinyWanVariant::kT2V, TinyWanVariant::kEuler,
                                         TinyWanVariant::kTI2V, TinyWanVariant::kA14B);

std::string VariantName(const ::testing::TestParamInfo<TinyWanVariant>& info) {
  switch (info.param) {
    case TinyWanVariant::kT2V:
      return "T2V";
    case TinyWanVariant::kEuler:
      return "Euler";
    case TinyWanVariant::kTI2V:
      return "TI2V";
    case TinyWanVariant::kA14B:
      return "A14B";
  }
  return "other";
}

class WanBatchedSamplerTest
    : public ::testing::TestWithParam<TinyWanVariant>,
      public testing::BatchSamplerHarness<WanBatchedSamplerTest, WanSamplerRequest> {
 public:
  // The lone run; `skipped` (optional) gets the steps its cache skipped.
  at::Tensor Alone(const WanSamplerRequest& r, std::vector<int>* skipped = nullptr) const {
    WanSamplerHooks hooks;
    if (skipped != nullptr) {
      hooks.on_cached_step = [skipped](int step) { skipped->push_back(step); };
    }
    auto out =
        RunWanSampler(*p_.transformer, p_.transformer_2.get(), p_.pipeline, p_.scheduler, r, hooks);
    EXPECT_TRUE(out.ok()) << r.request_id << ": " << out.status();
    return out.ok() ? *out : at::Tensor();
  }

  WanBatchedSampler NewBatch(const WanTransformer3DModel* transformer = nullptr,
                             const WanTransformer3DModel* transformer_2 = nullptr) const {
    return WanBatchedSampler(
        transformer ? *transformer : *p_.transformer,
        transformer_2 ? transformer_2 : p_.transformer_2.get(), p_.pipeline, p_.scheduler,
        [](const DenoiseInput&) {
          return absl::StatusOr<WanSamplerRequest>(absl::UnimplementedError("not used"));
        });
  }

 protected:
  void SetUp() override { Use(GetParam()); }

  void Use(TinyWanVariant variant) {
    variant_ = variant;
    p_ = testing::MakeTinyWanPipeline(variant);
    ASSERT_NE(p_.transformer, nullptr);
  }

  TinyWanVariant variant_ = TinyWanVariant::kT2V;
  testing::TinyWanPipeline p_;
};

TEST_P(WanBatchedSamplerTest, MixedCfgBatchEqualsLoneRuns) {
  const bool a14b = GetParam() == TinyWanVariant::kA14B;
  const std::vector<WanSamplerRequest> requests = {
      Request("a", 0, 1, 4, 5.0),
      Request("b", 1, 2, 6, 3.5, a14b ? std::optional(2.5) : std::nullopt),
      Request("c", 2, 3, 3, 2.0)};
  WanBatchedSampler batch = NewBatch();
  AddRecorded(batch, requests);
  EXPECT_EQ(batch.size(), 3);
  ExpectEachAlone(Drain(batch), requests);
  EXPECT_EQ(steps_[0], Range(4));
  EXPECT_EQ(steps_[1], Range(6));
  EXPECT_EQ(steps_[2], Range(3));
  EXPECT_EQ(totals_[1], 6);
}

TEST_P(WanBatchedSamplerTest, BatchWithoutGuidanceEqualsLoneRuns) {
  const WanSamplerRequest a = Request("a", 0, 1, 5, 1.0), b = Request("b", 1, 2, 3, 1.0);
  WanBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  ExpectClose(results.at(1), Alone(b), "b");
  EXPECT_EQ(steps_[0], Range(5));
  EXPECT_EQ(steps_[1], Range(3));
}

INSTANTIATE_TEST_SUITE_P(Variants, WanBatchedSamplerTest, kVariants, VariantName);

class WanBatchedT2VTest : public WanBatchedSamplerTest {
 protected:
  void SetUp() override { Use(TinyWanVariant::kT2V); }
};

TEST_F(WanBatchedT2VTest, JoiningCancelledAndFailingMembersLeaveTheOthersUnchanged) {
  const WanSamplerRequest a = Request("a", 0, 1, 6, 5.0), b = Request("b", 1, 2, 5, 3.0),
                          c = Request("c", 2, 3, 4, 4.0), d = Request("d", 3, 4, 6, 2.5);
  WanBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1, /*stop=*/3)).ok());  // cancelled before step 4
  ASSERT_TRUE(batch.AddRequest(3, d, Throwing(3, /*steps=*/2)).ok());
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(batch.Step().empty());
  ASSERT_TRUE(batch.AddRequest(2, c, Recording(2)).ok());  // joins at a step boundary
  EXPECT_EQ(steps_[0], Range(2));
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  ExpectClose(results.at(2), Alone(c), "c");
  EXPECT_EQ(results.at(1).status().code(), absl::StatusCode::kCancelled) << results.at(1).status();
  EXPECT_EQ(steps_[1], Range(3));
  EXPECT_FALSE(results.at(3).ok());
  EXPECT_NE(results.at(3).status().message().find("a hook failed"), std::string::npos)
      << results.at(3).status();
  EXPECT_EQ(steps_[3], Range(2));
  EXPECT_EQ(steps_[0], Range(6));
  EXPECT_EQ(steps_[2], Range(4));
}

TEST_F(WanBatchedT2VTest, RequestsThatDoNotFitAreRefusedAndTheBatchGoesOn) {
  const WanSamplerRequest a = Request("a", 0, 1, 3, 5.0);
  WanBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, {}).ok());
  WanSamplerRequest bad_text = Request("bad-text", 1, 2, 3, 5.0);
  bad_text.prompt_embeds = at::randn({1, 7, 23});
  WanSamplerRequest bad_frames = Request("bad-frames", 1, 2, 3, 5.0);
  bad_frames.num_frames = 6;
  WanSamplerRequest wide = Request("wide", 1, 2, 3, 5.0);
  wide.width = 64;
  WanSamplerRequest longer = Request("longer", 1, 2, 3, 5.0);
  longer.prompt_embeds = at::randn({1, 9, 24});
  const WanSamplerRequest no_cfg = Request("no-cfg", 1, 2, 3, 1.0);
  for (const WanSamplerRequest* r :
       std::vector<const WanSamplerRequest*>{&bad_text, &bad_frames, &wide, &longer, &no_cfg}) {
    const absl::Status s = batch.AddRequest(1, *r, {});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << r->request_id << ": " << s;
  }
  ExpectOnlyMemberEndsAlone(batch, a);
}

TEST_F(WanBatchedT2VTest, NonFiniteMemberFailsAloneAtTheEnd) {
  const WanSamplerRequest a = Request("a", 0, 1, 3, 5.0);
  WanSamplerRequest poisoned = Request("p", 1, 2, 3, 5.0);
  poisoned.prompt_embeds = at::full({1, 7, 24}, std::nan(""));
  ExpectNonFiniteMemberFailsAlone(a, poisoned);
}

class WanBatchedA14BTest : public WanBatchedSamplerTest {
 protected:
  void SetUp() override { Use(TinyWanVariant::kA14B); }
};

TEST_F(WanBatchedA14BTest, MembersOnDifferentExpertsRunOnePairOfForwardsPerExpert) {
  // Layerwise offload on the CPU computes as the plain models, bit for bit, and its observer sees
  // every forward (block 0 handed to compute once per forward).
  WanTransformer3DModel high = *p_.transformer, low = *p_.transformer_2;
  int high_forwards = 0, low_forwards = 0;
  ASSERT_NO_FATAL_FAILURE(testing::ObserveBlocks(high, [&](int64_t block) {
    if (block == 0) ++high_forwards;
  }));
  ASSERT_NO_FATAL_FAILURE(testing::ObserveBlocks(low, [&](int64_t block) {
    if (block == 0) ++low_forwards;
  }));
  // Different step counts put the members at different timesteps at the same step: with 6 steps
  // the switch to the low-noise expert comes sooner in the step count than with 10; c joins at
  // batch step 2 and starts on the high-noise expert.
  const WanSamplerRequest a = Request("a", 0, 1, 6, 5.0, 3.0), b = Request("b", 1, 2, 10, 4.0, 2.0),
                          c = Request("c", 2, 3, 4, 3.0, 1.5);
  // Each member's expert per step of its own, as its lone loop picks it.
  std::map<int64_t, std::vector<bool>> on_high;
  for (const auto& [id, r] :
       {std::pair<int64_t, const WanSamplerRequest*>{0, &a}, {1, &b}, {2, &c}}) {
    absl::StatusOr<WanSamplerState> state = WanSamplerState::Prepare(
        *p_.transformer, p_.transformer_2.get(), p_.pipeline, p_.scheduler, *r, nullptr);
    ASSERT_TRUE(state.ok()) << state.status();
    for (int i = 0; i < state->total(); ++i) on_high[id].push_back(state->FirstExpert(i));
  }
  WanBatchedSampler batch = NewBatch(&high, &low);
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  std::map<int64_t, absl::StatusOr<at::Tensor>> results;
  bool mixed_step = false, shared_forward = false;
  for (int step = 0; batch.size() > 0 && step < 20; ++step) {
    if (step == 2) {
      ASSERT_TRUE(batch.AddRequest(2, c, Recording(2)).ok());
    }
    // Members on each expert at this step (each at its own step index).
    int want_high = 0, want_low = 0;
    for (int64_t id = 0; id < 3; ++id) {
      const int start = id == 2 ? 2 : 0;
      const int own = step - start;
      if (own < 0 || own >= static_cast<int>(on_high[id].size()) || results.count(id)) continue;
      ++(on_high[id][own] ? want_high : want_low);
    }
    high_forwards = low_forwards = 0;
    testing::StepInto(batch, results);
    // With CFG: a prompt and a negative-prompt forward per expert that has members, whatever
    // their number.
    EXPECT_EQ(high_forwards, want_high > 0 ? 2 : 0) << "step " << step;
    EXPECT_EQ(low_forwards, want_low > 0 ? 2 : 0) << "step " << step;
    mixed_step = mixed_step || (want_high > 0 && want_low > 0);
    shared_forward = shared_forward || want_high > 1 || want_low > 1;
  }
  EXPECT_TRUE(mixed_step) << "no step had members on both experts";
  EXPECT_TRUE(shared_forward) << "no forward served two members";
  ExpectClose(results.at(0), Alone(a), "a");
  ExpectClose(results.at(1), Alone(b), "b");
  ExpectClose(results.at(2), Alone(c), "c");
  EXPECT_EQ(steps_[0], Range(6));
  EXPECT_EQ(steps_[1], Range(10));
  EXPECT_EQ(steps_[2], Range(4));
}

// --- Step caching in a batch (#21 item 2) ---

class WanBatchedCacheTest : public WanBatchedSamplerTest {};

TEST_P(WanBatchedCacheTest, UncachedFbcacheAndTeacacheMembersEqualTheirLoneRuns) {
  const bool a14b = GetParam() == TinyWanVariant::kA14B;
  std::vector<int> fb_alone, tea_alone;
  const WanSamplerRequest plain = Request("plain", 0, 1, 6, 5.0);
  const WanSamplerRequest fb =
      Moderate(Request("fb", 1, 2, 10, 4.0, a14b ? std::optional(2.5) : std::nullopt),
               StepCacheMethod::kFirstBlock, fb_alone);
  const WanSamplerRequest tea =
      Moderate(Request("tea", 2, 3, 8, 3.0), StepCacheMethod::kTeaCache, tea_alone);
  ExpectCachedMixAsAlone(plain, fb, fb_alone, tea, tea_alone);
}

TEST_P(WanBatchedCacheTest, MembersSkipByTheirOwnRulesWithAndWithoutGuidance) {
  // A huge threshold skips every step the rules allow whatever the changes (no decision to flip);
  // the rules differ per member, so on a step some members skip and others run. On A14B a switch
  // of experts drops a member's cache, so its next step runs in full, as alone.
  for (const double guidance : {4.0, 1.0}) {
    steps_.clear();
    skipped_.clear();
    WanSamplerRequest tea = Request("tea", 0, 1, 7, guidance),
                      fb = Request("fb", 1, 2, 8, guidance),
                      plain = Request("plain", 2, 3, 5, guidance),
                      tea2 = Request("tea2", 3, 4, 6, guidance);
    tea.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
    fb.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 2, 1);
    tea2.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 0, 2);
    const std::vector<const WanSamplerRequest*> requests = {&tea, &fb, &plain, &tea2};
    WanBatchedSampler batch = NewBatch();
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(batch.AddRequest(static_cast<int64_t>(i), *requests[i], Recording(i)).ok());
    }
    auto results = Drain(batch);
    ASSERT_EQ(results.size(), requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      const std::string what = requests[i]->request_id + " guidance " + std::to_string(guidance);
      std::vector<int> alone;
      ExpectClose(results.at(i), Alone(*requests[i], &alone), what);
      EXPECT_EQ(skipped_[i], alone) << what;
      EXPECT_EQ(steps_[i], Range(requests[i]->num_inference_steps)) << what;
    }
    EXPECT_TRUE(skipped_[2].empty());
    EXPECT_FALSE(skipped_[0].empty());
    EXPECT_FALSE(skipped_[1].empty());
    EXPECT_FALSE(skipped_[3].empty());
    if (GetParam() != TinyWanVariant::kA14B) {
      EXPECT_EQ(skipped_[0], (std::vector<int>{1, 2, 3, 4, 5}));
      EXPECT_EQ(skipped_[1], (std::vector<int>{2, 4, 6}));
      EXPECT_EQ(skipped_[3], (std::vector<int>{1, 2, 4}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, WanBatchedCacheTest, kVariants, VariantName);

class WanBatchedCacheT2VTest : public WanBatchedCacheTest {
 protected:
  void SetUp() override { Use(TinyWanVariant::kT2V); }
};

TEST_F(WanBatchedCacheT2VTest, CachedMembersJoiningAndLeavingLeaveTheOthersUnchanged) {
  std::vector<int> fb_alone, tea_alone;
  const WanSamplerRequest plain = Request("plain", 0, 1, 7, 5.0);
  const WanSamplerRequest tea =
      Moderate(Request("tea", 1, 2, 8, 3.0), StepCacheMethod::kTeaCache, tea_alone);
  const WanSamplerRequest fb =
      Moderate(Request("fb", 2, 3, 9, 4.0), StepCacheMethod::kFirstBlock, fb_alone);
  WanSamplerRequest gone = Request("gone", 3, 4, 8, 2.5);
  gone.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 0, 0);
  ExpectCachedJoiningAndLeaving(plain, tea, tea_alone, fb, fb_alone, gone);
  EXPECT_EQ(steps_[2], Range(9));
}

TEST_F(WanBatchedCacheT2VTest, WhenEveryMemberSkipsNoBlockRuns) {
  // Layerwise offload on the CPU computes as the plain model, bit for bit, and shows which blocks
  // a step hands to compute (the tiny model's blocks 0 and 1).
  WanTransformer3DModel offloaded = *p_.transformer;
  std::vector<int64_t> handed;
  ASSERT_NO_FATAL_FAILURE(
      testing::ObserveBlocks(offloaded, [&](int64_t layer) { handed.push_back(layer); }));
  // Teacache and fbcache, huge thresholds, no guidance (one forward a step): a skips {1, 2, 3, 4}
  // (no block), b {1, 2} (block 0 only).
  WanSamplerRequest a = Request("a", 0, 1, 6, 1.0), b = Request("b", 1, 2, 5, 1.0);
  a.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0);
  b.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 0, 2);
  WanBatchedSampler batch = NewBatch(&offloaded);
  ASSERT_TRUE(batch.AddRequest(0, a, Recording(0)).ok());
  ASSERT_TRUE(batch.AddRequest(1, b, Recording(1)).ok());
  testing::BatchResults results;
  const std::vector<std::vector<int64_t>> per_step =
      testing::DrainObserving(batch, handed, results);
  // Steps 1 and 2: both skip; only block 0 runs (b's signal, a's modulation from its weights).
  const std::vector<int64_t> all = {0, 1}, first_only = {0};
  EXPECT_EQ(per_step,
            (std::vector<std::vector<int64_t>>{all, first_only, first_only, all, all, all}));
  ExpectPairSkipsAsAlone(results, a, b, {1, 2, 3, 4}, {1, 2});
}

TEST_F(WanBatchedCacheT2VTest, ThresholdZeroIsBitwiseTheUncachedBatch) {
  const std::vector<WanSamplerRequest> plain = {
      Request("a", 0, 1, 4, 5.0), Request("b", 1, 2, 5, 2.0), Request("c", 2, 3, 3, 4.5)};
  ExpectThresholdZeroBitwise(plain);
}

TEST_F(WanBatchedCacheT2VTest, PairedRowsDecideAsTheLonePairForward) {
  // DGRID_WAN_CFG_BATCH's pair (CUDA only in the loops) at the model: each member's prompt and
  // negative prompt rows, one member after another, in one ForwardCachedRows, against each
  // member's lone Forward of its own pair with its cache (one decision over both rows).
  const WanTransformer3DModel& model = *p_.transformer;
  const int total = 6;
  const std::vector<StepCacheConfig> configs = {
      Cache(StepCacheMethod::kTeaCache, 1e9, 1, 0), Cache(StepCacheMethod::kFirstBlock, 1e9, 2, 1),
      StepCacheConfig(), Cache(StepCacheMethod::kFirstBlock, 1e9, 0, 0)};
  const auto members = static_cast<int64_t>(configs.size());
  std::vector<std::unique_ptr<StepCacheLoop>> lone, batched;
  std::vector<at::Tensor> text;  // [2, 7, 24] per member
  for (int64_t k = 0; k < members; ++k) {
    lone.push_back(std::make_unique<StepCacheLoop>(configs[k], std::vector<double>(), nullptr));
    batched.push_back(std::make_unique<StepCacheLoop>(configs[k], std::vector<double>(), nullptr));
    at::manual_seed(300 + k);
    text.push_back(at::randn({2, 7, 24}));
  }
  std::vector<std::vector<int>> lone_skips(members), batched_skips(members);
  bool mixed = false;
  for (int i = 0; i < total; ++i) {
    std::vector<WanTransformerInputs> pairs;
    for (int64_t k = 0; k < members; ++k) {
      at::manual_seed(400 + k);
      const at::Tensor start = at::randn({1, 4, 2, 4, 4});
      const at::Tensor drift = at::randn({1, 4, 2, 4, 4});
      WanTransformerInputs in;
      in.hidden_states = (start + 0.05 * i * drift).repeat({2, 1, 1, 1, 1});
      in.timestep = at::full({2}, 900.0f - 150.0f * i - 10.0f * k);
      in.encoder_hidden_states = text[k];
      pairs.push_back(in);
    }
    WanTransformerInputs all;
    std::vector<at::Tensor> hidden, steps, texts;
    std::vector<StepCacheStep*> caches;
    int skipping = 0;
    for (int64_t k = 0; k < members; ++k) {
      hidden.push_back(pairs[k].hidden_states);
      steps.push_back(pairs[k].timestep);
      texts.push_back(pairs[k].encoder_hidden_states);
      batched[k]->BeginStep(i, total);
      caches.push_back(batched[k]->Pass(0));
    }
    all.hidden_states = at::cat(hidden);
    all.timestep = at::cat(steps);
    all.encoder_hidden_states = at::cat(texts);
    absl::StatusOr<at::Tensor> got = model.ForwardCachedRows(all, caches);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(0), 2 * members);
    for (int64_t k = 0; k < members; ++k) {
      if (batched[k]->EndStep()) {
        batched_skips[k].push_back(i);
        ++skipping;
      }
      lone[k]->BeginStep(i, total);
      absl::StatusOr<at::Tensor> want = model.Forward(pairs[k], nullptr, lone[k]->Pass(0));
      ASSERT_TRUE(want.ok()) << want.status();
      if (lone[k]->EndStep()) lone_skips[k].push_back(i);
      const std::string what = "member " + std::to_string(k) + " step " + std::to_string(i);
      EXPECT_LE(testing::RelativeError(got->narrow(0, 2 * k, 2), *want), kBatchTolerance) << what;
    }
    mixed = mixed || (skipping > 0 && skipping < members);
  }
  EXPECT_TRUE(mixed) << "no step had members skipping and members running";
  for (int64_t k = 0; k < members; ++k) EXPECT_EQ(batched_skips[k], lone_skips[k]) << k;
  EXPECT_EQ(lone_skips[0], (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(lone_skips[1], (std::vector<int>{2, 4}));
  EXPECT_TRUE(lone_skips[2].empty());
  EXPECT_EQ(lone_skips[3], (std::vector<int>{1, 2, 3, 4}));
  // A batch that is no multiple of the members is refused.
  WanTransformerInputs odd;
  odd.hidden_states = at::randn({3, 4, 2, 4, 4});
  odd.timestep = at::full({3}, 500.0f);
  odd.encoder_hidden_states = at::randn({3, 7, 24});
  StepCacheLoop one(configs[0], {}, nullptr), two(configs[1], {}, nullptr);
  one.BeginStep(0, total);
  two.BeginStep(0, total);
  EXPECT_EQ(model.ForwardCachedRows(odd, {one.Pass(0), two.Pass(0)}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- WanDenoiser and the engine, on a tiny A14B checkpoint ---

class WanStepBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override { testing::WriteTinyWanCheckpoint(dir_.path()); }

  std::unique_ptr<DenoiserEngine> Engine(int max_batch) {
    return testing::CpuEngine(dir_.path(), max_batch);
  }

  // Request()'s request as the engine takes it.
  static DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps,
                            double guidance, std::optional<double> guidance_2 = {}) {
    const WanSamplerRequest r = Request(id, prompt, seed, steps, guidance, guidance_2);
    DenoiseInput in;
    in.request_id = id;
    in.width = static_cast<int>(r.width);
    in.height = static_cast<int>(r.height);
    in.num_frames = static_cast<int>(r.num_frames);
    in.num_inference_steps = steps;
    in.seed = seed;
    in.guidance_scale = guidance;
    in.guidance_scale_2 = guidance_2;
    in.positive[families::wan::kPromptEmbeds] = r.prompt_embeds;
    if (r.negative_prompt_embeds.defined()) {
      in.negative[families::wan::kPromptEmbeds] = r.negative_prompt_embeds;
    }
    return in;
  }

  static void ExpectAlone(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
    ASSERT_NO_FATAL_FAILURE(testing::WaitEnded(t));
    std::vector<int> skipped;  // 1-based, as the engine reports them
    SamplerHooks hooks;
    hooks.on_cached_step = [&skipped](int step) { skipped.push_back(step + 1); };
    auto alone = engine.family_denoiser().Run(input, hooks, nullptr);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ExpectClose(t.result, *alone, input.request_id);
    absl::MutexLock lock(&t.mutex);
    EXPECT_EQ(t.skipped, skipped) << input.request_id;
    EXPECT_EQ(t.steps, OneTo(input.num_inference_steps)) << input.request_id;
  }

  testing::ScratchDir dir_{"wan_batching"};
};

TEST_F(WanStepBatchingTest, BatchKeySeparatesWhatTheForwardConcatenates) {
  auto engine = Engine(2);
  ASSERT_NE(engine, nullptr);
  const FamilyDenoiser& wan = engine->family_denoiser();
  const DenoiseInput a = Input("a", 0, 1, 4, 5.0, 3.0);
  const std::optional<std::string> key = wan.BatchKey(a);
  ASSERT_TRUE(key.has_value());
  // Prompts, seeds, steps and guidance are each member's own.
  EXPECT_EQ(wan.BatchKey(Input("b", 1, 2, 9, 2.0)), key);
  DenoiseInput frames = a, wide = a, longer = a, cached = a, missing = a;
  // Step caching is each member's own: a cached request shares the batch.
  cached.cache.method = StepCacheMethod::kTeaCache;
  EXPECT_EQ(wan.BatchKey(cached), key);
  frames.num_frames = 9;
  wide.width = 64;
  longer.negative[families::wan::kPromptEmbeds] = at::randn({1, 6, 24});
  for (const DenoiseInput* other : {&frames, &wide, &longer}) {
    ASSERT_TRUE(wan.BatchKey(*other).has_value());
    EXPECT_NE(wan.BatchKey(*other), key);
  }
  EXPECT_NE(wan.BatchKey(Input("no-cfg", 0, 1, 4, 1.0)), key);
  // Alone: what fails alone.
  missing.negative.clear();
  EXPECT_EQ(wan.BatchKey(missing), std::nullopt);
}

TEST_F(WanStepBatchingTest, RequestsJoinARunningBatchAndEqualTheirLoneRuns) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->batcher(), nullptr);  // Wan batches: --max-batch is no longer ignored
  const DenoiseInput a = Input("a", 0, 1, 6, 5.0, 3.0), b = Input("b", 1, 2, 10, 4.0, 2.0),
                     c = Input("c", 2, 3, 3, 3.0);
  Tracked ta, tb, tc;
  std::map<int, int> batched;  // after a's step k (1-based): requests in batches
  // Two requests arrive while a runs; they join before its next step.
  testing::EnqueueWithJoiners(*engine, a, ta, {{&b, &tb}, {&c, &tc}}, &batched);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, b, tb);
  ExpectAlone(*engine, c, tc);
  // b and c joined for a's step 2 (one forward per expert and pass for all three); c (3 steps)
  // left after a's step 4; a (6) ended before b (10).
  EXPECT_EQ(batched, (std::map<int, int>{{1, 1}, {2, 3}, {3, 3}, {4, 3}, {5, 2}, {6, 2}}));
  EXPECT_EQ(engine->batcher()->batched(), 0);
}

TEST_F(WanStepBatchingTest, CachedAndUncachedRequestsShareABatchAndReportTheirSkippedSteps) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->batcher(), nullptr);
  // Huge thresholds: each cached request skips every step its rules allow, whatever the measured
  // changes (and runs in full the step after its switch of experts); ExpectAlone compares the
  // skipped steps each reports with its lone run's.
  DenoiseInput a = Input("a", 0, 1, 6, 5.0, 3.0), b = Input("b", 1, 2, 8, 4.0, 2.0),
               c = Input("c", 2, 3, 5, 3.0);
  b.cache = Cache(StepCacheMethod::kTeaCache, 1e9, 2, 1);
  c.cache = Cache(StepCacheMethod::kFirstBlock, 1e9, 0, 0);
  Tracked ta, tb, tc;
  std::map<int, int> batched;  // after a's step k (1-based): requests in batches
  // The cached requests arrive while a runs; they join before its next step.
  testing::EnqueueWithJoiners(*engine, a, ta, {{&b, &tb}, {&c, &tc}}, &batched);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, b, tb);
  ExpectAlone(*engine, c, tc);
  EXPECT_EQ(batched[2], 3);  // all three in one batch
  absl::MutexLock lock_a(&ta.mutex), lock_b(&tb.mutex), lock_c(&tc.mutex);
  EXPECT_TRUE(ta.skipped.empty());
  EXPECT_FALSE(tb.skipped.empty());
  EXPECT_FALSE(tc.skipped.empty());
}

}  // namespace
}  // namespace dgrid
