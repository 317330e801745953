#include "common/model_limits.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/diffusers_layout.h"
#include "common/files.h"
#include "common/status.h"
#include "families/registry.h"

namespace dgrid {

absl::StatusOr<ModelLimits> ReadModelLimits(const std::string& model_path) {
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(model_path));
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(index.pipeline_class);
  if (!family.ok()) {
    return InvalidArgument(JoinPath(index.root, "model_index.json"),
                           ": _class_name: ", family.status().message());
  }
  const families::GenerationDefaults& defaults = (*family)->defaults();
  ModelLimits limits;
  std::string root = index.root;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  limits.name = root.substr(root.find_last_of('/') + 1);
  limits.pipeline = index.pipeline_class;
  limits.family = std::string((*family)->name());
  limits.stages_serve = (*family)->stages_serve();
  limits.default_width = defaults.width;
  limits.default_height = defaults.height;
  limits.default_steps = defaults.steps;
  limits.default_guidance = defaults.guidance_scale;
  limits.max_width = defaults.max_width;
  limits.max_height = defaults.max_height;
  limits.max_sequence_length = defaults.max_sequence_length;
  limits.vae_scale_factor = defaults.vae_scale_factor;
  limits.max_num_frames = defaults.max_num_frames;
  limits.default_num_frames = defaults.num_frames;
  limits.frame_step = defaults.frame_step;
  limits.default_fps = defaults.fps;
  ASSIGN_OR_RETURN(std::string transformer_dir, index.ComponentPath("transformer"));
  ASSIGN_OR_RETURN(JsonConfig transformer, JsonConfig::FromFile(transformer_dir + "/config.json"));
  ASSIGN_OR_RETURN(limits.guidance_embeds, transformer.GetBool("guidance_embeds", false));
  if (index.HasComponent("vae")) {
    ASSIGN_OR_RETURN(std::string vae_dir, index.ComponentPath("vae"));
    ASSIGN_OR_RETURN(JsonConfig vae, JsonConfig::FromFile(vae_dir + "/config.json"));
    if (vae.Has("scale_factor_spatial")) {
      // Video VAEs (AutoencoderKLWan) say it; image VAEs imply it by their block count.
      ASSIGN_OR_RETURN(int64_t factor, vae.GetInt("scale_factor_spatial", 8));
      RETURN_IF_ERROR(vae.CheckPositive("scale_factor_spatial", factor));
      limits.vae_scale_factor = static_cast<int>(factor);
    } else {
      ASSIGN_OR_RETURN(std::vector<int64_t> blocks, vae.GetIntList("block_out_channels", {64}));
      if (blocks.empty()) return InvalidArgument(vae.source(), ": block_out_channels is empty");
      limits.vae_scale_factor = 1 << (blocks.size() - 1);
    }
  }
  // As the pipeline does: default_sample_size x the VAE's scale factor (FLUX.1: 128 x 8 = 1024).
  if (defaults.sample_size > 0) {
    limits.default_width =
        std::min(defaults.sample_size * limits.vae_scale_factor, limits.max_width);
    limits.default_height =
        std::min(defaults.sample_size * limits.vae_scale_factor, limits.max_height);
  }
  const std::string extra = JoinPath(index.root, "dgrid.json");
  if (IsRegularFile(extra)) {
    ASSIGN_OR_RETURN(JsonConfig dgrid, JsonConfig::FromFile(extra));
    ASSIGN_OR_RETURN(limits.name, dgrid.GetString("name", limits.name));
    ASSIGN_OR_RETURN(int64_t w, dgrid.GetInt("default_width", limits.default_width));
    ASSIGN_OR_RETURN(int64_t h, dgrid.GetInt("default_height", limits.default_height));
    ASSIGN_OR_RETURN(int64_t steps, dgrid.GetInt("default_steps", limits.default_steps));
    ASSIGN_OR_RETURN(limits.default_guidance,
                     dgrid.GetDouble("default_guidance", limits.default_guidance));
    ASSIGN_OR_RETURN(int64_t mw, dgrid.GetInt("max_width", limits.max_width));
    ASSIGN_OR_RETURN(int64_t mh, dgrid.GetInt("max_height", limits.max_height));
    ASSIGN_OR_RETURN(int64_t msl, dgrid.GetInt("max_sequence_length", limits.max_sequence_length));
    for (auto [key, v] : {std::pair<const char*, int64_t>{"default_width", w},
                          {"default_height", h},
                          {"default_steps", steps},
                          {"max_width", mw},
                          {"max_height", mh},
                          {"max_sequence_length", msl}}) {
      RETURN_IF_ERROR(dgrid.CheckPositive(key, v));
    }
    limits.default_width = static_cast<int>(w);
    limits.default_height = static_cast<int>(h);
    limits.default_steps = static_cast<int>(steps);
    limits.max_width = static_cast<int>(mw);
    limits.max_height = static_cast<int>(mh);
    limits.max_sequence_length = static_cast<int>(std::min<int64_t>(msl, defaults.max_text_tokens));
  }
  return limits;
}
absl::Status CheckStagesServe(const ModelLimits& limits, const std::string& model_path) {
  if (limits.stages_serve) return absl::OkStatus();
  return absl::UnimplementedError(
      absl::StrCat(model_path, ": ", limits.pipeline, " (the ", limits.family,
                   " family) is not served by the cluster's stages yet; run it in one process "
                   "with `dgrid generate --local --model ",
                   model_path, "`"));
}

v1::ModelInfo ToModelInfo(const ModelLimits& limits) {
  v1::ModelInfo info;
  info.set_name(limits.name);
  info.set_pipeline(limits.pipeline);
  info.set_default_width(limits.default_width);
  info.set_default_height(limits.default_height);
  info.set_default_steps(limits.default_steps);
  info.set_max_width(limits.max_width);
  info.set_max_height(limits.max_height);
  info.set_guidance_embeds(limits.guidance_embeds);
  info.set_default_guidance(static_cast<float>(limits.default_guidance));
  info.set_max_sequence_length(limits.max_sequence_length);
  info.set_family(limits.family);
  info.set_max_num_frames(limits.max_num_frames);
  info.set_default_num_frames(limits.default_num_frames);
  info.set_frame_step(limits.frame_step);
  info.set_default_fps(limits.default_fps);
  absl::StatusOr<const families::ModelFamily*> family = families::FindFamily(limits.family);
  info.set_supports_image_input(family.ok() && (*family)->defaults().image_input);
  return info;
}

}  // namespace dgrid
