// Layerwise DiT offload (--dit-offload layerwise, issue #20 item 1) on the CPU: the flags and their
// errors (common/dit_offload_flags.h), the FLUX sampler with offload at several prefetch depths
// against the plain run (bitwise: the arithmetic is the same, only where the weights live
// changes), which blocks are resident as each runs (LayerwiseOffload's test seam), the load path
// through LoadOptions, the refusals (FP8, a second offload), and Wan's transformer with offload.
// Nothing here depends on timing: on a CPU the copies are synchronous, and residency is read from
// the pass's own bookkeeping.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/diffusers_layout.h"
#include "common/dit_offload_flags.h"
#include "common/safetensors.h"
#include "common/step_cache.h"
#include "common/weight_map.h"
#include "families/registry.h"
#include "services/denoiser/family_denoiser.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/layerwise_offload.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

bool Mentions(const absl::Status& s, const std::string& text) {
  return s.message().find(text) != absl::string_view::npos;
}

TEST(DitOffloadFlagsTest, ParsesModesCountsAndFractions) {
  absl::StatusOr<DitOffload> o = ParseDitOffload("none", "1");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->layerwise);
  EXPECT_TRUE(DitOffloadArgs(*o).empty());

  o = ParseDitOffload("layerwise", "2");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->layerwise);
  EXPECT_EQ(o->PrefetchDepth(57), 2);
  EXPECT_EQ(o->PrefetchDepth(1), 1);  // A count beyond the blocks is all of them.
  EXPECT_EQ(DitOffloadArgs(*o), (std::vector<std::string>{"--dit-offload", "layerwise",
                                                          "--dit-offload-prefetch", "2"}));

  o = ParseDitOffload("layerwise", "0.25");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->PrefetchDepth(8), 2);
  EXPECT_EQ(o->PrefetchDepth(57), 15);  // ceil(14.25)
  EXPECT_EQ(o->PrefetchDepth(2), 1);    // At least one block.
  EXPECT_EQ(DitOffloadArgs(*o).back(), "0.25");

  o = ParseDitOffload("layerwise", "0.3");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->PrefetchDepth(10), 3);  // Not 4 from 0.3 * 10 rounding up in binary.

  o = ParseDitOffload("layerwise", "1.0");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->PrefetchDepth(57), 57);
}

TEST(DitOffloadFlagsTest, BadValuesNameTheFlag) {
  const absl::Status mode = ParseDitOffload("disk", "1").status();
  EXPECT_EQ(mode.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mode.message().rfind("--dit-offload: 'disk'", 0), 0u) << mode;
  for (const char* bad : {"0", "-2", "0.0", "1.5", "-0.5", "two", "", "1e3", "inf.0"}) {
    const absl::Status s = ParseDitOffload("layerwise", bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message().rfind("--dit-offload-prefetch: ", 0), 0u) << bad << ": " << s;
  }
  EXPECT_TRUE(Mentions(ParseDitOffload("layerwise", "0").status(), "at least 1 block"));
  EXPECT_TRUE(Mentions(ParseDitOffload("layerwise", "1.5").status(), "outside (0, 1]"));

  // Through a Config, as the stage, `dgrid up` and `dgrid generate --local` read them.
  Config config(DitOffloadSettings("test"));
  const char* argv[] = {"test", "--dit-offload", "layerwise", "--dit-offload-prefetch", "0"};
  ASSERT_TRUE(config.ParseArgs(5, argv).ok());
  const absl::Status read = ReadDitOffloadFlags(config).status();
  EXPECT_EQ(read.message().rfind("--dit-offload-prefetch: ", 0), 0u) << read;
}

// A tiny FLUX model with 3 double and 3 single blocks (6 layers), float32 on the CPU.
FluxTransformerConfig SixBlockConfig() {
  FluxTransformerConfig c;
  c.in_channels = c.out_channels = 16;
  c.num_layers = 3;
  c.num_single_layers = 3;
  c.attention_head_dim = 16;
  c.num_attention_heads = 2;
  c.joint_attention_dim = 24;
  c.pooled_projection_dim = 20;
  c.guidance_embeds = true;
  c.axes_dims_rope = {4, 6, 6};
  return c;
}

