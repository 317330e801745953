// dgrid's Wan VAE decoder and encoder against diffusers 0.42.1 AutoencoderKLWan on the cases
// make_vae_cases.py writes. Tolerances: relative L2 error 1e-5 in float32 (the issue's per-module
// bar), 1e-2 in bfloat16.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "tests/parity/parity_util.h"

namespace dgrid::decoder {
namespace {

std::string Root() { return parity::DataDir("wan_vae"); }

using parity::RelativeError;

TEST(WanVaeParity, DecodeMatchesDiffusers) {
  auto manifest = JsonConfig::FromFile(Root() + "/manifest.json");
  ASSERT_TRUE(manifest.ok()) << manifest.status() << " (run tests/parity/wan/make_vae_cases.py)";
  ASSERT_FALSE(manifest->json()["cases"].empty());
  for (const auto& c : manifest->json()["cases"]) {
    const std::string name = c["name"];
    const std::string dtype = c["dtype"];
    SCOPED_TRACE(name);
    LoadOptions options;
    if (dtype != "float32") options.floating_dtype = dtype;
    auto vae = AutoencoderKLWan::Load(Root() + "/" + std::string(c["model"]), options);
    ASSERT_TRUE(vae.ok()) << vae.status();
    auto tensors = LoadSafetensorsFile(Root() + "/" + name + ".safetensors", LoadOptions{});
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    const double tolerance = dtype == "float32" ? 1e-5 : 1e-2;
    if (c.value("encode", false)) {
      const at::Tensor video = *tensors->Take("video");
      auto dist = vae->Encode(video);
      ASSERT_TRUE(dist.ok()) << dist.status();
      const at::Tensor mean = *tensors->Take("mean");
      ASSERT_EQ(dist->mean.sizes(), mean.sizes());
      const double mean_err = RelativeError(dist->mean, mean);
      const double logvar_err = RelativeError(dist->logvar, *tensors->Take("logvar"));
      auto normalised = vae->ToDenoiserLatents(dist->mean);
      ASSERT_TRUE(normalised.ok()) << normalised.status();
      const double norm_err = RelativeError(*normalised, *tensors->Take("normalised"));
      std::printf("wan vae parity %-11s %s rel err mean %.3e logvar %.3e normalised %.3e\n",
                  name.c_str(), dtype.c_str(), mean_err, logvar_err, norm_err);
      EXPECT_LE(mean_err, tolerance);
      EXPECT_LE(logvar_err, tolerance);
      EXPECT_LE(norm_err, tolerance);
      continue;
    }
    const at::Tensor latents = *tensors->Take("latents");
    const at::Tensor expected = *tensors->Take("video");
    auto video = c["denoised"].get<bool>() ? vae->DecodeDenoised(latents) : vae->Decode(latents);
    ASSERT_TRUE(video.ok()) << video.status();
    ASSERT_EQ(video->sizes(), expected.sizes());
    EXPECT_EQ(video->scalar_type(), expected.scalar_type());
    const double err = RelativeError(*video, expected);
    std::printf("wan vae parity %-9s %s rel err %.3e\n", name.c_str(), dtype.c_str(), err);
    EXPECT_LE(err, tolerance);
  }
}

TEST(WanVaeParity, BadInputsAndConfigsGiveStatuses) {
  auto vae = AutoencoderKLWan::Load(Root() + "/vae_a", LoadOptions{});
  ASSERT_TRUE(vae.ok()) << vae.status();
  EXPECT_EQ(vae->Decode(at::zeros({1, 5, 2, 4, 4})).status().code(),
            absl::StatusCode::kInvalidArgument);  // z_dim is 4
  EXPECT_EQ(vae->Decode(at::zeros({1, 4, 4, 4})).status().code(),
            absl::StatusCode::kInvalidArgument);  // not 5-D
  EXPECT_EQ(vae->DecodeDenoised(at::Tensor()).status().code(), absl::StatusCode::kInvalidArgument);
  // One latent frame decodes to one video frame; each further one to four.
  auto one = vae->Decode(at::zeros({1, 4, 1, 2, 2}));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->sizes(), (std::vector<int64_t>{1, 3, 1, 16, 16}));

  auto parse = [](const std::string& text) {
    auto json = JsonConfig::FromText(text, "config.json");
    EXPECT_TRUE(json.ok());
    return AutoencoderKLWanConfig::FromJson(*json).status().code();
  };
  // Encode: 4k + 1 frames, sizes that the 8x downsampling divides.
  EXPECT_EQ(vae->Encode(at::zeros({1, 3, 4, 16, 16})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Encode(at::zeros({1, 3, 5, 12, 16})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Encode(at::zeros({1, 4, 5, 16, 16})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse("{}"), absl::StatusCode::kOk);  // Wan2.1's VAE
  // Wan2.2's layout: residual blocks are fine; a patch needs 3 x patch^2 channels in and out.
  EXPECT_EQ(parse(R"({"is_residual": true})"), absl::StatusCode::kOk);
  EXPECT_EQ(parse(R"({"patch_size": 2})"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"patch_size": 2, "in_channels": 12, "out_channels": 12})"),
            absl::StatusCode::kOk);
  EXPECT_EQ(parse(R"({"patch_size": null})"), absl::StatusCode::kOk);
  EXPECT_EQ(parse(R"({"patch_size": 0, "in_channels": 12, "out_channels": 12})"),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"z_dim": 8})"), absl::StatusCode::kInvalidArgument);  // 16 default stats
  EXPECT_EQ(parse(R"({"temperal_downsample": [true]})"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"dim_mult": [1]})"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse(R"({"attn_scales": [0.5]})"), absl::StatusCode::kUnimplemented);

  // Wan2.2 TI2V-5B's layout: one latent frame of 2 x 2 decodes to one 32 x 32 frame (16x, after
  // unpatchifying 12 channels into 3); encoding needs sizes the patch x 8 divides.
  auto vae22 = AutoencoderKLWan::Load(Root() + "/vae_22", LoadOptions{});
  ASSERT_TRUE(vae22.ok()) << vae22.status();
  auto frame = vae22->Decode(at::zeros({1, 6, 1, 2, 2}));
  ASSERT_TRUE(frame.ok()) << frame.status();
  EXPECT_EQ(frame->sizes(), (std::vector<int64_t>{1, 3, 1, 32, 32}));
  EXPECT_EQ(vae22->Encode(at::zeros({1, 3, 1, 16, 24})).status().code(),
            absl::StatusCode::kInvalidArgument);  // 24 is no multiple of 16
}

}  // namespace
}  // namespace dgrid::decoder
