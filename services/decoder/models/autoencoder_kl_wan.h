// The Wan2.1 video VAE's decoder: latents [B, z_dim, F, h, w] -> video [B, 3, 4 (F - 1) + 1, 8 h,
// 8 w] (with the default temporal / spatial factors), as WanPipeline decodes.
//
// Ref: diffusers AutoencoderKLWan (models/autoencoders/autoencoder_kl_wan.py, 0.42.1): the
// post_quant_conv, then WanDecoder3d run one latent frame at a time with the causal-convolution
// feature cache (every causal 3-D convolution keeps the last two frames of its input for the next
// chunk; the temporal upsamplers skip their time convolution on the first chunk, so it decodes to
// one frame and every later chunk to four), the clamp to [-1, 1]. Blocks: WanCausalConv3d
// (front-only temporal padding), WanRMS_norm (L2 normalisation x sqrt(C) x gamma),
// WanResidualBlock, the single-head per-frame WanAttentionBlock of the middle block, WanResample
// (nearest-exact 2x upsampling + Conv2d, with the time convolution that doubles the frames for
// upsample3d). Parameter names are diffusers'.
//
// Encode is the reverse: WanEncoder3d over the first frame, then chunks of four frames (the same
// cache), downsampling with zero-padded stride-2 convolutions and the causal stride-2 time
// convolution, quant_conv, and the diagonal Gaussian's mean and log-variance.
//
// Supported: the Wan2.1 layout, and Wan2.2 TI2V-5B's (is_residual: the up and down blocks add a
// parameter-free shortcut, DupUp3D / AvgDown3D, around their resnets and resampler, and the
// resamplers keep the channel count; patch_size 2: the encoder's input is patchified into
// 3 x 2 x 2 = 12 channels and the decoder's 12 output channels unpatchified, so that with 48 latent
// channels the VAE compresses 16x per side). Decode may be tiled and sliced as diffusers'
// enable_tiling() / enable_slicing() do (AutoencoderKLWan.tiled_decode: spatial tiles of
// tile_sample_min 256 px with a 192 px stride by default, each decoded through every frame with its
// own feature cache, blended in the patchified space; vae_tiling.h); Encode is never tiled.
//
// Threads: Decode is const (the feature cache lives in the call) and may run on several threads;
// SetDecodeOptions only before the model is shared.
// Errors: statuses only.
#ifndef DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_WAN_H_
#define DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_WAN_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "services/decoder/models/autoencoder_kl.h"

namespace dgrid {
class JsonConfig;
class WeightMap;
}  // namespace dgrid

namespace dgrid::decoder {

// AutoencoderKLWan's config.json, with its defaults (Wan2.1's VAE).
struct AutoencoderKLWanConfig {
  int64_t base_dim = 96;
  int64_t decoder_base_dim = 0;  // 0: base_dim
  int64_t z_dim = 16;
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<bool> temperal_downsample = {false, true, true};
  int64_t in_channels = 3;   // the encoder's input channels (3 x patch_size^2 when patchified)
  int64_t out_channels = 3;  // the decoder's output channels (likewise)
  bool is_residual = false;  // Wan2.2's residual up / down blocks
  int64_t patch_size = 1;    // 1: no patchify (config null or absent)
  std::vector<double> latents_mean;  // z_dim values (Wan2.1's when the config has none)
  std::vector<double> latents_std;
  int64_t scale_factor_temporal = 4;
  int64_t scale_factor_spatial = 8;

  static absl::StatusOr<AutoencoderKLWanConfig> FromJson(const JsonConfig& json);
};

class AutoencoderKLWan {
 public:
  // Reads "<component_folder>/config.json" and its safetensors (device and dtype from `options`).
  // `taken`, when given, receives the weights the model took (for model offload,
  // common/model_offload.h).
  static absl::StatusOr<AutoencoderKLWan> Load(const std::string& component_folder,
                                               const LoadOptions& options,
                                               WeightMap* taken = nullptr);
  static absl::StatusOr<AutoencoderKLWan> FromWeights(const AutoencoderKLWanConfig& config,
                                                      WeightMap& weights);

  // How Decode tiles and slices (default: neither). A tile of T pixels (options.tile_size, or
  // diffusers' 256 when 0) advances by 3T / 4, as diffusers' default 256 / 192; T must be a
  // positive multiple of 4 x scale_factor_spatial: INVALID_ARGUMENT naming --vae-tile-size.
  absl::Status SetDecodeOptions(const VaeDecodeOptions& options);
  const VaeDecodeOptions& decode_options() const { return decode_options_; }
  int64_t tile_sample_size() const { return tile_sample_size_; }
  // Whether a decode of latents h x w is tiled under the current options (diffusers' test, and
  // with kAuto a frame larger than auto_min_pixels).
  bool TilesDecode(int64_t latent_height, int64_t latent_width) const;

  // vae.decode(z): video [B, 3, 1 + 4 (F - 1), s h, s w] in [-1, 1] (s = scale_factor_spatial:
  // 8, or 16 for TI2V-5B), the model's dtype and device, tiled and sliced as decode_options()
  // say. INVALID_ARGUMENT for a wrong shape.
  absl::StatusOr<at::Tensor> Decode(const at::Tensor& latents) const;
  // What WanPipeline does with the sampler's latents: latents / (1 / latents_std) + latents_mean
  // in the model's dtype, then Decode.
  absl::StatusOr<at::Tensor> DecodeDenoised(const at::Tensor& denoiser_latents) const;