FluxTransformer2DModel SixBlockModel() {
  const FluxTransformerConfig config = SixBlockConfig();
  at::manual_seed(3);
  WeightMap w("random");
  for (const FluxParameter& p : FluxParameters(config)) {
    w.Insert(p.name, p.kind == FluxParameter::kNormScale
                         ? at::ones(p.shape) + 0.1 * at::randn(p.shape)
                         : at::randn(p.shape) * 0.2);
  }
  absl::StatusOr<FluxTransformer2DModel> model = FluxTransformer2DModel::FromWeights(config, w);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

FlowMatchEulerSchedulerConfig Scheduler() {
  FlowMatchEulerSchedulerConfig c;
  c.shift = 3.0;
  c.use_dynamic_shifting = true;
  return c;
}

FluxSamplerRequest Request(bool true_cfg) {
  at::manual_seed(11);
  FluxSamplerRequest r;
  r.vae_scale_factor = 1;
  r.height = 8;
  r.width = 12;
  r.num_inference_steps = 3;
  r.seed = 42;
  r.guidance_scale = 3.5;
  r.prompt_embeds = at::randn({1, 5, 24});
  r.pooled_prompt_embeds = at::randn({1, 20});
  if (true_cfg) {
    r.true_cfg_scale = 2.5;
    r.negative_prompt_embeds = at::randn({1, 4, 24});
    r.negative_pooled_prompt_embeds = at::randn({1, 20});
  }
  return r;
}

at::Tensor Sample(const FluxTransformer2DModel& model, const FluxSamplerRequest& request) {
  absl::StatusOr<at::Tensor> latents = RunFluxSampler(model, Scheduler(), request);
  EXPECT_TRUE(latents.ok()) << latents.status();
  return latents.ok() ? *latents : at::Tensor();
}

FluxTransformer2DModel Offloaded(const FluxTransformer2DModel& plain, const std::string& prefetch) {
  FluxTransformer2DModel model = plain;  // Shares the weights; OffloadBlocks copies the blocks.
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", prefetch);
  EXPECT_TRUE(offload.ok()) << offload.status();
  const absl::Status s = model.OffloadBlocks("cpu", *offload);
  EXPECT_TRUE(s.ok()) << s;
  return model;
}

TEST(FluxLayerwiseOffloadTest, SamplerOutputIsBitwiseThePlainRun) {
  const FluxTransformer2DModel plain = SixBlockModel();
  ASSERT_EQ(plain.offload(), nullptr);
  for (bool true_cfg : {false, true}) {
    const FluxSamplerRequest request = Request(true_cfg);
    const at::Tensor want = Sample(plain, request);
    ASSERT_TRUE(want.defined());
    // Depths 1 and 2, all blocks as a count (6) and as a fraction (1.0), and 0.5 (3 blocks).
    for (const char* prefetch : {"1", "2", "6", "1.0", "0.5"}) {
      const FluxTransformer2DModel model = Offloaded(plain, prefetch);
      ASSERT_NE(model.offload(), nullptr);
      EXPECT_EQ(model.offload()->num_layers(), 6);
      const at::Tensor got = Sample(model, request);
      ASSERT_TRUE(got.defined()) << prefetch;
      EXPECT_TRUE(at::equal(got, want)) << "prefetch " << prefetch << ", true_cfg " << true_cfg;
    }
  }
}

TEST(FluxLayerwiseOffloadTest, StepCachingWithOffloadIsBitwiseThePlainCachedRun) {
  const FluxTransformer2DModel plain = SixBlockModel();
  const FluxTransformer2DModel model = Offloaded(plain, "2");
  for (StepCacheMethod method : {StepCacheMethod::kFirstBlock, StepCacheMethod::kTeaCache}) {
    FluxSamplerRequest request = Request(false);
    request.num_inference_steps = 6;
    request.cache.method = method;
    request.cache.threshold = 1e9;  // Skips every step it may: the skipping path runs too.
    EXPECT_TRUE(at::equal(Sample(model, request), Sample(plain, request)))
        << StepCacheMethodName(method);
  }
}

TEST(FluxLayerwiseOffloadTest, AtMostPrefetchPlusOneBlocksAreResident) {
  const FluxTransformer2DModel plain = SixBlockModel();
  const FluxSamplerRequest request = Request(false);
  for (const auto& [prefetch, depth] :
       std::vector<std::pair<std::string, int64_t>>{{"1", 1}, {"2", 2}, {"0.5", 3}, {"1.0", 6}}) {
    FluxTransformer2DModel model = Offloaded(plain, prefetch);
    ASSERT_EQ(model.offload()->prefetch(), depth) << prefetch;
    std::vector<std::pair<int64_t, std::vector<int64_t>>> seen;
    model.SetOffloadObserverForTesting([&](int64_t block, const std::vector<int64_t>& resident) {
      seen.emplace_back(block, resident);
    });
    ASSERT_TRUE(Sample(model, request).defined());
    // Every block of each of the 3 steps, in order, each with exactly the window block ..
    // block + depth on the device (fewer at the end).
    ASSERT_EQ(seen.size(), 3u * 6u) << prefetch;
    size_t most = 0;
    for (size_t k = 0; k < seen.size(); ++k) {
      const auto& [block, resident] = seen[k];
      EXPECT_EQ(block, static_cast<int64_t>(k % 6));
      std::vector<int64_t> window;
      for (int64_t b = block; b <= std::min<int64_t>(5, block + depth); ++b) window.push_back(b);
      EXPECT_EQ(resident, window) << "prefetch " << prefetch << ", block " << block;
      most = std::max(most, resident.size());
    }
    EXPECT_LE(most, static_cast<size_t>(depth + 1)) << prefetch;
    EXPECT_EQ(most, static_cast<size_t>(std::min<int64_t>(6, depth + 1))) << prefetch;
  }
}

TEST(FluxLayerwiseOffloadTest, OffloadedBlocksAreCopiesNotTheModelsWeights) {
  // The device copies a pass hands out are fresh tensors (on a CPU too), views of one copy where
  // the host block's tensors view one storage (the fused q|k|v projection).
  const FluxTransformer2DModel plain = SixBlockModel();
  FluxTransformer2DModel model = Offloaded(plain, "1");
  const LayerwiseOffload& offload = *model.offload();
  LayerwiseOffload::Pass pass(offload, nullptr);
  const std::vector<at::Tensor>& host = offload.host_layer(0);
  const std::vector<at::Tensor> device = pass.Acquire(0);
  ASSERT_EQ(device.size(), host.size());
  for (size_t i = 0; i < host.size(); ++i) {
    ASSERT_EQ(device[i].defined(), host[i].defined()) << i;
    if (!host[i].defined()) continue;
    EXPECT_NE(device[i].data_ptr(), host[i].data_ptr()) << i;
    EXPECT_TRUE(at::equal(device[i], host[i])) << i;
    for (size_t j = 0; j < host.size(); ++j) {
      if (!host[j].defined()) continue;
      const bool host_shared = host[i].storage().is_alias_of(host[j].storage());
      EXPECT_EQ(device[i].storage().is_alias_of(device[j].storage()), host_shared)
          << i << ", " << j;
    }
  }
  // Blocks come in order: one dropped cannot be asked for again.
  (void)pass.Acquire(2);
  EXPECT_THROW((void)pass.Acquire(1), c10::Error);
}

TEST(FluxLayerwiseOffloadTest, RefusesASecondOffload) {
  const FluxTransformer2DModel plain = SixBlockModel();
  FluxTransformer2DModel model = Offloaded(plain, "1");
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok());
  const absl::Status again = model.OffloadBlocks("cpu", *offload);
  EXPECT_EQ(again.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(again, "--dit-offload")) << again;
}

