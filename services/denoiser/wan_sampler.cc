#include "services/denoiser/wan_sampler.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/step_cache_loop.h"

namespace dgrid {
namespace {

absl::Status CheckEmbeds(const at::Tensor& embeds, int64_t text_dim, absl::string_view field) {
  if (!embeds.defined() || embeds.dim() != 3 || embeds.size(0) != 1 || embeds.size(1) < 1 ||
      embeds.size(2) != text_dim) {
    return InvalidArgument("WanSampler: ", field, " must be [1, S, ", text_dim, "], got ",
                           embeds.defined() ? absl::StrJoin(embeds.sizes(), "x") : "none");
  }
  return absl::OkStatus();
}

// -1: as the environment says; 0 / 1: set by SetWanCfgBatchEnabledForTesting.
std::atomic<int> cfg_batch_for_testing{-1};

}  // namespace

bool UseWanCfgBatch(const at::Device& device) {
  static const bool requested = [] {
    const char* v = std::getenv("DGRID_WAN_CFG_BATCH");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  const int forced = cfg_batch_for_testing.load(std::memory_order_relaxed);
  return (forced < 0 ? requested : forced == 1) && device.is_cuda();
}

void SetWanCfgBatchEnabledForTesting(bool enabled) { cfg_batch_for_testing.store(enabled ? 1 : 0); }

absl::StatusOr<WanSchedulerConfig> WanSchedulerConfigFromJson(const JsonConfig& json) {
  const std::string path = json.source();
  ASSIGN_OR_RETURN(std::string class_name, json.GetString("_class_name", ""));
  if (class_name == "UniPCMultistepScheduler") {
    ASSIGN_OR_RETURN(UniPCMultistepSchedulerConfig c,
                     UniPCMultistepSchedulerConfig::FromJson(json));
    return WanSchedulerConfig(std::move(c));
  }
  if (class_name == "FlowMatchEulerDiscreteScheduler") {
    ASSIGN_OR_RETURN(FlowMatchEulerSchedulerConfig c,
                     FlowMatchEulerSchedulerConfig::FromJson(json));
    if (c.use_dynamic_shifting) {
      return InvalidArgument(path, ": use_dynamic_shifting is set, but WanPipeline sets the ",
                             "schedule from the step count alone (diffusers refuses it too)");
    }
    return WanSchedulerConfig(std::move(c));
  }
  return InvalidArgument(path, ": _class_name is '", class_name, "'; a Wan pipeline takes ",
                         "UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler");
}

absl::StatusOr<WanSchedulerConfig> LoadWanSchedulerConfig(const std::string& path) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(path));
  return WanSchedulerConfigFromJson(json);
}

WanExperts WanExperts::Resident(const WanTransformer3DModel& transformer,
                                const WanTransformer3DModel* transformer_2) {
  WanExperts experts;
  experts.config = transformer.config();
  if (transformer_2 != nullptr) experts.config_2 = transformer_2->config();
  experts.options = transformer.options();
  experts.use = [&transformer, transformer_2](
                    bool first) -> absl::StatusOr<std::shared_ptr<const WanTransformer3DModel>> {
    const WanTransformer3DModel* model = first ? &transformer : transformer_2;
    if (model == nullptr) return Internal("WanSampler: no second transformer");
    // Not owned: the caller's models outlive the loop.
    return std::shared_ptr<const WanTransformer3DModel>(model, [](const WanTransformer3DModel*) {});
  };
  return experts;
}

absl::StatusOr<WanSamplerState> WanSamplerState::Prepare(const WanTransformer3DModel& transformer,
                                                         const WanTransformer3DModel* transformer_2,
                                                         const WanPipelineConfig& pipeline,
                                                         const WanSchedulerConfig& scheduler_config,
                                                         const WanSamplerRequest& request,
                                                         const SequenceParallelContext* sp) {
  return Prepare(WanExperts::Resident(transformer, transformer_2), pipeline, scheduler_config,
                 request, sp);
}

