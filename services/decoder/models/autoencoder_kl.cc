// Ref: diffusers AutoencoderKL._encode/_decode, Encoder.forward, Decoder.forward,
// DiagonalGaussianDistribution (models/autoencoders/{autoencoder_kl,vae}.py, diffusers 0.42.1), and
// FluxPipeline.__call__ / FluxImg2ImgPipeline._encode_vae_image for the latent scaling.
#include "services/decoder/models/autoencoder_kl.h"

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid::decoder {

absl::StatusOr<AutoencoderKLConfig> AutoencoderKLConfig::FromJson(const JsonConfig& json) {
  AutoencoderKLConfig c;
  ASSIGN_OR_RETURN(c.in_channels, json.GetInt("in_channels", c.in_channels));
  ASSIGN_OR_RETURN(c.out_channels, json.GetInt("out_channels", c.out_channels));
  ASSIGN_OR_RETURN(c.down_block_types, json.GetStringList("down_block_types", c.down_block_types));
  ASSIGN_OR_RETURN(c.up_block_types, json.GetStringList("up_block_types", c.up_block_types));
  ASSIGN_OR_RETURN(c.block_out_channels,
                   json.GetIntList("block_out_channels", c.block_out_channels));
  ASSIGN_OR_RETURN(c.layers_per_block, json.GetInt("layers_per_block", c.layers_per_block));
  ASSIGN_OR_RETURN(std::string act, json.GetString("act_fn", "silu"));
  ASSIGN_OR_RETURN(c.latent_channels, json.GetInt("latent_channels", c.latent_channels));
  ASSIGN_OR_RETURN(c.norm_num_groups, json.GetInt("norm_num_groups", c.norm_num_groups));
  ASSIGN_OR_RETURN(c.scaling_factor, json.GetDouble("scaling_factor", c.scaling_factor));
  ASSIGN_OR_RETURN(c.shift_factor, json.GetOptionalDouble("shift_factor"));
  ASSIGN_OR_RETURN(c.use_quant_conv, json.GetBool("use_quant_conv", c.use_quant_conv));
  ASSIGN_OR_RETURN(c.use_post_quant_conv,
                   json.GetBool("use_post_quant_conv", c.use_post_quant_conv));
  ASSIGN_OR_RETURN(c.mid_block_add_attention,
                   json.GetBool("mid_block_add_attention", c.mid_block_add_attention));
  // An int, or a list whose first entry diffusers takes for the latent tile.
  if (absl::StatusOr<int64_t> size = json.GetInt("sample_size", c.sample_size); size.ok()) {
    c.sample_size = *size;
  } else {
    ASSIGN_OR_RETURN(std::vector<int64_t> sizes, json.GetIntList("sample_size", {}));
    if (sizes.empty()) return InvalidArgument(json.source(), ": sample_size is an empty list");
    c.sample_size = sizes.front();
  }
  absl::StatusOr<VaeActivation> parsed = ParseVaeActivation(act);
  if (!parsed.ok()) return Annotate(parsed.status(), json.source());
  c.act_fn = *parsed;

  RETURN_IF_ERROR(json.CheckPositive("in_channels", c.in_channels));
  RETURN_IF_ERROR(json.CheckPositive("out_channels", c.out_channels));
  RETURN_IF_ERROR(json.CheckPositive("layers_per_block", c.layers_per_block));
  RETURN_IF_ERROR(json.CheckPositive("latent_channels", c.latent_channels));
  RETURN_IF_ERROR(json.CheckPositive("norm_num_groups", c.norm_num_groups));
  RETURN_IF_ERROR(json.CheckPositive("sample_size", c.sample_size));
  if (c.block_out_channels.empty() || c.block_out_channels.size() > 8) {
    return InvalidArgument(json.source(), ": block_out_channels must have 1 to 8 entries");
  }
  for (int64_t ch : c.block_out_channels) {
    RETURN_IF_ERROR(json.CheckPositive("block_out_channels", ch));
  }
  if (c.down_block_types.size() != c.block_out_channels.size() ||
      c.up_block_types.size() != c.block_out_channels.size()) {
    return InvalidArgument(json.source(),
                           ": down_block_types and up_block_types need one entry per "
                           "block_out_channels entry");
  }
  for (const std::string& t : c.down_block_types) {
    if (t != "DownEncoderBlock2D") {
      return InvalidArgument(json.source(), ": unsupported down block type '", t, "'");
    }
  }
  for (const std::string& t : c.up_block_types) {
    if (t != "UpDecoderBlock2D") {
      return InvalidArgument(json.source(), ": unsupported up block type '", t, "'");
    }
  }
  if (c.scaling_factor == 0) {
    return InvalidArgument(json.source(), ": scaling_factor must not be 0");
  }
  return c;
}

at::Tensor LatentDistribution::Std() const { return at::exp(at::mul(logvar, 0.5)); }

absl::StatusOr<at::Tensor> LatentDistribution::Sample(const at::Tensor& noise) const {
  if (!noise.defined() || noise.sizes() != mean.sizes()) {
    return InvalidArgument("LatentDistribution::Sample: noise must have the shape of the mean");
  }
  return TorchCall("VAE latent sample", [&] {
    c10::InferenceMode inference;
    return mean + Std() * noise.to(mean.device(), mean.scalar_type());
  });
}

c10::Device AutoencoderKL::device() const { return decoder_.conv_in.weight.device(); }
c10::ScalarType AutoencoderKL::dtype() const { return decoder_.conv_in.weight.scalar_type(); }

absl::StatusOr<AutoencoderKL::Encoder> AutoencoderKL::TakeEncoder(const AutoencoderKLConfig& c,
                                                                  WeightMap& weights) {
  const std::vector<int64_t>& ch = c.block_out_channels;
  const int64_t groups = c.norm_num_groups;
  Encoder e;
  ASSIGN_OR_RETURN(e.conv_in,
                   Conv2d::Take(weights, "encoder.conv_in", c.in_channels, ch[0], 3, 1, 1));
  int64_t out = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t in = out;
    out = ch[i];
    ASSIGN_OR_RETURN(VaeResampleBlock block,
                     VaeResampleBlock::Take(weights, absl::StrCat("encoder.down_blocks.", i),
                                            VaeResampleBlock::Kind::kDown, c.layers_per_block, in,
                                            out, /*resample=*/i + 1 < ch.size(), groups, c.act_fn));
    e.down_blocks.push_back(std::move(block));
  }
  ASSIGN_OR_RETURN(e.mid_block, VaeMidBlock::Take(weights, "encoder.mid_block", ch.back(), groups,
                                                  c.mid_block_add_attention, c.act_fn));
  ASSIGN_OR_RETURN(e.conv_norm_out,
                   GroupNorm::Take(weights, "encoder.conv_norm_out", ch.back(), groups, 1e-6));
  // double_z: mean and logvar.
  ASSIGN_OR_RETURN(e.conv_out, Conv2d::Take(weights, "encoder.conv_out", ch.back(),
                                            2 * c.latent_channels, 3, 1, 1));
  return e;
}

