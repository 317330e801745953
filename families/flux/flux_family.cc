#include "families/flux/flux_family.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace dgrid::families::flux {
namespace {

constexpr char kFamilyName[] = "flux";

class Flux final : public ModelFamily {
 public:
  absl::string_view name() const override { return kFamilyName; }
  std::vector<std::string> pipeline_classes() const override { return {"FluxPipeline"}; }
  const GenerationDefaults& defaults() const override { return kFluxDefaults; }
  bool stages_serve() const override { return true; }
  // FluxPipeline's do_true_cfg (with a negative prompt, which the stages always give).
  bool RunsCfg(double /*guidance_scale*/, double true_cfg_scale) const override {
    return true_cfg_scale > 1;
  }
  std::vector<std::string> text_embedding_names() const override {
    return {kPromptEmbeds, kPooledPromptEmbeds};
  }
  std::vector<std::string> shape_names() const override { return {"flux-dev", "flux-schnell"}; }

  absl::StatusOr<TransformerShape> LookupShape(absl::string_view name) const override {
    if (name == "flux-dev" || name == "FLUX.1-dev") return FluxDevShape();
    if (name == "flux-schnell" || name == "FLUX.1-schnell") return FluxSchnellShape();
    return absl::NotFoundError(absl::StrCat("unknown FLUX shape '", name,
                                            "' (known: ", absl::StrJoin(shape_names(), ", "), ")"));
  }

  absl::StatusOr<TransformerShape> ShapeFromConfig(const nlohmann::json& config,
                                                   absl::string_view source) const override {
    if (!config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": (root): expected an object"));
    }
    TransformerShape shape = FluxDevShape();
    shape.name.clear();
    for (auto [key, field] : {std::pair<const char*, int*>{"num_layers", &shape.num_layers},
                              {"num_single_layers", &shape.num_single_layers},
                              {"num_attention_heads", &shape.num_heads},
                              {"attention_head_dim", &shape.head_dim},
                              {"in_channels", &shape.in_channels},
                              {"joint_attention_dim", &shape.joint_attention_dim},
                              {"pooled_projection_dim", &shape.pooled_projection_dim}}) {
      absl::Status s = ReadPositiveIntField(config, source, key, field);
      if (!s.ok()) return s;
    }
    auto guidance = config.find("guidance_embeds");
    if (guidance != config.end() && guidance->is_boolean()) {
      shape.guidance_embeds = guidance->get<bool>();
    }
    // The text length is the T5 limit of the pipeline, not a transformer config key.
    return shape;
  }

  double ForwardFlops(const TransformerShape& shape, int64_t image_tokens) const override {
    return FluxForwardFlops(shape, image_tokens);
  }
  double WeightBytes(const TransformerShape& shape) const override {
    return FluxWeightBytes(shape);
  }
  std::vector<double> BlockWeightBytes(const TransformerShape& shape) const override {
    return FluxBlockWeightBytes(shape);
  }
  double NonBlockWeightBytes(const TransformerShape& shape) const override {
    return FluxNonBlockWeightBytes(shape);
  }
};

}  // namespace

TransformerShape FluxDevShape() {
  TransformerShape s;
  s.name = "flux-dev";
  s.family = kFamilyName;
  s.num_layers = 19;
  s.num_single_layers = 38;
  s.num_heads = 24;
  s.head_dim = 128;
  s.in_channels = 64;
  s.joint_attention_dim = 4096;
  s.pooled_projection_dim = 768;
  s.text_tokens = kFluxDefaults.max_sequence_length;
  s.guidance_embeds = true;
  s.pixels_per_token = kFluxDefaults.size_multiple();
  return s;
}

TransformerShape FluxSchnellShape() {
  TransformerShape s = FluxDevShape();
  s.name = "flux-schnell";
  s.guidance_embeds = false;
  s.text_tokens = 256;  // FLUX.1-schnell's max_sequence_length
  return s;
}

