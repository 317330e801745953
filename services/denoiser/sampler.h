// The FLUX.1 sampling loop, free of any RPC: seeded initial noise, 2x2 latent packing, position
// ids, the flow-matching Euler schedule, guidance embedding (FLUX.1-dev) and optional true CFG.
//
// Ref: diffusers FluxPipeline.__call__ (pipelines/flux/pipeline_flux.py, 0.42.1) from prompt_embeds
// to the final latents, before the VAE's scaling/shift and decode. With the same inputs and seed
// the result equals the pipeline's unpacked latents to float rounding: the initial noise comes from
// a CPU generator seeded like torch.Generator("cpu").manual_seed(seed), drawn in the prompt
// embeddings' dtype, then moved to the model's device.
//
// Threads: RunFluxSampler runs on the calling thread; hooks are called on it too. Several calls may
// run at once on one model (Forward is const). Errors: INVALID_ARGUMENT for bad requests,
// CANCELLED when the cancellation hook says so (checked before every step), INTERNAL when the final
// latents hold NaN or Inf, and whatever the model or scheduler returns.
#ifndef DGRID_SERVICES_DENOISER_SAMPLER_H_
#define DGRID_SERVICES_DENOISER_SAMPLER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/step_cache.h"
#include "families/flux/flux_family.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler_hooks.h"
#include "services/denoiser/schedulers/flow_match_euler.h"

namespace dgrid {

// Defaults: FluxPipeline's (families/flux/flux_family.h).
struct FluxSamplerRequest {
  std::string request_id;  // For log lines only.
  // Image size in pixels; latents are 2 * (size / (2 * vae_scale_factor)).
  int64_t height = families::flux::kFluxDefaults.height;
  int64_t width = families::flux::kFluxDefaults.width;
  int num_inference_steps = families::flux::kFluxDefaults.steps;
  uint64_t seed = 0;
  // Embedded as the guidance tensor when the model has guidance_embeds (FLUX.1-dev); ignored else.
  double guidance_scale = families::flux::kFluxDefaults.guidance_scale;
  // True classifier-free guidance (FluxPipeline's true_cfg_scale): used when > 1 and the negative
  // embeddings are given; noise = neg + scale * (pos - neg), two forward passes per step.
  double true_cfg_scale = families::flux::kFluxDefaults.true_cfg_scale;
  at::Tensor prompt_embeds;                  // [1, S, joint_attention_dim] (T5 output).
  at::Tensor pooled_prompt_embeds;           // [1, pooled_projection_dim] (CLIP pooled output).
  at::Tensor negative_prompt_embeds;         // [1, S', joint_attention_dim] or undefined.
  at::Tensor negative_pooled_prompt_embeds;  // [1, pooled_projection_dim] or undefined.
  // 2^(len(vae.block_out_channels) - 1); 8 for FLUX.1.
  int64_t vae_scale_factor = families::flux::kFluxDefaults.vae_scale_factor;
  // Image-to-image (FluxImg2ImgPipeline): the encoded input image [1, in_channels / 4, H/8, W/8]
  // as the decoder's EncodeImage returns it, and the strength that cuts the schedule
  // (services/denoiser/img2img.h). Undefined: text-to-image.
  at::Tensor image_latents;
  double strength = 1.0;
  // Step caching (services/denoiser/step_cache_policy.h); off by default. Skipped steps are
  // reported through SamplerHooks::on_cached_step. With true CFG the conditional pass decides
  // and the unconditional one follows (each keeps its own cached tensors); in a group the change
  // is summed over the branch's ranks and the conditional branch's sums are shared with the
  // unconditional branch, so every rank skips the same steps.
  StepCacheConfig cache;
};

// The FLUX loop takes every hook of SamplerHooks (services/denoiser/sampler_hooks.h).
using FluxSamplerHooks = SamplerHooks;

// Runs the whole loop and returns the final latents [1, in_channels / 4, H/8, W/8] (unpacked, in
// the prompt embeddings' dtype, on the model's device).
//
// `sp` (null: one rank) runs the loop on one rank of a denoiser group: every rank calls this with
// the same request and gets the same latents. The model forward is sequence-parallel over the
// branch's ring * ulysses ranks; with layout.cfg() == 2 and true CFG the CFG coordinate 0 branch
// runs the conditional pass and coordinate 1 the unconditional one, and their predictions are
// exchanged with an AllGather over the CFG group (without true CFG both branches run the same
// conditional pass). A failed collective ends the loop with its code (DEADLINE_EXCEEDED,
// UNAVAILABLE).
absl::StatusOr<at::Tensor> RunFluxSampler(const FluxTransformer2DModel& model,
                                          const FlowMatchEulerSchedulerConfig& scheduler_config,
                                          const FluxSamplerRequest& request,
                                          const FluxSamplerHooks& hooks = {},
                                          const SequenceParallelContext* sp = nullptr);

// Helpers of the loop, public for tests. They throw c10::Error on bad shapes (wrap in TorchCall).
namespace flux {

// FluxPipeline._pack_latents: [B, C, H, W] (H, W even) -> [B, (H/2)(W/2), 4C].
at::Tensor PackLatents(const at::Tensor& latents);
// FluxPipeline._unpack_latents for a latent grid of `latent_height` x `latent_width`:
// [B, (H/2)(W/2), 4C] -> [B, C, H, W].
at::Tensor UnpackLatents(const at::Tensor& packed, int64_t latent_height, int64_t latent_width);
// FluxPipeline._prepare_latent_image_ids: float32 [rows * cols, 3] = (0, row, col).
at::Tensor LatentImageIds(int64_t rows, int64_t cols);
// randn of `shape` from a CPU generator seeded with `seed`, in `dtype`, on the CPU (as
// torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)).
at::Tensor SeededNoise(at::IntArrayRef shape, uint64_t seed, at::ScalarType dtype);
// TeaCache's rescale polynomial for FLUX-architecture models (StepCachePolicy's `rescale`), as
// the lone loop and the batched one (batched_sampler.h) give it to their StepCacheLoop.
const std::vector<double>& TeaCacheRescale();

}  // namespace flux
}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SAMPLER_H_
