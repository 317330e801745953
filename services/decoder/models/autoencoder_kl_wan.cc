// Ref: diffusers AutoencoderKLWan / WanDecoder3d / WanUpBlock / WanResample / WanResidualBlock /
// WanAttentionBlock / WanRMS_norm / WanCausalConv3d (autoencoder_kl_wan.py, 0.42.1). The feature
// cache follows the reference's bookkeeping exactly: one entry per causal convolution (and per
// temporal upsampler), visited in the same order for every chunk.
#include "services/decoder/models/autoencoder_kl_wan.h"

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"

namespace dgrid::decoder {
namespace {

constexpr int64_t kCacheFrames = 2;  // CACHE_T

// Wan2.1's latent statistics (AutoencoderKLWan's defaults), for configs that leave them out.
const std::vector<double> kWan21Mean = {-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,
                                        -0.1517, 1.5508,  0.4134,  -0.0715, 0.5517,  -0.3632,
                                        -0.1922, -0.9497, 0.2503,  -0.2921};
const std::vector<double> kWan21Std = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708,
                                       2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                                       1.6382, 1.1253, 2.8251, 1.9160};

absl::StatusOr<std::vector<double>> NumberList(const JsonConfig& json, const char* key,
                                               const std::vector<double>& fallback) {
  if (!json.Has(key)) return fallback;
  const nlohmann::json& value = json.json()[key];
  std::vector<double> out;
  if (!value.is_array()) {
    return InvalidArgument(json.source(), ": ", key, " must be a list of numbers");
  }
  for (const auto& v : value) {
    if (!v.is_number()) return InvalidArgument(json.source(), ": ", key, " must hold numbers");
    out.push_back(v.get<double>());
  }
  return out;
}

// WanRMS_norm: F.normalize over channels (in float32 for half types) x sqrt(C) x gamma + 0.0.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& gamma) {
  const bool upcast = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const at::Tensor in = upcast ? x.to(at::kFloat) : x;
  const at::Tensor denom =
      at::linalg_vector_norm(in, 2, {1}, /*keepdim=*/true).clamp_min(1e-12).expand_as(in);
  const at::Tensor normalized = (in / denom).to(x.scalar_type());
  const double scale = std::sqrt(static_cast<double>(x.size(1)));
  return normalized * scale * gamma + 0.0;
}

}  // namespace

// The feature cache of one Decode call: per causal convolution the last frames of its input (or,
// for a temporal upsampler before its first use, the "Rep" mark), visited in order per chunk.
// Wan2.2's DupUp3D: each input channel repeated, then spread over factor_t frames and 2 x 2
// pixels; on the first chunk the first factor_t - 1 frames are dropped.
at::Tensor DupUp3D(const at::Tensor& x, int64_t in, int64_t out, int64_t factor_t,
                   bool first_chunk) {
  const int64_t factor_s = 2;
  const int64_t repeats = out * factor_t * factor_s * factor_s / in;
  at::Tensor y = x.repeat_interleave(repeats, 1);
  const int64_t b = y.size(0), t = y.size(2), h = y.size(3), w = y.size(4);
  y = y.view({b, out, factor_t, factor_s, factor_s, t, h, w})
          .permute({0, 1, 5, 2, 6, 3, 7, 4})
          .contiguous()
          .view({b, out, t * factor_t, h * factor_s, w * factor_s});
  if (first_chunk) y = y.slice(2, factor_t - 1);
  return y;
}

// Wan2.2's AvgDown3D: zero frames in front to a multiple of factor_t, then each output channel the
// mean of its group of (input channel, time, pixel) samples.
at::Tensor AvgDown3D(at::Tensor x, int64_t in, int64_t out, int64_t factor_t, int64_t factor_s) {
  const int64_t pad_t = (factor_t - x.size(2) % factor_t) % factor_t;
  if (pad_t > 0) x = at::constant_pad_nd(x, {0, 0, 0, 0, pad_t, 0}, 0);
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t factor = factor_t * factor_s * factor_s;
  x = x.view({b, c, t / factor_t, factor_t, h / factor_s, factor_s, w / factor_s, factor_s})
          .permute({0, 1, 3, 5, 7, 2, 4, 6})
          .contiguous()
          .view({b, c * factor, t / factor_t, h / factor_s, w / factor_s})
          .view({b, out, in * factor / out, t / factor_t, h / factor_s, w / factor_s});
  return x.mean(2);
}

// diffusers' patchify / unpatchify (channels x p x p <-> p x p pixels).
at::Tensor Patchify(const at::Tensor& x, int64_t p) {
  if (p == 1) return x;
  const int64_t b = x.size(0), c = x.size(1), f = x.size(2), h = x.size(3), w = x.size(4);
  return x.view({b, c, f, h / p, p, w / p, p})
      .permute({0, 1, 6, 4, 2, 3, 5})
      .contiguous()
      .view({b, c * p * p, f, h / p, w / p});
}
at::Tensor Unpatchify(const at::Tensor& x, int64_t p) {
  if (p == 1) return x;
  const int64_t b = x.size(0), c = x.size(1) / (p * p), f = x.size(2), h = x.size(3), w = x.size(4);
  return x.view({b, c, p, p, f, h, w})
      .permute({0, 1, 4, 5, 3, 6, 2})
      .contiguous()
      .view({b, c, f, h * p, w * p});
}

