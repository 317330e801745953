// WanBatchedSampler (services/denoiser/wan_batched_sampler.h) on the tiny random Wan models of the
// sequence-parallel tests (tests/unit/parallel/sp_tiny_wan.h): every member of a batch ends with
// the latents of its lone RunWanSampler run (within 1e-5 of the largest latent in float32: the
// batched forward's kernels may round a batch of B unlike a batch of 1, and CFG scales that
// difference by its scale) for Wan2.1 T2V (UniPC and flow-match Euler), Wan2.2 TI2V (a timestep per
// token) and Wan2.2 A14B, whatever the batch mixes (prompts, seeds, step counts, guidance), when a
// member joins mid-way, and when another is cancelled or fails mid-way. On A14B, members on
// different experts at one step run one CFG pair of forwards per expert, each serving all of that
// expert's members (counted through the layerwise-offload observer, which computes bit for bit as
// the plain model). Then WanDenoiser's BatchKey, and the engine (--max-batch) on a tiny A14B
// checkpoint written here: requests join a running batch and end with their lone results. Driven
// step by step or by events (step reports): no timing.
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
#include "families/wan/wan_family.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/common/safetensors_writer.h"
#include "tests/unit/denoiser/tiny_wan_checkpoint.h"
#include "tests/unit/parallel/sp_tiny_flux.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

using testing::TinyWanVariant;

constexpr double kTolerance = 1e-5;