absl::StatusOr<AutoencoderKL::Decoder> AutoencoderKL::TakeDecoder(const AutoencoderKLConfig& c,
                                                                  WeightMap& weights) {
  const std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  const int64_t groups = c.norm_num_groups;
  Decoder d;
  ASSIGN_OR_RETURN(d.conv_in,
                   Conv2d::Take(weights, "decoder.conv_in", c.latent_channels, rev[0], 3, 1, 1));
  ASSIGN_OR_RETURN(d.mid_block, VaeMidBlock::Take(weights, "decoder.mid_block", rev[0], groups,
                                                  c.mid_block_add_attention, c.act_fn));
  int64_t out = rev[0];
  for (size_t i = 0; i < rev.size(); ++i) {
    const int64_t in = out;
    out = rev[i];
    ASSIGN_OR_RETURN(
        VaeResampleBlock block,
        VaeResampleBlock::Take(weights, absl::StrCat("decoder.up_blocks.", i),
                               VaeResampleBlock::Kind::kUp, c.layers_per_block + 1, in, out,
                               /*resample=*/i + 1 < rev.size(), groups, c.act_fn));
    d.up_blocks.push_back(std::move(block));
  }
  ASSIGN_OR_RETURN(d.conv_norm_out,
                   GroupNorm::Take(weights, "decoder.conv_norm_out", rev.back(), groups, 1e-6));
  ASSIGN_OR_RETURN(d.conv_out,
                   Conv2d::Take(weights, "decoder.conv_out", rev.back(), c.out_channels, 3, 1, 1));
  return d;
}

