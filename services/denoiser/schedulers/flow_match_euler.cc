// The schedule arithmetic is done in `float` in numpy's order of operations: under NumPy 2 (NEP 50)
// a Python float combined with a float32 array is rounded to float32 first, so every intermediate
// of diffusers' set_timesteps is a float32 value, and so is every one here.
#include "services/denoiser/schedulers/flow_match_euler.h"

#include <cmath>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/diffusers_layout.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

absl::StatusOr<FlowMatchEulerSchedulerConfig> FlowMatchEulerSchedulerConfig::FromJson(
    const JsonConfig& json) {
  ASSIGN_OR_RETURN(std::string class_name,
                   json.GetString("_class_name", "FlowMatchEulerDiscreteScheduler"));
  if (class_name != "FlowMatchEulerDiscreteScheduler") {
    return InvalidArgument(json.source(), ": _class_name is '", class_name,
                           "', expected FlowMatchEulerDiscreteScheduler");
  }
  FlowMatchEulerSchedulerConfig c;
  ASSIGN_OR_RETURN(c.num_train_timesteps,
                   json.GetInt("num_train_timesteps", c.num_train_timesteps));
  RETURN_IF_ERROR(json.CheckPositive("num_train_timesteps", c.num_train_timesteps));
  ASSIGN_OR_RETURN(c.shift, json.GetDouble("shift", c.shift));
  if (!(c.shift > 0)) return InvalidArgument(json.source(), ": shift must be > 0, got ", c.shift);
  ASSIGN_OR_RETURN(c.use_dynamic_shifting,
                   json.GetBool("use_dynamic_shifting", c.use_dynamic_shifting));
  ASSIGN_OR_RETURN(c.base_shift, json.GetDouble("base_shift", c.base_shift));
  ASSIGN_OR_RETURN(c.max_shift, json.GetDouble("max_shift", c.max_shift));
  ASSIGN_OR_RETURN(c.base_image_seq_len, json.GetInt("base_image_seq_len", c.base_image_seq_len));
  ASSIGN_OR_RETURN(c.max_image_seq_len, json.GetInt("max_image_seq_len", c.max_image_seq_len));
  if (c.max_image_seq_len == c.base_image_seq_len) {
    // calculate_shift divides by their difference.
    return InvalidArgument(json.source(), ": max_image_seq_len and base_image_seq_len are both ",
                           c.max_image_seq_len);
  }
  ASSIGN_OR_RETURN(c.shift_terminal, json.GetOptionalDouble("shift_terminal"));
  if (c.shift_terminal.has_value() && *c.shift_terminal == 1.0) {
    return InvalidArgument(json.source(), ": shift_terminal must not be 1");
  }
  ASSIGN_OR_RETURN(c.time_shift_type, json.GetString("time_shift_type", c.time_shift_type));
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear") {
    return InvalidArgument(json.source(),
                           ": time_shift_type must be 'exponential' or 'linear', got '",
                           c.time_shift_type, "'");
  }
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                          "invert_sigmas", "stochastic_sampling", "use_flow_sigmas"}) {
    ASSIGN_OR_RETURN(bool on, json.GetBool(key, false));
    if (on)
      return absl::UnimplementedError(absl::StrCat(json.source(), ": ", key, " is not supported"));
  }
  return c;
}

absl::StatusOr<FlowMatchEulerSchedulerConfig> FlowMatchEulerSchedulerConfig::FromFile(
    const std::string& path) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(path));
  return FromJson(json);
}

double CalculateShift(int64_t image_seq_len, const FlowMatchEulerSchedulerConfig& config) {
  const double m = (config.max_shift - config.base_shift) /
                   static_cast<double>(config.max_image_seq_len - config.base_image_seq_len);
  const double b = config.base_shift - m * static_cast<double>(config.base_image_seq_len);
  return static_cast<double>(image_seq_len) * m + b;
}

