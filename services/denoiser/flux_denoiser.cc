#include "services/denoiser/flux_denoiser.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "families/flux/flux_family.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/img2img.h"

namespace dgrid {
namespace {

bool RunsCfg(const DenoiseInput& input) {
  return families::flux::FluxFamily().RunsCfg(input.guidance_scale, input.true_cfg_scale);
}

}  // namespace

absl::StatusOr<std::unique_ptr<FluxDenoiser>> FluxDenoiser::Load(const ModelIndex& index,
                                                                 const LoadOptions& load) {
  std::unique_ptr<FluxDenoiser> d(new FluxDenoiser());
  ASSIGN_OR_RETURN(std::string transformer_dir, index.ComponentPath("transformer"));
  ASSIGN_OR_RETURN(const flux::LinearPrecision precision,
                   flux::ParseLinearPrecision(load.dit_precision));
  if (load.dit_offload.model && flux::IsFp8(precision)) {
    // Refused before reading gigabytes: FP8 layers are quantized on the GPU as the model is built,
    // and model offload builds it on the CPU first.
    return InvalidArgument("--dit-offload model: not combined with --dit-precision ",
                           flux::LinearPrecisionName(precision),
                           " yet; use --dit-precision bf16 with model offload");
  }
  ASSIGN_OR_RETURN(const FluxTransformerConfig config,
                   FluxTransformerConfig::FromFile(transformer_dir + "/config.json"));
  ASSIGN_OR_RETURN(PlacedDit<FluxTransformer2DModel> model,
                   LoadPlacedDit<FluxTransformer2DModel>(
                       "transformer", load,
                       [&](const LoadOptions& options, WeightMap* taken) {
                         return FluxTransformer2DModel::Load(transformer_dir, options, taken);
                       },
                       [config](WeightMap& weights) {
                         return FluxTransformer2DModel::FromWeights(config, weights);
                       }));
  d->model_.emplace(std::move(model));
  ASSIGN_OR_RETURN(std::string scheduler_dir, index.ComponentPath("scheduler"));
  ASSIGN_OR_RETURN(d->scheduler_, FlowMatchEulerSchedulerConfig::FromFile(
                                      scheduler_dir + "/scheduler_config.json"));
  ASSIGN_OR_RETURN(ModelLimits limits, ReadModelLimits(index.root));
  d->vae_scale_factor_ = limits.vae_scale_factor;
  return d;
}

absl::Status FluxDenoiser::Check(const DenoiseInput& input) const {
  if (input.num_frames != 1) {
    return InvalidArgument("num_frames = ", input.num_frames, ": this model makes images (1)");
  }
  if (input.guidance_scale_2.has_value()) {
    return InvalidArgument("guidance_scale_2: only two-expert video models take it");
  }
  if (input.image_latents.defined()) {
    RETURN_IF_ERROR(Img2ImgFirstStep(input.num_inference_steps, input.strength).status());
  }
  for (const bool negative : {false, true}) {
    if (negative && !RunsCfg(input)) break;
    for (const char* name : {families::flux::kPromptEmbeds, families::flux::kPooledPromptEmbeds}) {
      RETURN_IF_ERROR(NamedInput(input, negative, name).status());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> FluxDenoiser::Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                             const SequenceParallelContext* sp) const {
  ASSIGN_OR_RETURN(FluxSamplerRequest request, SamplerRequest(input));
  ASSIGN_OR_RETURN(std::shared_ptr<const FluxTransformer2DModel> model, model_->Use());
  return RunFluxSampler(*model, scheduler_, request, hooks, sp);
}

std::vector<const ModelResidency*> FluxDenoiser::residencies() const {
  if (const ModelResidency* r = model_->residency()) return {r};
  return {};
}

absl::StatusOr<FluxSamplerRequest> FluxDenoiser::SamplerRequest(const DenoiseInput& input) const {
  FluxSamplerRequest request;
  request.request_id = input.request_id;
  request.width = input.width;
  request.height = input.height;
  request.num_inference_steps = input.num_inference_steps;
  request.seed = input.seed;
  request.guidance_scale = input.guidance_scale;
  request.true_cfg_scale = input.true_cfg_scale;
  request.vae_scale_factor = vae_scale_factor_;
  request.image_latents = input.image_latents;
  request.strength = input.strength;
  request.cache = input.cache;
  // The embeddings take the DiT's device and dtype: the text encoders may run elsewhere and in
  // another precision (--text-encoder-device / --text-encoder-precision). The sampler draws the
  // noise in the embeddings' dtype, so this is also what makes it the DiT's.
  auto on_device = [&](bool negative, const char* name) -> absl::StatusOr<at::Tensor> {
    ASSIGN_OR_RETURN(at::Tensor t, NamedInput(input, negative, name));
    return TorchCall("denoiser inputs", [&] {
      const at::TensorOptions model = model_->options();
      return t.to(model.device(), model.dtype());
    });
  };
  ASSIGN_OR_RETURN(request.prompt_embeds, on_device(false, families::flux::kPromptEmbeds));
  ASSIGN_OR_RETURN(request.pooled_prompt_embeds,
                   on_device(false, families::flux::kPooledPromptEmbeds));
  if (RunsCfg(input)) {
    ASSIGN_OR_RETURN(request.negative_prompt_embeds,
                     on_device(true, families::flux::kPromptEmbeds));
    ASSIGN_OR_RETURN(request.negative_pooled_prompt_embeds,
                     on_device(true, families::flux::kPooledPromptEmbeds));
  }
  return request;
}

std::optional<std::string> FluxDenoiser::BatchKey(const DenoiseInput& input) const {
  // Step caching is no part of the key: each member of a batch keeps its own cache and decisions
  // (FluxBatchedSampler), so cached and uncached requests of one shape share a batch.
  auto shape = [&](bool negative) -> std::string {
    absl::StatusOr<at::Tensor> t = NamedInput(input, negative, families::flux::kPromptEmbeds);
    if (!t.ok() || t->dim() != 3) return "";
    return absl::StrCat(t->size(1), "/", c10::toString(t->scalar_type()));
  };
  const std::string positive = shape(false);
  if (positive.empty()) return std::nullopt;  // alone, to fail as alone
  const bool cfg = RunsCfg(input);
  std::string negative = cfg ? shape(true) : "-";
  if (negative.empty()) return std::nullopt;
  // The latent grid, as the loop floors it (sampler.cc).
  const int unit = 2 * vae_scale_factor_;
  return absl::StrCat("flux ", input.width / unit, "x", input.height / unit, " text ", positive,
                      " negative ", negative);
}

std::unique_ptr<BatchedSampler> FluxDenoiser::NewBatch(const SequenceParallelContext* sp) const {
  // The batch's model comes in with its first member and goes with the batch (dit_placement.h);
  // resident, Use() hands out the model itself.
  return std::make_unique<BatchOnFirstMember>(
      [this,
       sp](std::shared_ptr<const void>* hold) -> absl::StatusOr<std::unique_ptr<BatchedSampler>> {
        ASSIGN_OR_RETURN(std::shared_ptr<const FluxTransformer2DModel> model, model_->Use());
        *hold = model;
        return std::unique_ptr<BatchedSampler>(std::make_unique<FluxBatchedSampler>(
            *model, scheduler_, [this](const DenoiseInput& input) { return SamplerRequest(input); },
            sp));
      });
}

absl::StatusOr<DenoiseInput> FluxDenoiser::WarmupInput(int width, int height,
                                                       const ModelLimits& limits) const {
  const FluxTransformerConfig& c = model_->config();
  const at::TensorOptions opts = model_->options();
  DenoiseInput input;
  input.width = width;
  input.height = height;
  input.num_inference_steps = 2;
  input.guidance_scale = limits.default_guidance;
  ASSIGN_OR_RETURN(input.positive[families::flux::kPromptEmbeds],
                   TorchCall("denoiser warm-up inputs", [&] {
                     return at::zeros({1, limits.max_sequence_length, c.joint_attention_dim}, opts);
                   }));
  ASSIGN_OR_RETURN(input.positive[families::flux::kPooledPromptEmbeds],
                   TorchCall("denoiser warm-up inputs", [&] {
                     return at::zeros({1, c.pooled_projection_dim}, opts);
                   }));
  return input;
}

}  // namespace dgrid
