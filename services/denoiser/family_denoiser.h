// What the denoiser stage asks of a model family: its check of a request, the sampling loop
// itself, and a warm-up request. (Whether a request runs classifier-free guidance, and so needs
// the negative prompt's embeddings, is the family's RunsCfg, families/model_family.h.) The engine
// (denoiser_engine.h) does what every family shares: sizes against the model's limits, steps, the
// queue, cancellation, deadlines, preemption and the test seams. Each family the stages serve has
// one implementation (flux_denoiser.h, wan_denoiser.h), found by the family's name in
// family_denoiser.cc's table.
//
// Denoiser groups (services/denoiser/group/denoiser_group.h) use the same interface: the leader
// broadcasts the DenoiseInput and every rank calls Run (or, batched, NewBatch's Add and Step) with
// the group's SequenceParallelContext, so a family serves groups by sharding its own loop; the
// group code names no family.
//
// Thread safety: a FamilyDenoiser is immutable once loaded; Run may run on several threads.
#ifndef DGRID_SERVICES_DENOISER_FAMILY_DENOISER_H_
#define DGRID_SERVICES_DENOISER_FAMILY_DENOISER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/diffusers_layout.h"
#include "common/model_limits.h"
#include "common/named_tensors.h"
#include "common/safetensors.h"
#include "common/step_cache.h"
#include "families/model_family.h"
#include "services/denoiser/sampler_hooks.h"

namespace dgrid {

class ModelResidency;            // common/model_offload.h
struct SequenceParallelContext;  // services/denoiser/models/sequence_parallel.h
class BatchedSampler;            // services/denoiser/batched_sampler.h

// One request to the denoiser, in every family's terms (stages.proto DenoiseRequest).
struct DenoiseInput {
  std::string request_id;
  int width = 0;  // pixels
  int height = 0;
  int num_frames = 1;  // 1 for an image; a video family's 4k + 1 (Wan)
  int num_inference_steps = 0;
  // The pipeline's guidance_scale: FLUX.1-dev's distilled guidance; Wan's classifier-free
  // guidance against the negative prompt.
  double guidance_scale = 0;
  // Wan2.2 A14B: the low-noise expert's guidance; unset: guidance_scale.
  std::optional<double> guidance_scale_2;
  // FLUX's true classifier-free guidance; 1 = off (families whose guidance_scale is CFG leave 1).
  double true_cfg_scale = 1.0;
  uint64_t seed = 0;
  NamedTensors positive;  // the family's text_embedding_names()
  NamedTensors negative;  // the same names when the request runs CFG, else empty
  absl::Time deadline = absl::InfiniteFuture();
  // Image-to-image (families that take an input image): the decoder's encoded input image and
  // the strength that cuts the schedule. Undefined: text-to-image.
  at::Tensor image_latents;
  double strength = 1.0;
  // 1-based steps after which the engine's on_preview gets the clean-latent estimate
  // (SamplerHooks::on_preview); the leader's alone in a group (peers are not sent it).
  std::vector<int> preview_steps;
  // Step caching (stages.proto DenoiseRequest.cache); off by default. FLUX and Wan run it
  // (step_cache_loop.h); the cache lives with the request, batched or not (a FLUX or Wan batch
  // mixes cached and uncached requests, each with its own cache: batched_sampler.h,
  // wan_batched_sampler.h).
  StepCacheConfig cache;
};

class FamilyDenoiser {
 public:
  virtual ~FamilyDenoiser() = default;

  // The family's own checks of `input` (the engine has checked sizes, steps and finiteness):
  // INVALID_ARGUMENT naming the field for frames, guidance fields or embeddings the model cannot
  // take.
  virtual absl::Status Check(const DenoiseInput& input) const = 0;
  // The sampling loop: the final latents as the family's decoder takes them, on the model's
  // device. CANCELLED when hooks.is_cancelled says so.
  //
  // `sp` null: this process alone. Otherwise this is one rank of a denoiser group: every rank of
  // the group calls Run with the same input (its tensors on any device) and gets the same latents;
  // the family shards its transformer's forward over the context's Ring / Ulysses ranks and runs
  // the two classifier-free-guidance passes on the two CFG branches (sequence_parallel.h). Errors
  // then include INVALID_ARGUMENT when the context does not fit the model and a failed
  // collective's own code (DEADLINE_EXCEEDED, UNAVAILABLE).
  virtual absl::StatusOr<at::Tensor> Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                         const SequenceParallelContext* sp) const = 0;
  // The number of attention heads a Ulysses degree must divide (the greatest common divisor over
  // the family's transformers), and the device the model computes on: what a group checks and
  // communicates on when it forms.
  virtual int64_t attention_heads() const = 0;
  virtual at::Device device() const = 0;
  // A two-step request at width x height with zero embeddings (--warmup-resolutions).
  virtual absl::StatusOr<DenoiseInput> WarmupInput(int width, int height,
                                                   const ModelLimits& limits) const = 0;

  // Step-level batching (--max-batch; step_batcher.h). BatchKey: requests with equal keys may
  // share one batch (one forward per step); nullopt: `input` runs alone. NewBatch: an empty batch
  // of this family's requests; `sp` as Run's (null: this process alone; else one rank's side of a
  // denoiser group's batch, which every rank holds with the same members and steps together,
  // DenoiserGroup). A family that does not batch keeps the defaults (nullopt, null); one that
  // batches on one process but not in groups returns null for a non-null `sp`.
  virtual std::optional<std::string> BatchKey(const DenoiseInput& input) const;
  virtual std::unique_ptr<BatchedSampler> NewBatch(const SequenceParallelContext* sp) const;

  // With --dit-offload model (dit_placement.h): the residencies of the family's transformers
  // ("transformer", then "transformer_2"), whose weights come to the device while requests
  // denoise; a test and log seam. Empty otherwise (the default).
  virtual std::vector<const ModelResidency*> residencies() const;
};

// The denoiser of `family` for the pipeline at `index`, loaded with `load`. NOT_FOUND for a
// missing component, INVALID_ARGUMENT / DATA_LOSS for bad files, UNIMPLEMENTED for a family the
// denoiser stage has none for.
absl::StatusOr<std::unique_ptr<FamilyDenoiser>> LoadFamilyDenoiser(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load);

// input.`which`[name] ("positive" / "negative"): INVALID_ARGUMENT naming "<which>.tensors[name]"
// when absent or undefined. For the families' Check and Run.
absl::StatusOr<at::Tensor> NamedInput(const DenoiseInput& input, bool negative,
                                      const std::string& name);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_FAMILY_DENOISER_H_