std::vector<double> FluxPipelineSigmas(int n) {
  std::vector<double> sigmas;
  if (n <= 0) return sigmas;
  const double start = 1.0;
  const double stop = 1.0 / n;
  // np.linspace: start + i * ((stop - start) / (n - 1)), with the last value set to stop exactly.
  const double step = n > 1 ? (stop - start) / (n - 1) : 0.0;
  for (int i = 0; i < n; ++i) sigmas.push_back(static_cast<double>(i) * step + start);
  if (n > 1) sigmas.back() = stop;
  return sigmas;
}

absl::Status FlowMatchEulerScheduler::SetTimestepsForFlux(int num_inference_steps,
                                                          int64_t image_seq_len) {
  if (num_inference_steps < 1) {
    return InvalidArgument("num_inference_steps must be >= 1, got ", num_inference_steps);
  }
  if (image_seq_len < 1) return InvalidArgument("image_seq_len must be >= 1, got ", image_seq_len);
  return SetSigmas(FluxPipelineSigmas(num_inference_steps), CalculateShift(image_seq_len, config_));
}

absl::Status FlowMatchEulerScheduler::SetTimesteps(int num_inference_steps) {
  if (num_inference_steps < 1) {
    return InvalidArgument("num_inference_steps must be >= 1, got ", num_inference_steps);
  }
  if (config_.use_dynamic_shifting) {
    return InvalidArgument(
        "FlowMatchEulerScheduler: use_dynamic_shifting needs a resolution-dependent mu, which a "
        "schedule set from the step count alone does not have");
  }
  // __init__: the training sigmas N/N .. 1/N in float32, shifted once (float32 arithmetic).
  const int64_t n_train = config_.num_train_timesteps;
  const float shift_f = static_cast<float>(config_.shift);
  const float shift_minus_one_f = static_cast<float>(config_.shift - 1.0);
  auto init_sigma = [&](float t) {
    const float s = t / static_cast<float>(n_train);
    return shift_f * s / (1.0f + shift_minus_one_f * s);
  };
  const double sigma_max = init_sigma(static_cast<float>(n_train));
  const double sigma_min = init_sigma(1.0f);
  // set_timesteps: np.linspace(sigma_max * N, sigma_min * N, n) / N, float64 from here on.
  const double start = sigma_max * static_cast<double>(n_train);
  const double stop = sigma_min * static_cast<double>(n_train);
  const int n = num_inference_steps;
  std::vector<double> s(n);
  const double step = n > 1 ? (stop - start) / (n - 1) : 0.0;
  for (int i = 0; i < n; ++i) s[i] = static_cast<double>(i) * step + start;
  if (n > 1) s.back() = stop;
  for (double& t : s) t /= static_cast<double>(n_train);
  const double shift = config_.shift;
  for (double& t : s) t = shift * t / (1.0 + (shift - 1.0) * t);
  if (config_.shift_terminal.has_value() && *config_.shift_terminal != 0.0) {
    const double scale = (1.0 - s.back()) / (1.0 - *config_.shift_terminal);
    if (!(scale > 0.0) || !std::isfinite(scale)) {
      return InvalidArgument(
          "num_inference_steps = ", n, " with shift_terminal = ", *config_.shift_terminal,
          ": the shifted schedule ends at sigma ", s.back(),
          " and cannot be stretched to the terminal value; use at least 2 steps");
    }
    for (double& t : s) t = 1.0 - (1.0 - t) / scale;
  }
  sigmas_.assign(s.begin(), s.end());  // torch.from_numpy(sigmas).to(float32)
  timesteps_.clear();
  const float train_steps = static_cast<float>(n_train);
  for (float t : sigmas_) timesteps_.push_back(t * train_steps);
  sigmas_.push_back(0.0f);
  return absl::OkStatus();
}

