#include "services/denoiser/models/modulation_schedule.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/models/flux_transformer.h"

namespace dgrid {
namespace {

constexpr int kDefaultWindow = 16;

// -1: the environment decides.
std::atomic<int> window_override{-1};

int WindowFromEnvironment() {
  static const int window = [] {
    const char* v = std::getenv("DGRID_MODULATION_WINDOW");
    if (v == nullptr || *v == '\0') return kDefaultWindow;
    int steps = 0;
    if (!absl::SimpleAtoi(v, &steps) || steps < 0) {
      DG_LOG_WARN("", "DGRID_MODULATION_WINDOW=%s is not a step count >= 0; using %d", v,
                  kDefaultWindow);
      return kDefaultWindow;
    }
    return steps;
  }();
  return window;
}

}  // namespace

int ModulationWindow() {
  const int forced = window_override.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : WindowFromEnvironment();
}

void SetModulationWindow(int steps) {
  window_override.store(steps < 0 ? -1 : steps, std::memory_order_relaxed);
}

std::unique_ptr<ModulationSchedule> ModulationSchedule::Create(const FluxTransformer2DModel& model,
                                                               std::vector<float> timesteps,
                                                               double guidance, at::Tensor pooled,
                                                               at::ScalarType latent_dtype) {
  const int window = ModulationWindow();
  if (window <= 0 || !model.CanComputeModulation() || timesteps.empty()) return nullptr;
  return std::unique_ptr<ModulationSchedule>(new ModulationSchedule(
      model, std::move(timesteps), guidance, std::move(pooled), latent_dtype, window));
}

absl::StatusOr<at::Tensor> ModulationSchedule::Row(int step) {
  const int steps = static_cast<int>(timesteps_.size());
  if (step < 0 || step >= steps) {
    return InvalidArgument("ModulationSchedule: step ", step, " outside [0, ", steps, ")");
  }
  if (!rows_.defined() || step < first_ || step >= first_ + rows_.size(0)) {
    const int count = std::min(window_, steps - step);
    std::vector<float> window(timesteps_.begin() + step, timesteps_.begin() + step + count);
    at::Tensor timestep, guidance, pooled;
    RETURN_IF_ERROR(TorchCall("ModulationSchedule inputs", [&] {
      const at::Device device = pooled_.device();
      const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device);
      // As the samplers feed a pass: t (float32) cast to the latents' dtype, then / 1000.
      timestep = at::tensor(window, at::kFloat).to(device).to(latent_dtype_) / 1000;
      if (model_.config().guidance_embeds) guidance = at::full({count}, guidance_, f32);
      pooled = pooled_.expand({count, pooled_.size(1)});
    }));
    ASSIGN_OR_RETURN(rows_, model_.ComputeModulation(timestep, guidance, pooled));
    first_ = step;
    ++windows_;
  }
  return TorchCall("ModulationSchedule row", [&] { return rows_.narrow(0, step - first_, 1); });
}

}  // namespace dgrid
