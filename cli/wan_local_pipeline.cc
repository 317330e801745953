#include "cli/wan_local_pipeline.h"

#include <chrono>
#include <utility>

#include <ATen/ATen.h>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/diffusers_layout.h"
#include "common/files.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {
namespace {

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

bool WanLocalPipeline::IsWanModel(const std::string& model_dir) {
  absl::StatusOr<ModelIndex> index = ReadModelIndex(model_dir);
  return index.ok() && index->pipeline_class == "WanPipeline";
}

absl::StatusOr<std::unique_ptr<WanLocalPipeline>> WanLocalPipeline::Create(
    const std::string& model_dir, const LoadOptions& load) {
  ASSIGN_OR_RETURN(ModelIndex layout, ReadModelIndex(model_dir));
  // The pipeline's own scalars (boundary_ratio, expand_timesteps) sit beside the components.
  ASSIGN_OR_RETURN(JsonConfig index, JsonConfig::FromFile(layout.root + "/model_index.json"));
  auto p = std::unique_ptr<WanLocalPipeline>(new WanLocalPipeline());
  if (index.Has("boundary_ratio")) {
    ASSIGN_OR_RETURN(double ratio, index.GetDouble("boundary_ratio", 0));
    p->pipeline_.boundary_ratio = ratio;
  }
  ASSIGN_OR_RETURN(p->pipeline_.expand_timesteps, index.GetBool("expand_timesteps", false));
  if (!layout.HasComponent("transformer")) {
    return absl::UnimplementedError(
        absl::StrCat(model_dir,
                     "/model_index.json: a Wan pipeline without `transformer` (only "
                     "transformer_2) is not supported"));
  }
  ASSIGN_OR_RETURN(p->text_, encoder::WanTextEncoder::Load(layout.root, load));
  ASSIGN_OR_RETURN(WanTransformer3DModel transformer,
                   WanTransformer3DModel::Load(layout.root + "/transformer", load));
  p->transformer_ = std::make_unique<WanTransformer3DModel>(std::move(transformer));
  if (p->pipeline_.boundary_ratio.has_value()) {
    if (!layout.HasComponent("transformer_2")) {
      return InvalidArgument(model_dir, "/model_index.json: boundary_ratio is set but there is no ",
                             "transformer_2");
    }
    ASSIGN_OR_RETURN(WanTransformer3DModel second,
                     WanTransformer3DModel::Load(layout.root + "/transformer_2", load));
    p->transformer_2_ = std::make_unique<WanTransformer3DModel>(std::move(second));
  }
  ASSIGN_OR_RETURN(p->scheduler_, UniPCMultistepSchedulerConfig::FromFile(
                                      layout.root + "/scheduler/scheduler_config.json"));
  ASSIGN_OR_RETURN(decoder::AutoencoderKLWan vae,
                   decoder::AutoencoderKLWan::Load(layout.root + "/vae", load));
  p->pipeline_.vae_scale_factor_temporal = static_cast<int>(vae.config().scale_factor_temporal);
  p->pipeline_.vae_scale_factor_spatial = static_cast<int>(vae.config().scale_factor_spatial);
  p->vae_ = std::make_unique<decoder::AutoencoderKLWan>(std::move(vae));
  return p;
}

absl::StatusOr<WanGenerateOutput> WanLocalPipeline::Generate(
    const WanGenerateParams& params, const std::function<void(int, int, double)>& on_step) const {
  WanSamplerRequest request;
  request.height = params.height > 0 ? params.height : request.height;
  request.width = params.width > 0 ? params.width : request.width;
  request.num_frames = params.num_frames > 0 ? params.num_frames : request.num_frames;
  request.num_inference_steps =
      params.num_inference_steps > 0 ? params.num_inference_steps : request.num_inference_steps;
  if (params.guidance_scale) request.guidance_scale = *params.guidance_scale;
  request.guidance_scale_2 = params.guidance_scale_2;
  WanGenerateOutput out;
  out.seed = params.seed ? *params.seed : absl::Uniform<uint64_t>(absl::BitGen());
  request.seed = out.seed;
  const int max_sequence_length = params.max_sequence_length > 0 ? params.max_sequence_length : 512;

  auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(request.prompt_embeds, text_->Encode(params.prompt, max_sequence_length));
  if (request.guidance_scale > 1.0) {
    ASSIGN_OR_RETURN(request.negative_prompt_embeds,
                     text_->Encode(params.negative_prompt.value_or(""), max_sequence_length));
  }
  out.encode_ms = MsSince(start);

  start = std::chrono::steady_clock::now();
  WanSamplerHooks hooks;
  if (on_step) hooks.on_step = [&](int step, int total, double s) { on_step(step + 1, total, s); };
  ASSIGN_OR_RETURN(at::Tensor latents, RunWanSampler(*transformer_, transformer_2_.get(), pipeline_,
                                                     scheduler_, request, hooks));
  out.denoise_ms = MsSince(start);

  start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(at::Tensor video, vae_->DecodeDenoised(latents));
  // [1, 3, F, H, W] -> F images.
  ASSIGN_OR_RETURN(at::Tensor frames, TorchCall("Wan frames", [&] {
                     return video[0].permute({1, 0, 2, 3});
                   }));
  ASSIGN_OR_RETURN(out.frames, decoder::PostprocessImages(frames));
  out.decode_ms = MsSince(start);
  return out;
}

}  // namespace dgrid