absl::StatusOr<WanSamplerState> WanSamplerState::Prepare(const WanExperts& experts,
                                                         const WanPipelineConfig& pipeline,
                                                         const WanSchedulerConfig& scheduler_config,
                                                         const WanSamplerRequest& request,
                                                         const SequenceParallelContext* sp) {
  const WanTransformerConfig& c = experts.config;
  const WanTransformerConfig* config_2 = experts.config_2 ? &*experts.config_2 : nullptr;
  if (pipeline.boundary_ratio.has_value() != (config_2 != nullptr)) {
    return InvalidArgument(
        "WanSampler: a second transformer goes with boundary_ratio, and only "
        "with it");
  }
  if (pipeline.boundary_ratio.has_value() &&
      !(*pipeline.boundary_ratio > 0 && *pipeline.boundary_ratio <= 1)) {
    return InvalidArgument("WanSampler: boundary_ratio must be in (0, 1], got ",
                           *pipeline.boundary_ratio);
  }
  if (config_2 != nullptr &&
      (config_2->in_channels != c.in_channels || config_2->text_dim != c.text_dim ||
       config_2->patch_size != c.patch_size)) {
    return InvalidArgument(
        "WanSampler: transformer_2's channels, text width or patch differ "
        "from transformer's");
  }
  if (request.num_inference_steps < 1) {
    return InvalidArgument("num_inference_steps must be >= 1, got ", request.num_inference_steps);
  }
  const int temporal = pipeline.vae_scale_factor_temporal;
  const int spatial = pipeline.vae_scale_factor_spatial;
  if (request.num_frames < 1 || (request.num_frames - 1) % temporal != 0) {
    return InvalidArgument("num_frames must be ", temporal, " k + 1 (1, ", temporal + 1, ", ",
                           2 * temporal + 1, ", ...), got ", request.num_frames);
  }
  const int64_t h_multiple = spatial * c.patch_size[1];
  const int64_t w_multiple = spatial * c.patch_size[2];
  if (request.height < h_multiple || request.height % h_multiple != 0) {
    return InvalidArgument("height must be a positive multiple of ", h_multiple, ", got ",
                           request.height);
  }
  if (request.width < w_multiple || request.width % w_multiple != 0) {
    return InvalidArgument("width must be a positive multiple of ", w_multiple, ", got ",
                           request.width);
  }
  WanSamplerState state;
  state.guidance_ = request.guidance_scale;
  state.guidance_2_ = request.guidance_scale_2.value_or(state.guidance_);
  if (!std::isfinite(state.guidance_) || !std::isfinite(state.guidance_2_)) {
    return InvalidArgument("guidance_scale must be finite");
  }
  // As WanPipeline.do_classifier_free_guidance: the first scale alone decides.
  state.cfg_ = state.guidance_ > 1.0;
  RETURN_IF_ERROR(CheckEmbeds(request.prompt_embeds, c.text_dim, "prompt_embeds"));
  if (state.cfg_) {
    RETURN_IF_ERROR(
        CheckEmbeds(request.negative_prompt_embeds, c.text_dim, "negative_prompt_embeds"));
  }
  if (sp != nullptr) {
    RETURN_IF_ERROR(sp->Validate(c.num_attention_heads));
    if (config_2 != nullptr) {
      RETURN_IF_ERROR(sp->Validate(config_2->num_attention_heads));
    }
  }

  // The schedule: UniPC's integer timesteps or flow-match Euler's float ones. WanPipeline compares
  // a timestep with boundary_ratio x num_train_timesteps as a float32 tensor against a Python
  // float, so in float32 (both schedules' timesteps are exact there).
  int64_t num_train_timesteps = 0;
  if (const auto* u = std::get_if<UniPCMultistepSchedulerConfig>(&scheduler_config)) {
    state.unipc_.emplace(*u);
    RETURN_IF_ERROR(state.unipc_->SetTimesteps(request.num_inference_steps));
    for (int64_t t : state.unipc_->timesteps()) state.timesteps_.push_back(static_cast<float>(t));
    num_train_timesteps = u->num_train_timesteps;
  } else {
    const auto& e = std::get<FlowMatchEulerSchedulerConfig>(scheduler_config);
    state.euler_.emplace(e);
    RETURN_IF_ERROR(state.euler_->SetTimesteps(request.num_inference_steps));
    state.timesteps_ = state.euler_->timesteps();
    num_train_timesteps = e.num_train_timesteps;
  }
  state.two_experts_ = pipeline.boundary_ratio.has_value();
  state.boundary_ = state.two_experts_
                        ? static_cast<float>(pipeline.boundary_ratio.value() *
                                             static_cast<double>(num_train_timesteps))
                        : 0.0f;
  state.expand_timesteps_ = pipeline.expand_timesteps;
  state.frames_ = (request.num_frames - 1) / temporal + 1;
  state.lh_ = request.height / spatial;
  state.lw_ = request.width / spatial;
  state.options_ = experts.options;
  RETURN_IF_ERROR(TorchCall("WanSampler setup", [&] {
    const at::TensorOptions& opts = state.options_;
    state.latents_ = flux::SeededNoise({1, c.in_channels, state.frames_, state.lh_, state.lw_},
                                       request.seed, at::kFloat)
                         .to(opts.device());
    state.embeds_ = request.prompt_embeds.to(opts);
    if (state.cfg_) state.negative_embeds_ = request.negative_prompt_embeds.to(opts);
  }));
  return state;
}

