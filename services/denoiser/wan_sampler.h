// The Wan2.1 / Wan2.2 text-to-video sampling loop, free of any RPC: seeded float32 latents, the
// UniPC or flow-match Euler schedule, classifier-free guidance against the negative prompt's
// embeddings, Wan2.2 A14B's two experts (transformer for timesteps >= boundary_ratio x T,
// transformer_2 below, with their own guidance scales) and TI2V-5B's per-token timesteps.
//
// Ref: diffusers WanPipeline.__call__ (pipelines/wan/pipeline_wan.py, 0.42.1) from prompt_embeds
// to the final latents, before the VAE's latents_mean / latents_std and decode. With the same
// inputs and seed the result equals the pipeline's latents (output_type="latent"): the noise is
// torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=float32).
//
// Unlike diffusers, which rounds a frame count or size it cannot use and warns, the loop refuses
// them: num_frames - 1 must be a multiple of the VAE's temporal factor and height / width
// multiples of the spatial factor x the patch (INVALID_ARGUMENT naming the field).
//
// Threads: RunWanSampler runs on the calling thread (hooks too); several calls may share models.
// Errors: INVALID_ARGUMENT for bad requests, CANCELLED when the hook says so (checked before each
// step), INTERNAL when the final latents hold NaN or Inf, and what the model or scheduler returns.
#ifndef DGRID_SERVICES_DENOISER_WAN_SAMPLER_H_
#define DGRID_SERVICES_DENOISER_WAN_SAMPLER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/step_cache.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/schedulers/flow_match_euler.h"
#include "services/denoiser/schedulers/unipc_multistep.h"

namespace dgrid {

class JsonConfig;

// The pipeline's own config (model_index.json) that shapes the loop.
struct WanPipelineConfig {
  // Wan2.2 A14B: the share of the training timesteps served by `transformer` (high noise); the
  // rest go to `transformer_2`. Unset: one transformer.
  std::optional<double> boundary_ratio;
  // Wan2.2 TI2V-5B: one timestep per latent token (all equal for text-to-video).
  bool expand_timesteps = false;
  int vae_scale_factor_temporal = 4;  // the VAE's scale_factor_temporal
  int vae_scale_factor_spatial = 8;   // the VAE's scale_factor_spatial
};

// The pipeline's scheduler: UniPCMultistepScheduler (the released Wan configs) or
// FlowMatchEulerDiscreteScheduler (set_timesteps(num_inference_steps), float timesteps).
using WanSchedulerConfig =
    std::variant<UniPCMultistepSchedulerConfig, FlowMatchEulerSchedulerConfig>;

// Reads scheduler_config.json and picks the scheduler by its `_class_name`; INVALID_ARGUMENT naming
// the file for any other class or a bad value, UNIMPLEMENTED for options the scheduler lacks.
absl::StatusOr<WanSchedulerConfig> WanSchedulerConfigFromJson(const JsonConfig& json);
absl::StatusOr<WanSchedulerConfig> LoadWanSchedulerConfig(const std::string& path);

// The transformers a loop runs (Wan2.2 A14B: two experts), as the loop asks for them step by step.
// A step's expert is asked for when the step needs it and held while the loop's steps keep using
// it: the lone loop lets the high-noise expert go at the boundary before it asks for the low-noise
// one, and a batch holds each expert while its members' steps use it (both while members are on
// both). With --dit-offload model (services/denoiser/dit_placement.h) `use` copies the expert to
// the device unless another use holds it already, and the copy leaves when the last holder lets
// go; for models resident on the device `use` hands out the model itself.
struct WanExperts {
  // The expert on its device for as long as the pointer lives (`first`: transformer, else
  // transformer_2). Its errors (RESOURCE_EXHAUSTED when the device has no room for the copy) end
  // the requests of the step that asked.
  using Use =
      std::function<absl::StatusOr<std::shared_ptr<const WanTransformer3DModel>>(bool first)>;

  // The models themselves (resident; they must outlive the loop): nothing is copied or let go.
  static WanExperts Resident(const WanTransformer3DModel& transformer,
                             const WanTransformer3DModel* transformer_2);