class AutoencoderKLWan::Cache {
 public:
  explicit Cache(VaeSpatialOps& ops = VaeSpatialOps::Local()) : ops_(&ops) {}
  // How the decode's convolutions pad rows and its attention runs (vae_blocks.h).
  VaeSpatialOps& ops() const { return *ops_; }
  struct Entry {
    bool rep = false;
    at::Tensor frames;
    bool empty() const { return !rep && !frames.defined(); }
  };
  Entry& Next() {
    if (index_ == entries_.size()) entries_.emplace_back();
    return entries_[index_++];
  }
  void Rewind() { index_ = 0; }

 private:
  std::vector<Entry> entries_;
  size_t index_ = 0;
  VaeSpatialOps* ops_;
};

absl::StatusOr<AutoencoderKLWanConfig> AutoencoderKLWanConfig::FromJson(const JsonConfig& json) {
  AutoencoderKLWanConfig c;
  ASSIGN_OR_RETURN(c.base_dim, json.GetInt("base_dim", c.base_dim));
  ASSIGN_OR_RETURN(c.decoder_base_dim, json.GetInt("decoder_base_dim", 0));
  if (c.decoder_base_dim == 0) c.decoder_base_dim = c.base_dim;
  ASSIGN_OR_RETURN(c.z_dim, json.GetInt("z_dim", c.z_dim));
  ASSIGN_OR_RETURN(c.dim_mult, json.GetIntList("dim_mult", c.dim_mult));
  ASSIGN_OR_RETURN(c.num_res_blocks, json.GetInt("num_res_blocks", c.num_res_blocks));
  ASSIGN_OR_RETURN(c.out_channels, json.GetInt("out_channels", c.out_channels));
  ASSIGN_OR_RETURN(c.scale_factor_temporal,
                   json.GetInt("scale_factor_temporal", c.scale_factor_temporal));
  ASSIGN_OR_RETURN(c.scale_factor_spatial,
                   json.GetInt("scale_factor_spatial", c.scale_factor_spatial));
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"base_dim", c.base_dim},
                                   {"decoder_base_dim", c.decoder_base_dim},
                                   {"z_dim", c.z_dim},
                                   {"num_res_blocks", c.num_res_blocks},
                                   {"out_channels", c.out_channels}}) {
    RETURN_IF_ERROR(json.CheckPositive(key, value));
  }
  if (c.dim_mult.size() < 2) {
    return InvalidArgument(json.source(), ": dim_mult must have at least 2 entries");
  }
  for (int64_t m : c.dim_mult) RETURN_IF_ERROR(json.CheckPositive("dim_mult", m));
  if (json.Has("temperal_downsample")) {
    const nlohmann::json& v = json.json()["temperal_downsample"];
    if (!v.is_array()) return InvalidArgument(json.source(), ": temperal_downsample is no list");
    c.temperal_downsample.clear();
    for (const auto& b : v) {
      if (!b.is_boolean())
        return InvalidArgument(json.source(), ": temperal_downsample must hold booleans");
      c.temperal_downsample.push_back(b.get<bool>());
    }
  }
  if (c.temperal_downsample.size() != c.dim_mult.size() - 1) {
    return InvalidArgument(json.source(), ": temperal_downsample must have ", c.dim_mult.size() - 1,
                           " entries (one per down step), got ", c.temperal_downsample.size());
  }
  ASSIGN_OR_RETURN(std::vector<double> attn_scales, NumberList(json, "attn_scales", {}));
  if (!attn_scales.empty()) {
    // Attention inside the encoder's levels; diffusers' own encoder fails on it (its
    // WanAttentionBlock takes no feature cache), and no released Wan VAE uses it.
    return absl::UnimplementedError(
        absl::StrCat(json.source(), ": attn_scales other than [] are not supported"));
  }
  ASSIGN_OR_RETURN(c.is_residual, json.GetBool("is_residual", false));
  ASSIGN_OR_RETURN(c.in_channels, json.GetInt("in_channels", c.in_channels));
  RETURN_IF_ERROR(json.CheckPositive("in_channels", c.in_channels));
  if (json.Has("patch_size") && !json.json()["patch_size"].is_null()) {
    ASSIGN_OR_RETURN(c.patch_size, json.GetInt("patch_size", 1));
    RETURN_IF_ERROR(json.CheckPositive("patch_size", c.patch_size));
  }
  const int64_t pixels = c.patch_size * c.patch_size;
  if (c.in_channels != 3 * pixels || c.out_channels != 3 * pixels) {
    return InvalidArgument(json.source(),
                           ": in_channels and out_channels must be 3 x patch_size^2 = ", 3 * pixels,
                           " (RGB, patchified), got ", c.in_channels, " and ", c.out_channels);
  }
  ASSIGN_OR_RETURN(c.latents_mean, NumberList(json, "latents_mean", kWan21Mean));
  ASSIGN_OR_RETURN(c.latents_std, NumberList(json, "latents_std", kWan21Std));
  if (static_cast<int64_t>(c.latents_mean.size()) != c.z_dim ||
      static_cast<int64_t>(c.latents_std.size()) != c.z_dim) {
    return InvalidArgument(json.source(), ": latents_mean and latents_std need z_dim = ", c.z_dim,
                           " values, got ", c.latents_mean.size(), " and ", c.latents_std.size());
  }
  for (double s : c.latents_std) {
    if (!(s > 0)) return InvalidArgument(json.source(), ": latents_std values must be > 0");
  }
  return c;
}

