#include "planner/stage_memory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace dgrid::planner {
namespace {

constexpr double kMib = 1024.0 * 1024.0;
// Decode tiles overlap by a quarter: each keeps 0.75 of its side (vae_tiling.h, diffusers'
// tile_overlap_factor 0.25), so the decoded tiles hold 1 / 0.75^2 of the picture.
constexpr double kTileStride = 0.75;
// Above this many pixels per frame --vae-tiling auto tiles (vae_tiling.h kVaeAutoTilingMinPixels).
constexpr double kAutoTilingMinPixels = 2048.0 * 2048.0;

// Parameters of a 3x3 (2-D) or 3x3x3 (causal 3-D) convolution of `in` to `out` channels.
double Conv(double kernel, double in, double out) { return kernel * in * out; }

}  // namespace

const char* ComponentPlacementName(ComponentPlacement placement) {
  switch (placement) {
    case ComponentPlacement::kCpu:
      return "cpu";
    case ComponentPlacement::kOffload:
      return "offload";
    case ComponentPlacement::kGpu:
      break;
  }
  return "gpu";
}

double TextEncoderShape::Parameters() const {
  // Token (and learned position) embeddings; per layer q, k, v, o and the feed-forward's input
  // projection(s) and output. Ref: transformers T5Stack / UMT5Stack / CLIPTextTransformer.
  return vocab * width + positions * width +
         layers * (4.0 * width * heads * head_dim + (gated_ffn ? 3.0 : 2.0) * width * ffn);
}

double AutoencoderKlDecoderParameters(const std::vector<int>& block_out_channels,
                                      int layers_per_block, int latent_channels, int out_channels) {
  if (block_out_channels.empty()) return 0;
  // Ref: diffusers Decoder (autoencoders/vae.py): up blocks run the channels reversed.
  std::vector<double> rev(block_out_channels.rbegin(), block_out_channels.rend());
  const double top = rev.front();
  const auto resnet = [](double in, double out) {
    return Conv(9, in, out) + Conv(9, out, out) + (in != out ? in * out : 0);
  };
  double p = Conv(9, latent_channels, top);     // conv_in
  p += 2 * resnet(top, top) + 4.0 * top * top;  // mid block: two resnets and the attention
  for (size_t i = 0; i < rev.size(); ++i) {
    const double in = i == 0 ? top : rev[i - 1];
    for (int j = 0; j <= layers_per_block; ++j) p += resnet(j == 0 ? in : rev[i], rev[i]);
    if (i + 1 < rev.size()) p += Conv(9, rev[i], rev[i]);  // the upsampler's conv
  }
  return p + Conv(9, rev.back(), out_channels);  // conv_out
}

double AutoencoderKlWanDecoderParameters(int base_dim, const std::vector<int>& dim_mult,
                                         int num_res_blocks, int z_dim,
                                         const std::vector<bool>& temporal_downsample) {
  if (dim_mult.empty()) return 0;
  // As AutoencoderKLWan::Load builds Wan2.1's decoder: dims = base x [mult[-1]] + reversed(mult);
  // each level's first residual block takes half the channels the upsampler before it gave.
  std::vector<double> dims = {static_cast<double>(base_dim) * dim_mult.back()};
  for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) dims.push_back(base_dim * *it);
  const std::vector<bool> temporal_up(temporal_downsample.rbegin(), temporal_downsample.rend());
  const auto residual = [](double in, double out) {
    return Conv(27, in, out) + Conv(27, out, out) + (in != out ? in * out : 0);
  };
  double p = Conv(27, z_dim, dims[0]) + static_cast<double>(z_dim) * z_dim;  // conv_in, post_quant
  p += 2 * residual(dims[0], dims[0]) + 4.0 * dims[0] * dims[0];  // mid block: resnets, attention
  for (size_t i = 0; i < dim_mult.size(); ++i) {
    const double in = i > 0 ? dims[i] / 2 : dims[i];
    const double out = dims[i + 1];
    for (int j = 0; j <= num_res_blocks; ++j) p += residual(j == 0 ? in : out, out);
    if (i + 1 == dim_mult.size()) continue;
    p += Conv(9, out, out / 2);  // the upsampler's 2-D conv
    if (i < temporal_up.size() && temporal_up[i]) p += Conv(3, out, 2 * out);  // its time_conv
  }
  return p + Conv(27, dims.back(), 3);  // conv_out
}