absl::Status FlowMatchEulerScheduler::SetSigmas(const std::vector<double>& sigmas_in,
                                                std::optional<double> mu) {
  if (sigmas_in.empty()) return InvalidArgument("FlowMatchEulerScheduler: no sigmas given");
  for (double s : sigmas_in) {
    if (!(s > 0.0 && s <= 1.0)) {
      return InvalidArgument("FlowMatchEulerScheduler: sigmas must lie in (0, 1], got [",
                             absl::StrJoin(sigmas_in, ", "), "]");
    }
  }
  if (config_.use_dynamic_shifting && !mu.has_value()) {
    return InvalidArgument("FlowMatchEulerScheduler: mu is required with use_dynamic_shifting");
  }
  std::vector<float> s(sigmas_in.begin(), sigmas_in.end());  // np.array(sigmas).astype(float32)
  if (config_.use_dynamic_shifting) {
    // time_shift(mu, 1.0, t); `x ** 1.0` is x exactly, so the power is left out.
    const bool exponential = config_.time_shift_type == "exponential";
    const float a = exponential ? static_cast<float>(std::exp(*mu)) : static_cast<float>(*mu);
    for (float& t : s) t = a / (a + (1.0f / t - 1.0f));
  } else {
    const float shift = static_cast<float>(config_.shift);
    const float shift_minus_one = static_cast<float>(config_.shift - 1.0);
    for (float& t : s) t = shift * t / (1.0f + shift_minus_one * t);
  }
  if (config_.shift_terminal.has_value() && *config_.shift_terminal != 0.0) {
    // stretch_shift_to_terminal.
    const float scale = (1.0f - s.back()) / static_cast<float>(1.0 - *config_.shift_terminal);
    if (!(scale > 0.0f) || !std::isfinite(scale)) {
      // diffusers divides by zero here and samples NaN; say why instead.
      return InvalidArgument(
          "num_inference_steps = ", s.size(), " with shift_terminal = ", *config_.shift_terminal,
          ": the shifted schedule ends at sigma ", s.back(),
          " and cannot be stretched to the terminal value; use at least 2 steps");
    }
    for (float& t : s) t = 1.0f - (1.0f - t) / scale;
  }
  timesteps_.clear();
  const float train_steps = static_cast<float>(config_.num_train_timesteps);
  for (float t : s) timesteps_.push_back(t * train_steps);
  sigmas_ = std::move(s);
  sigmas_.push_back(0.0f);
  return absl::OkStatus();
}

absl::Status FlowMatchEulerScheduler::StartAt(int first) {
  if (first < 0 || first >= num_inference_steps()) {
    return absl::OutOfRangeError(absl::StrCat("FlowMatchEulerScheduler: first step ", first,
                                              " outside [0, ", num_inference_steps(), ")"));
  }
  timesteps_.erase(timesteps_.begin(), timesteps_.begin() + first);
  sigmas_.erase(sigmas_.begin(), sigmas_.begin() + first);
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> FlowMatchEulerScheduler::Step(const at::Tensor& model_output, int step,
                                                         const at::Tensor& sample) const {
  if (sigmas_.empty())
    return FailedPrecondition("FlowMatchEulerScheduler: SetTimesteps not called");
  if (step < 0 || step >= num_inference_steps()) {
    return absl::OutOfRangeError(absl::StrCat("FlowMatchEulerScheduler: step ", step,
                                              " outside [0, ", num_inference_steps(), ")"));
  }
  return TorchCall("FlowMatchEulerScheduler.Step", [&]() -> absl::StatusOr<at::Tensor> {
    if (!model_output.sizes().equals(sample.sizes())) {
      return InvalidArgument("FlowMatchEulerScheduler.Step: model output [",
                             absl::StrJoin(model_output.sizes(), ", "), "] and sample [",
                             absl::StrJoin(sample.sizes(), ", "), "] differ");
    }
    const float dt = sigmas_[step + 1] - sigmas_[step];
    const at::Tensor dt_tensor = at::scalar_tensor(dt, model_output.options().dtype(at::kFloat));
    const at::Tensor prev = sample.to(at::kFloat) + dt_tensor * model_output;
    return prev.to(model_output.scalar_type());
  });
}

}  // namespace dgrid