  WanTransformerConfig config;                   // transformer's
  std::optional<WanTransformerConfig> config_2;  // transformer_2's; set exactly with two experts
  at::TensorOptions options;                     // the device and dtype the experts compute in
  Use use;
};

// WanPipeline's defaults (480p, 81 frames, 50 steps, guidance 5).
struct WanSamplerRequest {
  std::string request_id;  // for log lines only
  int64_t height = 480;
  int64_t width = 832;
  int64_t num_frames = 81;
  int num_inference_steps = 50;
  uint64_t seed = 0;
  double guidance_scale = 5.0;  // classifier-free guidance when > 1
  // The second expert's scale; unset: guidance_scale (as the pipeline does).
  std::optional<double> guidance_scale_2;
  at::Tensor prompt_embeds;           // [1, S, text_dim]
  at::Tensor negative_prompt_embeds;  // [1, S', text_dim]; required when guidance is on
  // Step caching (services/denoiser/step_cache_loop.h); off by default. As in the FLUX loop the
  // conditional pass decides and the unconditional one follows (with DGRID_WAN_CFG_BATCH's batch
  // of two, one decision covers both); a switch between Wan2.2's experts drops the cache, so the
  // first step of the second expert runs in full. TeaCache's change is block 0's modulated input
  // as is: no rescale polynomial was fitted for it (TeaCache4Wan2.1's coefficients are for another
  // signal), so Wan's teacache thresholds are not calibrated to the published ones.
  StepCacheConfig cache;
};

struct WanSamplerHooks {
  // After each step: step index (0-based), number of steps, wall seconds of the step.
  std::function<void(int step, int total, double seconds)> on_step;
  // Polled before each step; true stops the loop with CANCELLED.
  std::function<bool()> is_cancelled;
  // A step (0-based) that reused the step cache, before its on_step. May be empty.
  std::function<void(int step)> on_cached_step;
};

// One request's loop between its steps, as RunWanSampler keeps it: the checked request, its own
// scheduler (UniPC or flow-match Euler) and schedule, its guidance, embeddings and latents. The
// lone loop and WanBatchedSampler (wan_batched_sampler.h, one per member) both step through it, so
// a batched member does the lone loop's arithmetic. Step caching stays with the caller.
//
// Thread safety: a value used by one thread at a time.
class WanSamplerState {
 public:
  // RunWanSampler's checks of `request` against the models and `sp` (INVALID_ARGUMENT naming the
  // field), then its schedule, seeded noise and embeddings on the model's device and dtype.
  // Only the experts' configs and options are read: nothing is asked of `experts.use`.
  static absl::StatusOr<WanSamplerState> Prepare(const WanExperts& experts,
                                                 const WanPipelineConfig& pipeline,
                                                 const WanSchedulerConfig& scheduler_config,
                                                 const WanSamplerRequest& request,
                                                 const SequenceParallelContext* sp);
  static absl::StatusOr<WanSamplerState> Prepare(const WanTransformer3DModel& transformer,
                                                 const WanTransformer3DModel* transformer_2,
                                                 const WanPipelineConfig& pipeline,
                                                 const WanSchedulerConfig& scheduler_config,
                                                 const WanSamplerRequest& request,
                                                 const SequenceParallelContext* sp);

  int total() const { return static_cast<int>(timesteps_.size()); }
  // Classifier-free guidance (guidance_scale > 1, as WanPipeline decides).
  bool cfg() const { return cfg_; }
  // Whether step `i` runs `transformer` (Wan2.2 A14B's high-noise expert: timestep >= boundary;
  // always with one transformer), else transformer_2.
  bool FirstExpert(int i) const;
  // The current latents ([1, C, F, H, W], float32 until a bf16 Euler step) and embeddings.
  const at::Tensor& latents() const { return latents_; }
  const at::Tensor& embeds() const { return embeds_; }
  const at::Tensor& negative_embeds() const { return negative_embeds_; }
  // Step `i`'s inputs for this request alone ([1, ...] rows): the latents in the model's dtype,
  // the timestep ([1], or [1, tokens] with expand_timesteps) and the prompt's (`negative`: the
  // negative prompt's) embeddings.
  absl::StatusOr<WanTransformerInputs> Inputs(int i, bool negative) const;
  // uncond + scale x (cond - uncond) with step `i`'s expert's scale.
  absl::StatusOr<at::Tensor> Guide(int i, const at::Tensor& cond, const at::Tensor& uncond) const;
  // Step `i` of the scheduler with the (guided) prediction: the next latents.
  absl::Status Advance(int i, const at::Tensor& noise_pred);
  // After the last step: the float32 latents; INTERNAL when they hold NaN or Inf.
  absl::StatusOr<at::Tensor> Finish();

