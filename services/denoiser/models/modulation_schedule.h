// The FLUX modulation rows of one request's forward passes, computed a window of steps at a time
// (issue #19 item 1: "modulation GEMVs batched over all steps of a request").
//
// Why: every forward pass runs the model's modulation linears (each block's AdaLayerNormZero
// linear, norm_out's) on one row of temb per image: matrix-vector products whose time is the
// reading of their weights (3.2 B parameters for FLUX.1-dev, ~2.6 ms of a 1024^2 step on an
// H100). temb depends only on the step's timestep, the guidance and the pooled text embedding,
// all known when the request starts, so a window of W steps' rows costs one read of the weights
// (FluxTransformer2DModel::ComputeModulation, a product of W rows) instead of W.
//
// A schedule belongs to one request's pass (its positive or negative pooled embedding) and is
// used by one thread at a time. Row(step) hands out the row of that step ([1, width], a view of
// the window), computing the window [step, step + W) first when the step is not in the one held;
// each window replaces the last (W rows: 16 x 2.1 MB for FLUX.1-dev in bf16). The timestep and
// guidance of each row are converted exactly as the samplers convert them for a pass (float32,
// the timestep cast to the latents' dtype and divided by 1000), so a row equals what the pass
// would compute up to how a product of W rows rounds against one of a single row.
//
// On by default with W = 16 (the default when DGRID_MODULATION_WINDOW is unset); 0 turns it
// off (the passes compute their modulations, as before). Off as well for a model whose blocks
// are offloaded or sharded (their weights are not all on the device).
#ifndef DGRID_SERVICES_DENOISER_MODELS_MODULATION_SCHEDULE_H_
#define DGRID_SERVICES_DENOISER_MODELS_MODULATION_SCHEDULE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace dgrid {

class FluxTransformer2DModel;

// Steps per window: SetModulationWindow's value if set, else DGRID_MODULATION_WINDOW (read once;
// a non-negative integer), else 16. 0: off.
int ModulationWindow();
// Overrides the window for this process (benchmarks and tests); -1 returns to the environment's.
void SetModulationWindow(int steps);

class ModulationSchedule {
 public:
  // Null when the window is 0 or the model cannot precompute (CanComputeModulation). `timesteps`
  // is the scheduler's per-step list (the step index of Row indexes it), `guidance` the request's
  // guidance scale (read only when the model has guidance_embeds), `pooled` its pooled embedding
  // for this pass [1, P] on the model's device, `latent_dtype` the dtype the samplers cast
  // timesteps to. `model` must outlive the schedule.
  static std::unique_ptr<ModulationSchedule> Create(const FluxTransformer2DModel& model,
                                                    std::vector<float> timesteps, double guidance,
                                                    at::Tensor pooled, at::ScalarType latent_dtype);

  // The row of `step` (0 <= step < timesteps.size()): [1, modulation_width()] on the model's
  // device. INVALID_ARGUMENT for a step outside the list; ComputeModulation's errors.
  absl::StatusOr<at::Tensor> Row(int step);

  // Windows computed so far (for tests).
  int windows_computed() const { return windows_; }

 private:
  ModulationSchedule(const FluxTransformer2DModel& model, std::vector<float> timesteps,
                     double guidance, at::Tensor pooled, at::ScalarType latent_dtype, int window)
      : model_(model),
        timesteps_(std::move(timesteps)),
        guidance_(guidance),
        pooled_(std::move(pooled)),
        latent_dtype_(latent_dtype),
        window_(window) {}

  const FluxTransformer2DModel& model_;
  const std::vector<float> timesteps_;
  const double guidance_;
  const at::Tensor pooled_;
  const at::ScalarType latent_dtype_;
  const int window_;
  // The rows of steps [first_, first_ + rows_.size(0)); undefined before the first.
  at::Tensor rows_;
  int first_ = 0;
  int windows_ = 0;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_MODULATION_SCHEDULE_H_
