#include "services/denoiser/models/flux_parameters.h"

#include "absl/strings/str_cat.h"

namespace dgrid {

std::vector<FluxParameter> FluxParameters(const FluxTransformerConfig& c) {
  std::vector<FluxParameter> out;
  const int64_t d = c.inner_dim(), f = 4 * d, hd = c.attention_head_dim;
  auto linear = [&](const std::string& name, int64_t in, int64_t features) {
    out.push_back({name + ".weight", {features, in}, FluxParameter::kLinearWeight});
    out.push_back({name + ".bias", {features}, FluxParameter::kLinearBias});
  };
  auto norm = [&](const std::string& name) {
    out.push_back({name + ".weight", {hd}, FluxParameter::kNormScale});
  };
  linear("x_embedder", c.in_channels, d);
  linear("context_embedder", c.joint_attention_dim, d);
  for (const std::string mlp : {"timestep_embedder", "guidance_embedder", "text_embedder"}) {
    if (mlp == "guidance_embedder" && !c.guidance_embeds) continue;
    const std::string p = "time_text_embed." + mlp;
    linear(p + ".linear_1", mlp == "text_embedder" ? c.pooled_projection_dim : 256, d);
    linear(p + ".linear_2", d, d);
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("transformer_blocks.", i);
    linear(p + ".norm1.linear", d, 6 * d);
    linear(p + ".norm1_context.linear", d, 6 * d);
    for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                             "add_v_proj", "to_add_out"}) {
      linear(absl::StrCat(p, ".attn.", proj), d, d);
    }
    for (const char* n : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"}) {
      norm(absl::StrCat(p, ".attn.", n));
    }
    for (const char* ff : {".ff", ".ff_context"}) {
      linear(absl::StrCat(p, ff, ".net.0.proj"), d, f);
      linear(absl::StrCat(p, ff, ".net.2"), f, d);
    }
  }
  for (int64_t i = 0; i < c.num_single_layers; ++i) {
    const std::string p = absl::StrCat("single_transformer_blocks.", i);
    linear(p + ".norm.linear", d, 3 * d);
    for (const char* proj : {"to_q", "to_k", "to_v"}) linear(absl::StrCat(p, ".attn.", proj), d, d);
    norm(p + ".attn.norm_q");
    norm(p + ".attn.norm_k");
    linear(p + ".proj_mlp", d, f);
    linear(p + ".proj_out", d + f, d);
  }
  linear("norm_out.linear", d, 2 * d);
  linear("proj_out", d, c.out_channels);
  return out;
}

}  // namespace dgrid