bool WanSamplerState::FirstExpert(int i) const {
  return !two_experts_ || timesteps_[i] >= boundary_;
}

absl::StatusOr<WanTransformerInputs> WanSamplerState::Inputs(int i, bool negative) const {
  WanTransformerInputs in;
  const float t = timesteps_[i];
  RETURN_IF_ERROR(TorchCall("WanSampler inputs", [&] {
    const at::Device device = options_.device();
    in.hidden_states = latents_.to(options_.dtype());
    if (expand_timesteps_) {
      // mask[0][0][:, ::2, ::2] * t, flattened: a float32 timestep per token.
      in.timestep = at::full({frames_, (lh_ + 1) / 2, (lw_ + 1) / 2}, t,
                             at::TensorOptions().dtype(at::kFloat).device(device))
                        .flatten()
                        .unsqueeze(0);
    } else if (unipc_.has_value()) {
      in.timestep = at::full({1}, static_cast<int64_t>(t),
                             at::TensorOptions().dtype(at::kLong).device(device));
    } else {
      in.timestep = at::full({1}, t, at::TensorOptions().dtype(at::kFloat).device(device));
    }
  }));
  in.encoder_hidden_states = negative ? negative_embeds_ : embeds_;
  return in;
}

absl::StatusOr<at::Tensor> WanSamplerState::Guide(int i, const at::Tensor& cond,
                                                  const at::Tensor& uncond) const {
  const double scale = FirstExpert(i) ? guidance_ : guidance_2_;
  return TorchCall("WanSampler guidance", [&] { return uncond + scale * (cond - uncond); });
}