absl::StatusOr<AutoencoderKL> AutoencoderKL::FromWeights(const AutoencoderKLConfig& config,
                                                         WeightMap& weights) {
  AutoencoderKL m;
  m.config_ = config;
  ASSIGN_OR_RETURN(m.encoder_, TakeEncoder(config, weights));
  ASSIGN_OR_RETURN(m.decoder_, TakeDecoder(config, weights));
  const int64_t z = config.latent_channels;
  if (config.use_quant_conv) {
    ASSIGN_OR_RETURN(m.quant_conv_, Conv2d::Take(weights, "quant_conv", 2 * z, 2 * z, 1, 1, 0));
  }
  if (config.use_post_quant_conv) {
    ASSIGN_OR_RETURN(m.post_quant_conv_, Conv2d::Take(weights, "post_quant_conv", z, z, 1, 1, 0));
  }
  if (!m.decoder_.conv_in.weight.is_floating_point()) {
    return InvalidArgument(weights.source(), ": VAE weights are not floating-point");
  }
  RETURN_IF_ERROR(m.SetDecodeOptions(VaeDecodeOptions{}));
  return m;
}

absl::StatusOr<AutoencoderKL> AutoencoderKL::Load(const std::string& component_folder,
                                                  const LoadOptions& options, WeightMap* taken) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(component_folder + "/config.json"));
  ASSIGN_OR_RETURN(AutoencoderKLConfig config, AutoencoderKLConfig::FromJson(json));
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(component_folder, options));
  const WeightMap all = taken != nullptr ? weights : WeightMap();
  absl::StatusOr<AutoencoderKL> model = FromWeights(config, weights);
  if (taken != nullptr) *taken = TakenWeights(all, weights);
  if (!model.ok()) {
    return Annotate(model.status(), absl::StrCat("loading AutoencoderKL from ", component_folder));
  }
  const std::vector<std::string> rest = weights.RemainingNames();
  if (!rest.empty()) {
    DG_LOG_WARN("", "AutoencoderKL: %d unused parameters in %s, first: %s",
                static_cast<int>(rest.size()), component_folder, rest.front());
  }
  return model;
}

at::Tensor AutoencoderKL::RunDecoder(const at::Tensor& latents, VaeSpatialOps& ops) const {
  at::Tensor h = post_quant_conv_.has_value() ? ops.Conv(*post_quant_conv_, latents) : latents;
  h = ops.Conv(decoder_.conv_in, h);
  h = decoder_.mid_block.Forward(h, ops);
  for (const VaeResampleBlock& block : decoder_.up_blocks) h = block.Forward(h, ops);
  // The output activation is SiLU whatever act_fn says (Decoder.conv_act = nn.SiLU()).
  h = at::silu(ops.Norm(decoder_.conv_norm_out, h));
  return ops.Conv(decoder_.conv_out, h);
}

at::Tensor AutoencoderKL::RunEncoder(const at::Tensor& images) const {
  at::Tensor h = encoder_.conv_in.Forward(images);
  for (const VaeResampleBlock& block : encoder_.down_blocks) h = block.Forward(h);
  h = encoder_.mid_block.Forward(h);
  h = at::silu(encoder_.conv_norm_out.Forward(h));
  h = encoder_.conv_out.Forward(h);
  return quant_conv_.has_value() ? quant_conv_->Forward(h) : h;
}

absl::Status AutoencoderKL::SetDecodeOptions(const VaeDecodeOptions& options) {
  ASSIGN_OR_RETURN(const int64_t tile,
                   ResolveVaeTileSize(options, config_.spatial_scale(), config_.sample_size));
  decode_options_ = options;
  tile_sample_size_ = tile;
  return absl::OkStatus();
}

bool AutoencoderKL::TilesDecode(int64_t latent_height, int64_t latent_width) const {
  return VaeDecodeIsTiled(decode_options_, tile_sample_size_, config_.spatial_scale(),
                          latent_height, latent_width);
}

