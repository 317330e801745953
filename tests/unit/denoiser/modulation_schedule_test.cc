// Modulation rows computed a window of steps at a time (services/denoiser/models/
// modulation_schedule.h, FluxTransformer2DModel::ComputeModulation; issue #19 item 1) on the tiny
// random FLUX transformer of the sequence-parallel tests (float32, CPU, with a guidance
// embedding and two double blocks): a forward pass given a step's precomputed row computes the
// velocity of the pass that computes its own modulations, for single rows, batches and both step
// caches; a schedule computes one window per W steps and its rows do not depend on the window;
// the FLUX sampler (plain, true CFG, img2img, cached) and the batched sampler end where they end
// with the rows off (window 0). The products of W rows may round unlike those of one row, so
// results are compared within 1e-5 of the largest value (float32), not bit for bit; with the rows
// off nothing changes (the forward path before them). Bad rows are INVALID_ARGUMENT; offloaded
// blocks turn the rows off.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "common/dit_offload_flags.h"
#include "common/step_cache.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/modulation_schedule.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/flow_match_euler.h"
#include "tests/unit/parallel/sp_tiny_flux.h"

namespace dgrid {
namespace {

constexpr double kTolerance = 1e-5;

class ModulationScheduleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    model_ = testing::TinyFluxModel(/*double_blocks=*/2);
    ASSERT_NE(model_, nullptr);
    scheduler_ = testing::TinyFluxScheduler();
  }
  void TearDown() override { SetModulationWindow(-1); }

  // The scheduler's timesteps for `steps` steps of the tiny request's 8x8 grid.
  std::vector<float> Timesteps(int steps) const {
    FlowMatchEulerScheduler s(scheduler_);
    EXPECT_TRUE(s.SetTimestepsForFlux(steps, 16).ok());
    return s.timesteps();
  }

  // One pass' inputs for the tiny request at timestep `t` (as the sampler converts it).
  FluxTransformerInputs Inputs(const FluxSamplerRequest& r, float t, const at::Tensor& latents,
                               const flux::Rope& rope) const {
    FluxTransformerInputs in;
    in.hidden_states = latents;
    in.encoder_hidden_states = r.prompt_embeds;
    in.pooled_projections = r.pooled_prompt_embeds;
    in.img_ids = flux::LatentImageIds(4, 4);
    in.txt_ids = at::zeros({r.prompt_embeds.size(1), 3});
    in.timestep = at::full({1}, t, at::kFloat) / 1000;
    in.guidance = at::full({1}, r.guidance_scale, at::kFloat);
    in.rope = &rope;
    return in;
  }

  at::Tensor Sample(const FluxSamplerRequest& r, int window, std::vector<int>* skipped = nullptr) {
    SetModulationWindow(window);
    SamplerHooks hooks;
    if (skipped != nullptr) {
      hooks.on_cached_step = [skipped](int step) { skipped->push_back(step); };
    }
    auto out = RunFluxSampler(*model_, scheduler_, r, hooks);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : at::Tensor();
  }

  std::unique_ptr<FluxTransformer2DModel> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
};

TEST_F(ModulationScheduleTest, APassGivenItsRowComputesTheSameVelocity) {
  const FluxSamplerRequest r = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  const std::vector<float> ts = Timesteps(5);
  SetModulationWindow(16);
  auto schedule =
      ModulationSchedule::Create(*model_, ts, r.guidance_scale, r.pooled_prompt_embeds, at::kFloat);
  ASSERT_NE(schedule, nullptr);
  auto rope = model_->ComputeRope(at::zeros({5, 3}), flux::LatentImageIds(4, 4));
  ASSERT_TRUE(rope.ok()) << rope.status();
  at::manual_seed(3);
  const at::Tensor latents = at::randn({1, 16, 16});
  for (int step = 0; step < 5; ++step) {
    FluxTransformerInputs in = Inputs(r, ts[step], latents, *rope);
    auto computed = model_->Forward(in);
    ASSERT_TRUE(computed.ok()) << computed.status();
    auto row = schedule->Row(step);
    ASSERT_TRUE(row.ok()) << row.status();
    EXPECT_EQ(row->sizes(), (std::vector<int64_t>{1, model_->modulation_width()}));
    in.modulation = *row;
    auto given = model_->Forward(in);
    ASSERT_TRUE(given.ok()) << given.status();
    EXPECT_LE(testing::RelativeError(*given, *computed), kTolerance) << "step " << step;
  }
  EXPECT_EQ(schedule->windows_computed(), 1);
}