absl::Status WanSamplerState::Advance(int i, const at::Tensor& noise_pred) {
  if (unipc_.has_value()) {
    ASSIGN_OR_RETURN(latents_, unipc_->Step(noise_pred, latents_));
  } else {
    // Euler casts the sample to the model output's dtype (bfloat16 for a bf16 model), as
    // diffusers' step() does; the next step reads it back at that precision.
    ASSIGN_OR_RETURN(latents_, euler_->Step(noise_pred, i, latents_));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> WanSamplerState::Finish() {
  // A NaN or Inf would decode to a black or garbled video that looks like a result: fail instead.
  ASSIGN_OR_RETURN(bool finite, TorchCall("WanSampler output check", [&] {
                     latents_ = latents_.to(at::kFloat);  // exact from bfloat16
                     return at::isfinite(latents_).all().item<bool>();
                   }));
  if (!finite) {
    return Internal("the latents after ", total(), " steps hold NaN or Inf values (a numeric ",
                    "overflow in the model or scheduler)");
  }
  return latents_;
}

absl::StatusOr<at::Tensor> RunWanSampler(const WanTransformer3DModel& transformer,
                                         const WanTransformer3DModel* transformer_2,
                                         const WanPipelineConfig& pipeline,
                                         const WanSchedulerConfig& scheduler_config,
                                         const WanSamplerRequest& request,
                                         const WanSamplerHooks& hooks,
                                         const SequenceParallelContext* sp) {
  return RunWanSampler(WanExperts::Resident(transformer, transformer_2), pipeline, scheduler_config,
                       request, hooks, sp);
}

absl::StatusOr<at::Tensor> RunWanSampler(const WanExperts& experts,
                                         const WanPipelineConfig& pipeline,
                                         const WanSchedulerConfig& scheduler_config,
                                         const WanSamplerRequest& request,
                                         const WanSamplerHooks& hooks,
                                         const SequenceParallelContext* sp) {
  ASSIGN_OR_RETURN(WanSamplerState state,
                   WanSamplerState::Prepare(experts, pipeline, scheduler_config, request, sp));
  const bool cfg = state.cfg();
  // CFG parallel: the conditional and the unconditional pass run on the two CFG branches.
  const bool cfg_parallel = cfg && sp != nullptr && sp->layout.cfg() == 2;
  const bool negative_branch = cfg_parallel && sp->layout.coords().cfg == 1;
  const int total = state.total();
  // Both CFG passes as one forward of batch 2 (prompt, negative prompt): one time embedding, one
  // launch per op for both, twice the rows per GEMM.
  const bool batch_cfg = cfg && sp == nullptr && UseWanCfgBatch(experts.options.device()) &&
                         state.embeds().size(1) == state.negative_embeds().size(1);
  at::Tensor pair_embeds;
  if (batch_cfg) {
    ASSIGN_OR_RETURN(pair_embeds, TorchCall("WanSampler CFG batch", [&] {
                       return at::cat({state.embeds(), state.negative_embeds()}, 0);
                     }));
  }

  // Step caching (off: every Pass is null and Forward runs its uncached path).
  StepCacheLoop cache(request.cache, /*rescale=*/{}, sp);
  bool cached_first_expert = true;
  // The expert the steps use now (held_first says which): asked for by the first step that needs
  // it, let go before the other one is asked for (A14B's boundary), so one is held at a time.
  std::shared_ptr<const WanTransformer3DModel> held;
  bool held_first = true;
  for (int i = 0; i < total; ++i) {
    if (hooks.is_cancelled && hooks.is_cancelled()) {
      return absl::CancelledError(absl::StrCat("cancelled before step ", i + 1, " of ", total));
    }
    const auto start = std::chrono::steady_clock::now();
    const bool first_expert = state.FirstExpert(i);
    if (first_expert != cached_first_expert) cache.Invalidate();  // the other expert's residuals
    cached_first_expert = first_expert;
    cache.BeginStep(i, total);
    if (held == nullptr || held_first != first_expert) {
      held.reset();
      ASSIGN_OR_RETURN(held, experts.use(first_expert));
      held_first = first_expert;
    }
    const WanTransformer3DModel& model = *held;
    ASSIGN_OR_RETURN(WanTransformerInputs in, state.Inputs(i, negative_branch));
    if (batch_cfg) {
      RETURN_IF_ERROR(TorchCall("WanSampler CFG batch", [&] {
        in.hidden_states = at::cat({in.hidden_states, in.hidden_states}, 0);
        in.timestep = at::cat({in.timestep, in.timestep}, 0);
      }));
      in.encoder_hidden_states = pair_embeds;
    }
    ASSIGN_OR_RETURN(at::Tensor noise_pred,
                     model.Forward(in, sp, cache.Pass(negative_branch ? 1 : 0)));
    if (batch_cfg) {
      ASSIGN_OR_RETURN(noise_pred,
                       state.Guide(i, noise_pred.narrow(0, 0, 1), noise_pred.narrow(0, 1, 1)));
    } else if (cfg_parallel) {
      ASSIGN_OR_RETURN(auto branches, ExchangeCfgBranches(*sp->cfg, noise_pred));
      ASSIGN_OR_RETURN(noise_pred, state.Guide(i, branches.first, branches.second));
    } else if (cfg) {
      in.encoder_hidden_states = state.negative_embeds();
      ASSIGN_OR_RETURN(at::Tensor noise_uncond, model.Forward(in, sp, cache.Pass(1)));
      ASSIGN_OR_RETURN(noise_pred, state.Guide(i, noise_pred, noise_uncond));
    }
    if (cache.EndStep() && hooks.on_cached_step) hooks.on_cached_step(i);
    RETURN_IF_ERROR(state.Advance(i, noise_pred));
    if (hooks.on_step) {
      hooks.on_step(
          i, total,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  ASSIGN_OR_RETURN(at::Tensor latents, state.Finish());
  DG_LOG_DEBUG(request.request_id, "Wan sampler: %d steps, latents %s", total,
               absl::StrJoin(latents.sizes(), "x"));
  if (cache.enabled()) {
    DG_LOG_INFO(request.request_id, "step cache %s: %d of %d steps skipped",
                StepCacheSpec(request.cache), cache.skipped_steps(), total);
  }
  return latents;
}

}  // namespace dgrid
