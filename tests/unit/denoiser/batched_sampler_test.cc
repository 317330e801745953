// FluxBatchedSampler (services/denoiser/batched_sampler.h) on the tiny random FLUX transformer of
// the sequence-parallel tests (tests/unit/parallel/sp_tiny_flux.h; it has a guidance embedding):
// every member of a batch ends with the latents of its lone RunFluxSampler run (within 1e-5 of the
// largest latent in float32: the batched forward's kernels may round a batch of B unlike a batch
// of 1, and true CFG scales that difference by its scale), whatever the
// batch mixes (prompts, seeds, step counts, guidance, img2img, true CFG), when a member joins
// mid-way, and when another is cancelled or fails mid-way; step reports are each member's own.
// Driven step by step: no threads, no timing.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/flux_transformer.h"
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

  at::Tensor Alone(const FluxSamplerRequest& r) const {
    auto out = RunFluxSampler(*model_, scheduler_, r);
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

}  // namespace
}  // namespace dgrid
