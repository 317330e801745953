#include "services/denoiser/models/flux_config.h"

#include <numeric>

#include "absl/strings/str_join.h"
#include "common/diffusers_layout.h"
#include "common/status.h"

namespace dgrid {

absl::StatusOr<FluxTransformerConfig> FluxTransformerConfig::FromJson(const JsonConfig& json) {
  ASSIGN_OR_RETURN(std::string class_name, json.GetString("_class_name", "FluxTransformer2DModel"));
  if (class_name != "FluxTransformer2DModel") {
    return InvalidArgument(json.source(), ": _class_name is '", class_name,
                           "', expected FluxTransformer2DModel");
  }
  FluxTransformerConfig c;
  ASSIGN_OR_RETURN(c.patch_size, json.GetInt("patch_size", c.patch_size));
  ASSIGN_OR_RETURN(c.in_channels, json.GetInt("in_channels", c.in_channels));
  // diffusers: `out_channels or in_channels`, so both null and 0 fall back to in_channels.
  ASSIGN_OR_RETURN(int64_t out_channels, json.GetInt("out_channels", 0));
  RETURN_IF_ERROR(json.CheckNonNegative("out_channels", out_channels));
  c.out_channels = out_channels == 0 ? c.in_channels : out_channels;
  ASSIGN_OR_RETURN(c.num_layers, json.GetInt("num_layers", c.num_layers));
  ASSIGN_OR_RETURN(c.num_single_layers, json.GetInt("num_single_layers", c.num_single_layers));
  ASSIGN_OR_RETURN(c.attention_head_dim, json.GetInt("attention_head_dim", c.attention_head_dim));
  ASSIGN_OR_RETURN(c.num_attention_heads,
                   json.GetInt("num_attention_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(c.joint_attention_dim,
                   json.GetInt("joint_attention_dim", c.joint_attention_dim));
  ASSIGN_OR_RETURN(c.pooled_projection_dim,
                   json.GetInt("pooled_projection_dim", c.pooled_projection_dim));
  ASSIGN_OR_RETURN(c.guidance_embeds, json.GetBool("guidance_embeds", c.guidance_embeds));
  ASSIGN_OR_RETURN(c.axes_dims_rope, json.GetIntList("axes_dims_rope", c.axes_dims_rope));
  RETURN_IF_ERROR(c.Validate(json.source()));
  return c;
}

absl::StatusOr<FluxTransformerConfig> FluxTransformerConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(path));
  return FromJson(json);
}

absl::Status FluxTransformerConfig::Validate(absl::string_view source) const {
  const std::pair<const char*, int64_t> positive[] = {
      {"patch_size", patch_size},
      {"in_channels", in_channels},
      {"out_channels", out_channels},
      {"attention_head_dim", attention_head_dim},
      {"num_attention_heads", num_attention_heads},
      {"joint_attention_dim", joint_attention_dim},
      {"pooled_projection_dim", pooled_projection_dim},
  };
  for (const auto& [key, value] : positive) {
    if (value <= 0) return InvalidArgument(source, ": ", key, " must be positive, got ", value);
  }
  // An empty block stack is legal in diffusers (an empty ModuleList), so 0 layers is allowed.
  if (num_layers < 0) return InvalidArgument(source, ": num_layers must be >= 0, got ", num_layers);
  if (num_single_layers < 0) {
    return InvalidArgument(source, ": num_single_layers must be >= 0, got ", num_single_layers);
  }
  // FluxPipeline's position ids have three columns (unused, row, column), one per RoPE axis.
  if (axes_dims_rope.size() != 3) {
    return InvalidArgument(source, ": axes_dims_rope must have 3 entries, got [",
                           absl::StrJoin(axes_dims_rope, ", "), "]");
  }
  for (int64_t d : axes_dims_rope) {
    // get_1d_rotary_pos_embed asserts an even width per axis.
    if (d <= 0 || d % 2 != 0) {
      return InvalidArgument(source, ": axes_dims_rope entries must be positive and even, got [",
                             absl::StrJoin(axes_dims_rope, ", "), "]");
    }
  }
  const int64_t rope_sum =
      std::accumulate(axes_dims_rope.begin(), axes_dims_rope.end(), int64_t{0});
  if (rope_sum != attention_head_dim) {
    return InvalidArgument(source, ": sum(axes_dims_rope) = ", rope_sum,
                           " must equal attention_head_dim = ", attention_head_dim);
  }
  return absl::OkStatus();
}

}  // namespace dgrid
