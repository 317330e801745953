// Flow-matching Euler sampler schedule, as FLUX.1 uses it (custom sigmas and a resolution-dependent
// shift) and as Wan's Euler configs use it (the default ramp from the step count alone).
//
// Ref: diffusers FlowMatchEulerDiscreteScheduler
// (schedulers/scheduling_flow_match_euler_discrete.py, 0.42.1) and the way FluxPipeline drives it
// (pipelines/flux/pipeline_flux.py: calculate_shift, sigmas = np.linspace(1, 1/N, N),
// retrieve_timesteps(sigmas=..., mu=...)). Sigma schedules are computed in float32 with numpy's
// operation order, so timesteps and sigmas equal diffusers' bit for bit. Supported config:
// num_train_timesteps, shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len,
// max_image_seq_len, shift_terminal, time_shift_type (exponential | linear). Karras / exponential /
// beta sigmas, invert_sigmas and stochastic_sampling are UNIMPLEMENTED.
//
// Thread safety: the scheduler is a value; SetTimesteps mutates it, the const methods may run
// concurrently. Step is const (the step index is passed in), unlike diffusers' stateful step().
#ifndef DGRID_SERVICES_DENOISER_SCHEDULERS_FLOW_MATCH_EULER_H_
#define DGRID_SERVICES_DENOISER_SCHEDULERS_FLOW_MATCH_EULER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid {

class JsonConfig;

struct FlowMatchEulerSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  std::optional<double> shift_terminal;
  std::string time_shift_type = "exponential";

  // From a parsed scheduler_config.json (diffusers' defaults for absent keys). INVALID_ARGUMENT for
  // bad values, UNIMPLEMENTED for the options listed in the file comment.
  static absl::StatusOr<FlowMatchEulerSchedulerConfig> FromJson(const JsonConfig& json);
  static absl::StatusOr<FlowMatchEulerSchedulerConfig> FromFile(const std::string& path);
};

// FluxPipeline's calculate_shift: mu linear in the image token count, through (base_image_seq_len,
// base_shift) and (max_image_seq_len, max_shift).
double CalculateShift(int64_t image_seq_len, const FlowMatchEulerSchedulerConfig& config);

// FluxPipeline's default sigmas: np.linspace(1.0, 1/n, n) in float64.
std::vector<double> FluxPipelineSigmas(int num_inference_steps);

class FlowMatchEulerScheduler {
 public:
  explicit FlowMatchEulerScheduler(FlowMatchEulerSchedulerConfig config)
      : config_(std::move(config)) {}

  const FlowMatchEulerSchedulerConfig& config() const { return config_; }

  // The schedule FluxPipeline sets for `num_inference_steps` steps and `image_seq_len` packed image
  // tokens. INVALID_ARGUMENT when num_inference_steps < 1 or image_seq_len < 1.
  [[nodiscard]] absl::Status SetTimestepsForFlux(int num_inference_steps, int64_t image_seq_len);
  // set_timesteps(num_inference_steps) with no sigmas, as WanPipeline calls it: a linear ramp from
  // the training schedule's first sigma to its last (both shifted once at construction, as
  // diffusers' __init__ does), then shifted again, all in float64, then rounded to float32.
  // INVALID_ARGUMENT when num_inference_steps < 1 or with use_dynamic_shifting (no `mu` to give).
  [[nodiscard]] absl::Status SetTimesteps(int num_inference_steps);
  // set_timesteps(sigmas=..., mu=...): custom decreasing sigmas in (0, 1]. `mu` is required when
  // use_dynamic_shifting (INVALID_ARGUMENT otherwise) and ignored without it.
  [[nodiscard]] absl::Status SetSigmas(const std::vector<double>& sigmas, std::optional<double> mu);

  // Image-to-image (FluxImg2ImgPipeline.get_timesteps + set_begin_index): the schedule from step
  // `first` on, so that step 0 is the old step `first` (its timestep and sigma). OUT_OF_RANGE
  // unless 0 <= first < num_inference_steps().
  [[nodiscard]] absl::Status StartAt(int first);
  int num_inference_steps() const { return static_cast<int>(timesteps_.size()); }
  // The N timesteps (sigma * num_train_timesteps) fed to the model, float32.
  const std::vector<float>& timesteps() const { return timesteps_; }
  // N + 1 sigmas: the shifted schedule followed by a terminal 0.
  const std::vector<float>& sigmas() const { return sigmas_; }

  // One Euler step from sigmas()[step] to sigmas()[step + 1]: sample.float() + dt * model_output,
  // cast back to model_output's dtype (as diffusers' step(), with dt a float32 0-dim tensor on the
  // model output's device). FAILED_PRECONDITION before SetTimesteps; OUT_OF_RANGE for a bad step;
  // INVALID_ARGUMENT when the shapes differ.
  absl::StatusOr<at::Tensor> Step(const at::Tensor& model_output, int step,
                                  const at::Tensor& sample) const;

 private:
  FlowMatchEulerSchedulerConfig config_;
  std::vector<float> timesteps_;
  std::vector<float> sigmas_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SCHEDULERS_FLOW_MATCH_EULER_H_
