// Previews of mid-denoise latents (services/decoder/latent_preview.h) on the repository's trained
// default model (models/dgrid-shapes: 16 latent channels, VAE scale 4): sizes, and that the fitted
// latent-to-RGB map predicts the VAE's picture better than the picture's mean colour does.
#include "services/decoder/latent_preview.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/diffusers_layout.h"
#include "families/registry.h"
#include "services/decoder/latent_decoder.h"
#include "tests/unit/default_model.h"

namespace dgrid::decoder {
namespace {

std::string ModelDir() { return testing::DefaultModelDir(); }

std::unique_ptr<LatentDecoder> LoadDecoder() {
  absl::StatusOr<ModelIndex> index = ReadModelIndex(ModelDir());
  EXPECT_TRUE(index.ok()) << index.status();
  if (!index.ok()) return nullptr;
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(index->pipeline_class);
  EXPECT_TRUE(family.ok()) << family.status();
  if (!family.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<LatentDecoder>> decoder =
      LoadLatentDecoder(**family, *index, LoadOptions{});
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  return decoder.ok() ? *std::move(decoder) : nullptr;
}

at::Tensor Latents(uint64_t seed, int64_t side) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({1, 16, side, side}, generator, at::TensorOptions().dtype(at::kFloat));
}

// An Image8 as float [3, H, W].
at::Tensor Pixels(const Image8& image) {
  return at::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                       {image.height, image.width, image.channels}, at::kByte)
      .to(at::kFloat)
      .narrow(2, 0, 3)
      .permute({2, 0, 1});
}

TEST(LatentPreview, SizesOfEachMode) {
  std::unique_ptr<LatentDecoder> decoder = LoadDecoder();
  ASSERT_NE(decoder, nullptr);
  LatentPreviewer previewer(decoder.get());
  const CancellationToken token;
  absl::StatusOr<Image8> rgb = previewer.Preview(Latents(1, 12), PreviewMode::kLatentRgb, token);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->width, 12);
  EXPECT_EQ(rgb->height, 12);
  absl::StatusOr<Image8> vae = previewer.Preview(Latents(1, 12), PreviewMode::kVae, token);
  ASSERT_TRUE(vae.ok()) << vae.status();
  EXPECT_EQ(vae->width, 24);  // 6 latent pixels x the VAE's scale 4
  EXPECT_EQ(vae->height, 24);
  EXPECT_TRUE(absl::IsInvalidArgument(
      previewer.Preview(at::zeros({1, 16, 2, 4, 4}), PreviewMode::kLatentRgb, token).status()));
}

TEST(LatentPreview, TheFittedMapPredictsTheVaeBetterThanItsMeanColour) {
  std::unique_ptr<LatentDecoder> decoder = LoadDecoder();
  ASSERT_NE(decoder, nullptr);
  LatentPreviewer previewer(decoder.get());
  const CancellationToken token;
  // Latents the fit never saw (it draws its own from another seed).
  const at::Tensor latents = Latents(77, 16);
  absl::StatusOr<Image8> preview = previewer.Preview(latents, PreviewMode::kLatentRgb, token);
  ASSERT_TRUE(preview.ok()) << preview.status();
  absl::StatusOr<std::vector<Image8>> full = decoder->Decode(latents, token);
  ASSERT_TRUE(full.ok()) << full.status();
  // The VAE's picture averaged over each latent pixel's patch: what the preview stands for.
  const at::Tensor truth = at::avg_pool2d(Pixels(full->at(0)).unsqueeze(0), {4, 4})[0];
  const at::Tensor predicted = Pixels(*preview);
  ASSERT_EQ(truth.sizes(), predicted.sizes());
  const double fitted_error = (predicted - truth).pow(2).mean().item<double>();
  const double mean_colour_error =
      (truth - truth.mean({1, 2}, /*keepdim=*/true)).pow(2).mean().item<double>();
  ::testing::Test::RecordProperty("fitted_error", std::to_string(fitted_error));
  ::testing::Test::RecordProperty("mean_colour_error", std::to_string(mean_colour_error));
  EXPECT_LT(fitted_error, mean_colour_error);
}

}  // namespace
}  // namespace dgrid::decoder
