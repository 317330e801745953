#include "services/decoder/latent_decoder.h"

#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"

namespace dgrid::decoder {
namespace {

std::string ShapeOf(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : "none"; }

// A VAE (AutoencoderKL, AutoencoderKLWan) decoding as `options` say, on load.device or offloaded
// to it; rebuilt on the device with the host model's config and decode options.
template <typename Vae>
absl::StatusOr<PlacedModel<Vae>> LoadPlacedVae(const std::string& vae_dir, const LoadOptions& load,
                                               const VaeDecodeOptions& options, bool offload) {
  return LoadPlacedModel<Vae>(
      "vae", load, offload,
      [&](const LoadOptions& o, WeightMap* taken) -> absl::StatusOr<Vae> {
        ASSIGN_OR_RETURN(Vae vae, Vae::Load(vae_dir, o, taken));
        RETURN_IF_ERROR(vae.SetDecodeOptions(options));
        return vae;
      },
      [](const Vae& like, WeightMap& weights) -> absl::StatusOr<Vae> {
        ASSIGN_OR_RETURN(Vae vae, Vae::FromWeights(like.config(), weights));
        RETURN_IF_ERROR(vae.SetDecodeOptions(like.decode_options()));
        return vae;
      });
}

// FLUX.1: AutoencoderKL, decoded in the VAE's dtype on its device as FluxPipeline does.
class FluxLatentDecoder final : public LatentDecoder {
 public:
  explicit FluxLatentDecoder(PlacedModel<AutoencoderKL> vae) : vae_(std::move(vae)) {}
  std::string TilingSummary() const override {
    return DescribeVaeTiling(vae_.host().decode_options(), vae_.host().tile_sample_size());
  }
  const ModelResidency* vae_residency() const override { return vae_.residency(); }
  absl::StatusOr<std::vector<Image8>> Decode(const at::Tensor& latents,
                                             const CancellationToken& token) const override {
    const AutoencoderKLConfig& config = vae_.host().config();
    if (!latents.defined() || latents.dim() != 4 || latents.size(0) != 1 ||
        latents.size(1) != config.latent_channels || latents.size(2) < 1 || latents.size(3) < 1) {
      return InvalidArgument("latents must have shape [1, ", config.latent_channels,
                             ", h, w], got ", ShapeOf(latents));
    }
    RETURN_IF_ERROR(token.Check());
    at::Tensor pixels;
    {
      // Offloaded: the VAE is on its device for this decode only.
      ASSIGN_OR_RETURN(const std::shared_ptr<const AutoencoderKL> vae, vae_.Use());
      ASSIGN_OR_RETURN(pixels, vae->DecodeDenoised(latents.to(vae->device(), vae->dtype())));
    }
    RETURN_IF_ERROR(token.Check());
    ASSIGN_OR_RETURN(std::vector<Image8> images, PostprocessImages(pixels));
    if (images.size() != 1) return Internal("decoder produced ", images.size(), " images");
    return images;
  }

  // Ref: FluxImg2ImgPipeline.prepare_latents / _encode_vae_image (diffusers 0.42.1): the image in
  // the VAE's dtype, latent_dist.sample(generator) with the request's generator (its first draw,
  // in the VAE's dtype, made on the CPU), then (sample - shift_factor) * scaling_factor.
  absl::StatusOr<at::Tensor> EncodeImage(const RgbImage& image, int width, int height,
                                         uint64_t seed,
                                         const CancellationToken& token) const override {
    ASSIGN_OR_RETURN(at::Tensor pixels, PreprocessImageForVae(image, width, height));
    RETURN_IF_ERROR(token.Check());
    // Offloaded: the VAE is on its device for this encode only.
    ASSIGN_OR_RETURN(const std::shared_ptr<const AutoencoderKL> vae, vae_.Use());
    ASSIGN_OR_RETURN(LatentDistribution dist, vae->Encode(pixels));
    RETURN_IF_ERROR(token.Check());
    ASSIGN_OR_RETURN(at::Tensor noise, TorchCall("VAE latent noise", [&] {
                       at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
                       return at::randn(dist.mean.sizes(), generator,
                                        at::TensorOptions().dtype(vae->dtype()));
                     }));
    ASSIGN_OR_RETURN(at::Tensor sample, dist.Sample(noise));
    return vae->ToDenoiserLatents(sample);
  }

