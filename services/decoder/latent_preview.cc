#include "services/decoder/latent_preview.h"

#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "common/status.h"
#include "common/torch_status.h"
#include "services/decoder/latent_decoder.h"

namespace dgrid::decoder {
namespace {

// The fit's sample: this many random latent pictures of kFitSide x kFitSide latent pixels.
constexpr int kFitSamples = 2;
constexpr int64_t kFitSide = 16;
constexpr uint64_t kFitSeed = 0x5eed;

// An RGB picture (VAE output range) [1, 3, H, W] from an Image8.
at::Tensor ToVaeRange(const Image8& image) {
  at::Tensor pixels = at::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                                    {image.height, image.width, image.channels}, at::kByte)
                          .to(at::kDouble);
  return (pixels.narrow(2, 0, 3).permute({2, 0, 1}).unsqueeze(0) / 127.5 - 1.0).contiguous();
}

}  // namespace

absl::StatusOr<at::Tensor> LatentPreviewer::Fit(const at::Tensor& like,
                                                const CancellationToken& token) const {
  absl::MutexLock lock(&mutex_);
  if (map_.defined() && map_.size(0) == like.size(1) + 1) return map_;
  const int64_t channels = like.size(1);
  std::vector<at::Tensor> inputs, targets;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(kFitSeed);
  for (int i = 0; i < kFitSamples; ++i) {
    ASSIGN_OR_RETURN(at::Tensor latents, TorchCall("preview fit sample", [&] {
                       return at::randn({1, channels, kFitSide, kFitSide}, generator,
                                        at::TensorOptions().dtype(at::kFloat));
                     }));
    ASSIGN_OR_RETURN(std::vector<Image8> frames,
                     decoder_->Decode(latents.to(like.device(), like.scalar_type()), token));
    ASSIGN_OR_RETURN(at::Tensor target, TorchCall("preview fit target", [&] {
                       const at::Tensor rgb = ToVaeRange(frames.at(0));
                       const int64_t scale = rgb.size(2) / kFitSide;
                       // Each latent pixel's patch of the picture, averaged: [side * side, 3].
                       return at::avg_pool2d(rgb, {scale, scale}).flatten(2)[0].t();
                     }));
    inputs.push_back(latents.to(at::kDouble).flatten(2)[0].t());
    targets.push_back(target);
  }
  ASSIGN_OR_RETURN(map_, TorchCall("preview fit", [&] {
                     at::Tensor x = at::cat(inputs);
                     x = at::cat({x, at::ones({x.size(0), 1}, x.options())}, 1);
                     return std::get<0>(at::linalg_lstsq(x, at::cat(targets)));
                   }));
  return map_;
}

absl::StatusOr<Image8> LatentPreviewer::Preview(const at::Tensor& latents, PreviewMode mode,
                                                const CancellationToken& token) const {
  if (!latents.defined() || latents.dim() != 4 || latents.size(0) != 1 || latents.size(2) < 1 ||
      latents.size(3) < 1) {
    return InvalidArgument("latents: a preview is of image latents [1, C, h, w]");
  }
  if (mode == PreviewMode::kVae) {
    ASSIGN_OR_RETURN(at::Tensor subsampled, TorchCall("preview subsample", [&] {
                       return latents.slice(2, 0, latents.size(2), 2)
                           .slice(3, 0, latents.size(3), 2)
                           .contiguous();
                     }));
    ASSIGN_OR_RETURN(std::vector<Image8> frames, decoder_->Decode(subsampled, token));
    return std::move(frames.at(0));
  }
  if (mode != PreviewMode::kLatentRgb) return InvalidArgument("preview: unknown mode");
  ASSIGN_OR_RETURN(at::Tensor map, Fit(latents, token));
  RETURN_IF_ERROR(token.Check());
  ASSIGN_OR_RETURN(at::Tensor rgb, TorchCall("latent RGB preview", [&] {
                     const int64_t h = latents.size(2), w = latents.size(3);
                     at::Tensor x = latents[0].to(at::kCPU, at::kDouble).flatten(1).t();
                     x = at::cat({x, at::ones({x.size(0), 1}, x.options())}, 1);
                     return at::matmul(x, map).t().reshape({1, 3, h, w});
                   }));
  ASSIGN_OR_RETURN(std::vector<Image8> images, PostprocessImages(rgb));
  return std::move(images.at(0));
}

}  // namespace dgrid::decoder
