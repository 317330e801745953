// The KL autoencoder (VAE) of latent diffusion models: FLUX's `vae` component (and SD / SDXL's).
//
// Ref: diffusers AutoencoderKL (models/autoencoders/autoencoder_kl.py) with Encoder / Decoder /
// DiagonalGaussianDistribution (models/autoencoders/vae.py), diffusers 0.42.1. Parameter names are
// diffusers' (`decoder.up_blocks.0.resnets.0.conv1.weight`, `post_quant_conv.weight`, ...);
// config.json keys those of AutoencoderKL's register_to_config. Decode may be tiled and sliced as
// diffusers' enable_tiling() / enable_slicing() do (vae_tiling.h); Encode is never tiled;
// latents_mean / latents_std (used by other pipelines) are not read.
//
// Threads: after Load (and SetDecodeOptions, if called), every method is const and may be called
// from several threads at once.
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
#include "services/decoder/models/vae_tiling.h"

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
  // Pixels per side of a decode tile by default (diffusers' tile_sample_min_size; the first entry
  // when the config has a list).
  int64_t sample_size = 32;

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
  // `taken`, when given, receives the weights the model took (for model offload,
  // common/model_offload.h).
  static absl::StatusOr<AutoencoderKL> Load(const std::string& component_folder,
                                            const LoadOptions& options, WeightMap* taken = nullptr);
  // Builds the model from an already loaded map (parameters are taken out of it).
  static absl::StatusOr<AutoencoderKL> FromWeights(const AutoencoderKLConfig& config,
                                                   WeightMap& weights);

  // How Decode and DecodeDenoised tile and slice (vae_tiling.h; default: neither). The tile size
  // (options.tile_size, or sample_size when 0) must be a positive multiple of 4 x
  // spatial_scale(): diffusers' crops add up to the picture only when the latent tile is a
  // multiple of 4 (its stride is 3/4 of a tile). INVALID_ARGUMENT naming --vae-tile-size
  // otherwise; a config sample_size that is not is rounded down to one (at least 4 x scale).
  // Not thread-safe: call before the model is shared.
  absl::Status SetDecodeOptions(const VaeDecodeOptions& options);
  const VaeDecodeOptions& decode_options() const { return decode_options_; }
  // The decode tile's side in output pixels under the current options.
  int64_t tile_sample_size() const { return tile_sample_size_; }
  // Whether a decode of latents h x w is tiled under the current options: tiling on and the
  // latents larger than one tile on a side (diffusers' test), and with kAuto the picture larger
  // than auto_min_pixels.
  bool TilesDecode(int64_t latent_height, int64_t latent_width) const;

  // VAE decode of latents [B, latent_channels, h, w] (moved to the model's device and dtype):
  // post_quant_conv (if any), then the decoder (tiled and sliced as decode_options() say).
  // Returns images [B, out_channels, h * s, w * s] (s = spatial_scale()), nominally in [-1, 1],
  // in the model's dtype. INVALID_ARGUMENT on a wrong shape.
  absl::StatusOr<at::Tensor> Decode(const at::Tensor& latents) const;

  // What FluxPipeline does with the denoiser's (unpacked) latents: `latents / scaling_factor +
  // shift_factor` (no shift when the config has none), computed in the latents' dtype on the
  // model's device, then Decode.
  absl::StatusOr<at::Tensor> DecodeDenoised(const at::Tensor& denoiser_latents) const;

  // The decoder alone on latents [B, latent_channels, h, w] (post_quant_conv, then the decoder; no
  // tiling or slicing), with its convolutions, group norms and attention run by `ops`: what a
  // parallel decode (parallel_vae.h) runs on each rank's band of latent rows. A failure inside
  // `ops` (an exception) comes back as a status here; `ops` may keep the precise one.
  absl::StatusOr<at::Tensor> DecodeWith(const at::Tensor& latents, VaeSpatialOps& ops) const;

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
  at::Tensor RunDecoder(const at::Tensor& latents,
                        VaeSpatialOps& ops = VaeSpatialOps::Local()) const;
  // RunDecoder with decode_options_'s slicing and tiling.
  at::Tensor DecodeWithOptions(const at::Tensor& latents) const;
  at::Tensor RunEncoder(const at::Tensor& images) const;

  AutoencoderKLConfig config_;
  Encoder encoder_;
  Decoder decoder_;
  std::optional<Conv2d> quant_conv_;
  std::optional<Conv2d> post_quant_conv_;
  VaeDecodeOptions decode_options_;
  int64_t tile_sample_size_ = 0;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_H_
