// decoder_test: AutoencoderKL parity with diffusers (reference data from make_vae_fixtures.py),
// image postprocessing bit-exact against VaeImageProcessor, PNG round trips and error statuses.
#include <cstdlib>
#include <iostream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/safetensors.h"
#include "services/decoder/image_io.h"
#include "services/decoder/models/autoencoder_kl.h"

namespace dgrid::decoder {
namespace {

constexpr double kFp32Tolerance = 1e-5;

std::string FixtureDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : ".") + "/parity/decoder";
}

WeightMap LoadReference(const std::string& name) {
  absl::StatusOr<WeightMap> ref =
      LoadSafetensorsFile(FixtureDir() + "/" + name + ".ref.safetensors", LoadOptions{});
  if (!ref.ok()) {
    ADD_FAILURE() << "reference data missing (run ctest, whose fixture step make_vae_fixtures.py "
                     "writes it): "
                  << ref.status();
    return WeightMap();
  }
  return *std::move(ref);
}

at::Tensor Get(const WeightMap& map, const std::string& name) {
  auto it = map.tensors().find(name);
  if (it == map.tensors().end()) {
    ADD_FAILURE() << "reference tensor '" << name << "' missing";
    return at::Tensor();
  }
  return it->second;
}

double RelError(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kCPU).to(at::kDouble);
  const at::Tensor e = expected.to(at::kCPU).to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

void ExpectClose(const at::Tensor& actual, const at::Tensor& expected, double tolerance,
                 const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double err = RelError(actual, expected);
  std::cout << "[ rel err  ] " << what << ": " << err << "\n";
  EXPECT_LE(err, tolerance) << what;
}

class VaeParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeParityTest, DecodeMatchesDiffusers) {
  const std::string name = GetParam();
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/" + name, {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const WeightMap ref = LoadReference(name);
  absl::StatusOr<at::Tensor> decoded = vae->Decode(Get(ref, "latents"));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectClose(*decoded, Get(ref, "decoded"), kFp32Tolerance, name + " decode");

  absl::StatusOr<at::Tensor> denoised = vae->DecodeDenoised(Get(ref, "denoised"));
  ASSERT_TRUE(denoised.ok()) << denoised.status();
  ExpectClose(*denoised, Get(ref, "decoded_denoised"), kFp32Tolerance,
              name + " decode of denoiser latents");
}

TEST_P(VaeParityTest, EncodeMatchesDiffusers) {
  const std::string name = GetParam();
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/" + name, {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  const WeightMap ref = LoadReference(name);
  absl::StatusOr<LatentDistribution> dist = vae->Encode(Get(ref, "images"));
  ASSERT_TRUE(dist.ok()) << dist.status();
  ExpectClose(dist->mean, Get(ref, "mean"), kFp32Tolerance, name + " encode mean");
  ExpectClose(dist->logvar, Get(ref, "logvar"), kFp32Tolerance, name + " encode logvar");

  // ToDenoiserLatents inverts DecodeDenoised's scaling.
  absl::StatusOr<at::Tensor> scaled = vae->ToDenoiserLatents(dist->mean);
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  at::Tensor back = *scaled / vae->config().scaling_factor;
  if (vae->config().shift_factor) back = back + *vae->config().shift_factor;
  EXPECT_LT(RelError(back, dist->mean), 1e-6);
  // Sampling with zero noise is the mean.
  absl::StatusOr<at::Tensor> sample = dist->Sample(at::zeros_like(dist->mean));
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_TRUE(at::equal(*sample, dist->mean));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VaeParityTest, ::testing::Values("vae_flux", "vae_quant"));

TEST(AutoencoderKL, ConfigIsRead) {
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  EXPECT_EQ(vae->config().latent_channels, 16);
  EXPECT_FALSE(vae->config().use_quant_conv);
  ASSERT_TRUE(vae->config().shift_factor.has_value());
  EXPECT_DOUBLE_EQ(*vae->config().shift_factor, 0.1159);
  EXPECT_EQ(vae->config().spatial_scale(), 2);
  absl::StatusOr<AutoencoderKL> quant = AutoencoderKL::Load(FixtureDir() + "/vae_quant", {});
  ASSERT_TRUE(quant.ok()) << quant.status();
  EXPECT_FALSE(quant->config().shift_factor.has_value());
  EXPECT_EQ(quant->config().spatial_scale(), 4);
}

