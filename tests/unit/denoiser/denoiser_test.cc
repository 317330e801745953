// Unit tests of the FLUX denoiser core: config validation, latent packing, the flow-matching
// scheduler's edge cases, and the sampler loop's hooks (progress and cancellation) on a tiny random
// model. Numerical agreement with diffusers is tested in tests/parity/flux.
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/diffusers_layout.h"
#include "common/weight_map.h"
#include "services/denoiser/models/flux_config.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/flow_match_euler.h"

namespace dgrid {
namespace {

absl::StatusOr<FluxTransformerConfig> ParseFlux(const std::string& text) {
  auto json = JsonConfig::FromText(text, "config.json");
  if (!json.ok()) return json.status();
  return FluxTransformerConfig::FromJson(*json);
}

TEST(FluxConfigTest, DefaultsAreFluxDev) {
  auto config = ParseFlux(R"({"_class_name": "FluxTransformer2DModel", "out_channels": null})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->in_channels, 64);
  EXPECT_EQ(config->out_channels, 64);  // null -> in_channels
  EXPECT_EQ(config->num_layers, 19);
  EXPECT_EQ(config->num_single_layers, 38);
  EXPECT_EQ(config->inner_dim(), 3072);
  EXPECT_FALSE(config->guidance_embeds);
  EXPECT_EQ(config->axes_dims_rope, (std::vector<int64_t>{16, 56, 56}));
}

TEST(FluxConfigTest, ReadsEveryKey) {
  auto config = ParseFlux(R"({"patch_size": 1, "in_channels": 16, "out_channels": 8,
      "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 16, "num_attention_heads": 2,
      "joint_attention_dim": 24, "pooled_projection_dim": 20, "guidance_embeds": true,
      "axes_dims_rope": [4, 6, 6]})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->out_channels, 8);
  EXPECT_EQ(config->num_single_layers, 3);
  EXPECT_EQ(config->inner_dim(), 32);
  EXPECT_TRUE(config->guidance_embeds);
}

TEST(FluxConfigTest, RejectsImpossibleValues) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"attention_head_dim": 64})", "sum(axes_dims_rope)"},
      {R"({"axes_dims_rope": [16, 56, 54, 2]})", "3 entries"},
      {R"({"attention_head_dim": 128, "axes_dims_rope": [15, 57, 56]})", "even"},
      {R"({"num_attention_heads": 0})", "num_attention_heads must be positive"},
      {R"({"joint_attention_dim": -4})", "joint_attention_dim"},
      {R"({"num_layers": -1})", "num_layers"},
      {R"({"out_channels": -2})", "out_channels"},
      {R"({"_class_name": "SD3Transformer2DModel"})", "_class_name"},
      {R"({"guidance_embeds": "yes"})", "guidance_embeds"},
  };
  for (const auto& [text, needle] : bad) {
    auto config = ParseFlux(text);
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(config.status().message().find(needle), std::string::npos)
        << text << " -> " << config.status();
  }
}

TEST(FluxPackingTest, PackUnpackRoundTrip) {
  const at::Tensor latents = at::randn({1, 4, 8, 12});
  const at::Tensor packed = flux::PackLatents(latents);
  EXPECT_EQ(packed.sizes(), (std::vector<int64_t>{1, 24, 16}));
  // Token (r, c) holds the 2x2 patch at rows 2r..2r+1, cols 2c..2c+1, channel-major.
  const at::Tensor patch = latents.index(
      {0, at::indexing::Slice(), at::indexing::Slice(2, 4), at::indexing::Slice(4, 6)});
  EXPECT_TRUE(at::equal(packed[0][1 * 6 + 2], patch.reshape({16})));
  EXPECT_TRUE(at::equal(flux::UnpackLatents(packed, 8, 12), latents));
}

TEST(FluxPackingTest, ImageIdsAreRowAndColumn) {
  const at::Tensor ids = flux::LatentImageIds(3, 5);
  ASSERT_EQ(ids.sizes(), (std::vector<int64_t>{15, 3}));
  EXPECT_EQ(ids[7][0].item<float>(), 0.0f);
  EXPECT_EQ(ids[7][1].item<float>(), 1.0f);
  EXPECT_EQ(ids[7][2].item<float>(), 2.0f);
}

TEST(FluxPackingTest, SeededNoiseIsDeterministic) {
  const at::Tensor a = flux::SeededNoise({1, 4, 6, 6}, 11, at::kFloat);
  EXPECT_TRUE(at::equal(a, flux::SeededNoise({1, 4, 6, 6}, 11, at::kFloat)));
  EXPECT_FALSE(at::equal(a, flux::SeededNoise({1, 4, 6, 6}, 12, at::kFloat)));
}