absl::StatusOr<AutoencoderKLWan> AutoencoderKLWan::Load(const std::string& component_folder,
                                                        const LoadOptions& options,
                                                        WeightMap* taken) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(component_folder + "/config.json"));
  ASSIGN_OR_RETURN(AutoencoderKLWanConfig config, AutoencoderKLWanConfig::FromJson(json));
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(component_folder, options));
  const WeightMap all = taken != nullptr ? weights : WeightMap();
  absl::StatusOr<AutoencoderKLWan> model = FromWeights(config, weights);
  if (taken != nullptr) *taken = TakenWeights(all, weights);
  if (!model.ok()) {
    return Annotate(model.status(),
                    absl::StrCat("loading AutoencoderKLWan from ", component_folder));
  }
  // The encoder's parameters (encoder.*, quant_conv.*) are there and unused by decoding.
  const std::vector<std::string> unused = weights.RemainingNames();
  DG_LOG_INFO("", "loaded AutoencoderKLWan decoder from %s (%d parameters not used by decoding)",
              component_folder, static_cast<int>(unused.size()));
  return model;
}

absl::StatusOr<AutoencoderKLWan> AutoencoderKLWan::FromWeights(const AutoencoderKLWanConfig& c,
                                                               WeightMap& weights) {
  AutoencoderKLWan m;
  m.config_ = c;
  auto take_conv = [&](const std::string& prefix, int64_t in, int64_t out,
                       std::array<int64_t, 3> kernel, std::array<int64_t, 3> padding,
                       std::array<int64_t, 3> stride = {1, 1, 1}) -> absl::StatusOr<CausalConv> {
    CausalConv conv;
    ASSIGN_OR_RETURN(conv.weight,
                     weights.Take(prefix + ".weight", {out, in, kernel[0], kernel[1], kernel[2]}));
    ASSIGN_OR_RETURN(conv.bias, weights.Take(prefix + ".bias", {out}));
    conv.padding = padding;
    conv.stride = stride;
    return conv;
  };
  auto take_residual = [&](const std::string& prefix, int64_t in,
                           int64_t out) -> absl::StatusOr<Residual> {
    Residual r;
    ASSIGN_OR_RETURN(r.norm1, weights.Take(prefix + ".norm1.gamma", {in, 1, 1, 1}));
    ASSIGN_OR_RETURN(r.conv1, take_conv(prefix + ".conv1", in, out, {3, 3, 3}, {1, 1, 1}));
    ASSIGN_OR_RETURN(r.norm2, weights.Take(prefix + ".norm2.gamma", {out, 1, 1, 1}));
    ASSIGN_OR_RETURN(r.conv2, take_conv(prefix + ".conv2", out, out, {3, 3, 3}, {1, 1, 1}));
    if (in != out) {
      ASSIGN_OR_RETURN(r.shortcut,
                       take_conv(prefix + ".conv_shortcut", in, out, {1, 1, 1}, {0, 0, 0}));
    }
    return r;
  };
  ASSIGN_OR_RETURN(m.post_quant_conv_,
                   take_conv("post_quant_conv", c.z_dim, c.z_dim, {1, 1, 1}, {0, 0, 0}));
  // dims = dim x [mult[-1]] + reversed(mult)
  std::vector<int64_t> dims = {c.decoder_base_dim * c.dim_mult.back()};
  for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) {
    dims.push_back(c.decoder_base_dim * *it);
  }
  ASSIGN_OR_RETURN(m.conv_in_,
                   take_conv("decoder.conv_in", c.z_dim, dims[0], {3, 3, 3}, {1, 1, 1}));
  ASSIGN_OR_RETURN(m.mid_res0_, take_residual("decoder.mid_block.resnets.0", dims[0], dims[0]));
  ASSIGN_OR_RETURN(m.mid_res1_, take_residual("decoder.mid_block.resnets.1", dims[0], dims[0]));
  const std::string attn = "decoder.mid_block.attentions.0";
  ASSIGN_OR_RETURN(m.mid_attn_.norm, weights.Take(attn + ".norm.gamma", {dims[0], 1, 1}));
  ASSIGN_OR_RETURN(m.mid_attn_.qkv_weight,
                   weights.Take(attn + ".to_qkv.weight", {3 * dims[0], dims[0], 1, 1}));
  ASSIGN_OR_RETURN(m.mid_attn_.qkv_bias, weights.Take(attn + ".to_qkv.bias", {3 * dims[0]}));
  ASSIGN_OR_RETURN(m.mid_attn_.proj_weight,
                   weights.Take(attn + ".proj.weight", {dims[0], dims[0], 1, 1}));
  ASSIGN_OR_RETURN(m.mid_attn_.proj_bias, weights.Take(attn + ".proj.bias", {dims[0]}));

  // temperal_upsample = reversed(temperal_downsample)
  const std::vector<bool> temporal_up(c.temperal_downsample.rbegin(), c.temperal_downsample.rend());
  const size_t levels = c.dim_mult.size();
  for (size_t i = 0; i < levels; ++i) {
    int64_t in = dims[i];
    const int64_t out = dims[i + 1];
    // Wan2.1: the previous level's upsampler halved the channels; Wan2.2's keep them.
    if (i > 0 && !c.is_residual) in /= 2;
    UpBlock b;
    const std::string prefix = absl::StrCat("decoder.up_blocks.", i);
    for (int64_t j = 0; j <= c.num_res_blocks; ++j) {
      ASSIGN_OR_RETURN(Residual r,
                       take_residual(absl::StrCat(prefix, ".resnets.", j), j == 0 ? in : out, out));
      b.resnets.push_back(std::move(r));
    }
    if (i != levels - 1) {
      b.mode = temporal_up[i] ? Resample::kUp3d : Resample::kUp2d;
      const std::string up = prefix + (c.is_residual ? ".upsampler" : ".upsamplers.0");
      const int64_t up_out = c.is_residual ? out : out / 2;
      ASSIGN_OR_RETURN(b.conv_weight, weights.Take(up + ".resample.1.weight", {up_out, out, 3, 3}));
      ASSIGN_OR_RETURN(b.conv_bias, weights.Take(up + ".resample.1.bias", {up_out}));
      if (c.is_residual) {
        b.dup_shortcut = true;
        b.in = in;
        b.out = out;
        b.factor_t = temporal_up[i] ? 2 : 1;
        if (out * b.factor_t * 4 % in != 0) {
          return InvalidArgument("decoder.up_blocks.", i, ": DupUp3D cannot map ", in, " to ", out,
                                 " channels");
        }
      }
      if (b.mode == Resample::kUp3d) {
        ASSIGN_OR_RETURN(b.time_conv,
                         take_conv(up + ".time_conv", out, 2 * out, {3, 1, 1}, {1, 0, 0}));
      }
    }
    m.up_blocks_.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(m.norm_out_, weights.Take("decoder.norm_out.gamma", {dims.back(), 1, 1, 1}));
  ASSIGN_OR_RETURN(m.conv_out_, take_conv("decoder.conv_out", dims.back(), c.out_channels,
                                          {3, 3, 3}, {1, 1, 1}));

  // The encoder: dims = base_dim x [1] + mult; a flat list of resnets and downsamplers, as
  // WanEncoder3d builds it.
  auto take_attention = [&](const std::string& prefix, int64_t dim) -> absl::StatusOr<Attention> {
    Attention a;
    ASSIGN_OR_RETURN(a.norm, weights.Take(prefix + ".norm.gamma", {dim, 1, 1}));
    ASSIGN_OR_RETURN(a.qkv_weight, weights.Take(prefix + ".to_qkv.weight", {3 * dim, dim, 1, 1}));
    ASSIGN_OR_RETURN(a.qkv_bias, weights.Take(prefix + ".to_qkv.bias", {3 * dim}));
    ASSIGN_OR_RETURN(a.proj_weight, weights.Take(prefix + ".proj.weight", {dim, dim, 1, 1}));
    ASSIGN_OR_RETURN(a.proj_bias, weights.Take(prefix + ".proj.bias", {dim}));
    return a;
  };
  std::vector<int64_t> enc_dims = {c.base_dim};
  for (int64_t mult : c.dim_mult) enc_dims.push_back(c.base_dim * mult);
  ASSIGN_OR_RETURN(m.enc_conv_in_,
                   take_conv("encoder.conv_in", c.in_channels, enc_dims[0], {3, 3, 3}, {1, 1, 1}));
  int64_t index = 0;
  for (size_t i = 0; i < levels && c.is_residual; ++i) {
    // WanResidualDownBlock i: resnets, the downsampler (not on the last level), AvgDown3D.
    ResidualDownBlock blk;
    blk.in = enc_dims[i];
    blk.out = enc_dims[i + 1];
    blk.down = i != levels - 1;
    blk.factor_t = blk.down && c.temperal_downsample[i] ? 2 : 1;
    blk.factor_s = blk.down ? 2 : 1;
    if (blk.in * blk.factor_t * blk.factor_s * blk.factor_s % blk.out != 0) {
      return InvalidArgument("encoder.down_blocks.", i, ": AvgDown3D cannot map ", blk.in, " to ",
                             blk.out, " channels");
    }
    const std::string prefix = absl::StrCat("encoder.down_blocks.", i);
    int64_t in = blk.in;
    for (int64_t j = 0; j < c.num_res_blocks; ++j) {
      ASSIGN_OR_RETURN(Residual r,
                       take_residual(absl::StrCat(prefix, ".resnets.", j), in, blk.out));
      blk.resnets.push_back(std::move(r));
      in = blk.out;
    }
    if (blk.down) {
      DownLayer& d = blk.downsampler;
      d.kind = c.temperal_downsample[i] ? DownLayer::Kind::kDown3d : DownLayer::Kind::kDown2d;
      const std::string down = prefix + ".downsampler";
      ASSIGN_OR_RETURN(d.conv_weight,
                       weights.Take(down + ".resample.1.weight", {blk.out, blk.out, 3, 3}));
      ASSIGN_OR_RETURN(d.conv_bias, weights.Take(down + ".resample.1.bias", {blk.out}));
      if (d.kind == DownLayer::Kind::kDown3d) {
        ASSIGN_OR_RETURN(d.time_conv, take_conv(down + ".time_conv", blk.out, blk.out, {3, 1, 1},
                                                {0, 0, 0}, {2, 1, 1}));
      }
    }
    m.res_down_.push_back(std::move(blk));
  }
  for (size_t i = 0; i < levels && !c.is_residual; ++i) {
    int64_t in = enc_dims[i];
    const int64_t out = enc_dims[i + 1];
    for (int64_t j = 0; j < c.num_res_blocks; ++j) {
      DownLayer layer;
      ASSIGN_OR_RETURN(layer.residual,
                       take_residual(absl::StrCat("encoder.down_blocks.", index++), in, out));
      m.down_.push_back(std::move(layer));
      in = out;
    }
    if (i != levels - 1) {
      DownLayer down;
      down.kind = c.temperal_downsample[i] ? DownLayer::Kind::kDown3d : DownLayer::Kind::kDown2d;
      const std::string prefix = absl::StrCat("encoder.down_blocks.", index++);
      ASSIGN_OR_RETURN(down.conv_weight,
                       weights.Take(prefix + ".resample.1.weight", {out, out, 3, 3}));
      ASSIGN_OR_RETURN(down.conv_bias, weights.Take(prefix + ".resample.1.bias", {out}));
      if (down.kind == DownLayer::Kind::kDown3d) {
        ASSIGN_OR_RETURN(down.time_conv, take_conv(prefix + ".time_conv", out, out, {3, 1, 1},
                                                   {0, 0, 0}, {2, 1, 1}));
      }
      m.down_.push_back(std::move(down));
    }
  }
  const int64_t top = enc_dims.back();
  ASSIGN_OR_RETURN(m.enc_mid_res0_, take_residual("encoder.mid_block.resnets.0", top, top));
  ASSIGN_OR_RETURN(m.enc_mid_res1_, take_residual("encoder.mid_block.resnets.1", top, top));
  ASSIGN_OR_RETURN(m.enc_mid_attn_, take_attention("encoder.mid_block.attentions.0", top));
  ASSIGN_OR_RETURN(m.enc_norm_out_, weights.Take("encoder.norm_out.gamma", {top, 1, 1, 1}));
  ASSIGN_OR_RETURN(m.enc_conv_out_,
                   take_conv("encoder.conv_out", top, 2 * c.z_dim, {3, 3, 3}, {1, 1, 1}));
  ASSIGN_OR_RETURN(m.quant_conv_,
                   take_conv("quant_conv", 2 * c.z_dim, 2 * c.z_dim, {1, 1, 1}, {0, 0, 0}));
  RETURN_IF_ERROR(m.SetDecodeOptions(VaeDecodeOptions{}));
  return m;
}

