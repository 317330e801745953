// Tests of common/model_limits.{h,cc}: the family chosen by model_index.json's "_class_name"
// gives the defaults, dgrid.json overrides them, and a class no family serves is refused.
#include "common/model_limits.h"

#include "families/flux/flux_family.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/safetensors_writer.h"

namespace dgrid {
namespace {

using ::dgrid::testing::MakeDirs;
using ::dgrid::testing::ScratchDir;
using ::dgrid::testing::WriteFile;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A pipeline folder with only the files ReadModelLimits reads.
void MakePipeline(const std::string& root, const std::string& class_name) {
  MakeDirs(root + "/transformer");
  MakeDirs(root + "/vae");
  WriteFile(root + "/model_index.json", R"({"_class_name": ")" + class_name + R"(",
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"]})");
  WriteFile(root + "/transformer/config.json", R"({"guidance_embeds": true})");
  WriteFile(root + "/vae/config.json", R"({"block_out_channels": [32, 32]})");
}

TEST(ModelLimitsTest, FluxPipelineGetsTheFluxDefaults) {
  ScratchDir dir("limits");
  MakePipeline(dir.path(), "FluxPipeline");
  absl::StatusOr<ModelLimits> limits = ReadModelLimits(dir.path());
  ASSERT_TRUE(limits.ok()) << limits.status();
  const families::GenerationDefaults& flux = families::flux::kFluxDefaults;
  EXPECT_EQ(limits->pipeline, "FluxPipeline");
  EXPECT_EQ(limits->family, "flux");
  // FluxPipeline's default size is default_sample_size (128) x the VAE's scale factor (2 here).
  EXPECT_EQ(limits->default_width, 128 * 2);
  EXPECT_EQ(limits->default_height, 128 * 2);
  EXPECT_EQ(limits->default_steps, flux.steps);
  EXPECT_EQ(limits->default_guidance, flux.guidance_scale);
  EXPECT_EQ(limits->max_width, flux.max_width);
  EXPECT_EQ(limits->max_height, flux.max_height);
  EXPECT_EQ(limits->max_sequence_length, flux.max_sequence_length);
  EXPECT_TRUE(limits->guidance_embeds);
  EXPECT_EQ(limits->vae_scale_factor, 2);  // two VAE blocks: 2^(2 - 1)
  // An image family: one frame, no frame rate; ListModels says so.
  EXPECT_EQ(limits->max_num_frames, 1);
  EXPECT_EQ(limits->default_num_frames, 1);
  EXPECT_EQ(limits->default_fps, 0);
  const v1::ModelInfo info = ToModelInfo(*limits);
  EXPECT_EQ(info.family(), "flux");
  EXPECT_EQ(info.max_num_frames(), 1);
  EXPECT_EQ(info.default_num_frames(), 1);
  EXPECT_EQ(info.frame_step(), 1);
  EXPECT_EQ(info.default_fps(), 0);

  // dgrid.json overrides; its sequence length is capped at the family's most text tokens.
  WriteFile(dir.path() + "/dgrid.json",
            R"({"name": "tiny", "default_steps": 4, "max_sequence_length": 9999})");
  limits = ReadModelLimits(dir.path());
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->name, "tiny");
  EXPECT_EQ(limits->default_steps, 4);
  EXPECT_EQ(limits->default_width, 128 * 2);  // not given in dgrid.json: as before
  EXPECT_EQ(limits->max_sequence_length, flux.max_text_tokens);
}

TEST(ModelLimitsTest, WanPipelineIsAVideoModelTheStagesServe) {
  ScratchDir dir("limits");
  MakeDirs(dir.path() + "/transformer");
  MakeDirs(dir.path() + "/vae");
  WriteFile(dir.path() + "/model_index.json", R"({"_class_name": "WanPipeline",
                "transformer": ["diffusers", "WanTransformer3DModel"],
                "vae": ["diffusers", "AutoencoderKLWan"]})");
  WriteFile(dir.path() + "/transformer/config.json", R"({"num_layers": 2})");
  // AutoencoderKLWan has no block_out_channels; it names its factors.
  WriteFile(dir.path() + "/vae/config.json", R"({"base_dim": 96, "scale_factor_spatial": 8})");
  absl::StatusOr<ModelLimits> limits = ReadModelLimits(dir.path());
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->family, "wan");
  EXPECT_EQ(limits->vae_scale_factor, 8);
  EXPECT_EQ(limits->default_width, 832);
  EXPECT_EQ(limits->default_height, 480);
  EXPECT_EQ(limits->default_num_frames, 81);
  EXPECT_EQ(limits->frame_step, 4);
  EXPECT_EQ(limits->default_fps, 16);
  // The stages serve it (its engines: text_conditioner.h, family_denoiser.h, latent_decoder.h).
  EXPECT_TRUE(limits->stages_serve);
  EXPECT_TRUE(CheckStagesServe(*limits, dir.path()).ok());

  MakePipeline(dir.path(), "FluxPipeline");
  limits = ReadModelLimits(dir.path());
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_TRUE(CheckStagesServe(*limits, dir.path()).ok());
}

TEST(ModelLimitsTest, UnknownPipelineClassNamesTheFileAndTheClass) {
  ScratchDir dir("limits");
  MakePipeline(dir.path(), "QwenImagePipeline");
  absl::StatusOr<ModelLimits> limits = ReadModelLimits(dir.path());
  ASSERT_FALSE(limits.ok());
  EXPECT_EQ(limits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(limits.status().message(),
              AllOf(HasSubstr(dir.path() + "/model_index.json"), HasSubstr("_class_name"),
                    HasSubstr("'QwenImagePipeline'"), HasSubstr("FluxPipeline")));
}

}  // namespace
}  // namespace dgrid
