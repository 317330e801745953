// FLUX.1's denoiser for the stage: FluxTransformer2DModel, the flow-matching Euler scheduler and
// RunFluxSampler (sampler.h), or a denoiser group's loop in its place (SetSampler).
#ifndef DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_
#define DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_

#include <functional>
#include <memory>
#include <optional>
#include <utility>

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
  absl::StatusOr<at::Tensor> Run(const DenoiseInput& input,
                                 const SamplerHooks& hooks) const override;
  absl::StatusOr<DenoiseInput> WarmupInput(int width, int height,
                                           const ModelLimits& limits) const override;

  const FluxTransformer2DModel& model() const { return *model_; }
  const FlowMatchEulerSchedulerConfig& scheduler() const { return scheduler_; }
  // Replaces the single-process loop (a denoiser group's leader: the group runs it on every
  // rank). Set once, before the first request.
  using Sampler =
      std::function<absl::StatusOr<at::Tensor>(const FluxSamplerRequest&, const FluxSamplerHooks&)>;
  void SetSampler(Sampler sampler) { sampler_ = std::move(sampler); }

 private:
  FluxDenoiser() = default;
  std::optional<FluxTransformer2DModel> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
  int vae_scale_factor_ = 8;
  Sampler sampler_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_FLUX_DENOISER_H_
