// UniPC multistep sampler with flow sigmas and flow prediction, as the Wan2.1 / Wan2.2 pipelines
// use it (their scheduler_config.json: prediction_type "flow_prediction", use_flow_sigmas, a
// flow_shift of 3.0 for 480p or 5.0 for 720p, solver_order 2, bh2, predict_x0).
//
// Ref: diffusers UniPCMultistepScheduler (schedulers/scheduling_unipc_multistep.py, 0.42.1):
// set_timesteps' use_flow_sigmas branch (float64 numpy schedule: np.linspace(1, 1/T, N + 1)[:-1],
// the flow_shift or the dynamic time shift, the optional stretch to shift_terminal, the first sigma
// moved 1e-6 below 1, int64 timesteps = trunc(sigma * T)), convert_model_output, the UniP predictor
// and the UniC corrector (B(h) = h for bh1, e^h - 1 for bh2). Every tensor operation of step()
// is done here with the same ATen operations on the same dtypes and devices, in the same order,
// so the samples equal diffusers' bit for bit on the same device.
//
// Supported config: num_train_timesteps, solver_order (1-3), prediction_type "flow_prediction",
// predict_x0 true, solver_type (bh1 | bh2; midpoint/heun/logrho mean bh2, as in diffusers),
// lower_order_final, disable_corrector, use_flow_sigmas true, flow_shift, final_sigmas_type
// (zero | sigma_min), use_dynamic_shifting with time_shift_type (exponential | linear),
// shift_terminal. Other prediction types, the VP (non-flow) schedules, Karras / exponential / beta
// sigmas, thresholding and solver_p are UNIMPLEMENTED; the beta_* keys only shape those and are
// ignored.
//
// Thread safety: a scheduler holds one sampling run's state (the last model outputs and sample),
// like diffusers' object: one per request, used from one thread at a time.
#ifndef DGRID_SERVICES_DENOISER_SCHEDULERS_UNIPC_MULTISTEP_H_
#define DGRID_SERVICES_DENOISER_SCHEDULERS_UNIPC_MULTISTEP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dgrid {

class JsonConfig;

struct UniPCMultistepSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  int solver_order = 2;
  bool bh2 = true;  // solver_type: bh2 (true) or bh1
  bool lower_order_final = true;
  std::vector<int> disable_corrector;  // step indices whose next step skips the corrector
  double flow_shift = 1.0;
  bool final_sigma_zero = true;  // final_sigmas_type: zero (true) or sigma_min
  bool use_dynamic_shifting = false;
  std::string time_shift_type = "exponential";
  std::optional<double> shift_terminal;

  // From a parsed scheduler_config.json. Absent keys take diffusers' defaults, so a config without
  // prediction_type "flow_prediction" and use_flow_sigmas true is UNIMPLEMENTED (diffusers'
  // default is the epsilon-prediction VP schedule); bad values are INVALID_ARGUMENT naming the key.
  static absl::StatusOr<UniPCMultistepSchedulerConfig> FromJson(const JsonConfig& json);
  static absl::StatusOr<UniPCMultistepSchedulerConfig> FromFile(const std::string& path);
};

class UniPCMultistepScheduler {
 public:
  explicit UniPCMultistepScheduler(UniPCMultistepSchedulerConfig config);

  const UniPCMultistepSchedulerConfig& config() const { return config_; }

  // set_timesteps(num_inference_steps, mu=mu): the schedule, and a fresh run (the solver's history
  // cleared). `mu` is required with use_dynamic_shifting and ignored without it. INVALID_ARGUMENT
  // when num_inference_steps < 1, mu is missing, or shift_terminal cannot be reached (1 step).
  [[nodiscard]] absl::Status SetTimesteps(int num_inference_steps,
                                          std::optional<double> mu = std::nullopt);

  int num_inference_steps() const { return static_cast<int>(timesteps_.size()); }
  // The N timesteps fed to the model: trunc(sigma * num_train_timesteps), as diffusers' int64.
  const std::vector<int64_t>& timesteps() const { return timesteps_; }
  // N + 1 sigmas (float32): the schedule, then 0 (final_sigmas_type zero) or its last value.
  const std::vector<float>& sigmas() const { return sigmas_; }
  // The step the next Step() call takes (0 after SetTimesteps).
  int step_index() const { return step_index_; }

  // diffusers' step(model_output, t, sample) at step_index(): the UniC correction of `sample`
  // with this output (from the second step on, unless disabled), then the UniP prediction of the
  // next sample, in `sample`'s dtype and on its device. FAILED_PRECONDITION before SetTimesteps,
  // OUT_OF_RANGE after the last step, INVALID_ARGUMENT when the shapes differ.
  absl::StatusOr<at::Tensor> Step(const at::Tensor& model_output, const at::Tensor& sample);

 private:
  struct Update;                      // the terms Predict and Correct share (unipc_multistep.cc)
  at::Tensor Sigma(int index) const;  // sigmas()[index] as a float32 0-dim CPU tensor
  Update MakeUpdate(int t, int s0, int order, const at::Device& device) const;
  at::Tensor ConvertModelOutput(const at::Tensor& model_output, const at::Tensor& sample) const;
  at::Tensor Predict(const at::Tensor& sample, int order) const;
  at::Tensor Correct(const at::Tensor& this_model_output, const at::Tensor& last_sample,
                     const at::Tensor& this_sample, int order) const;

  UniPCMultistepSchedulerConfig config_;
  std::vector<int64_t> timesteps_;
  std::vector<float> sigmas_;
  at::Tensor sigmas_tensor_;  // sigmas_ as a float32 CPU tensor, indexed like diffusers' sigmas
  // The solver's history: the last solver_order converted outputs (oldest first; undefined until
  // filled), the sample before the last prediction, and the orders used so far.
  std::vector<at::Tensor> model_outputs_;
  at::Tensor last_sample_;
  int lower_order_nums_ = 0;
  int this_order_ = 0;
  int step_index_ = 0;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SCHEDULERS_UNIPC_MULTISTEP_H_