TEST_F(ModulationScheduleTest, BatchesAndCachedRowsUseEachRowsOwnModulation) {
  // Two rows at different timesteps: the rows' modulations side by side give each row the
  // velocity of its own computed pass, uncached and through ForwardCachedRows (a teacache row
  // and an fbcache row, whose first steps always run in full).
  const FluxSamplerRequest r = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  const std::vector<float> ts = Timesteps(4);
  auto schedule =
      ModulationSchedule::Create(*model_, ts, r.guidance_scale, r.pooled_prompt_embeds, at::kFloat);
  ASSERT_NE(schedule, nullptr);
  auto rope = model_->ComputeRope(at::zeros({5, 3}), flux::LatentImageIds(4, 4));
  ASSERT_TRUE(rope.ok());
  at::manual_seed(4);
  const at::Tensor latents = at::randn({2, 16, 16});
  FluxTransformerInputs in = Inputs(r, 0, latents, *rope);
  in.encoder_hidden_states = r.prompt_embeds.expand({2, -1, -1}).contiguous();
  in.pooled_projections = r.pooled_prompt_embeds.expand({2, -1}).contiguous();
  in.timestep = at::tensor(std::vector<float>{ts[0], ts[2]}) / 1000;
  in.guidance = at::full({2}, r.guidance_scale, at::kFloat);
  auto computed = model_->Forward(in);
  ASSERT_TRUE(computed.ok()) << computed.status();
  auto row0 = schedule->Row(0);
  auto row2 = schedule->Row(2);
  ASSERT_TRUE(row0.ok() && row2.ok());
  in.modulation = at::cat({*row0, *row2});
  auto given = model_->Forward(in);
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_LE(testing::RelativeError(*given, *computed), kTolerance);

  for (StepCacheMethod method : {StepCacheMethod::kTeaCache, StepCacheMethod::kFirstBlock}) {
    const int spec = static_cast<int>(method);
    // No decide: each row runs in full and keeps its tensors.
    StepCacheTensors kept_a, kept_b, kept_c, kept_d;
    StepCacheStep a, b, c, d;
    a.method = b.method = c.method = d.method = method;
    a.tensors = &kept_a;
    b.tensors = &kept_b;
    c.tensors = &kept_c;
    d.tensors = &kept_d;
    FluxTransformerInputs plain = in;
    plain.modulation = at::Tensor();
    auto cached_computed = model_->ForwardCachedRows(plain, {&a, &b});
    auto cached_given = model_->ForwardCachedRows(in, {&c, &d});
    ASSERT_TRUE(cached_computed.ok()) << cached_computed.status();
    ASSERT_TRUE(cached_given.ok()) << cached_given.status();
    EXPECT_FALSE(c.skipped || d.skipped) << spec;
    EXPECT_LE(testing::RelativeError(*cached_given, *cached_computed), kTolerance) << spec;
    EXPECT_LE(testing::RelativeError(kept_c.signal, kept_a.signal), kTolerance) << spec;
    EXPECT_LE(testing::RelativeError(*cached_given, *given), kTolerance) << spec;
  }
}