TEST(AutoencoderKL, WrongShapesGiveStatuses) {
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  // Wrong channel count, rank, dtype; image size not a multiple of the spatial scale.
  EXPECT_EQ(vae->Decode(at::zeros({1, 4, 8, 8})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Decode(at::zeros({16, 8, 8})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Decode(at::zeros({1, 16, 8, 8}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->DecodeDenoised(at::zeros({1, 15, 8, 8})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Encode(at::zeros({1, 3, 9, 8})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vae->Decode(at::Tensor()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AutoencoderKL::Load(FixtureDir() + "/missing", {}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(AutoencoderKL, RunsInBfloat16) {
  LoadOptions options;
  options.floating_dtype = "bfloat16";
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", options);
  ASSERT_TRUE(vae.ok()) << vae.status();
  EXPECT_EQ(vae->dtype(), at::kBFloat16);
  const WeightMap ref = LoadReference("vae_flux");
  absl::StatusOr<at::Tensor> decoded = vae->Decode(Get(ref, "latents"));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->scalar_type(), at::kBFloat16);
  // bfloat16's 8-bit mantissa, not a parity claim.
  EXPECT_LT(RelError(*decoded, Get(ref, "decoded")), 5e-2);
}

TEST(AutoencoderKL, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  LoadOptions options;
  options.device = "cuda";
  absl::StatusOr<AutoencoderKL> vae = AutoencoderKL::Load(FixtureDir() + "/vae_flux", options);
  ASSERT_TRUE(vae.ok()) << vae.status();
  const WeightMap ref = LoadReference("vae_flux");
  absl::StatusOr<at::Tensor> decoded = vae->DecodeDenoised(Get(ref, "denoised"));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(decoded->is_cuda());
  // cuDNN / TF32 convolutions: 1e-3.
  EXPECT_LT(RelError(*decoded, Get(ref, "decoded_denoised")), 1e-3);
}

TEST(ImagePostprocess, BitExactWithVaeImageProcessor) {
  const WeightMap ref = LoadReference("postprocess");
  for (const std::string tag : {"f32", "bf16"}) {
    absl::StatusOr<std::vector<Image8>> images = PostprocessImages(Get(ref, "x_" + tag));
    ASSERT_TRUE(images.ok()) << images.status();
    const at::Tensor expected = Get(ref, "u8_" + tag);  // [B, H, W, C] uint8
    ASSERT_EQ(images->size(), static_cast<size_t>(expected.size(0)));
    for (size_t b = 0; b < images->size(); ++b) {
      const Image8& image = (*images)[b];
      EXPECT_EQ(image.height, expected.size(1));
      EXPECT_EQ(image.width, expected.size(2));
      EXPECT_EQ(image.channels, expected.size(3));
      const at::Tensor want = expected[b].contiguous();
      ASSERT_EQ(image.pixels.size(), static_cast<size_t>(want.numel()));
      const uint8_t* w = want.data_ptr<uint8_t>();
      int64_t mismatches = 0;
      for (size_t i = 0; i < image.pixels.size(); ++i) mismatches += image.pixels[i] != w[i];
      EXPECT_EQ(mismatches, 0) << tag << " image " << b;
    }
  }
}

TEST(ImagePostprocess, RejectsBadTensors) {
  EXPECT_EQ(PostprocessImages(at::zeros({3, 4, 4})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PostprocessImages(at::zeros({1, 2, 4, 4})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PostprocessImages(at::zeros({1, 3, 4, 4}, at::kByte)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

Image8 RandomImage(int64_t h, int64_t w, int64_t c, uint32_t seed) {
  Image8 image{h, w, c, std::vector<uint8_t>(h * w * c)};
  uint32_t state = seed;
  for (uint8_t& p : image.pixels) {
    state = state * 1664525u + 1013904223u;
    p = static_cast<uint8_t>(state >> 24);
  }
  return image;
}

TEST(Png, RoundTripsEveryChannelCount) {
  for (int64_t c = 1; c <= 4; ++c) {
    const Image8 image = RandomImage(17, 31, c, 100 + c);
    for (int level : {0, 6, 9}) {
      absl::StatusOr<std::string> png = EncodePng(image, PngOptions{level});
      ASSERT_TRUE(png.ok()) << png.status();
      absl::StatusOr<Image8> back = DecodePng(*png);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->height, image.height);
      EXPECT_EQ(back->width, image.width);
      EXPECT_EQ(back->channels, image.channels);
      EXPECT_EQ(back->pixels, image.pixels) << "channels " << c << " level " << level;
    }
  }
}

TEST(Png, CorruptInputGivesDataLoss) {
  const Image8 image = RandomImage(8, 8, 3, 7);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();

  EXPECT_EQ(DecodePng("").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodePng("not a png at all").status().code(), absl::StatusCode::kDataLoss);
  // Truncated inside the header, inside the image data, and just before IEND.
  for (size_t keep : {size_t{12}, size_t{40}, png->size() / 2, png->size() - 12}) {
    EXPECT_EQ(DecodePng(png->substr(0, keep)).status().code(), absl::StatusCode::kDataLoss)
        << "kept " << keep << " of " << png->size();
  }
  // A flipped byte in IHDR (width) breaks its CRC.
  std::string flipped = *png;
  flipped[18] ^= 0x40;
  EXPECT_EQ(DecodePng(flipped).status().code(), absl::StatusCode::kDataLoss);
  // A flipped byte in the compressed data breaks the IDAT CRC.
  std::string bad_data = *png;
  bad_data[png->size() - 20] ^= 0x01;
  EXPECT_EQ(DecodePng(bad_data).status().code(), absl::StatusCode::kDataLoss);
}

TEST(Png, EncodeRejectsInconsistentImages) {
  Image8 image = RandomImage(4, 4, 3, 1);
  image.pixels.pop_back();
  EXPECT_EQ(EncodePng(image).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(RandomImage(4, 4, 5, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(Image8{0, 4, 3, {}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(RandomImage(4, 4, 3, 1), PngOptions{10}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Png, PostprocessedImageRoundTrips) {
  const WeightMap ref = LoadReference("postprocess");
  absl::StatusOr<std::vector<Image8>> images = PostprocessImages(Get(ref, "x_f32"));
  ASSERT_TRUE(images.ok()) << images.status();
  absl::StatusOr<std::string> png = EncodePng(images->front());
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<Image8> back = DecodePng(*png);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->pixels, images->front().pixels);
}

}  // namespace
}  // namespace dgrid::decoder