absl::StatusOr<FamilyComponents> ComponentsOf(const ModelShape& model) {
  // The released configs (diffusers' config.json of each component folder).
  FamilyComponents c;
  if (model.family == "flux") {
    // FLUX.1-dev / -schnell: text_encoder CLIPTextModel (openai/clip-vit-large-patch14),
    // text_encoder_2 T5EncoderModel (google/t5-v1_1-xxl), vae AutoencoderKL.
    c.text_encoders.push_back({"CLIP-L text encoder", 49408, 768, 12, 12, 64, 3072, false, 77, 77});
    c.text_encoders.push_back(
        {"T5-XXL encoder", 32128, 4096, 24, 64, 64, 10240, true, 0, model.text_tokens});
    c.vae = {"AutoencoderKL decoder",
             AutoencoderKlDecoderParameters({128, 256, 512, 512}, 2, 16, 3),
             /*live_planes=*/3 * 256 + 128, /*default_tile=*/1024};
    return c;
  }
  if (model.family == "wan") {
    // Wan2.1-T2V: text_encoder UMT5EncoderModel (umt5-xxl), vae AutoencoderKLWan.
    c.text_encoders.push_back(
        {"UMT5-XXL encoder", 256384, 4096, 24, 64, 64, 10240, true, 0, model.text_tokens});
    c.vae = {"AutoencoderKLWan decoder",
             AutoencoderKlWanDecoderParameters(96, {1, 2, 4, 4}, 2, 16, {false, true, true}),
             /*live_planes=*/22 * 96, /*default_tile=*/256};
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("stage memory: no component shapes for family '",
                                                 model.family, "' (", model.name, ")"));
}

bool DecodeIsTiled(const VaeDecoderShape& vae, const VaeTiling& tiling, int width, int height) {
  if (tiling.mode == "off") return false;
  const int tile = tiling.tile_size > 0 ? tiling.tile_size : vae.default_tile;
  if (width <= tile && height <= tile) return false;
  if (tiling.mode == "on") return true;
  return static_cast<double>(width) * height > kAutoTilingMinPixels;
}

absl::StatusOr<StageEstimate> EncoderPeak(const ModelShape& model, int bytes_per_parameter,
                                          int tokens, ComponentPlacement placement) {
  if (bytes_per_parameter != 2 && bytes_per_parameter != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage memory: 2 (bf16) or 4 (float32) bytes per parameter, not ", bytes_per_parameter));
  }
  absl::StatusOr<FamilyComponents> components = ComponentsOf(model);
  if (!components.ok()) return components.status();
  StageEstimate e;
  e.placement = placement;
  std::vector<std::string> parts;
  for (const TextEncoderShape& t : components->text_encoders) {
    const double n = tokens > 0 ? tokens : t.default_tokens;
    const double weights = t.Parameters() * bytes_per_parameter / kMib;
    // The encoders run one after the other: the largest one's activations.
    const double scores = 2.0 * t.heads * n * n * 4;
    const double ffn = (t.gated_ffn ? 3.0 : 2.0) * n * t.ffn * bytes_per_parameter;
    e.weights_mib += weights;
    e.activations_mib = std::max(e.activations_mib, (scores + ffn) / kMib);
    parts.push_back(absl::StrCat(t.name, " ", FormatMib(weights)));
  }
  e.detail = absl::StrCat(absl::StrJoin(parts, " + "), " (",
                          bytes_per_parameter == 2 ? "bf16" : "fp32", ")");
  return e;
}

absl::StatusOr<StageEstimate> DecoderPeak(const ModelShape& model, const RequestShape& request,
                                          const VaeTiling& tiling, int bytes_per_parameter,
                                          ComponentPlacement placement) {
  if (bytes_per_parameter != 2 && bytes_per_parameter != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage memory: 2 (bf16) or 4 (float32) bytes per parameter, not ", bytes_per_parameter));
  }
  if (request.width < 8 || request.height < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage memory: output ", request.width, "x", request.height, " too small"));
  }
  absl::StatusOr<FamilyComponents> components = ComponentsOf(model);
  if (!components.ok()) return components.status();
  const VaeDecoderShape& vae = components->vae;
  StageEstimate e;
  e.placement = placement;
  e.weights_mib = vae.parameters * bytes_per_parameter / kMib;
  const double frames = std::max(request.frames, 1);
  const double picture = static_cast<double>(request.width) * request.height;
  const double output = 2 * 3 * frames * picture * bytes_per_parameter;
  const bool tiled = DecodeIsTiled(vae, tiling, request.width, request.height);
  double area = picture, kept = 0;
  if (tiled) {
    const double tile = tiling.tile_size > 0 ? tiling.tile_size : vae.default_tile;
    area = tile * tile;
    kept = 3 * frames * picture * bytes_per_parameter / (kTileStride * kTileStride);
  }
  e.activations_mib = (vae.live_planes * area * bytes_per_parameter + kept + output) / kMib;
  e.detail = absl::StrCat(
      vae.name, " ", FormatMib(e.weights_mib), " (", bytes_per_parameter == 2 ? "bf16" : "fp32",
      "), decode of ", request.width, "x", request.height,
      frames > 1 ? absl::StrCat("x", request.frames) : std::string(),
      tiled ? absl::StrCat(" in tiles of ",
                           tiling.tile_size > 0 ? tiling.tile_size : vae.default_tile, " px")
            : std::string(" untiled"));
  return e;
}

double SharedGpuPeakMib(const MemoryEstimate& denoiser, const std::vector<StageEstimate>& stages,
                        bool dit_model_offload) {
  double weights = dit_model_offload ? 0 : denoiser.weights_mib;
  double activations = denoiser.activations_mib + denoiser.collective_mib +
                       (dit_model_offload ? denoiser.weights_mib : 0);
  for (const StageEstimate& s : stages) {
    weights += s.resident_mib();
    activations = std::max(activations, s.in_use_mib());
  }
  return weights + activations;
}

}  // namespace dgrid::planner