TEST_F(ModulationScheduleTest, RowsDoNotDependOnTheWindow) {
  const FluxSamplerRequest r = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  const std::vector<float> ts = Timesteps(7);
  SetModulationWindow(3);
  auto by_three =
      ModulationSchedule::Create(*model_, ts, r.guidance_scale, r.pooled_prompt_embeds, at::kFloat);
  SetModulationWindow(1);
  auto by_one =
      ModulationSchedule::Create(*model_, ts, r.guidance_scale, r.pooled_prompt_embeds, at::kFloat);
  ASSERT_NE(by_three, nullptr);
  ASSERT_NE(by_one, nullptr);
  for (int step = 0; step < 7; ++step) {
    auto a = by_three->Row(step);
    auto b = by_one->Row(step);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LE(testing::RelativeError(*a, *b), kTolerance) << "step " << step;
  }
  EXPECT_EQ(by_three->windows_computed(), 3);  // steps 0-2, 3-5, 6
  EXPECT_EQ(by_one->windows_computed(), 7);
  // Going back to a step outside the held window computes it again.
  ASSERT_TRUE(by_three->Row(1).ok());
  EXPECT_EQ(by_three->windows_computed(), 4);
  EXPECT_EQ(by_three->Row(7).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(by_three->Row(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModulationScheduleTest, WindowZeroAndOffloadedBlocksTurnTheRowsOff) {
  const FluxSamplerRequest r = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  SetModulationWindow(0);
  EXPECT_EQ(
      ModulationSchedule::Create(*model_, Timesteps(3), 3.5, r.pooled_prompt_embeds, at::kFloat),
      nullptr);
  SetModulationWindow(16);
  auto offloaded = testing::TinyFluxModel(/*double_blocks=*/2);
  ASSERT_NE(offloaded, nullptr);
  auto offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok());
  ASSERT_TRUE(offloaded->OffloadBlocks("cpu", *offload).ok());
  EXPECT_FALSE(offloaded->CanComputeModulation());
  EXPECT_EQ(
      ModulationSchedule::Create(*offloaded, Timesteps(3), 3.5, r.pooled_prompt_embeds, at::kFloat),
      nullptr);
  EXPECT_EQ(offloaded->ComputeModulation(at::zeros({1}), at::zeros({1}), r.pooled_prompt_embeds)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  // The offloaded sampler computes its modulations and ends where the plain one does.
  auto plain = RunFluxSampler(*model_, scheduler_, r, {});
  auto moved = RunFluxSampler(*offloaded, scheduler_, r, {});
  ASSERT_TRUE(plain.ok() && moved.ok());
  EXPECT_LE(testing::RelativeError(*moved, *plain), kTolerance);
}

TEST_F(ModulationScheduleTest, BadRowsAreInvalidArgument) {
  const FluxSamplerRequest r = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  auto rope = model_->ComputeRope(at::zeros({5, 3}), flux::LatentImageIds(4, 4));
  ASSERT_TRUE(rope.ok());
  FluxTransformerInputs in = Inputs(r, 500, at::randn({1, 16, 16}), *rope);
  in.modulation = at::zeros({1, model_->modulation_width() - 1});
  EXPECT_EQ(model_->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
  in.modulation = at::zeros({2, model_->modulation_width()});
  EXPECT_EQ(model_->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
  in.modulation = at::zeros({1, model_->modulation_width()}, at::kDouble);
  EXPECT_EQ(model_->Forward(in).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model_->ComputeModulation(at::zeros({2}), at::zeros({1}), r.pooled_prompt_embeds)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ModulationScheduleTest, TheSamplerEndsWhereItEndsWithTheRowsOff) {
  FluxSamplerRequest plain = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  plain.num_inference_steps = 6;
  FluxSamplerRequest true_cfg = testing::TinyFluxRequest(8, 8, /*true_cfg=*/true);
  true_cfg.num_inference_steps = 5;
  FluxSamplerRequest img2img = plain;
  at::manual_seed(9);
  img2img.image_latents = at::randn({1, 4, 8, 8});
  img2img.strength = 0.6;
  for (const FluxSamplerRequest* r : {&plain, &true_cfg, &img2img}) {
    const at::Tensor off = Sample(*r, 0);
    for (int window : {16, 2}) {
      const at::Tensor on = Sample(*r, window);
      ASSERT_TRUE(on.defined() && off.defined());
      EXPECT_LE(testing::RelativeError(on, off), kTolerance) << (r == &plain      ? "plain"
                                                                 : r == &true_cfg ? "true CFG"
                                                                                  : "img2img")
                                                             << ", window " << window;
    }
  }
  // Step caching decides on the rows' modulation (teacache's signal) as on its own: the same
  // skipped steps and the same latents, at settings that skip some steps of the tiny model's 8
  // but not all (1 and 4).
  for (const char* spec : {"teacache:10", "fbcache:0.9"}) {
    FluxSamplerRequest cached = plain;
    cached.num_inference_steps = 8;
    auto config = ParseStepCacheSpec(spec, "cache");
    ASSERT_TRUE(config.ok());
    cached.cache = *config;
    std::vector<int> skipped_off, skipped_on;
    const at::Tensor off = Sample(cached, 0, &skipped_off);
    const at::Tensor on = Sample(cached, 16, &skipped_on);
    EXPECT_FALSE(skipped_off.empty()) << spec;
    EXPECT_LT(skipped_off.size(), 7u) << spec;
    EXPECT_EQ(skipped_on, skipped_off) << spec;
    EXPECT_LE(testing::RelativeError(on, off), kTolerance) << spec;
  }
}

TEST_F(ModulationScheduleTest, TheBatchedSamplerEndsWhereItEndsWithTheRowsOff) {
  // Two members at different steps (b joins after a's second step), one with true CFG: each
  // ends where it ends with the rows off.
  FluxSamplerRequest a = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  a.request_id = "a";
  a.num_inference_steps = 5;
  FluxSamplerRequest b = testing::TinyFluxRequest(8, 8, /*true_cfg=*/false);
  b.request_id = "b";
  b.num_inference_steps = 4;
  b.seed = 7;
  b.guidance_scale = 2.0;
  std::map<std::string, at::Tensor> results[2];
  for (int window : {0, 16}) {
    SetModulationWindow(window);
    FluxBatchedSampler batch(*model_, scheduler_, nullptr);
    ASSERT_TRUE(batch.AddRequest(1, a, {}).ok());
    int steps = 0;
    while (batch.size() > 0) {
      if (steps == 2) {
        ASSERT_TRUE(batch.AddRequest(2, b, {}).ok());
      }
      for (auto& e : batch.Step()) {
        ASSERT_TRUE(e.result.ok()) << e.result.status();
        results[window == 0 ? 0 : 1][e.id == 1 ? "a" : "b"] = *e.result;
      }
      ++steps;
    }
  }
  for (const char* id : {"a", "b"}) {
    ASSERT_TRUE(results[0].count(id) && results[1].count(id)) << id;
    EXPECT_LE(testing::RelativeError(results[1][id], results[0][id]), kTolerance) << id;
  }
}

}  // namespace
}  // namespace dgrid