 private:
  WanSamplerState() = default;

  std::optional<UniPCMultistepScheduler> unipc_;
  std::optional<FlowMatchEulerScheduler> euler_;
  std::vector<float> timesteps_;  // float32, as WanPipeline compares them with the boundary
  bool two_experts_ = false;
  float boundary_ = 0;
  bool expand_timesteps_ = false;
  bool cfg_ = false;
  double guidance_ = 0, guidance_2_ = 0;
  int64_t frames_ = 0, lh_ = 0, lw_ = 0;
  at::TensorOptions options_;  // the model's device and dtype
  at::Tensor latents_, embeds_, negative_embeds_;
};

// Whether RunWanSampler runs a step's conditional and unconditional passes as one forward of
// batch 2 (prompt first) for a model on `device`: only on CUDA and only when the environment sets
// DGRID_WAN_CFG_BATCH=1 (off by default: on one H100 it was ~1% slower than two passes at the
// Wan2.1-14B shape and took 2.8 GB more, docs/perf-notes.md "Wan on one GPU, second pass"). The
// CPU always keeps diffusers' two passes op for op. The sampler batches only on one rank (no `sp`)
// and when the two prompts' embeddings have one length.
bool UseWanCfgBatch(const at::Device& device);
// Turns batching on or off for the whole process, whatever the environment says; a test seam.
void SetWanCfgBatchEnabledForTesting(bool enabled);

// Runs the whole loop; returns the final latents [1, in_channels, (num_frames - 1) / temporal + 1,
// height / spatial, width / spatial], float32, on the model's device. `transformer_2` is required
// exactly when pipeline.boundary_ratio is set.
//
// `sp` (null: one rank) runs the loop on one rank of a denoiser group: every rank calls this with
// the same request and gets the same latents. Each forward pass is sequence-parallel over the
// branch's ring * ulysses ranks (WanTransformer3DModel::Forward); with layout.cfg() == 2 and
// classifier-free guidance the CFG coordinate 0 branch runs the conditional pass and coordinate 1
// the unconditional one, and the predictions are exchanged over the CFG group
// (ExchangeCfgBranches; without guidance both branches run the one pass). Both experts of A14B
// run so. INVALID_ARGUMENT when the context does not fit a transformer (heads % ulysses); a
// failed collective ends the loop with its code (DEADLINE_EXCEEDED, UNAVAILABLE).
//
// The experts come from `experts.use` (WanExperts): the first step's expert before that step, the
// other one at the boundary after the first is let go, so that an offloaded A14B never has both
// on the device for one request. A failed `use` ends the loop with its status, holding nothing.
// In a group (`sp`) every rank asks at the same step; a rank whose copy fails ends its loop, and
// its peers end theirs with the failed collective's code.
absl::StatusOr<at::Tensor> RunWanSampler(const WanExperts& experts,
                                         const WanPipelineConfig& pipeline,
                                         const WanSchedulerConfig& scheduler_config,
                                         const WanSamplerRequest& request,
                                         const WanSamplerHooks& hooks = {},
                                         const SequenceParallelContext* sp = nullptr);
// The same over resident models.
absl::StatusOr<at::Tensor> RunWanSampler(const WanTransformer3DModel& transformer,
                                         const WanTransformer3DModel* transformer_2,
                                         const WanPipelineConfig& pipeline,
                                         const WanSchedulerConfig& scheduler_config,
                                         const WanSamplerRequest& request,
                                         const WanSamplerHooks& hooks = {},
                                         const SequenceParallelContext* sp = nullptr);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_WAN_SAMPLER_H_