 private:
  PlacedModel<AutoencoderKL> vae_;
};

// Wan: AutoencoderKLWan; the video [1, 3, F, H, W] becomes F pictures.
class WanLatentDecoder final : public LatentDecoder {
 public:
  explicit WanLatentDecoder(PlacedModel<AutoencoderKLWan> vae) : vae_(std::move(vae)) {}
  std::string TilingSummary() const override {
    return DescribeVaeTiling(vae_.host().decode_options(), vae_.host().tile_sample_size());
  }
  const ModelResidency* vae_residency() const override { return vae_.residency(); }
  absl::StatusOr<std::vector<Image8>> Decode(const at::Tensor& latents,
                                             const CancellationToken& token) const override {
    const int64_t z_dim = vae_.host().config().z_dim;
    if (!latents.defined() || latents.dim() != 5 || latents.size(0) != 1 ||
        latents.size(1) != z_dim || latents.size(2) < 1 || latents.size(3) < 1 ||
        latents.size(4) < 1) {
      return InvalidArgument("latents must have shape [1, ", z_dim, ", frames, h, w], got ",
                             ShapeOf(latents));
    }
    RETURN_IF_ERROR(token.Check());
    at::Tensor video;
    {
      // Offloaded: the VAE is on its device for this decode only.
      ASSIGN_OR_RETURN(const std::shared_ptr<const AutoencoderKLWan> vae, vae_.Use());
      ASSIGN_OR_RETURN(video, vae->DecodeDenoised(latents));
    }
    RETURN_IF_ERROR(token.Check());
    ASSIGN_OR_RETURN(at::Tensor frames, TorchCall("Wan frames", [&] {
                       return video[0].permute({1, 0, 2, 3});
                     }));
    return PostprocessImages(frames);
  }

 private:
  PlacedModel<AutoencoderKLWan> vae_;
};

}  // namespace

absl::StatusOr<at::Tensor> LatentDecoder::EncodeImage(const RgbImage&, int, int, uint64_t,
                                                      const CancellationToken&) const {
  return InvalidArgument("image: this model family takes no input image (text-to-",
                         "image or text-to-video only)");
}

absl::StatusOr<at::Tensor> PreprocessImageForVae(const RgbImage& image, int width, int height) {
  ASSIGN_OR_RETURN(RgbImage resized, ResizeLanczos(image, width, height));
  return TorchCall("image preprocessing", [&] {
    const at::Tensor hwc = at::from_blob(resized.pixels.data(), {resized.height, resized.width, 3},
                                         at::TensorOptions().dtype(at::kByte));
    // numpy's astype(float32) / 255, then torch's 2 * x - 1 (two roundings, as diffusers).
    const at::Tensor unit = at::div(hwc.to(at::kFloat), 255.0f);
    return at::sub(at::mul(unit.permute({2, 0, 1}).unsqueeze(0), 2.0), 1.0).contiguous();
  });
}

absl::StatusOr<std::unique_ptr<LatentDecoder>> LoadLatentDecoder(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load,
    const VaeDecodeOptions& vae_options, bool model_offload) {
  ASSIGN_OR_RETURN(std::string vae_dir, index.ComponentPath("vae"));
  // One entry per family the decoder stage serves.
  if (family.name() == "flux") {
    ASSIGN_OR_RETURN(PlacedModel<AutoencoderKL> vae,
                     LoadPlacedVae<AutoencoderKL>(vae_dir, load, vae_options, model_offload));
    return std::unique_ptr<LatentDecoder>(std::make_unique<FluxLatentDecoder>(std::move(vae)));
  }
  if (family.name() == "wan") {
    ASSIGN_OR_RETURN(PlacedModel<AutoencoderKLWan> vae,
                     LoadPlacedVae<AutoencoderKLWan>(vae_dir, load, vae_options, model_offload));
    return std::unique_ptr<LatentDecoder>(std::make_unique<WanLatentDecoder>(std::move(vae)));
  }
  return absl::UnimplementedError(
      absl::StrCat(index.root, ": the decoder has no VAE for the ", family.name(), " family"));
}

}  // namespace dgrid::decoder