at::TensorOptions AutoencoderKLWan::options() const { return conv_in_.weight.options(); }

at::Tensor AutoencoderKLWan::Causal(const CausalConv& c, at::Tensor x, const at::Tensor& cache,
                                    VaeSpatialOps& ops) {
  std::vector<int64_t> pad = {c.padding[2], c.padding[2],     c.padding[1],
                              c.padding[1], 2 * c.padding[0], 0};
  if (cache.defined() && pad[4] > 0) {
    x = at::cat({cache.to(x.device()), x}, 2);
    pad[4] -= cache.size(2);
  }
  x = ops.Pad(x, pad, /*row_dim=*/3);
  return at::conv3d(x, c.weight, c.bias, {c.stride[0], c.stride[1], c.stride[2]});
}

at::Tensor AutoencoderKLWan::CachedConv(const CausalConv& c, const at::Tensor& x, Cache& cache) {
  Cache::Entry& e = cache.Next();
  at::Tensor keep = x.slice(2, std::max<int64_t>(0, x.size(2) - kCacheFrames)).clone();
  if (keep.size(2) < 2 && e.frames.defined()) {
    keep =
        at::cat({e.frames.select(2, e.frames.size(2) - 1).unsqueeze(2).to(keep.device()), keep}, 2);
  }
  at::Tensor y = Causal(c, x, e.frames, cache.ops());
  e.frames = keep;
  return y;
}