FlowMatchEulerSchedulerConfig DevScheduler() {
  FlowMatchEulerSchedulerConfig c;
  c.shift = 3.0;
  c.use_dynamic_shifting = true;
  return c;
}

TEST(FlowMatchEulerTest, OneStepGoesFromOneToZero) {
  FlowMatchEulerScheduler scheduler(DevScheduler());
  ASSERT_TRUE(scheduler.SetTimestepsForFlux(1, 4096).ok());
  ASSERT_EQ(scheduler.timesteps().size(), 1u);
  EXPECT_EQ(scheduler.sigmas(), (std::vector<float>{1.0f, 0.0f}));
  EXPECT_EQ(scheduler.timesteps()[0], 1000.0f);
  const at::Tensor sample = at::randn({1, 6, 16});
  const at::Tensor velocity = at::randn({1, 6, 16});
  auto prev = scheduler.Step(velocity, 0, sample);
  ASSERT_TRUE(prev.ok()) << prev.status();
  EXPECT_TRUE(at::allclose(*prev, sample - velocity));
  EXPECT_EQ(scheduler.Step(velocity, 1, sample).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(FlowMatchEulerTest, ScheduleIsDecreasingAndShifted) {
  FlowMatchEulerScheduler scheduler(DevScheduler());
  ASSERT_TRUE(scheduler.SetTimestepsForFlux(28, 4096).ok());
  ASSERT_EQ(scheduler.sigmas().size(), 29u);
  for (size_t i = 0; i + 1 < scheduler.sigmas().size(); ++i) {
    EXPECT_GT(scheduler.sigmas()[i], scheduler.sigmas()[i + 1]);
  }
  // With mu = max_shift at the largest resolution, the last sigma moves above 1/28.
  EXPECT_GT(scheduler.sigmas()[27], 1.0f / 28);
  EXPECT_DOUBLE_EQ(CalculateShift(256, DevScheduler()), 0.5);
  EXPECT_DOUBLE_EQ(CalculateShift(4096, DevScheduler()), 1.15);
}

TEST(FlowMatchEulerTest, RejectsBadUse) {
  FlowMatchEulerScheduler scheduler(DevScheduler());
  const at::Tensor x = at::zeros({1, 2, 4});
  EXPECT_EQ(scheduler.Step(x, 0, x).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(scheduler.SetTimestepsForFlux(0, 256).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler.SetSigmas({1.0, 0.5}, std::nullopt).code(),
            absl::StatusCode::kInvalidArgument);  // dynamic shifting needs mu
  ASSERT_TRUE(scheduler.SetTimestepsForFlux(2, 256).ok());
  EXPECT_EQ(scheduler.Step(x, 0, at::zeros({1, 4, 2})).status().code(),
            absl::StatusCode::kInvalidArgument);

  // shift_terminal with one step: nothing to stretch (diffusers samples NaN); an error naming
  // num_inference_steps instead.
  FlowMatchEulerSchedulerConfig terminal = DevScheduler();
  terminal.shift_terminal = 0.1;
  FlowMatchEulerScheduler stretched(terminal);
  const absl::Status one = stretched.SetTimestepsForFlux(1, 256);
  EXPECT_EQ(one.code(), absl::StatusCode::kInvalidArgument) << one;
  EXPECT_NE(one.message().find("num_inference_steps = 1"), std::string::npos) << one;
  EXPECT_TRUE(stretched.SetTimestepsForFlux(2, 256).ok());
  for (float sigma : stretched.sigmas()) EXPECT_TRUE(std::isfinite(sigma));

  auto json = JsonConfig::FromText(R"({"use_karras_sigmas": true})", "scheduler_config.json");
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(FlowMatchEulerSchedulerConfig::FromJson(*json).status().code(),
            absl::StatusCode::kUnimplemented);
  json = JsonConfig::FromText(R"({"time_shift_type": "cubic"})", "scheduler_config.json");
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(FlowMatchEulerSchedulerConfig::FromJson(*json).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A tiny FLUX config and random weights under diffusers' names.
FluxTransformerConfig TinyConfig(bool guidance) {
  FluxTransformerConfig c;
  c.in_channels = c.out_channels = 16;
  c.num_layers = 1;
  c.num_single_layers = 1;
  c.attention_head_dim = 16;
  c.num_attention_heads = 2;
  c.joint_attention_dim = 24;
  c.pooled_projection_dim = 20;
  c.guidance_embeds = guidance;
  c.axes_dims_rope = {4, 6, 6};
  return c;
}

WeightMap RandomWeights(const FluxTransformerConfig& c) {
  at::manual_seed(3);
  WeightMap w("random");
  for (const FluxParameter& p : FluxParameters(c)) {
    w.Insert(p.name,
             p.kind == FluxParameter::kNormScale ? at::ones(p.shape) : at::randn(p.shape) * 0.1);
  }
  return w;
}

TEST(FluxTransformerTest, TakesEveryParameterAndNamesMissingOnes) {
  const FluxTransformerConfig config = TinyConfig(true);
  WeightMap weights = RandomWeights(config);
  auto model = FluxTransformer2DModel::FromWeights(config, weights);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(weights.RemainingNames().empty());

  WeightMap partial = RandomWeights(config);
  ASSERT_TRUE(partial.Take("single_transformer_blocks.0.attn.norm_k.weight").ok());
  auto missing = FluxTransformer2DModel::FromWeights(config, partial);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("single_transformer_blocks.0.attn.norm_k.weight"),
            std::string::npos)
      << missing.status();
}

TEST(FluxTransformerTest, ForwardChecksInputs) {
  const FluxTransformerConfig config = TinyConfig(true);
  WeightMap weights = RandomWeights(config);
  auto model = FluxTransformer2DModel::FromWeights(config, weights);
  ASSERT_TRUE(model.ok()) << model.status();
  FluxTransformerInputs in;
  in.hidden_states = at::randn({1, 6, 16});
  in.encoder_hidden_states = at::randn({1, 3, 24});
  in.pooled_projections = at::randn({1, 20});
  in.timestep = at::full({1}, 0.5);
  in.img_ids = flux::LatentImageIds(2, 3);
  in.txt_ids = at::zeros({3, 3});
  // guidance_embeds without a guidance tensor.
  EXPECT_EQ(model->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
  in.guidance = at::full({1}, 3.5);
  auto out = model->Forward(in);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sizes(), (std::vector<int64_t>{1, 6, 16}));
  EXPECT_TRUE(at::isfinite(*out).all().item<bool>());
  in.hidden_states = at::randn({1, 6, 15});
  EXPECT_EQ(model->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
}

class FluxSamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const FluxTransformerConfig config = TinyConfig(true);
    WeightMap weights = RandomWeights(config);
    auto model = FluxTransformer2DModel::FromWeights(config, weights);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::make_unique<FluxTransformer2DModel>(*std::move(model));
    request_.height = 48;
    request_.width = 64;
    request_.num_inference_steps = 4;
    request_.seed = 5;
    request_.prompt_embeds = at::randn({1, 3, 24});
    request_.pooled_prompt_embeds = at::randn({1, 20});
  }
  std::unique_ptr<FluxTransformer2DModel> model_;
  FluxSamplerRequest request_;
};

TEST_F(FluxSamplerTest, RunsAllStepsAndReportsEach) {
  std::vector<int> steps;
  FluxSamplerHooks hooks;
  hooks.on_step = [&](int step, int total, double seconds) {
    EXPECT_EQ(total, 4);
    EXPECT_GE(seconds, 0.0);
    steps.push_back(step);
  };
  auto latents = RunFluxSampler(*model_, DevScheduler(), request_, hooks);
  ASSERT_TRUE(latents.ok()) << latents.status();
  EXPECT_EQ(latents->sizes(), (std::vector<int64_t>{1, 4, 6, 8}));
  EXPECT_EQ(steps, (std::vector<int>{0, 1, 2, 3}));
  // Same seed, same result.
  auto again = RunFluxSampler(*model_, DevScheduler(), request_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal(*latents, *again));
}

TEST_F(FluxSamplerTest, CancellationStopsTheLoop) {
  int done = 0;
  FluxSamplerHooks hooks;
  hooks.on_step = [&](int, int, double) { ++done; };
  hooks.is_cancelled = [&] { return done >= 2; };
  auto latents = RunFluxSampler(*model_, DevScheduler(), request_, hooks);
  EXPECT_EQ(latents.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(done, 2);
}

TEST_F(FluxSamplerTest, RejectsBadRequests) {
  FluxSamplerRequest bad = request_;
  bad.prompt_embeds = at::randn({1, 3, 23});
  EXPECT_EQ(RunFluxSampler(*model_, DevScheduler(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = request_;
  bad.height = 8;
  EXPECT_EQ(RunFluxSampler(*model_, DevScheduler(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = request_;
  bad.num_inference_steps = 0;
  EXPECT_EQ(RunFluxSampler(*model_, DevScheduler(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FluxSamplerTest, NonFiniteLatentsAreAnErrorNotAnImage) {
  FluxSamplerRequest poisoned = request_;
  poisoned.prompt_embeds = at::full({1, 3, 24}, std::nan(""));
  auto latents = RunFluxSampler(*model_, DevScheduler(), poisoned);
  EXPECT_EQ(latents.status().code(), absl::StatusCode::kInternal) << latents.status();
  EXPECT_NE(latents.status().message().find("NaN or Inf"), std::string::npos) << latents.status();
}

}  // namespace
}  // namespace dgrid
