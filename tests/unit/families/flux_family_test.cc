// Tests of families/flux/flux_family.{h,cc}: FluxPipeline's defaults, the FLUX.1 shapes, their
// FLOP and weight counts against golden values, and reading a transformer config.
#include "families/flux/flux_family.h"

#include "families/registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dgrid::families::flux {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(FluxFamilyTest, FluxPipelineDefaults) {
  const GenerationDefaults& d = FluxFamily().defaults();
  EXPECT_EQ(&d, &kFluxDefaults);
  EXPECT_EQ(d.width, 1024);
  EXPECT_EQ(d.height, 1024);
  EXPECT_EQ(d.steps, 28);
  EXPECT_EQ(d.guidance_scale, 3.5);
  EXPECT_EQ(d.true_cfg_scale, 1.0);
  EXPECT_EQ(d.max_width, 2048);
  EXPECT_EQ(d.max_height, 2048);
  EXPECT_EQ(d.max_sequence_length, 512);
  EXPECT_EQ(d.max_text_tokens, 512);
  EXPECT_EQ(d.vae_scale_factor, 8);
  EXPECT_EQ(d.patch_size, 2);
  EXPECT_EQ(d.size_multiple(), 16);
  static_assert(kFluxDefaults.size_multiple() == 16, "usable in constant expressions");
  EXPECT_EQ(FluxFamily().name(), "flux");
  EXPECT_THAT(FluxFamily().pipeline_classes(), ::testing::ElementsAre("FluxPipeline"));
  // FluxPipeline's names for the T5 states and the CLIP pooled output (stages.proto).
  EXPECT_THAT(FluxFamily().text_embedding_names(),
              ::testing::ElementsAre("prompt_embeds", "pooled_prompt_embeds"));
  EXPECT_FALSE(FluxFamily().defaults().makes_video());
}

TEST(FluxFamilyTest, Shapes) {
  const TransformerShape dev = FluxDevShape();
  EXPECT_EQ(dev.name, "flux-dev");
  EXPECT_EQ(dev.family, "flux");
  EXPECT_EQ(dev.num_layers, 19);
  EXPECT_EQ(dev.num_single_layers, 38);
  EXPECT_EQ(dev.num_heads, 24);
  EXPECT_EQ(dev.head_dim, 128);
  EXPECT_EQ(dev.inner_dim(), 3072);
  EXPECT_EQ(dev.attention_layers(), 57);
  EXPECT_EQ(dev.in_channels, 64);
  EXPECT_EQ(dev.joint_attention_dim, 4096);
  EXPECT_EQ(dev.pooled_projection_dim, 768);
  EXPECT_EQ(dev.text_tokens, 512);
  EXPECT_TRUE(dev.guidance_embeds);
  EXPECT_EQ(dev.pixels_per_token, 16);
  EXPECT_EQ(dev.ImageTokens(1024, 1024), 4096);
  EXPECT_EQ(dev.ImageTokens(512, 768), 32 * 48);

  const TransformerShape schnell = FluxSchnellShape();
  EXPECT_EQ(schnell.name, "flux-schnell");
  EXPECT_FALSE(schnell.guidance_embeds);
  EXPECT_EQ(schnell.text_tokens, 256);
  EXPECT_EQ(schnell.inner_dim(), dev.inner_dim());

  EXPECT_EQ(FluxFamily().LookupShape("FLUX.1-dev")->name, "flux-dev");
  EXPECT_EQ(FluxFamily().LookupShape("FLUX.1-schnell")->name, "flux-schnell");
  EXPECT_EQ(FluxFamily().LookupShape("flux-pro").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FluxFamily().DefaultShape().name, "flux-dev");
}

// Golden counts, captured from the code before it moved here (bench::FluxForwardFlops and
// planner::ModelShape::WeightBytes at commit 81a0c47). Every term is an integer below 2^53, so the
// counts are exact and compared exactly.
TEST(FluxFamilyTest, GoldenFlopsAndWeightBytes) {
  const TransformerShape dev = FluxDevShape();
  EXPECT_EQ(FluxForwardFlops(dev, 4096), 74384653418496.0);  // 1024^2
  EXPECT_EQ(FluxForwardFlops(dev, 1024), 21502600151040.0);  // 512^2
  EXPECT_EQ(FluxForwardFlops(FluxSchnellShape(), 4096), 69466626981888.0);
  EXPECT_EQ(FluxWeightBytes(dev), 23668457472.0);
  // The shape's own counts go through the registry to the same functions.
  EXPECT_EQ(dev.ForwardFlops(dev.ImageTokens(1024, 1024)), 74384653418496.0);
  EXPECT_EQ(dev.WeightBytes(), 23668457472.0);
  EXPECT_EQ(FluxFamily().ForwardFlops(dev, 4096), 74384653418496.0);
  EXPECT_EQ(FluxFamily().WeightBytes(dev), 23668457472.0);
}

TEST(FluxFamilyTest, ShapeFromConfig) {
  const nlohmann::json config = nlohmann::json::parse(R"({
    "_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 1,
    "num_attention_heads": 4, "attention_head_dim": 16, "in_channels": 64,
    "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": false})");
  absl::StatusOr<TransformerShape> tiny = FluxFamily().ShapeFromConfig(config, "t/config.json");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->name, "");
  EXPECT_EQ(tiny->family, "flux");
  EXPECT_EQ(tiny->inner_dim(), 64);
  EXPECT_EQ(tiny->attention_layers(), 3);
  EXPECT_FALSE(tiny->guidance_embeds);
  EXPECT_EQ(tiny->text_tokens, 512);  // not a transformer key: the pipeline's T5 limit

  // Absent keys keep FLUX.1-dev's values.
  absl::StatusOr<TransformerShape> empty =
      FluxFamily().ShapeFromConfig(nlohmann::json::object(), "t/config.json");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->WeightBytes(), FluxWeightBytes(FluxDevShape()));

  for (const char* bad : {R"({"num_layers": "two"})", R"({"num_layers": 2.5})",
                          R"({"num_layers": 0})", R"([1, 2])"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<TransformerShape> shape =
        FluxFamily().ShapeFromConfig(nlohmann::json::parse(bad), "t/config.json");
    ASSERT_FALSE(shape.ok());
    EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(shape.status().message(), HasSubstr("t/config.json: "));
  }
  EXPECT_THAT(FluxFamily()
                  .ShapeFromConfig(nlohmann::json::parse(R"({"num_attention_heads": -4})"), "c")
                  .status()
                  .message(),
              AllOf(HasSubstr("c: num_attention_heads"), HasSubstr(">= 1")));
}

}  // namespace
}  // namespace dgrid::families::flux