// The tiny FLUX checkpoint of the e2e tests (scripts/setup.sh writes .dgrid/tiny-flux), loaded
// through LoadOptions with and without offload.
std::string TinyFluxFolder() {
  const char* source = std::getenv("DGRID_SOURCE_DIR");
  const std::string root = std::string(source != nullptr ? source : ".") + "/.dgrid/tiny-flux";
  return std::filesystem::exists(root + "/transformer/config.json") ? root : "";
}

TEST(FluxLayerwiseOffloadTest, LoadOptionsSelectOffloadAndTheOutputIsUnchanged) {
  const std::string root = TinyFluxFolder();
  if (root.empty()) GTEST_SKIP() << "no .dgrid/tiny-flux (scripts/setup.sh makes it)";
  LoadOptions load;
  load.floating_dtype = "float32";
  absl::StatusOr<FluxTransformer2DModel> plain =
      FluxTransformer2DModel::Load(root + "/transformer", load);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_EQ(plain->offload(), nullptr);
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "1");
  ASSERT_TRUE(offload.ok());
  load.dit_offload = *offload;
  absl::StatusOr<FluxTransformer2DModel> model =
      FluxTransformer2DModel::Load(root + "/transformer", load);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_NE(model->offload(), nullptr);
  EXPECT_EQ(model->offload()->num_layers(),
            plain->config().num_layers + plain->config().num_single_layers);

  const FluxTransformerConfig& c = plain->config();
  FluxSamplerRequest request;
  request.vae_scale_factor = 1;
  request.height = 8;
  request.width = 8;
  request.num_inference_steps = 2;
  request.seed = 1;
  at::manual_seed(5);
  request.prompt_embeds = at::randn({1, 4, c.joint_attention_dim});
  request.pooled_prompt_embeds = at::randn({1, c.pooled_projection_dim});
  // in_channels 64 with patch_size 1: 16 latent channels packed 2x2.
  const at::Tensor want = Sample(*plain, request);
  ASSERT_TRUE(want.defined());
  EXPECT_TRUE(at::equal(Sample(*model, request), want));

  LoadOptions fp8 = load;
  fp8.dit_precision = "fp8";
  const absl::Status refused = FluxTransformer2DModel::Load(root + "/transformer", fp8).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_EQ(refused.message().rfind("--dit-offload layerwise: ", 0), 0u) << refused;
}

