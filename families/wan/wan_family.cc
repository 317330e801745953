#include "families/wan/wan_family.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace dgrid::families::wan {
namespace {

constexpr char kFamilyName[] = "wan";
constexpr int kPatchVolume = 4;  // 1 x 2 x 2 latent cells per token
constexpr double kTimeFeatures = 256;

class Wan final : public ModelFamily {
 public:
  absl::string_view name() const override { return kFamilyName; }
  std::vector<std::string> pipeline_classes() const override { return {"WanPipeline"}; }
  const GenerationDefaults& defaults() const override { return kWanDefaults; }
  // One process per stage (encoder, denoiser, decoder); denoiser groups run FLUX only so far.
  bool stages_serve() const override { return true; }
  std::vector<std::string> text_embedding_names() const override { return {kPromptEmbeds}; }
  // WanPipeline.do_classifier_free_guidance.
  bool RunsCfg(double guidance_scale, double /*true_cfg_scale*/) const override {
    return guidance_scale > 1;
  }
  std::vector<std::string> shape_names() const override {
    return {"wan2.1-14b", "wan2.1-1.3b", "wan2.2-ti2v-5b"};
  }
  absl::StatusOr<TransformerShape> LookupShape(absl::string_view name) const override {
    if (name == "wan2.1-14b" || name == "Wan2.1-T2V-14B" || name == "Wan2.2-T2V-A14B") {
      return Wan14BShape();
    }
    if (name == "wan2.1-1.3b" || name == "Wan2.1-T2V-1.3B") return Wan13BShape();
    if (name == "wan2.2-ti2v-5b" || name == "Wan2.2-TI2V-5B") return WanTi2v5BShape();
    return absl::NotFoundError(absl::StrCat("unknown Wan shape '", name,
                                            "' (known: ", absl::StrJoin(shape_names(), ", "), ")"));
  }
  absl::StatusOr<TransformerShape> ShapeFromConfig(const nlohmann::json& config,
                                                   absl::string_view source) const override {
    if (!config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": (root): expected an object"));
    }
    TransformerShape shape = Wan14BShape();
    shape.name.clear();
    for (auto [key, field] : {std::pair<const char*, int*>{"num_layers", &shape.num_layers},
                              {"num_attention_heads", &shape.num_heads},
                              {"attention_head_dim", &shape.head_dim},
                              {"in_channels", &shape.in_channels},
                              {"text_dim", &shape.joint_attention_dim},
                              {"ffn_dim", &shape.ffn_dim}}) {
      absl::Status s = ReadPositiveIntField(config, source, key, field);
      if (!s.ok()) return s;
    }
    return shape;
  }
  double ForwardFlops(const TransformerShape& shape, int64_t image_tokens) const override {
    return WanForwardFlops(shape, image_tokens);
  }
  double WeightBytes(const TransformerShape& shape) const override { return WanWeightBytes(shape); }
  std::vector<double> BlockWeightBytes(const TransformerShape& shape) const override {
    return WanBlockWeightBytes(shape);
  }
  double NonBlockWeightBytes(const TransformerShape& shape) const override {
    return WanNonBlockWeightBytes(shape);
  }
};

}  // namespace

TransformerShape Wan14BShape() {
  TransformerShape s;
  s.name = "wan2.1-14b";
  s.family = kFamilyName;
  s.num_layers = 40;
  s.num_heads = 40;
  s.head_dim = 128;
  s.in_channels = 16;
  s.joint_attention_dim = 4096;
  s.ffn_dim = 13824;
  s.text_tokens = kWanDefaults.max_sequence_length;
  s.pixels_per_token = kWanDefaults.size_multiple();
  s.frames_per_token = kWanDefaults.frame_step;  // the VAE's 4, temporal patch 1
  s.joint_text_attention = false;                // text enters by cross-attention
  return s;
}

TransformerShape Wan13BShape() {
  TransformerShape s = Wan14BShape();
  s.name = "wan2.1-1.3b";
  s.num_layers = 30;
  s.num_heads = 12;
  s.ffn_dim = 8960;
  return s;
}

TransformerShape WanTi2v5BShape() {
  TransformerShape s = Wan14BShape();
  s.name = "wan2.2-ti2v-5b";
  s.num_layers = 30;
  s.num_heads = 24;
  s.in_channels = 48;
  s.ffn_dim = 14336;
  s.pixels_per_token = 32;  // its VAE compresses 16x per side (scale_factor_spatial), patch 2
  return s;
}

const ModelFamily& WanFamily() {
  static const Wan* const kWan = new Wan();
  return *kWan;
}

double WanForwardFlops(const TransformerShape& s, int64_t image_tokens) {
  const double n = static_cast<double>(image_tokens);
  const double t = static_cast<double>(s.text_tokens);
  const double d = static_cast<double>(s.inner_dim());
  const double f = static_cast<double>(s.ffn_dim);
  const double patch_in = static_cast<double>(s.in_channels) * kPatchVolume;
  double flops = LinearFlops(n, patch_in, d);                                // patch embedding
  flops += LinearFlops(t, s.joint_attention_dim, d) + LinearFlops(t, d, d);  // text embedder
  flops +=
      LinearFlops(1, kTimeFeatures, d) + LinearFlops(1, d, d) + LinearFlops(1, d, 6 * d);  // time
  double block = 4 * LinearFlops(n, d, d) + 4.0 * n * n * d;  // self-attention
  block +=
      2 * LinearFlops(n, d, d) + 2 * LinearFlops(t, d, d) + 4.0 * n * t * d;  // cross-attention
  block += LinearFlops(n, d, f) + LinearFlops(n, f, d);                       // feed-forward
  flops += s.num_layers * block;
  flops += LinearFlops(n, d, patch_in);  // proj_out (out_channels = in_channels)
  return flops;
}

double WanWeightBytes(const TransformerShape& s) {
  // Per block: self- and cross-attention q/k/v/o (8 D^2) and the feed-forward (2 D F); plus the
  // text embedder (text_dim x D + D^2) and time projection (6 D^2).
  const double d = static_cast<double>(s.inner_dim());
  const double params = s.num_layers * (8.0 * d * d + 2.0 * d * s.ffn_dim) +
                        static_cast<double>(s.joint_attention_dim) * d + 7.0 * d * d;
  return 2.0 * params;
}

std::vector<double> WanBlockWeightBytes(const TransformerShape& s) {
  // WanWeightBytes' per-block count: self- and cross-attention q/k/v/o and the feed-forward.
  const double d = static_cast<double>(s.inner_dim());
  return std::vector<double>(s.num_layers, 2.0 * (8.0 * d * d + 2.0 * d * s.ffn_dim));
}

double WanNonBlockWeightBytes(const TransformerShape& s) {
  // Patch embedding, text embedder (text_dim -> D -> D), time embedder (256 -> D -> D), time
  // projection (D -> 6D) and proj_out. Ref: diffusers WanTransformer3DModel and
  // WanTimeTextImageEmbedding.
  const double d = static_cast<double>(s.inner_dim());
  const double patch = static_cast<double>(s.in_channels) * kPatchVolume;
  const double params = patch * d + (s.joint_attention_dim * d + d * d) +
                        (kTimeFeatures * d + d * d) + 6.0 * d * d + d * patch;
  return 2.0 * params;
}

}  // namespace dgrid::families::wan
