// Configuration of a FLUX.1 transformer (the "transformer/config.json" of a Diffusers checkpoint).
//
// Ref: diffusers FluxTransformer2DModel.__init__ (models/transformers/transformer_flux.py, 0.42.1):
// the same keys and defaults. Values that diffusers would accept but that cannot make a working
// model (non-positive widths, RoPE axes that do not add up to the head width, odd RoPE axes) are
// INVALID_ARGUMENT naming the file and key. Plain value type; thread-compatible.
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_CONFIG_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {

class JsonConfig;

struct FluxTransformerConfig {
  int64_t patch_size = 1;
  int64_t in_channels = 64;
  // Resolved: a null or 0 "out_channels" means in_channels, as diffusers' `out_channels or
  // in_channels`.
  int64_t out_channels = 64;
  int64_t num_layers = 19;
  int64_t num_single_layers = 38;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = false;
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  // num_attention_heads * attention_head_dim, the width of every block.
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }

  // Reads the keys above from a parsed config.json; absent or null keys take diffusers' defaults.
  // A "_class_name" other than FluxTransformer2DModel is INVALID_ARGUMENT.
  static absl::StatusOr<FluxTransformerConfig> FromJson(const JsonConfig& json);
  // FromJson on the file at `path` (NOT_FOUND / INVALID_ARGUMENT from the parser).
  static absl::StatusOr<FluxTransformerConfig> FromFile(const std::string& path);

  // Checks the invariants listed in the file comment; `source` names the config in errors.
  [[nodiscard]] absl::Status Validate(absl::string_view source) const;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_CONFIG_H_