  // The decode without tiling or slicing, its convolutions' row padding and its attention run by
  // `ops` (vae_blocks.h): what a parallel decode (parallel_vae.h) runs on each rank's band of
  // latent rows (every rank's causal feature cache holds its own band). Same shapes and errors as
  // Decode; a failure inside `ops` (an exception) comes back as a status.
  absl::StatusOr<at::Tensor> DecodeWith(const at::Tensor& latents, VaeSpatialOps& ops) const;

  // vae.encode(video).latent_dist for video [B, 3, 4k + 1, H, W] in [-1, 1] (H and W multiples
  // of patch_size x 2^(levels - 1)): mean and log-variance [B, z_dim, k + 1, H / s, W / s].
  // INVALID_ARGUMENT for
  // other frame counts or sizes (diffusers drops the frames after the last whole chunk).
  absl::StatusOr<LatentDistribution> Encode(const at::Tensor& video) const;
  // WanPipeline's normalisation of encoded latents (the image-to-video pipelines'):
  // (latents - latents_mean) * (1 / latents_std).
  absl::StatusOr<at::Tensor> ToDenoiserLatents(const at::Tensor& vae_latents) const;

  const AutoencoderKLWanConfig& config() const { return config_; }
  at::TensorOptions options() const;

 private:
  struct CausalConv {
    at::Tensor weight, bias;
    std::array<int64_t, 3> padding{};  // (time, height, width) of the Conv3d
    std::array<int64_t, 3> stride{1, 1, 1};
  };
  struct Residual {
    at::Tensor norm1, norm2;            // gamma [C, 1, 1, 1]
    CausalConv conv1, conv2, shortcut;  // shortcut undefined when in == out
  };
  struct Attention {
    at::Tensor norm;  // gamma [C, 1, 1]
    at::Tensor qkv_weight, qkv_bias, proj_weight, proj_bias;
  };
  enum class Resample { kNone, kUp2d, kUp3d };
  struct UpBlock {
    std::vector<Residual> resnets;
    Resample mode = Resample::kNone;
    at::Tensor conv_weight, conv_bias;  // the resample's Conv2d
    CausalConv time_conv;               // upsample3d only
    // Wan2.2 (is_residual, upsampling levels): the DupUp3D shortcut from the block's input.
    bool dup_shortcut = false;
    int64_t in = 0, out = 0, factor_t = 1;
  };
  // One entry of the encoder's flat down_blocks list.
  struct DownLayer {
    enum class Kind { kResidual, kDown2d, kDown3d } kind = Kind::kResidual;
    Residual residual;
    at::Tensor conv_weight, conv_bias;  // the downsampler's stride-2 Conv2d
    CausalConv time_conv;               // downsample3d only
  };
  // Wan2.2's WanResidualDownBlock: resnets, an optional downsampler, and the AvgDown3D shortcut.
  struct ResidualDownBlock {
    std::vector<Residual> resnets;
    bool down = false;
    DownLayer downsampler;  // kind kDown2d / kDown3d when `down`
    int64_t in = 0, out = 0, factor_t = 1, factor_s = 1;
  };
  class Cache;  // the per-call feature cache

  // WanCausalConv3d.forward(x, cache_x): front-only temporal padding, shortened by cached frames.
  static at::Tensor Causal(const CausalConv& c, at::Tensor x, const at::Tensor& cache,
                           VaeSpatialOps& ops = VaeSpatialOps::Local());
  // A causal convolution that reads and refreshes its cache entry (the resnets', conv_in's and
  // conv_out's pattern in the reference).
  static at::Tensor CachedConv(const CausalConv& c, const at::Tensor& x, Cache& cache);
  at::Tensor ApplyResidual(const Residual& r, at::Tensor x, Cache& cache) const;
  at::Tensor ApplyAttention(const Attention& a, const at::Tensor& x,
                            VaeSpatialOps& ops = VaeSpatialOps::Local()) const;
  at::Tensor ApplyUpBlock(const UpBlock& b, at::Tensor x, Cache& cache, bool first_chunk) const;
  // An up block's WanResample (the time convolution of upsample3d, nearest-exact 2x, Conv2d).
  static at::Tensor Resample2d(const UpBlock& b, at::Tensor x, Cache& cache);
  at::Tensor DecodeChunk(const at::Tensor& x, Cache& cache, bool first_chunk) const;
  // post_quant_conv and the frame loop, before unpatchify and the clamp.
  at::Tensor DecodeFrames(const at::Tensor& z, VaeSpatialOps& ops = VaeSpatialOps::Local()) const;
  // DecodeFrames with decode_options_'s slicing and tiling, then unpatchify and the clamp.
  at::Tensor DecodeWithOptions(const at::Tensor& z) const;
  at::Tensor ApplyDownLayer(const DownLayer& layer, at::Tensor x, Cache& cache) const;
  at::Tensor ApplyResidualDownBlock(const ResidualDownBlock& b, at::Tensor x, Cache& cache) const;
  at::Tensor EncodeChunk(const at::Tensor& x, Cache& cache) const;

  AutoencoderKLWanConfig config_;
  VaeDecodeOptions decode_options_;
  int64_t tile_sample_size_ = 0;
  CausalConv post_quant_conv_;
  CausalConv conv_in_;
  Residual mid_res0_, mid_res1_;
  Attention mid_attn_;
  std::vector<UpBlock> up_blocks_;
  at::Tensor norm_out_;
  CausalConv conv_out_;
  // The encoder.
  CausalConv enc_conv_in_;
  std::vector<DownLayer> down_;              // Wan2.1's flat list
  std::vector<ResidualDownBlock> res_down_;  // Wan2.2's blocks
  Residual enc_mid_res0_, enc_mid_res1_;
  Attention enc_mid_attn_;
  at::Tensor enc_norm_out_;
  CausalConv enc_conv_out_;
  CausalConv quant_conv_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_MODELS_AUTOENCODER_KL_WAN_H_
