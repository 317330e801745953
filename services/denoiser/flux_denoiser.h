// FLUX.1's denoiser for the stage: FluxTransformer2DModel, the flow-matching Euler scheduler and
// RunFluxSampler (sampler.h), on one process or as one rank of a denoiser group. With
// --dit-offload model the transformer comes to the device around each request's loop and each
// step batch's life (dit_placement.h).
#ifndef DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_
#define DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_

#include <memory>
#include <optional>
#include <string>

#include "services/denoiser/dit_placement.h"
#include "services/denoiser/family_denoiser.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/flow_match_euler.h"

namespace dgrid {

class FluxDenoiser final : public FamilyDenoiser {
 public:
  // transformer/ and scheduler/ of the pipeline at `index`.
  static absl::StatusOr<std::unique_ptr<FluxDenoiser>> Load(const ModelIndex& index,
                                                            const LoadOptions& load);

  absl::Status Check(const DenoiseInput& input) const override;
  absl::StatusOr<at::Tensor> Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                 const SequenceParallelContext* sp) const override;
  absl::StatusOr<DenoiseInput> WarmupInput(int width, int height,
                                           const ModelLimits& limits) const override;
  // Step-level batching (batched_sampler.h): the key is the latent grid, the text lengths, the
  // embeddings' dtype and whether true CFG runs; img2img and text-to-image requests mix. The batch
  // runs on one process or on every rank of a group (`sp`).
  std::optional<std::string> BatchKey(const DenoiseInput& input) const override;
  std::unique_ptr<BatchedSampler> NewBatch(const SequenceParallelContext* sp) const override;
  int64_t attention_heads() const override { return model_->config().num_attention_heads; }
  at::Device device() const override { return model_->options().device(); }
  std::vector<const ModelResidency*> residencies() const override;

  const FlowMatchEulerSchedulerConfig& scheduler() const { return scheduler_; }
  // `input` as RunFluxSampler's request (embeddings on the model's device): what Run runs.
  absl::StatusOr<FluxSamplerRequest> SamplerRequest(const DenoiseInput& input) const;

 private:
  FluxDenoiser() = default;
  std::optional<PlacedDit<FluxTransformer2DModel>> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
  int vae_scale_factor_ = 8;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_