at::Tensor AutoencoderKLWan::ApplyResidual(const Residual& r, at::Tensor x, Cache& cache) const {
  const at::Tensor h = r.shortcut.weight.defined() ? Causal(r.shortcut, x, at::Tensor()) : x;
  x = at::silu(RmsNorm(x, r.norm1));
  x = CachedConv(r.conv1, x, cache);
  x = at::silu(RmsNorm(x, r.norm2));
  x = CachedConv(r.conv2, x, cache);
  return x + h;
}

at::Tensor AutoencoderKLWan::ApplyAttention(const Attention& a, const at::Tensor& x,
                                            VaeSpatialOps& ops) const {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  at::Tensor y = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  y = RmsNorm(y, a.norm);
  at::Tensor qkv = at::conv2d(y, a.qkv_weight, a.qkv_bias);
  qkv = qkv.reshape({b * t, 1, c * 3, -1}).permute({0, 1, 3, 2}).contiguous();
  const std::vector<at::Tensor> parts = qkv.chunk(3, -1);
  y = ops.Attend(parts[0], parts[1], parts[2]);
  y = y.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w});
  y = at::conv2d(y, a.proj_weight, a.proj_bias);
  y = y.view({b, t, c, h, w}).permute({0, 2, 1, 3, 4});
  return y + x;
}

