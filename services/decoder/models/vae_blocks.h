// Building blocks of the AutoencoderKL encoder and decoder (diffusers), with their parameters.
//
// Ref: diffusers ResnetBlock2D (models/resnet.py), Attention + AttnProcessor2_0 as built by
// UNetMidBlock2D for a VAE (models/attention_processor.py, one head over all channels, group norm,
// residual), UNetMidBlock2D / DownEncoderBlock2D / UpDecoderBlock2D
// (models/unets/unet_2d_blocks.py), Downsample2D (models/downsampling.py, padding 0: pad
// right/bottom by one, 3x3 stride-2 conv), Upsample2D (models/upsampling.py: nearest x2, 3x3 conv).
// diffusers 0.42.1.
//
// Each block is built with Take(weights, prefix, ...) which removes its parameters from the map
// (NOT_FOUND / INVALID_ARGUMENT naming the parameter) and then is immutable; Forward is const, may
// run on several threads (each with its own VaeSpatialOps), and throws c10::Error like ATen
// (callers wrap it in a TorchCall).
#ifndef DGRID_SERVICES_DECODER_MODELS_VAE_BLOCKS_H_
#define DGRID_SERVICES_DECODER_MODELS_VAE_BLOCKS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/weight_map.h"

namespace dgrid::decoder {

// diffusers.models.activations.get_activation names.
enum class VaeActivation { kSilu, kMish, kGelu, kRelu };
absl::StatusOr<VaeActivation> ParseVaeActivation(absl::string_view name);
at::Tensor ApplyVaeActivation(VaeActivation activation, const at::Tensor& x);

struct Conv2d {
  at::Tensor weight;  // [out, in, k, k]
  at::Tensor bias;    // [out]
  int64_t stride = 1;
  int64_t padding = 0;

  static absl::StatusOr<Conv2d> Take(WeightMap& weights, const std::string& prefix, int64_t in,
                                     int64_t out, int64_t kernel, int64_t stride, int64_t padding);
  at::Tensor Forward(const at::Tensor& x) const;
};

struct GroupNorm {
  at::Tensor weight, bias;  // [channels]
  int64_t groups = 32;
  double eps = 1e-6;

  static absl::StatusOr<GroupNorm> Take(WeightMap& weights, const std::string& prefix,
                                        int64_t channels, int64_t groups, double eps);
  at::Tensor Forward(const at::Tensor& x) const;
};

// The operations of a block that look beyond one position of the feature map: convolutions, group
// norms and attention. Forward runs them through a VaeSpatialOps; Local() runs them on the whole
// map as the reference does. A parallel decode (services/decoder/parallel_vae.h) passes one that
// runs them on a band of rows and exchanges what crosses the band's edges; everything else in a
// block is per position or per row (the nearest upsampler) and needs no exchange. The decoder's
// layers only: the encoder's downsampler pads the bottom row itself.
class VaeSpatialOps {
 public:
  virtual ~VaeSpatialOps() = default;
  // conv.Forward(x).
  virtual at::Tensor Conv(const Conv2d& conv, const at::Tensor& x);
  // norm.Forward(x) for x [B, C, ...].
  virtual at::Tensor Norm(const GroupNorm& norm, const at::Tensor& x);
  // Scaled dot-product attention of q [B, heads, tokens, dim] over k and v of the same layout.
  virtual at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
  // at::constant_pad_nd(x, pad, 0) (`pad` in its order: last dimension first), where the rows that
  // `pad` adds above and below along `row_dim` are the picture's rows beyond x's (zero only at the
  // picture's edges). For the convolutions that pad by hand (Wan's causal 3-D convolutions).
  virtual at::Tensor Pad(const at::Tensor& x, const std::vector<int64_t>& pad, int64_t row_dim);
  // The whole-map operations (stateless, shared).
  static VaeSpatialOps& Local();
};

// norm1 -> act -> conv1 -> norm2 -> act -> conv2, plus the input (through a 1x1 conv_shortcut when
// the channel count changes). No time embedding in a VAE.
class ResnetBlock2D {
 public:
  static absl::StatusOr<ResnetBlock2D> Take(WeightMap& weights, const std::string& prefix,
                                            int64_t in_channels, int64_t out_channels,
                                            int64_t groups, VaeActivation activation);
  at::Tensor Forward(const at::Tensor& x, VaeSpatialOps& ops = VaeSpatialOps::Local()) const;

 private:
  GroupNorm norm1_, norm2_;
  Conv2d conv1_, conv2_;
  std::optional<Conv2d> conv_shortcut_;
  VaeActivation activation_ = VaeActivation::kSilu;
};

// Single-head self-attention over the H*W positions of a feature map, with group norm in front and
// the input added back.
class VaeAttention {
 public:
  static absl::StatusOr<VaeAttention> Take(WeightMap& weights, const std::string& prefix,
                                           int64_t channels, int64_t groups);
  at::Tensor Forward(const at::Tensor& x, VaeSpatialOps& ops = VaeSpatialOps::Local()) const;

 private:
  struct Linear {
    at::Tensor weight, bias;
  };
  GroupNorm norm_;
  Linear q_, k_, v_, out_;
};

// resnet -> [attention] -> resnet at constant width.
class VaeMidBlock {
 public:
  static absl::StatusOr<VaeMidBlock> Take(WeightMap& weights, const std::string& prefix,
                                          int64_t channels, int64_t groups, bool add_attention,
                                          VaeActivation activation);
  at::Tensor Forward(const at::Tensor& x, VaeSpatialOps& ops = VaeSpatialOps::Local()) const;

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::optional<VaeAttention> attention_;
};

// DownEncoderBlock2D (resnets, then optionally the stride-2 downsampler) or UpDecoderBlock2D
// (resnets, then optionally the nearest-x2 upsampler).
class VaeResampleBlock {
 public:
  enum class Kind { kDown, kUp };
  static absl::StatusOr<VaeResampleBlock> Take(WeightMap& weights, const std::string& prefix,
                                               Kind kind, int64_t num_resnets, int64_t in_channels,
                                               int64_t out_channels, bool resample, int64_t groups,
                                               VaeActivation activation);
  at::Tensor Forward(const at::Tensor& x, VaeSpatialOps& ops = VaeSpatialOps::Local()) const;

 private:
  Kind kind_ = Kind::kDown;
  std::vector<ResnetBlock2D> resnets_;
  std::optional<Conv2d> resample_conv_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_MODELS_VAE_BLOCKS_H_
