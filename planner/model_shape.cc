#include "planner/model_shape.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "planner/json_fields.h"

namespace dgrid::planner {

int64_t ModelShape::ImageTokens(int width, int height) const {
  return static_cast<int64_t>(width / pixels_per_token) * (height / pixels_per_token);
}

double ModelShape::WeightBytes() const {
  // Per joint block: two streams of qkv (3D^2), out (D^2), MLP (8D^2) plus two 6D^2 modulations;
  // per single block: qkv + MLP in (7D^2), out (5D^2) and a 3D^2 modulation.
  // Ref: diffusers FluxTransformerBlock / FluxSingleTransformerBlock.
  const double d2 = static_cast<double>(inner_dim()) * inner_dim();
  const double params = num_layers * 36.0 * d2 + num_single_layers * 15.0 * d2;
  return 2.0 * params;
}

std::vector<std::string> KnownModelShapes() { return {"flux-dev", "flux-schnell"}; }

absl::StatusOr<ModelShape> LookupModelShape(absl::string_view name) {
  ModelShape shape;
  if (name == "flux-dev" || name == "FLUX.1-dev") {
    shape.name = "flux-dev";
    return shape;
  }
  if (name == "flux-schnell" || name == "FLUX.1-schnell") {
    shape.name = "flux-schnell";
    shape.guidance_embeds = false;
    shape.text_tokens = 256;
    return shape;
  }
  return absl::NotFoundError(absl::StrCat("model: unknown shape '", name,
                                          "' (known: ", absl::StrJoin(KnownModelShapes(), ", "),
                                          "; or a Diffusers model folder)"));
}

absl::StatusOr<ModelShape> ReadModelShape(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string config = (fs::path(dir) / "transformer" / "config.json").string();
  if (!fs::exists(config)) config = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(config));
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(text, config));
  ModelShape shape;
  shape.name = fs::path(dir).filename().string();
  auto field = [&](const char* key, int* out) -> absl::Status {
    absl::StatusOr<int> v = IntField(json, "", key, out);
    if (!v.ok())
      return absl::InvalidArgumentError(absl::StrCat(config, ": ", v.status().message()));
    if (*v < 1)
      return absl::InvalidArgumentError(absl::StrCat(config, ": ", key, ": must be >= 1"));
    *out = *v;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(field("num_layers", &shape.num_layers));
  RETURN_IF_ERROR(field("num_single_layers", &shape.num_single_layers));
  RETURN_IF_ERROR(field("num_attention_heads", &shape.num_heads));
  RETURN_IF_ERROR(field("attention_head_dim", &shape.head_dim));
  RETURN_IF_ERROR(field("in_channels", &shape.in_channels));
  RETURN_IF_ERROR(field("joint_attention_dim", &shape.joint_attention_dim));
  RETURN_IF_ERROR(field("pooled_projection_dim", &shape.pooled_projection_dim));
  if (json.contains("guidance_embeds") && json["guidance_embeds"].is_boolean()) {
    shape.guidance_embeds = json["guidance_embeds"].get<bool>();
  }
  return shape;
}

absl::StatusOr<ModelShape> ResolveModelShape(const std::string& name_or_dir) {
  absl::StatusOr<ModelShape> known = LookupModelShape(name_or_dir);
  if (known.ok() || std::filesystem::is_directory(name_or_dir) == false) return known;
  return ReadModelShape(name_or_dir);
}

}  // namespace dgrid::planner