at::Tensor AutoencoderKLWan::ApplyUpBlock(const UpBlock& blk, at::Tensor x, Cache& cache,
                                          bool first_chunk) const {
  const at::Tensor input = x;
  for (const Residual& r : blk.resnets) x = ApplyResidual(r, x, cache);
  if (blk.mode == Resample::kNone) return x;
  const at::Tensor resampled = Resample2d(blk, x, cache);
  if (!blk.dup_shortcut) return resampled;
  return resampled + DupUp3D(input, blk.in, blk.out, blk.factor_t, first_chunk);
}

at::Tensor AutoencoderKLWan::Resample2d(const UpBlock& blk, at::Tensor x, Cache& cache) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(3), w = x.size(4);
  if (blk.mode == Resample::kUp3d) {
    Cache::Entry& e = cache.Next();
    if (e.empty()) {
      e.rep = true;  // the first chunk: no time convolution, one frame stays one
    } else {
      at::Tensor keep = x.slice(2, std::max<int64_t>(0, x.size(2) - kCacheFrames)).clone();
      if (keep.size(2) < 2 && e.frames.defined() && !e.rep) {
        keep = at::cat(
            {e.frames.select(2, e.frames.size(2) - 1).unsqueeze(2).to(keep.device()), keep}, 2);
      }
      if (keep.size(2) < 2 && e.rep) keep = at::cat({at::zeros_like(keep), keep}, 2);
      x = Causal(blk.time_conv, x, e.rep ? at::Tensor() : e.frames);
      e.rep = false;
      e.frames = keep;
      const int64_t t = x.size(2);
      x = x.reshape({b, 2, c, t, h, w});
      x = at::stack({x.select(1, 0), x.select(1, 1)}, 3);
      x = x.reshape({b, c, t * 2, h, w});
    }
  }
  const int64_t t = x.size(2);
  at::Tensor y = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  // WanUpsample: nearest-exact 2x in float32, back to the input's dtype; then the Conv2d.
  y = at::_upsample_nearest_exact2d(y.to(at::kFloat), std::nullopt, std::vector<double>{2.0, 2.0})
          .to(y.scalar_type());
  y = cache.ops().Conv(Conv2d{blk.conv_weight, blk.conv_bias, /*stride=*/1, /*padding=*/1}, y);
  return y.view({b, t, y.size(1), y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
}

at::Tensor AutoencoderKLWan::DecodeChunk(const at::Tensor& chunk, Cache& cache,
                                         bool first_chunk) const {
  at::Tensor x = CachedConv(conv_in_, chunk, cache);
  x = ApplyResidual(mid_res0_, x, cache);
  x = ApplyAttention(mid_attn_, x, cache.ops());
  x = ApplyResidual(mid_res1_, x, cache);
  for (const UpBlock& b : up_blocks_) x = ApplyUpBlock(b, x, cache, first_chunk);
  x = at::silu(RmsNorm(x, norm_out_));
  return CachedConv(conv_out_, x, cache);
}

namespace {

absl::Status CheckWanLatents(const at::Tensor& latents, int64_t z_dim) {
  if (!latents.defined() || latents.dim() != 5 || latents.size(1) != z_dim || latents.size(0) < 1 ||
      latents.size(2) < 1 || latents.size(3) < 1 || latents.size(4) < 1) {
    return InvalidArgument("Wan VAE decode: latents must be [batch, ", z_dim,
                           ", frames, height, width], got ",
                           latents.defined() ? absl::StrJoin(latents.sizes(), "x") : "none");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> AutoencoderKLWan::DecodeWith(const at::Tensor& latents,
                                                        VaeSpatialOps& ops) const {
  RETURN_IF_ERROR(CheckWanLatents(latents, config_.z_dim));
  return TorchCall("AutoencoderKLWan.Decode", [&] {
    c10::InferenceMode inference;
    return at::clamp(Unpatchify(DecodeFrames(latents.to(options()), ops), config_.patch_size), -1.0,
                     1.0);
  });
}

absl::StatusOr<at::Tensor> AutoencoderKLWan::Decode(const at::Tensor& latents) const {
  RETURN_IF_ERROR(CheckWanLatents(latents, config_.z_dim));
  return TorchCall("AutoencoderKLWan.Decode", [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    return DecodeWithOptions(latents.to(options()));
  });
}

at::Tensor AutoencoderKLWan::DecodeFrames(const at::Tensor& z, VaeSpatialOps& ops) const {
  const at::Tensor x = Causal(post_quant_conv_, z, at::Tensor(), ops);
  Cache cache(ops);
  std::vector<at::Tensor> frames;
  for (int64_t i = 0; i < x.size(2); ++i) {
    cache.Rewind();
    frames.push_back(DecodeChunk(x.slice(2, i, i + 1), cache, /*first_chunk=*/i == 0));
  }
  return at::cat(frames, 2);
}

absl::Status AutoencoderKLWan::SetDecodeOptions(const VaeDecodeOptions& options) {
  // diffusers' tile_sample_min_height / _width default.
  constexpr int64_t kDefaultTile = 256;
  ASSIGN_OR_RETURN(const int64_t tile,
                   ResolveVaeTileSize(options, config_.scale_factor_spatial, kDefaultTile));
  decode_options_ = options;
  tile_sample_size_ = tile;
  return absl::OkStatus();
}

bool AutoencoderKLWan::TilesDecode(int64_t latent_height, int64_t latent_width) const {
  return VaeDecodeIsTiled(decode_options_, tile_sample_size_, config_.scale_factor_spatial,
                          latent_height, latent_width);
}

at::Tensor AutoencoderKLWan::DecodeWithOptions(const at::Tensor& z) const {
  if (decode_options_.slicing && z.size(0) > 1) {
    std::vector<at::Tensor> samples;
    for (const at::Tensor& one : z.split(1)) samples.push_back(DecodeWithOptions(one));
    return at::cat(samples);
  }
  const int64_t h = z.size(3);
  const int64_t w = z.size(4);
  const int64_t p = config_.patch_size;
  at::Tensor out;
  if (!TilesDecode(h, w)) {
    out = DecodeFrames(z);
  } else {
    // AutoencoderKLWan.tiled_decode's arithmetic, with the stride 3/4 of the tile: latent tile
    // and stride = sample sizes // ratio; in the (patchified) output, blend = tile // p - stride
    // // p and keep = stride // p, then the whole cropped to h x w x ratio // p.
    const int64_t ratio = config_.scale_factor_spatial;
    const int64_t tile = tile_sample_size_;
    const int64_t stride = tile * 3 / 4;
    VaeTileAxis axis;
    axis.latent_tile = tile / ratio;
    axis.latent_stride = stride / ratio;
    axis.blend = tile / p - stride / p;
    axis.keep = stride / p;
    out = DecodeInTiles(z, axis, axis, [this](const at::Tensor& t) { return DecodeFrames(t); })
              .slice(3, 0, h * ratio / p)
              .slice(4, 0, w * ratio / p);
  }
  return at::clamp(Unpatchify(out, p), -1.0, 1.0);
}

absl::StatusOr<at::Tensor> AutoencoderKLWan::DecodeDenoised(
    const at::Tensor& denoiser_latents) const {
  if (!denoiser_latents.defined() || denoiser_latents.dim() != 5 ||
      denoiser_latents.size(1) != config_.z_dim) {
    return InvalidArgument("Wan VAE decode: latents must be [batch, ", config_.z_dim,
                           ", frames, height, width]");
  }
  ASSIGN_OR_RETURN(at::Tensor scaled, TorchCall("AutoencoderKLWan latents scaling", [&] {
                     const at::Tensor latents = denoiser_latents.to(options());
                     // torch.tensor(list) is float32; then moved to the latents' dtype.
                     auto column = [&](const std::vector<double>& values) {
                       std::vector<float> f(values.begin(), values.end());
                       return at::tensor(f).view({1, config_.z_dim, 1, 1, 1}).to(latents.options());
                     };
                     const at::Tensor mean = column(config_.latents_mean);
                     const at::Tensor inv_std = 1.0 / column(config_.latents_std);
                     return latents / inv_std + mean;
                   }));
  return Decode(scaled);
}

at::Tensor AutoencoderKLWan::ApplyDownLayer(const DownLayer& layer, at::Tensor x,
                                            Cache& cache) const {
  switch (layer.kind) {
    case DownLayer::Kind::kResidual:
      return ApplyResidual(layer.residual, x, cache);
    case DownLayer::Kind::kDown2d:
    case DownLayer::Kind::kDown3d:
      break;
  }
  // Per frame: ZeroPad2d((0, 1, 0, 1)), then the stride-2 Conv2d.
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  at::Tensor y = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  y = at::constant_pad_nd(y, {0, 1, 0, 1}, 0);
  y = at::conv2d(y, layer.conv_weight, layer.conv_bias, /*stride=*/{2, 2});
  x = y.view({b, t, y.size(1), y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
  if (layer.kind == DownLayer::Kind::kDown3d) {
    Cache::Entry& e = cache.Next();
    if (!e.frames.defined()) {
      e.frames = x.clone();  // the first chunk: kept, no time convolution
    } else {
      at::Tensor keep = x.slice(2, x.size(2) - 1).clone();
      x = Causal(layer.time_conv, at::cat({e.frames.slice(2, e.frames.size(2) - 1), x}, 2),
                 at::Tensor());
      e.frames = keep;
    }
  }
  return x;
}

at::Tensor AutoencoderKLWan::ApplyResidualDownBlock(const ResidualDownBlock& blk, at::Tensor x,
                                                    Cache& cache) const {
  const at::Tensor input = x;
  for (const Residual& r : blk.resnets) x = ApplyResidual(r, x, cache);
  if (blk.down) x = ApplyDownLayer(blk.downsampler, x, cache);
  return x + AvgDown3D(input, blk.in, blk.out, blk.factor_t, blk.factor_s);
}

at::Tensor AutoencoderKLWan::EncodeChunk(const at::Tensor& chunk, Cache& cache) const {
  at::Tensor x = CachedConv(enc_conv_in_, chunk, cache);
  for (const DownLayer& layer : down_) x = ApplyDownLayer(layer, x, cache);
  for (const ResidualDownBlock& blk : res_down_) x = ApplyResidualDownBlock(blk, x, cache);
  x = ApplyResidual(enc_mid_res0_, x, cache);
  x = ApplyAttention(enc_mid_attn_, x);
  x = ApplyResidual(enc_mid_res1_, x, cache);
  x = at::silu(RmsNorm(x, enc_norm_out_));
  return CachedConv(enc_conv_out_, x, cache);
}

absl::StatusOr<LatentDistribution> AutoencoderKLWan::Encode(const at::Tensor& video) const {
  const int64_t temporal = 4;  // the encoder's chunk: 1 frame, then 4 at a time
  int64_t spatial = config_.patch_size;
  for (bool unused : config_.temperal_downsample) {
    (void)unused;
    spatial *= 2;
  }
  if (!video.defined() || video.dim() != 5 || video.size(1) != 3 || video.size(0) < 1) {
    return InvalidArgument("Wan VAE encode: video must be [batch, 3, frames, height, width], got ",
                           video.defined() ? absl::StrJoin(video.sizes(), "x") : "none");
  }
  const int64_t frames = video.size(2);
  if (frames < 1 || (frames - 1) % temporal != 0) {
    return InvalidArgument("Wan VAE encode: num_frames must be 4 k + 1, got ", frames);
  }
  if (video.size(3) % spatial != 0 || video.size(4) % spatial != 0 || video.size(3) < spatial ||
      video.size(4) < spatial) {
    return InvalidArgument("Wan VAE encode: height and width must be multiples of ", spatial,
                           ", got ", video.size(3), "x", video.size(4));
  }
  return TorchCall("AutoencoderKLWan.Encode", [&]() -> absl::StatusOr<LatentDistribution> {
    c10::InferenceMode inference;
    const at::Tensor x = Patchify(video.to(options()), config_.patch_size);
    Cache cache;
    std::vector<at::Tensor> chunks;
    for (int64_t i = 0; i < 1 + (frames - 1) / temporal; ++i) {
      cache.Rewind();
      const at::Tensor chunk =
          i == 0 ? x.slice(2, 0, 1) : x.slice(2, 1 + temporal * (i - 1), 1 + temporal * i);
      chunks.push_back(EncodeChunk(chunk, cache));
    }
    const at::Tensor moments = Causal(quant_conv_, at::cat(chunks, 2), at::Tensor());
    std::vector<at::Tensor> halves = at::chunk(moments, 2, /*dim=*/1);
    return LatentDistribution{halves[0], at::clamp(halves[1], -30.0, 20.0)};
  });
}

absl::StatusOr<at::Tensor> AutoencoderKLWan::ToDenoiserLatents(
    const at::Tensor& vae_latents) const {
  if (!vae_latents.defined() || vae_latents.dim() != 5 || vae_latents.size(1) != config_.z_dim) {
    return InvalidArgument("Wan VAE: latents must be [batch, ", config_.z_dim,
                           ", frames, height, width]");
  }
  return TorchCall("AutoencoderKLWan latents normalisation", [&] {
    auto column = [&](const std::vector<double>& values) {
      std::vector<float> f(values.begin(), values.end());
      return at::tensor(f).view({1, config_.z_dim, 1, 1, 1}).to(vae_latents.options());
    };
    return (vae_latents - column(config_.latents_mean)) * (1.0 / column(config_.latents_std));
  });
}

}  // namespace dgrid::decoder
