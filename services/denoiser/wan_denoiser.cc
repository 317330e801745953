#include "services/denoiser/wan_denoiser.h"

#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/diffusers_layout.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "families/wan/wan_family.h"
#include "services/denoiser/dit_placement.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"

namespace dgrid {
namespace {

class WanDenoiser final : public FamilyDenoiser {
 public:
  absl::Status Check(const DenoiseInput& input) const override {
    if (input.image_latents.defined()) {
      return InvalidArgument("image: Wan models take no input image (text-to-video only)");
    }
    if (input.true_cfg_scale != 1.0) {
      return InvalidArgument("true_cfg_scale = ", input.true_cfg_scale,
                             ": Wan's classifier-free guidance is guidance_scale; leave it 1");
    }
    if (input.guidance_scale_2.has_value() && transformer_2_ == nullptr) {
      return InvalidArgument(
          "guidance_scale_2: this model has one transformer (no boundary_ratio); leave it unset");
    }
    RETURN_IF_ERROR(NamedInput(input, false, families::wan::kPromptEmbeds).status());
    if (RunsCfg(input)) {
      RETURN_IF_ERROR(NamedInput(input, true, families::wan::kPromptEmbeds).status());
    }
    return absl::OkStatus();
  }

  static bool RunsCfg(const DenoiseInput& input) {
    return families::wan::WanFamily().RunsCfg(input.guidance_scale, input.true_cfg_scale);
  }

  absl::StatusOr<at::Tensor> Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                 const SequenceParallelContext* sp) const override {
    ASSIGN_OR_RETURN(WanSamplerRequest request, SamplerRequest(input));
    WanSamplerHooks wan_hooks;
    wan_hooks.on_step = hooks.on_step;
    wan_hooks.on_cached_step = hooks.on_cached_step;
    // Before each step: a stop first, then any work that preempts this request (edf).
    wan_hooks.is_cancelled = [&hooks]() {
      if (hooks.is_cancelled && hooks.is_cancelled()) return true;
      if (hooks.take_preempting) {
        while (std::function<void()> first = hooks.take_preempting()) first();
      }
      return false;
    };
    return RunWanSampler(Experts(), pipeline_, scheduler_, request, wan_hooks, sp);
  }

  // The transformers as the loops ask for them per step (wan_sampler.h WanExperts): with
  // --dit-offload model each expert comes to the device when a step needs it and leaves when no
  // step holds it (A14B: one expert at a time for a lone request); resident, the models.
  WanExperts Experts() const {
    WanExperts experts;
    experts.config = transformer_->config();
    if (transformer_2_ != nullptr) experts.config_2 = transformer_2_->config();
    experts.options = transformer_->options();
    experts.use =
        [this](bool first) -> absl::StatusOr<std::shared_ptr<const WanTransformer3DModel>> {
      const PlacedDit<WanTransformer3DModel>* placed =
          first ? transformer_.get() : transformer_2_.get();
      if (placed == nullptr) return Internal("Wan denoiser: no transformer_2");
      return placed->Use();
    };
    return experts;
  }

  std::vector<const ModelResidency*> residencies() const override {
    std::vector<const ModelResidency*> out;
    for (const PlacedDit<WanTransformer3DModel>* t : {transformer_.get(), transformer_2_.get()}) {
      if (t != nullptr && t->residency() != nullptr) out.push_back(t->residency());
    }
    return out;
  }

  // The lone loop's request for `input` (its embeddings as given: the loop moves them to the
  // model's device and dtype).
  absl::StatusOr<WanSamplerRequest> SamplerRequest(const DenoiseInput& input) const {
    WanSamplerRequest request;
    request.request_id = input.request_id;
    request.width = input.width;
    request.height = input.height;
    request.num_frames = input.num_frames;
    request.num_inference_steps = input.num_inference_steps;
    request.seed = input.seed;
    request.guidance_scale = input.guidance_scale;
    request.guidance_scale_2 = input.guidance_scale_2;
    request.cache = input.cache;
    ASSIGN_OR_RETURN(request.prompt_embeds, NamedInput(input, false, families::wan::kPromptEmbeds));
    if (RunsCfg(input)) {
      ASSIGN_OR_RETURN(request.negative_prompt_embeds,
                       NamedInput(input, true, families::wan::kPromptEmbeds));
    }
    return request;
  }

  // What the batched forward concatenates (WanBatchedSampler): the latent grid (size and frames),
  // the text lengths of the prompt and the negative prompt, and the CFG mode. The embeddings' dtype
  // is no part of it: the loop casts them to the model's. Nor is step caching: each member keeps
  // its own cache and decisions (WanBatchedSampler), so cached and uncached requests of one shape
  // share a batch. A request the lone loop would refuse for its options (an input image, true
  // CFG) runs alone, so that it fails as alone.
  std::optional<std::string> BatchKey(const DenoiseInput& input) const override {
    if (input.image_latents.defined() || input.true_cfg_scale != 1.0) {
      return std::nullopt;
    }
    auto length = [&](bool negative) -> std::string {
      absl::StatusOr<at::Tensor> t = NamedInput(input, negative, families::wan::kPromptEmbeds);
      if (!t.ok() || t->dim() != 3) return "";
      return absl::StrCat(t->size(1));
    };
    const std::string positive = length(false);
    if (positive.empty()) return std::nullopt;  // alone, to fail as alone
    const std::string negative = RunsCfg(input) ? length(true) : "-";
    if (negative.empty()) return std::nullopt;
    return absl::StrCat("wan ", input.width, "x", input.height, "x", input.num_frames, " text ",
                        positive, " negative ", negative);
  }