// Wan: the same mechanism on WanTransformer3DModel (the tiny 2-block models of the parallel tests),
// for Wan2.1 T2V with CFG and Wan2.2 A14B (two experts, both offloaded).
TEST(WanLayerwiseOffloadTest, SamplerOutputIsBitwiseThePlainRunAndTheWindowHolds) {
  for (testing::TinyWanVariant variant :
       {testing::TinyWanVariant::kT2V, testing::TinyWanVariant::kA14B}) {
    testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(variant);
    ASSERT_NE(p.transformer, nullptr);
    const WanSamplerRequest request = testing::TinyWanRequest(variant, 5, 32, 32, /*cfg=*/true);
    absl::StatusOr<at::Tensor> want =
        RunWanSampler(*p.transformer, p.transformer_2.get(), p.pipeline, p.scheduler, request);
    ASSERT_TRUE(want.ok()) << want.status();
    for (const char* prefetch : {"1", "1.0"}) {
      absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", prefetch);
      ASSERT_TRUE(offload.ok());
      WanTransformer3DModel model = *p.transformer;
      ASSERT_TRUE(model.OffloadBlocks("cpu", *offload).ok());
      std::optional<WanTransformer3DModel> model_2;
      if (p.transformer_2 != nullptr) {
        model_2.emplace(*p.transformer_2);
        ASSERT_TRUE(model_2->OffloadBlocks("cpu", *offload).ok());
      }
      size_t most = 0, seen = 0;
      model.SetOffloadObserverForTesting([&](int64_t, const std::vector<int64_t>& resident) {
        most = std::max(most, resident.size());
        ++seen;
      });
      absl::StatusOr<at::Tensor> got =
          RunWanSampler(model, model_2 ? &*model_2 : nullptr, p.pipeline, p.scheduler, request);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(at::equal(*got, *want)) << "prefetch " << prefetch;
      EXPECT_GT(seen, 0u);
      EXPECT_EQ(most, static_cast<size_t>(std::min<int64_t>(2, offload->PrefetchDepth(2) + 1)));
    }
  }
}

TEST(WanLayerwiseOffloadTest, WanIsNotRefusedForTheFlag) {
  // Every family the denoiser serves (flux, wan) has offload now; others would be refused by name.
  absl::StatusOr<const families::ModelFamily*> wan = families::FindFamily("wan");
  ASSERT_TRUE(wan.ok()) << wan.status();
  ModelIndex index;
  index.root = "/nonexistent/wan-tiny";
  LoadOptions load;
  absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", "2");
  ASSERT_TRUE(offload.ok());
  load.dit_offload = *offload;
  // Wan passes the check and fails later for the missing folder, not for the flag.
  const absl::Status s = LoadFamilyDenoiser(**wan, index, load).status();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message().find("--dit-offload"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace dgrid
