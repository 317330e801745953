// Tests of families/registry.{h,cc}: choosing a family by pipeline class and by name, the
// default family, shape lookup across families, and the invariants every family must keep.
#include "families/registry.h"

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dgrid::families {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(RegistryTest, FluxPipelineIsTheFluxFamily) {
  absl::StatusOr<const ModelFamily*> family = FindFamilyForPipeline("FluxPipeline");
  ASSERT_TRUE(family.ok()) << family.status();
  EXPECT_EQ((*family)->name(), "flux");
  EXPECT_EQ(&DefaultFamily(), *family);
  absl::StatusOr<const ModelFamily*> by_name = FindFamily("flux");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(*by_name, *family);
}

TEST(RegistryTest, UnknownPipelineClassNamesItAndTheKnownOnes) {
  absl::StatusOr<const ModelFamily*> family = FindFamilyForPipeline("QwenImagePipeline");
  ASSERT_FALSE(family.ok());
  EXPECT_EQ(family.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      family.status().message(),
      AllOf(HasSubstr("'QwenImagePipeline'"), HasSubstr("FluxPipeline"), HasSubstr("WanPipeline")));
  // Class names are matched exactly, as diffusers does.
  EXPECT_FALSE(FindFamilyForPipeline("fluxpipeline").ok());
  EXPECT_FALSE(FindFamilyForPipeline("").ok());
}

TEST(RegistryTest, UnknownFamilyNameIsNotFound) {
  absl::StatusOr<const ModelFamily*> family = FindFamily("qwen");
  ASSERT_FALSE(family.ok());
  EXPECT_EQ(family.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(family.status().message(),
              AllOf(HasSubstr("'qwen'"), HasSubstr("flux"), HasSubstr("wan")));
}

TEST(RegistryTest, EveryFamilyKeepsTheContract) {
  std::set<std::string> names, classes, shapes;
  ASSERT_FALSE(AllFamilies().empty());
  for (const ModelFamily* family : AllFamilies()) {
    SCOPED_TRACE(std::string(family->name()));
    EXPECT_TRUE(names.insert(std::string(family->name())).second) << "family name twice";
    ASSERT_FALSE(family->pipeline_classes().empty());
    for (const std::string& c : family->pipeline_classes()) {
      EXPECT_TRUE(classes.insert(c).second) << c << " served by two families";
      EXPECT_EQ(*FindFamilyForPipeline(c), family);
    }
    const GenerationDefaults& d = family->defaults();
    EXPECT_GT(d.width, 0);
    EXPECT_GT(d.height, 0);
    EXPECT_GT(d.steps, 0);
    EXPECT_GT(d.size_multiple(), 0);
    EXPECT_EQ(d.width % d.size_multiple(), 0);
    EXPECT_EQ(d.height % d.size_multiple(), 0);
    EXPECT_LE(d.width, d.max_width);
    EXPECT_LE(d.height, d.max_height);
    EXPECT_GE(d.true_cfg_scale, 1.0);
    EXPECT_GE(d.max_sequence_length, 1);
    EXPECT_LE(d.max_sequence_length, d.max_text_tokens);
    ASSERT_FALSE(family->shape_names().empty());
    for (const std::string& name : family->shape_names()) {
      EXPECT_TRUE(shapes.insert(name).second) << name << " known to two families";
      absl::StatusOr<TransformerShape> shape = family->LookupShape(name);
      ASSERT_TRUE(shape.ok()) << shape.status();
      EXPECT_EQ(shape->name, name);
      EXPECT_EQ(shape->family, family->name());
      EXPECT_EQ(&FamilyOf(*shape), family);
      // The family's size multiple, or a multiple of it for a model whose VAE compresses more
      // (Wan2.2 TI2V-5B: 16x per side, so 32 pixels per token against Wan's 16).
      EXPECT_GT(shape->pixels_per_token, 0);
      EXPECT_EQ(shape->pixels_per_token % d.size_multiple(), 0);
      EXPECT_GT(shape->WeightBytes(), 0);
      EXPECT_GT(shape->ForwardFlops(shape->ImageTokens(d.width, d.height)), 0);
    }
    EXPECT_EQ(family->DefaultShape().name, family->shape_names().front());
  }
}

TEST(RegistryTest, ShapesByNameAcrossFamilies) {
  EXPECT_EQ(KnownShapeNames().front(), DefaultFamily().DefaultShape().name);
  absl::StatusOr<TransformerShape> dev = LookupShape("FLUX.1-dev");
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ(dev->name, "flux-dev");
  absl::StatusOr<TransformerShape> unknown = LookupShape("sd3-large");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), AllOf(HasSubstr("sd3-large"), HasSubstr("flux-dev")));
}

TEST(RegistryTest, AShapeWithoutAFamilyIsCountedByTheDefaultFamily) {
  TransformerShape shape = DefaultFamily().DefaultShape();
  const double flops = shape.ForwardFlops(4096);
  shape.family.clear();
  EXPECT_EQ(&FamilyOf(shape), &DefaultFamily());
  EXPECT_EQ(shape.ForwardFlops(4096), flops);
}

}  // namespace
}  // namespace dgrid::families