const ModelFamily& FluxFamily() {
  static const Flux* const kFlux = new Flux();
  return *kFlux;
}

double FluxForwardFlops(const TransformerShape& s, int64_t image_tokens) {
  constexpr double kMlpRatio = 4;
  const double n = static_cast<double>(image_tokens);
  const double t = static_cast<double>(s.text_tokens);
  const double seq = n + t;
  const double d = static_cast<double>(s.inner_dim());
  const double f = d * kMlpRatio;
  const double attention = 4.0 * seq * seq * d;  // QK^T and PV over all heads
  constexpr double kTimeProj = 256;              // sinusoidal timestep features

  double flops = LinearFlops(n, s.in_channels, d) + LinearFlops(t, s.joint_attention_dim, d);
  flops += LinearFlops(1, kTimeProj, d) + LinearFlops(1, d, d);  // timestep embedder
  if (s.guidance_embeds) flops += LinearFlops(1, kTimeProj, d) + LinearFlops(1, d, d);
  flops +=
      LinearFlops(1, s.pooled_projection_dim, d) + LinearFlops(1, d, d);  // pooled text embedder

  // Double-stream block: per stream, AdaLN (6 vectors), q/k/v, output projection and the MLP.
  double dbl = 2 * LinearFlops(1, d, 6 * d) + attention;
  for (double rows : {n, t})
    dbl += 3 * LinearFlops(rows, d, d) + LinearFlops(rows, d, d) + 2 * LinearFlops(rows, d, f);
  // Single-stream block over the joint sequence: AdaLN (3 vectors), q/k/v, the parallel MLP input
  // and the fused output projection over cat(attention, mlp).
  const double sgl = LinearFlops(1, d, 3 * d) + 3 * LinearFlops(seq, d, d) +
                     LinearFlops(seq, d, f) + LinearFlops(seq, d + f, d) + attention;
  flops += s.num_layers * dbl + s.num_single_layers * sgl;
  flops += LinearFlops(1, d, 2 * d) + LinearFlops(n, d, s.in_channels);  // norm_out and proj_out
  return flops;
}

double FluxWeightBytes(const TransformerShape& s) {
  // Per joint block: two streams of qkv (3D^2), out (D^2), MLP (8D^2) plus two 6D^2 modulations;
  // per single block: qkv + MLP in (7D^2), out (5D^2) and a 3D^2 modulation.
  // Ref: diffusers FluxTransformerBlock / FluxSingleTransformerBlock.
  const double d2 = static_cast<double>(s.inner_dim()) * s.inner_dim();
  const double params = s.num_layers * 36.0 * d2 + s.num_single_layers * 15.0 * d2;
  return 2.0 * params;
}

std::vector<double> FluxBlockWeightBytes(const TransformerShape& s) {
  // The joint blocks run first, then the single-stream ones (FluxWeightBytes' per-block counts).
  const double d2 = static_cast<double>(s.inner_dim()) * s.inner_dim();
  std::vector<double> blocks(s.num_layers, 2.0 * 36.0 * d2);
  blocks.insert(blocks.end(), s.num_single_layers, 2.0 * 15.0 * d2);
  return blocks;
}

double FluxNonBlockWeightBytes(const TransformerShape& s) {
  // x_embedder, context_embedder, the timestep (and guidance) embedder's two layers, the pooled
  // text embedder's two layers, norm_out (D -> 2D) and proj_out. Ref: diffusers
  // FluxTransformer2DModel and CombinedTimestep(Guidance)TextProjEmbeddings.
  constexpr double kTimeProj = 256;
  const double d = static_cast<double>(s.inner_dim());
  double params = s.in_channels * d + s.joint_attention_dim * d;
  params += (kTimeProj * d + d * d) * (s.guidance_embeds ? 2 : 1);
  params += s.pooled_projection_dim * d + d * d;
  params += 2.0 * d * d + d * s.in_channels;
  return 2.0 * params;
}

}  // namespace dgrid::families::flux
