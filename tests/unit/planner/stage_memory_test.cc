// The encoder and decoder stages' memory (planner/stage_memory.h). No committed report measures a
// text encoder or VAE peak, so the expected values are the formulas worked by hand from the
// released configurations, not outputs of the code.
#include "planner/stage_memory.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "planner/dit_settings.h"

namespace dgrid::planner {
namespace {

constexpr double kMiB = 1048576.0;

TEST(StageMemoryTest, ParameterCountsOfTheReleasedConfigs) {
  const FamilyComponents flux = *ComponentsOf(*LookupModelShape("flux-dev"));
  ASSERT_EQ(flux.text_encoders.size(), 2u);
  // CLIP-L: 49408 x 768 tokens + 77 x 768 positions + 12 x (4 x 768^2 + 2 x 768 x 3072): 123M.
  EXPECT_DOUBLE_EQ(flux.text_encoders[0].Parameters(),
                   49408.0 * 768 + 77.0 * 768 + 12 * (4.0 * 768 * 768 + 2.0 * 768 * 3072));
  EXPECT_NEAR(flux.text_encoders[0].Parameters() / 1e6, 123, 0.5);
  // T5 v1.1 XXL encoder: 32128 x 4096 + 24 x (4 x 4096 x 64 x 64 + 3 x 4096 x 10240): 4.76B.
  EXPECT_DOUBLE_EQ(flux.text_encoders[1].Parameters(),
                   32128.0 * 4096 + 24 * (4.0 * 4096 * 4096 + 3.0 * 4096 * 10240));
  EXPECT_NEAR(flux.text_encoders[1].Parameters() / 1e9, 4.76, 0.01);
  EXPECT_EQ(flux.text_encoders[1].default_tokens, 512);
  // FLUX's AutoencoderKL decoder (block_out_channels 128, 256, 512, 512; 3 resnets a level):
  const double c512 = 9.0 * 512 * 512, c256 = 9.0 * 256 * 256, c128 = 9.0 * 128 * 128;
  const double decoder = 9.0 * 16 * 512                // conv_in
                         + 4 * c512 + 4.0 * 512 * 512  // mid block
                         + 2 * (6 * c512 + c512)       // two 512 levels
                         + (9.0 * 512 * 256 + c256 + 512.0 * 256) + 4 * c256 + c256  // 256
                         + (9.0 * 256 * 128 + c128 + 256.0 * 128) + 4 * c128         // 128
                         + 9.0 * 128 * 3;                                            // conv_out
  EXPECT_DOUBLE_EQ(flux.vae.parameters, decoder);
  EXPECT_NEAR(flux.vae.parameters / 1e6, 49.5, 0.1);

  const FamilyComponents wan = *ComponentsOf(*LookupModelShape("wan2.1-14b"));
  ASSERT_EQ(wan.text_encoders.size(), 1u);
  // UMT5-XXL: T5-XXL's layers with a 256384-token vocabulary: 5.68B.
  EXPECT_DOUBLE_EQ(wan.text_encoders[0].Parameters(),
                   256384.0 * 4096 + 24 * (4.0 * 4096 * 4096 + 3.0 * 4096 * 10240));
  // Wan2.1's decoder: dims 384, 384, 384, 192, 96 of 3x3x3 causal convolutions.
  const double r384 = 2 * 27.0 * 384 * 384, r192 = 2 * 27.0 * 192 * 192, r96 = 2 * 27.0 * 96 * 96;
  const double up3d384 = 9.0 * 384 * 192 + 3.0 * 384 * 768;  // 2-D conv to 192 + time_conv
  const double wan_decoder = 27.0 * 16 * 384 + 16.0 * 16     // in
                             + 2 * r384 + 4.0 * 384 * 384    // mid
                             + 3 * r384 + up3d384            // level 0
                             + (27.0 * 192 * 384 + 27.0 * 384 * 384 + 192.0 * 384)  // level 1
                             + 2 * r384 + up3d384                                   //
                             + 3 * r192 + 9.0 * 192 * 96                            // level 2
                             + 3 * r96                                              // level 3
                             + 27.0 * 96 * 3;                                       // out
  EXPECT_DOUBLE_EQ(wan.vae.parameters, wan_decoder);
  EXPECT_NEAR(wan.vae.parameters / 1e6, 73.3, 0.1);

  ModelShape unknown = *LookupModelShape("flux-dev");
  unknown.family = "sd3";
  EXPECT_EQ(ComponentsOf(unknown).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StageMemoryTest, EncoderAndDecoderPeaks) {
  const ModelShape flux = *LookupModelShape("flux-dev");
  const StageEstimate encoder = *EncoderPeak(flux, 2);
  const FamilyComponents c = *ComponentsOf(flux);
  EXPECT_NEAR(encoder.weights_mib,
              (c.text_encoders[0].Parameters() + c.text_encoders[1].Parameters()) * 2 / kMiB, 1e-6);
  // T5 at 512 tokens: 2 x 64 heads x 512^2 x 4 bytes of scores, 3 x 512 x 10240 x 2 bytes of FFN.
  EXPECT_NEAR(encoder.activations_mib, (2.0 * 64 * 512 * 512 * 4 + 3.0 * 512 * 10240 * 2) / kMiB,
              1e-9);
  EXPECT_NEAR(EncoderPeak(flux, 4)->weights_mib, 2 * encoder.weights_mib, 1e-6);
  EXPECT_EQ(EncoderPeak(flux, 2, 0, ComponentPlacement::kCpu)->total_mib(), 0);
  EXPECT_EQ(EncoderPeak(flux, 1).status().code(), absl::StatusCode::kInvalidArgument);

  // FLUX 1024^2 untiled: 896 planes (3 x 256 + 128) of 1024^2 bf16 values, and the picture twice.
  RequestShape r1024;
  r1024.width = r1024.height = 1024;
  const StageEstimate d = *DecoderPeak(flux, r1024, VaeTiling(), 2);
  EXPECT_NEAR(d.activations_mib, (896.0 * 1024 * 1024 * 2 + 2 * 3.0 * 1024 * 1024 * 2) / kMiB,
              1e-9);
  EXPECT_NEAR(d.weights_mib, c.vae.parameters * 2 / kMiB, 1e-9);
  EXPECT_TRUE(absl::StrContains(d.detail, "untiled")) << d.detail;
  // 4096^2 with --vae-tiling auto (above 2048^2): tiles of 1024, plus the tiles kept for blending
  // (the picture / 0.75^2) and the picture twice.
  RequestShape r4096;
  r4096.width = r4096.height = 4096;
  const double picture = 3.0 * 4096 * 4096 * 2;
  const StageEstimate tiled = *DecoderPeak(flux, r4096, VaeTiling(), 2);
  EXPECT_NEAR(tiled.activations_mib,
              (896.0 * 1024 * 1024 * 2 + picture / (0.75 * 0.75) + 2 * picture) / kMiB, 1e-9);
  EXPECT_TRUE(absl::StrContains(tiled.detail, "tiles of 1024 px")) << tiled.detail;
  // --vae-tiling off decodes it whole; on tiles 2048^2 too (larger than one tile), at 512 px.
  EXPECT_NEAR(DecoderPeak(flux, r4096, VaeTiling{"off", 0}, 2)->activations_mib,
              (896.0 * 4096 * 4096 * 2 + 2 * picture) / kMiB, 1e-9);
  RequestShape r2048;
  r2048.width = r2048.height = 2048;
  EXPECT_FALSE(DecodeIsTiled(c.vae, VaeTiling(), 2048, 2048));  // auto: not above 2048^2
  EXPECT_TRUE(DecodeIsTiled(c.vae, VaeTiling{"on", 512}, 2048, 2048));
  EXPECT_FALSE(DecodeIsTiled(c.vae, VaeTiling{"on", 0}, 1024, 1024));  // one tile

  // Wan 1280x720x81: 22 frames of 96 channels at full resolution, the 81 frames twice.
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  RequestShape video;
  video.width = 1280;
  video.height = 720;
  video.frames = 81;
  const double hw = 1280.0 * 720;
  EXPECT_NEAR(DecoderPeak(wan, video, VaeTiling(), 2)->activations_mib,
              (22.0 * 96 * hw * 2 + 2 * 3.0 * 81 * hw * 2) / kMiB, 1e-9);
}

TEST(StageMemoryTest, OneSharedGpuCountsEveryWeightAndTheLargestActivations) {
  MemoryEstimate denoiser;
  denoiser.weights_mib = 100;
  denoiser.activations_mib = 30;
  denoiser.collective_mib = 5;
  StageEstimate encoder, decoder, cpu;
  encoder.weights_mib = 50;
  encoder.activations_mib = 10;
  decoder.weights_mib = 2;
  decoder.activations_mib = 60;
  cpu.weights_mib = 1000;
  cpu.activations_mib = 1000;
  cpu.placement = ComponentPlacement::kCpu;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder, cpu}), 100 + 50 + 2 + 60);
  decoder.activations_mib = 20;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}), 100 + 50 + 2 + 35);
  // Offloaded (model offload): an encoder's weights are on the GPU only while it encodes, so
  // they leave the resident sum and join its in-use term: max(35, 50 + 10, 2 + 20) = 60.
  encoder.placement = ComponentPlacement::kOffload;
  EXPECT_DOUBLE_EQ(encoder.total_mib(), 60);  // its own process still peaks at both
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}), 100 + 2 + 60);
  // Both offloaded: the denoiser's activations are the largest in-use term.
  encoder.weights_mib = 20;
  decoder.placement = ComponentPlacement::kOffload;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}), 100 + 35);
  EXPECT_STREQ(ComponentPlacementName(ComponentPlacement::kOffload), "offload");
  // The DiT model-offloaded too (--dit-offload model): its weights count only while it denoises,
  // so the peak is the largest component's use, max(20 + 10, 100 + 35, 2 + 20), not the sum.
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}, true), 100 + 35);
  decoder.activations_mib = 200;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}, true), 2 + 200);
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}), 100 + 2 + 200);
  // Beside resident stages it saves the DiT's weights only where a stage's use outweighs its own.
  decoder.placement = ComponentPlacement::kGpu;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}, true), 2 + 200);
  decoder.activations_mib = 20;
  EXPECT_DOUBLE_EQ(SharedGpuPeakMib(denoiser, {encoder, decoder}, true), 2 + 135);

  // FLUX.1-dev at 1024^2 on one GPU of 30 GiB: the denoiser alone fits in bf16 (23.6 GiB), but
  // not beside the text encoders' 9.1 GiB: model offload of every component is taken (it copies
  // the DiT once per request, layerwise offload every step), layerwise offload fits too.
  const ModelShape flux = *LookupModelShape("flux-dev");
  Workload w;
  RequestClass rc;
  rc.name = "1024";
  rc.shape.width = rc.shape.height = 1024;
  w.classes.push_back(rc);
  DitChoiceOptions alone;
  const CostModel cost{Calibration(), LinkSpeeds()};
  DitChoice c =
      *ChooseDitSettings(BuiltInMemoryModel(), cost, flux, w, GroupShape(), 30 * 1024, alone);
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16");
  DitChoiceOptions shared;
  shared.colocated = {*EncoderPeak(flux, 2), *DecoderPeak(flux, rc.shape, VaeTiling(), 2)};
  c = *ChooseDitSettings(BuiltInMemoryModel(), cost, flux, w, GroupShape(), 30 * 1024, shared);
  ASSERT_TRUE(c.fits());
  const DitCandidate& chosen = c.candidates[c.chosen];
  EXPECT_EQ(chosen.name, "bf16 + model offload");
  EXPECT_TRUE(chosen.model_offload);
  EXPECT_FALSE(chosen.resident());
  EXPECT_EQ(chosen.DenoiserFlags(), (std::vector<std::string>{"--dit-offload", "model"}));
  EXPECT_EQ(chosen.StageFlags(), (std::vector<std::string>{"--text-encoder-device", "offload",
                                                           "--vae-device", "offload"}));
  EXPECT_EQ(chosen.ToJson()["dit_offload"], "model");
  const DitCandidate& bf16 = c.candidates[0];
  EXPECT_FALSE(bf16.fits);
  EXPECT_NEAR(bf16.peak_mib(), SharedGpuPeakMib(bf16.memory, shared.colocated), 1e-9);
  EXPECT_TRUE(absl::StrContains(bf16.verdict, "does not fit")) << bf16.verdict;
  // Its peak: the largest component's use (here the DiT's weights and activations, as bf16's
  // denoiser alone), every stage offloaded with it; its pinned host copies hold every weight.
  std::vector<StageEstimate> offloaded = shared.colocated;
  for (StageEstimate& stage : offloaded) stage.placement = ComponentPlacement::kOffload;
  EXPECT_NEAR(chosen.peak_mib(), SharedGpuPeakMib(chosen.memory, offloaded, true), 1e-9);
  EXPECT_NEAR(chosen.peak_mib(), bf16.memory.total_mib(), 1e-9);
  EXPECT_NEAR(chosen.memory.host_mib,
              bf16.memory.weights_mib + offloaded[0].weights_mib + offloaded[1].weights_mib, 1e-9);
  // Its step: bf16's plus the DiT's copy spread over the request's steps.
  EXPECT_NEAR(chosen.step_ms,
              bf16.step_ms + bf16.memory.weights_mib * 1048576.0 /
                                 (Calibration().host_to_device_gbps * 1e9) * 1e3 / rc.shape.steps,
              1e-6);
  for (const DitCandidate& other : c.candidates) {
    if (other.name == "bf16 + offload prefetch 1") {
      EXPECT_TRUE(other.fits);
      EXPECT_TRUE(absl::StrContains(other.verdict, "slower")) << other.verdict;
    }
  }
  // A denoiser with its GPU to itself is offered no model offload: it would only add the copy.
  for (const DitCandidate& other :
       ChooseDitSettings(BuiltInMemoryModel(), cost, flux, w, GroupShape(), 30 * 1024, alone)
           ->candidates) {
    EXPECT_FALSE(other.model_offload) << other.name;
  }
}

}  // namespace
}  // namespace dgrid::planner
