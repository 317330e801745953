#include "common/component_flags.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dgrid {
namespace {

using ::testing::HasSubstr;

Config ComponentConfig() { return Config(ComponentSettings("--local")); }

TEST(ComponentFlags, UnsetFlagsStayEmpty) {
  Config config = ComponentConfig();
  ASSERT_TRUE(config.ParseArgs({}).ok());
  absl::StatusOr<ComponentFlags> flags = ReadComponentFlags(config);
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->text_encoder_device, "");
  EXPECT_EQ(flags->text_encoder_precision, "");
  EXPECT_EQ(flags->vae_device, "");
  EXPECT_EQ(flags->vae_precision, "");
}

TEST(ComponentFlags, ReadsDevicesAndPrecisionsInEitherSpelling) {
  Config config = ComponentConfig();
  ASSERT_TRUE(config
                  .ParseArgs({"--text-encoder-device", "cpu", "--text-encoder-precision", "bf16",
                              "--vae-device", "cuda:1", "--vae-precision", "Float16"})
                  .ok());
  absl::StatusOr<ComponentFlags> flags = ReadComponentFlags(config);
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->text_encoder_device, "cpu");
  EXPECT_EQ(flags->text_encoder_precision, "bfloat16");
  EXPECT_EQ(flags->vae_device, "cuda:1");
  EXPECT_EQ(flags->vae_precision, "float16");
}

TEST(ComponentFlags, BadValuesAreInvalidArgumentNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  for (const Case& c :
       std::vector<Case>{{{"--text-encoder-device", "gpu"}, "--text-encoder-device"},
                         {{"--vae-device", "cuda:-1"}, "--vae-device"},
                         {{"--vae-device", "cuda:x"}, "--vae-device"},
                         {{"--text-encoder-precision", "int8"}, "--text-encoder-precision"},
                         {{"--vae-precision", "fp8"}, "--vae-precision"},
                         {{"--text-encoder-device", "offloaded"}, "--text-encoder-device"},
                         {{"--vae-device", "model"}, "--vae-device"},
                         {{"--vae-device", "Offload"}, "--vae-device"}}) {
    Config config = ComponentConfig();
    ASSERT_TRUE(config.ParseArgs(c.args).ok());
    absl::StatusOr<ComponentFlags> flags = ReadComponentFlags(config);
    ASSERT_FALSE(flags.ok()) << c.args[1];
    EXPECT_EQ(flags.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(flags.status().message()), HasSubstr(c.flag));
    EXPECT_THAT(std::string(flags.status().message()), HasSubstr(c.args[1]));
  }
}

TEST(ComponentFlags, PlacementFollowsTheDeploymentWhereUnset) {
  // Unset: the deployment's device and dtype.
  ComponentPlacement p = PlaceComponent("", "", "cuda:0", "bfloat16");
  EXPECT_EQ(p.device, "cuda:0");
  EXPECT_EQ(p.dtype, "bfloat16");
  // Nothing names a dtype: float32 on a CPU, as stored on a GPU.
  p = PlaceComponent("", "", "cpu", "");
  EXPECT_EQ(p.dtype, "float32");
  p = PlaceComponent("", "", "cuda", "");
  EXPECT_FALSE(p.dtype.has_value());
  // A text encoder moved to the CPU beside a GPU DiT with no --dtype: float32 there.
  p = PlaceComponent("cpu", "", "cuda", "");
  EXPECT_EQ(p.device, "cpu");
  EXPECT_EQ(p.dtype, "float32");
  // The component's own flags win.
  p = PlaceComponent("cuda:1", "float16", "cpu", "float32");
  EXPECT_EQ(p.device, "cuda:1");
  EXPECT_EQ(p.dtype, "float16");
}

TEST(ComponentFlags, OffloadIsADeviceValueThatComputesOnTheDeploymentsDevice) {
  Config config = ComponentConfig();
  ASSERT_TRUE(
      config.ParseArgs({"--text-encoder-device", "offload", "--vae-device", " offload"}).ok());
  absl::StatusOr<ComponentFlags> flags = ReadComponentFlags(config);
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->text_encoder_device, "offload");
  EXPECT_EQ(flags->vae_device, "offload");
  // Computes on --device, in its dtype rules; the weights rest in host memory.
  ComponentPlacement p = PlaceComponent("offload", "", "cuda:1", "");
  EXPECT_TRUE(p.offload);
  EXPECT_EQ(p.device, "cuda:1");
  EXPECT_FALSE(p.dtype.has_value());
  p = PlaceComponent("offload", "bf16", "cpu", "");
  EXPECT_TRUE(p.offload);
  EXPECT_EQ(p.device, "cpu");
  EXPECT_EQ(p.dtype, "bf16");
  p = PlaceComponent("offload", "", "cpu", "");
  EXPECT_EQ(p.dtype, "float32");
  EXPECT_FALSE(PlaceComponent("cuda", "", "cpu", "").offload);
  EXPECT_FALSE(PlaceComponent("", "", "cuda", "").offload);
}

TEST(ComponentFlags, ParseComponentDeviceNameNamesOffloadInItsError) {
  const absl::Status s = ParseComponentDeviceName("disk", "--vae-device").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--vae-device: 'disk'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("offload"));
}

}  // namespace
}  // namespace dgrid
