// The KL autoencoder (VAE) of latent diffusion models: FLUX's `vae` component (and SD / SDXL's).
//
// Ref: diffusers AutoencoderKL (models/autoencoders/autoencoder_kl.py) with Encoder / Decoder /
// DiagonalGaussianDistribution (models/autoencoders/vae.py), diffusers 0.42.1. Parameter names are
// diffusers' (`decoder.up_blocks.0.resnets.0.conv1.weight`, `post_quant_conv.weight`, ...);
// config.json keys those of AutoencoderKL's register_to_config. Only the plain (non-tiled,
// non-sliced) paths are implemented; latents_mean / latents_std (used by other pipelines) are not
// read.
//
// Threads: after Load, every method is const and may be called from several threads at once.
// Errors: every public method returns a status; no exception leaves this class.
#ifndef DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_H_
#define DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/decoder/models/vae_blocks.h"

namespace dgrid::decoder {

// AutoencoderKL's config, with its defaults.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  VaeActivation act_fn = VaeActivation::kSilu;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  static absl::StatusOr<AutoencoderKLConfig> FromJson(const JsonConfig& json);
  // Pixels per latent along each side: 2^(number of blocks - 1) (8 for FLUX).
  int64_t spatial_scale() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

// The encoder's diagonal Gaussian over latents (DiagonalGaussianDistribution, not deterministic).
struct LatentDistribution {
  at::Tensor mean;    // [B, latent_channels, h, w]
  at::Tensor logvar;  // same shape, clamped to [-30, 20] as the reference does
  // exp(0.5 * logvar).
  at::Tensor Std() const;
  // mean + std * noise, `noise` a standard normal tensor of mean's shape (the caller owns the RNG
  // so that a request's seed decides it).
  absl::StatusOr<at::Tensor> Sample(const at::Tensor& noise) const;
};

class AutoencoderKL {
 public:
  // Reads `<component_folder>/config.json` and its weights (device and dtype from `options`;
  // without floating_dtype, the checkpoint's). quant_conv / post_quant_conv are loaded when the
  // config enables them. Missing or mis-shaped parameters are NOT_FOUND / INVALID_ARGUMENT naming
  // the parameter.
  static absl::StatusOr<AutoencoderKL> Load(const std::string& component_folder,
                                            const LoadOptions& options);
  // Builds the model from an already loaded map (parameters are taken out of it).
  static absl::StatusOr<AutoencoderKL> FromWeights(const AutoencoderKLConfig& config,
                                                   WeightMap& weights);

  // VAE decode of latents [B, latent_channels, h, w] (moved to the model's device and dtype):
  // post_quant_conv (if any), then the decoder. Returns images [B, out_channels, h * s, w * s]
  // (s = spatial_scale()), nominally in [-1, 1], in the model's dtype. INVALID_ARGUMENT on a wrong
  // shape.
  absl::StatusOr<at::Tensor> Decode(const at::Tensor& latents) const;

  // What FluxPipeline does with the denoiser's (unpacked) latents: `latents / scaling_factor +
  // shift_factor` (no shift when the config has none), computed in the latents' dtype on the
  // model's device, then Decode.
  absl::StatusOr<at::Tensor> DecodeDenoised(const at::Tensor& denoiser_latents) const;

  // VAE encode of images [B, in_channels, H, W] in [-1, 1] (H and W multiples of spatial_scale()):
  // encoder, quant_conv (if any), split into mean and logvar.
  absl::StatusOr<LatentDistribution> Encode(const at::Tensor& images) const;

  // The inverse of DecodeDenoised's scaling, as FluxImg2ImgPipeline applies it to encoded latents:
  // (latents - shift_factor) * scaling_factor.
  absl::StatusOr<at::Tensor> ToDenoiserLatents(const at::Tensor& vae_latents) const;

  const AutoencoderKLConfig& config() const { return config_; }
  c10::Device device() const;
  c10::ScalarType dtype() const;

 private:
  struct Encoder {
    Conv2d conv_in;
    std::vector<VaeResampleBlock> down_blocks;
    VaeMidBlock mid_block;
    GroupNorm conv_norm_out;
    Conv2d conv_out;
  };
  struct Decoder {
    Conv2d conv_in;
    VaeMidBlock mid_block;
    std::vector<VaeResampleBlock> up_blocks;
    GroupNorm conv_norm_out;
    Conv2d conv_out;
  };

  AutoencoderKL() = default;
  static absl::StatusOr<Encoder> TakeEncoder(const AutoencoderKLConfig& c, WeightMap& weights);
  static absl::StatusOr<Decoder> TakeDecoder(const AutoencoderKLConfig& c, WeightMap& weights);
  at::Tensor RunDecoder(const at::Tensor& latents) const;
  at::Tensor RunEncoder(const at::Tensor& images) const;

  AutoencoderKLConfig config_;
  Encoder encoder_;
  Decoder decoder_;
  std::optional<Conv2d> quant_conv_;
  std::optional<Conv2d> post_quant_conv_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_H_