std::vector<int> Range(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

void ExpectClose(const absl::StatusOr<at::Tensor>& got, const at::Tensor& want,
                 const std::string& what) {
  ASSERT_TRUE(got.ok()) << what << ": " << got.status();
  ASSERT_TRUE(want.defined()) << what;
  ASSERT_EQ(got->sizes(), want.sizes()) << what;
  // Relative to the largest latent, as the sequence-parallel tests measure their 1e-5.
  const double error = testing::RelativeError(*got, want);
  EXPECT_LE(error, kTolerance) << what << " differs from its lone run by " << error;
}

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

class WanBatchedSamplerTest : public ::testing::TestWithParam<TinyWanVariant> {
 protected:
  void SetUp() override { Use(GetParam()); }

  void Use(TinyWanVariant variant) {
    variant_ = variant;
    p_ = testing::MakeTinyWanPipeline(variant);
    ASSERT_NE(p_.transformer, nullptr);
  }

  at::Tensor Alone(const WanSamplerRequest& r) const {
    auto out = RunWanSampler(*p_.transformer, p_.transformer_2.get(), p_.pipeline, p_.scheduler, r);
    EXPECT_TRUE(out.ok()) << r.request_id << ": " << out.status();
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
    if (stop >= 0) {
      h.is_cancelled = [this, id, stop] { return static_cast<int>(steps_[id].size()) >= stop; };
    }
    return h;
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

  // Steps `batch` until it is empty (at most `max_steps` steps); the results by member id.
  static std::map<int64_t, absl::StatusOr<at::Tensor>> Drain(BatchedSampler& batch,
                                                             int max_steps = 100) {
    std::map<int64_t, absl::StatusOr<at::Tensor>> out;
    for (int i = 0; i < max_steps && batch.size() > 0; ++i) {
      for (BatchedSampler::Ended& e : batch.Step()) out.emplace(e.id, std::move(e.result));
    }
    return out;
  }

  TinyWanVariant variant_ = TinyWanVariant::kT2V;
  testing::TinyWanPipeline p_;
  std::map<int64_t, std::vector<int>> steps_;
  std::map<int64_t, int> totals_;
};

TEST_P(WanBatchedSamplerTest, MixedCfgBatchEqualsLoneRuns) {
  const bool a14b = GetParam() == TinyWanVariant::kA14B;
  const std::vector<WanSamplerRequest> requests = {
      Request("a", 0, 1, 4, 5.0),
      Request("b", 1, 2, 6, 3.5, a14b ? std::optional(2.5) : std::nullopt),
      Request("c", 2, 3, 3, 2.0)};
  WanBatchedSampler batch = NewBatch();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(batch.AddRequest(static_cast<int64_t>(i), requests[i], Recording(i)).ok());
  }
  EXPECT_EQ(batch.size(), 3);
  auto results = Drain(batch);
  ASSERT_EQ(results.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ExpectClose(results.at(i), Alone(requests[i]), requests[i].request_id);
  }
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

INSTANTIATE_TEST_SUITE_P(Variants, WanBatchedSamplerTest,
                         ::testing::Values(TinyWanVariant::kT2V, TinyWanVariant::kEuler,
                                           TinyWanVariant::kTI2V, TinyWanVariant::kA14B),
                         [](const ::testing::TestParamInfo<TinyWanVariant>& info) {
                           switch (info.param) {
                             case TinyWanVariant::kT2V:
                               return std::string("T2V");
                             case TinyWanVariant::kEuler:
                               return std::string("Euler");
                             case TinyWanVariant::kTI2V:
                               return std::string("TI2V");
                             case TinyWanVariant::kA14B:
                               return std::string("A14B");
                           }
                           return std::string("other");
                         });

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
  SamplerHooks throwing = Recording(3);
  throwing.is_cancelled = [this] {
    if (steps_[3].size() == 2) TORCH_CHECK(false, "a hook failed");
    return false;
  };
  ASSERT_TRUE(batch.AddRequest(3, d, throwing).ok());
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
  WanSamplerRequest cached = Request("cached", 1, 2, 3, 5.0);
  cached.cache.method = StepCacheMethod::kFirstBlock;
  cached.cache.threshold = 0.1;
  const absl::Status s = batch.AddRequest(1, cached, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_EQ(batch.size(), 1);
  auto results = Drain(batch);
  ASSERT_EQ(results.size(), 1u);
  ExpectClose(results.at(0), Alone(a), "a");
}

TEST_F(WanBatchedT2VTest, NonFiniteMemberFailsAloneAtTheEnd) {
  const WanSamplerRequest a = Request("a", 0, 1, 3, 5.0);
  WanSamplerRequest poisoned = Request("p", 1, 2, 3, 5.0);
  poisoned.prompt_embeds = at::full({1, 7, 24}, std::nan(""));
  WanBatchedSampler batch = NewBatch();
  ASSERT_TRUE(batch.AddRequest(0, a, {}).ok());
  ASSERT_TRUE(batch.AddRequest(1, poisoned, {}).ok());
  auto results = Drain(batch);
  ExpectClose(results.at(0), Alone(a), "a");
  EXPECT_EQ(results.at(1).status().code(), absl::StatusCode::kInternal) << results.at(1).status();
}

class WanBatchedA14BTest : public WanBatchedSamplerTest {
 protected:
  void SetUp() override { Use(TinyWanVariant::kA14B); }
};

TEST_F(WanBatchedA14BTest, MembersOnDifferentExpertsRunOnePairOfForwardsPerExpert) {
  // Layerwise offload on the CPU computes as the plain models, bit for bit, and its observer sees
  // every forward (block 0 handed to compute once per forward).
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok()) << offload.status();
  WanTransformer3DModel high = *p_.transformer, low = *p_.transformer_2;
  ASSERT_TRUE(high.OffloadBlocks("cpu", *offload).ok());
  ASSERT_TRUE(low.OffloadBlocks("cpu", *offload).ok());
  int high_forwards = 0, low_forwards = 0;
  high.SetOffloadObserverForTesting([&](int64_t block, const std::vector<int64_t>&) {
    if (block == 0) ++high_forwards;
  });
  low.SetOffloadObserverForTesting([&](int64_t block, const std::vector<int64_t>&) {
    if (block == 0) ++low_forwards;
  });
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
    for (BatchedSampler::Ended& e : batch.Step()) results.emplace(e.id, std::move(e.result));
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

// --- WanDenoiser and the engine, on a tiny A14B checkpoint ---

// One enqueued request's outcome and step reports.
struct Tracked {
  absl::Notification done;
  absl::StatusOr<at::Tensor> result = absl::UnknownError("not done");
  absl::Mutex mutex;
  std::vector<int> steps ABSL_GUARDED_BY(mutex);
  std::function<void(int step)> after_step;  // on the lane, after the step is recorded
};

class WanStepBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override { testing::WriteTinyWanCheckpoint(dir_.path()); }

  std::unique_ptr<DenoiserEngine> Engine(int max_batch) {
    DenoiserEngineOptions options;
    options.model_path = dir_.path();
    options.load.device = "cpu";
    options.load.floating_dtype = "float32";
    options.max_batch = max_batch;
    auto engine = DenoiserEngine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
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

  static void Enqueue(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
    const absl::Status queued = engine.Enqueue(
        input,
        [&t](int step, int, double) {
          {
            absl::MutexLock lock(&t.mutex);
            t.steps.push_back(step);
          }
          if (t.after_step) t.after_step(step);
        },
        [&t](absl::StatusOr<at::Tensor> result) {
          t.result = std::move(result);
          t.done.Notify();
        });
    ASSERT_TRUE(queued.ok()) << queued;
  }

  static void ExpectAlone(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
    ASSERT_TRUE(t.done.WaitForNotificationWithTimeout(absl::Seconds(120))) << "never ended";
    auto alone = engine.family_denoiser().Run(input, {}, nullptr);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ExpectClose(t.result, *alone, input.request_id);
    absl::MutexLock lock(&t.mutex);
    std::vector<int> want(input.num_inference_steps);
    for (int i = 0; i < input.num_inference_steps; ++i) want[i] = i + 1;
    EXPECT_EQ(t.steps, want) << input.request_id;
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
  frames.num_frames = 9;
  wide.width = 64;
  longer.negative[families::wan::kPromptEmbeds] = at::randn({1, 6, 24});
  for (const DenoiseInput* other : {&frames, &wide, &longer}) {
    ASSERT_TRUE(wan.BatchKey(*other).has_value());
    EXPECT_NE(wan.BatchKey(*other), key);
  }
  EXPECT_NE(wan.BatchKey(Input("no-cfg", 0, 1, 4, 1.0)), key);
  // Alone: step caching (no per-member cache in a Wan batch), and what fails alone.
  cached.cache.method = StepCacheMethod::kTeaCache;
  EXPECT_EQ(wan.BatchKey(cached), std::nullopt);
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
  ta.after_step = [&](int step) {
    if (step == 1) {  // two requests arrive while a runs; they join before its next step
      Enqueue(*engine, b, tb);
      Enqueue(*engine, c, tc);
      engine->batcher()->AwaitWaiting(2);
    }
    batched[step] = engine->batcher()->batched();
  };
  Enqueue(*engine, a, ta);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, b, tb);
  ExpectAlone(*engine, c, tc);
  // b and c joined for a's step 2 (one forward per expert and pass for all three); c (3 steps)
  // left after a's step 4; a (6) ended before b (10).
  EXPECT_EQ(batched, (std::map<int, int>{{1, 1}, {2, 3}, {3, 3}, {4, 3}, {5, 2}, {6, 2}}));
  EXPECT_EQ(engine->batcher()->batched(), 0);
}

}  // namespace
}  // namespace dgrid