  // One process or a group (every rank's batch gets the group's context `sp`; on a CFG2 layout
  // each CFG branch runs one pass of the batch and the two are exchanged, as the lone loop).
  // The batch asks for each expert when its members' steps use it and lets go of it when none does
  // (wan_batched_sampler.h), so an empty or refused batch holds nothing.
  std::unique_ptr<BatchedSampler> NewBatch(const SequenceParallelContext* sp) const override {
    return std::make_unique<WanBatchedSampler>(
        Experts(), pipeline_, scheduler_,
        [this](const DenoiseInput& input) { return SamplerRequest(input); }, sp);
  }

  int64_t attention_heads() const override {
    const int64_t heads = transformer_->config().num_attention_heads;
    if (transformer_2_ == nullptr) return heads;
    return std::gcd(heads, transformer_2_->config().num_attention_heads);
  }

  at::Device device() const override { return transformer_->options().device(); }

  absl::StatusOr<DenoiseInput> WarmupInput(int width, int height,
                                           const ModelLimits& limits) const override {
    DenoiseInput input;
    input.width = width;
    input.height = height;
    input.num_frames = limits.default_num_frames;
    input.num_inference_steps = 2;
    input.guidance_scale = 1.0;  // no CFG: one pass per step
    const at::TensorOptions opts = transformer_->options();
    ASSIGN_OR_RETURN(
        input.positive[families::wan::kPromptEmbeds], TorchCall("denoiser warm-up inputs", [&] {
          return at::zeros({1, limits.max_sequence_length, transformer_->config().text_dim}, opts);
        }));
    return input;
  }

  std::unique_ptr<PlacedDit<WanTransformer3DModel>> transformer_, transformer_2_;
  WanPipelineConfig pipeline_;
  WanSchedulerConfig scheduler_;
};

// One transformer folder as --dit-offload places it (dit_placement.h).
absl::StatusOr<std::unique_ptr<PlacedDit<WanTransformer3DModel>>> LoadPlacedWanTransformer(
    std::string name, const std::string& dir, const LoadOptions& load) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(dir + "/config.json"));
  ASSIGN_OR_RETURN(const WanTransformerConfig config, WanTransformerConfig::FromJson(json));
  ASSIGN_OR_RETURN(PlacedDit<WanTransformer3DModel> placed,
                   LoadPlacedDit<WanTransformer3DModel>(
                       std::move(name), load,
                       [&](const LoadOptions& options, WeightMap* taken) {
                         return WanTransformer3DModel::Load(dir, options, taken);
                       },
                       [config](WeightMap& weights) {
                         return WanTransformer3DModel::FromWeights(config, weights);
                       }));
  return std::make_unique<PlacedDit<WanTransformer3DModel>>(std::move(placed));
}

}  // namespace

absl::StatusOr<std::unique_ptr<FamilyDenoiser>> LoadWanDenoiser(const ModelIndex& index,
                                                                const LoadOptions& load) {
  // The pipeline's own scalars (boundary_ratio, expand_timesteps) sit beside the components.
  ASSIGN_OR_RETURN(JsonConfig config, JsonConfig::FromFile(index.root + "/model_index.json"));
  auto d = std::make_unique<WanDenoiser>();
  if (config.Has("boundary_ratio")) {
    ASSIGN_OR_RETURN(double ratio, config.GetDouble("boundary_ratio", 0));
    d->pipeline_.boundary_ratio = ratio;
  }
  ASSIGN_OR_RETURN(d->pipeline_.expand_timesteps, config.GetBool("expand_timesteps", false));
  if (!index.HasComponent("transformer")) {
    return absl::UnimplementedError(
        absl::StrCat(index.root,
                     "/model_index.json: a Wan pipeline without `transformer` (only "
                     "transformer_2) is not supported"));
  }
  ASSIGN_OR_RETURN(std::string transformer_dir, index.ComponentPath("transformer"));
  ASSIGN_OR_RETURN(d->transformer_, LoadPlacedWanTransformer("transformer", transformer_dir, load));
  if (d->pipeline_.boundary_ratio.has_value()) {
    if (!index.HasComponent("transformer_2")) {
      return InvalidArgument(index.root, "/model_index.json: boundary_ratio is set but there is ",
                             "no transformer_2");
    }
    ASSIGN_OR_RETURN(std::string dir_2, index.ComponentPath("transformer_2"));
    ASSIGN_OR_RETURN(d->transformer_2_, LoadPlacedWanTransformer("transformer_2", dir_2, load));
  }
  ASSIGN_OR_RETURN(std::string scheduler_dir, index.ComponentPath("scheduler"));
  ASSIGN_OR_RETURN(d->scheduler_, LoadWanSchedulerConfig(scheduler_dir + "/scheduler_config.json"));
  ASSIGN_OR_RETURN(std::string vae_dir, index.ComponentPath("vae"));
  ASSIGN_OR_RETURN(JsonConfig vae, JsonConfig::FromFile(vae_dir + "/config.json"));
  ASSIGN_OR_RETURN(int64_t temporal, vae.GetInt("scale_factor_temporal", 4));
  ASSIGN_OR_RETURN(int64_t spatial, vae.GetInt("scale_factor_spatial", 8));
  RETURN_IF_ERROR(vae.CheckPositive("scale_factor_temporal", temporal));
  RETURN_IF_ERROR(vae.CheckPositive("scale_factor_spatial", spatial));
  d->pipeline_.vae_scale_factor_temporal = static_cast<int>(temporal);
  d->pipeline_.vae_scale_factor_spatial = static_cast<int>(spatial);
  return std::unique_ptr<FamilyDenoiser>(std::move(d));
}

}  // namespace dgrid