at::Tensor AutoencoderKL::DecodeWithOptions(const at::Tensor& latents) const {
  if (decode_options_.slicing && latents.size(0) > 1) {
    std::vector<at::Tensor> samples;
    for (const at::Tensor& one : latents.split(1)) samples.push_back(DecodeWithOptions(one));
    return at::cat(samples);
  }
  if (!TilesDecode(latents.size(2), latents.size(3))) return RunDecoder(latents);
  // AutoencoderKL.tiled_decode's arithmetic: overlap_size = int(latent_tile * (1 - 0.25)),
  // blend_extent = int(sample_tile * 0.25), row_limit = sample_tile - blend_extent.
  constexpr double kOverlapFactor = 0.25;
  const int64_t latent_tile = tile_sample_size_ / config_.spatial_scale();
  VaeTileAxis axis;
  axis.latent_tile = latent_tile;
  axis.latent_stride =
      static_cast<int64_t>(static_cast<double>(latent_tile) * (1 - kOverlapFactor));
  axis.blend = static_cast<int64_t>(static_cast<double>(tile_sample_size_) * kOverlapFactor);
  axis.keep = tile_sample_size_ - axis.blend;
  return DecodeInTiles(latents, axis, axis,
                       [this](const at::Tensor& tile) { return RunDecoder(tile); });
}

namespace {

absl::Status CheckImageLike(const at::Tensor& x, int64_t channels, absl::string_view what,
                            int64_t multiple) {
  if (!x.defined() || x.dim() != 4 || x.size(0) < 1 || x.size(1) != channels || x.size(2) < 1 ||
      x.size(3) < 1) {
    return InvalidArgument(what, ": expected a [batch, ", channels, ", height, width] tensor, got ",
                           x.defined() ? absl::StrCat("[", absl::StrJoin(x.sizes(), ", "), "]")
                                       : std::string("an undefined tensor"));
  }
  if (!x.is_floating_point()) return InvalidArgument(what, ": expected a floating-point tensor");
  if (x.size(2) % multiple != 0 || x.size(3) % multiple != 0) {
    return InvalidArgument(what, ": height and width must be multiples of ", multiple, ", got ",
                           x.size(2), "x", x.size(3));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> AutoencoderKL::Decode(const at::Tensor& latents) const {
  RETURN_IF_ERROR(CheckImageLike(latents, config_.latent_channels, "VAE decode", 1));
  return TorchCall("VAE decode", [&] {
    c10::InferenceMode inference;
    return DecodeWithOptions(latents.to(device(), dtype()));
  });
}

absl::StatusOr<at::Tensor> AutoencoderKL::DecodeWith(const at::Tensor& latents,
                                                     VaeSpatialOps& ops) const {
  RETURN_IF_ERROR(CheckImageLike(latents, config_.latent_channels, "VAE decode", 1));
  return TorchCall("VAE decode", [&] {
    c10::InferenceMode inference;
    return RunDecoder(latents.to(device(), dtype()), ops);
  });
}

absl::StatusOr<at::Tensor> AutoencoderKL::DecodeDenoised(const at::Tensor& denoiser_latents) const {
  RETURN_IF_ERROR(CheckImageLike(denoiser_latents, config_.latent_channels, "VAE decode", 1));
  return TorchCall("VAE decode", [&] {
    c10::InferenceMode inference;
    at::Tensor z = at::div(denoiser_latents.to(device()), config_.scaling_factor);
    if (config_.shift_factor.has_value()) z = at::add(z, *config_.shift_factor);
    return DecodeWithOptions(z.to(dtype()));
  });
}

absl::StatusOr<LatentDistribution> AutoencoderKL::Encode(const at::Tensor& images) const {
  RETURN_IF_ERROR(
      CheckImageLike(images, config_.in_channels, "VAE encode", config_.spatial_scale()));
  return TorchCall("VAE encode", [&] {
    c10::InferenceMode inference;
    const at::Tensor moments = RunEncoder(images.to(device(), dtype()));
    std::vector<at::Tensor> halves = at::chunk(moments, 2, /*dim=*/1);
    return LatentDistribution{halves[0], at::clamp(halves[1], -30.0, 20.0)};
  });
}

absl::StatusOr<at::Tensor> AutoencoderKL::ToDenoiserLatents(const at::Tensor& vae_latents) const {
  RETURN_IF_ERROR(CheckImageLike(vae_latents, config_.latent_channels, "VAE latents", 1));
  return TorchCall("VAE latent scaling", [&] {
    c10::InferenceMode inference;
    at::Tensor z = vae_latents;
    if (config_.shift_factor.has_value()) z = at::sub(z, *config_.shift_factor);
    return at::mul(z, config_.scaling_factor);
  });
}

}  // namespace dgrid::decoder
