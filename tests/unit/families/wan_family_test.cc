// Tests of families/wan: WanPipeline's defaults, the released shapes, FLOP and weight counts
// checked against independent arithmetic, and shapes read from a transformer config.json.
#include "families/wan/wan_family.h"

#include "families/registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dgrid::families::wan {
namespace {

TEST(WanFamilyTest, WanPipelineIsTheWanFamilyWithItsDefaults) {
  absl::StatusOr<const ModelFamily*> family = FindFamilyForPipeline("WanPipeline");
  ASSERT_TRUE(family.ok()) << family.status();
  EXPECT_EQ((*family)->name(), "wan");
  const GenerationDefaults& d = (*family)->defaults();
  EXPECT_EQ(d.width, 832);
  EXPECT_EQ(d.height, 480);
  EXPECT_EQ(d.num_frames, 81);
  EXPECT_EQ(d.steps, 50);
  EXPECT_EQ(d.guidance_scale, 5.0);
  EXPECT_TRUE(d.makes_video());
  EXPECT_EQ(d.frame_step, 4);
  EXPECT_EQ((d.num_frames - 1) % d.frame_step, 0);
  EXPECT_EQ((d.max_num_frames - 1) % d.frame_step, 0);
  EXPECT_EQ(d.size_multiple(), 16);
  EXPECT_EQ((*family)->text_embedding_names(), std::vector<std::string>{"prompt_embeds"});
}

TEST(WanFamilyTest, ReleasedShapesAndTheirSizes) {
  // Parameters of the linear layers (norms, biases and the small embedding layers aside); the
  // released models are named 14B, 1.3B and 5B.
  auto params = [](double layers, double d, double f) {
    return layers * (8 * d * d + 2 * d * f) + 4096 * d + 7 * d * d;
  };
  EXPECT_DOUBLE_EQ(Wan14BShape().WeightBytes(), 2 * params(40, 5120, 13824));
  EXPECT_DOUBLE_EQ(Wan13BShape().WeightBytes(), 2 * params(30, 1536, 8960));
  EXPECT_DOUBLE_EQ(WanTi2v5BShape().WeightBytes(), 2 * params(30, 3072, 14336));
  EXPECT_NEAR(Wan14BShape().WeightBytes() / 2, 14e9, 0.5e9);
  EXPECT_NEAR(Wan13BShape().WeightBytes() / 2, 1.35e9, 0.15e9);
  EXPECT_NEAR(WanTi2v5BShape().WeightBytes() / 2, 5e9, 0.5e9);
  for (absl::string_view alias : {"Wan2.1-T2V-14B", "Wan2.2-T2V-A14B"}) {
    EXPECT_EQ(LookupShape(alias)->name, "wan2.1-14b") << alias;
  }
  EXPECT_EQ(LookupShape("Wan2.1-T2V-1.3B")->num_heads, 12);
  EXPECT_EQ(LookupShape("Wan2.2-TI2V-5B")->in_channels, 48);
  // Its VAE compresses 16x per side (Wan2.1's 8x), patch 2: 32 pixels per token; 4 frames per
  // latent frame like Wan2.1's.
  EXPECT_EQ(LookupShape("Wan2.2-TI2V-5B")->pixels_per_token, 32);
  EXPECT_EQ(LookupShape("Wan2.2-TI2V-5B")->frames_per_token, 4);
  EXPECT_EQ(LookupShape("Wan2.1-T2V-14B")->pixels_per_token, 16);
  EXPECT_EQ(WanFamily().LookupShape("wan3").status().code(), absl::StatusCode::kNotFound);
}

TEST(WanFamilyTest, ForwardFlopsAt480pAnd81Frames) {
  const TransformerShape s = Wan14BShape();
  // 81 frames -> 21 latent frames; 480 x 832 -> 60 x 104 latents -> 30 x 52 tokens a frame.
  const int64_t tokens = 21 * s.ImageTokens(832, 480);
  EXPECT_EQ(tokens, 32760);
  const double n = tokens, t = 512, d = 5120, f = 13824;
  const double block = 2 * n * d * d * 4 + 4 * n * n * d + 2 * n * d * d * 2 + 2 * t * d * d * 2 +
                       4 * n * t * d + 2 * n * d * f * 2;
  const double rest = 2 * n * 64 * d + 2 * t * 4096 * d + 2 * t * d * d + 2 * 256 * d + 2 * d * d +
                      2 * d * 6 * d + 2 * n * d * 64;
  EXPECT_DOUBLE_EQ(s.ForwardFlops(tokens), 40 * block + rest);
  // About 1.7 PFLOP a forward pass, half of it in the self-attention products.
  EXPECT_NEAR(s.ForwardFlops(tokens) / 1e15, 1.7, 0.1);
  EXPECT_NEAR(40 * 4 * n * n * d / s.ForwardFlops(tokens), 0.5, 0.05);
}

TEST(WanFamilyTest, ShapeFromTransformerConfig) {
  const nlohmann::json config = {{"_class_name", "WanTransformer3DModel"},
                                 {"num_attention_heads", 12},
                                 {"attention_head_dim", 128},
                                 {"ffn_dim", 8960},
                                 {"num_layers", 30},
                                 {"in_channels", 16},
                                 {"text_dim", 4096}};
  absl::StatusOr<TransformerShape> shape = WanFamily().ShapeFromConfig(config, "config.json");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->family, "wan");
  EXPECT_EQ(shape->inner_dim(), 1536);
  EXPECT_DOUBLE_EQ(shape->WeightBytes(), Wan13BShape().WeightBytes());
  absl::StatusOr<TransformerShape> bad =
      WanFamily().ShapeFromConfig({{"ffn_dim", "wide"}}, "config.json");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), ::testing::HasSubstr("ffn_dim"));
}

}  // namespace
}  // namespace dgrid::families::wan
