// The schedule is computed in double in numpy's order of operations (diffusers' use_flow_sigmas
// branch works on float64 arrays), then rounded to float32 as diffusers' np.float32 cast does. The
// step mirrors diffusers' tensor expressions one operation at a time: 0-dim float32 tensors for the
// sigmas and the solver's coefficients, so that type promotion and rounding are torch's own.
#include "services/denoiser/schedulers/unipc_multistep.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/diffusers_layout.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

absl::StatusOr<UniPCMultistepSchedulerConfig> UniPCMultistepSchedulerConfig::FromJson(
    const JsonConfig& json) {
  ASSIGN_OR_RETURN(std::string class_name,
                   json.GetString("_class_name", "UniPCMultistepScheduler"));
  if (class_name != "UniPCMultistepScheduler") {
    return InvalidArgument(json.source(), ": _class_name is '", class_name,
                           "', expected UniPCMultistepScheduler");
  }
  UniPCMultistepSchedulerConfig c;
  ASSIGN_OR_RETURN(c.num_train_timesteps,
                   json.GetInt("num_train_timesteps", c.num_train_timesteps));
  RETURN_IF_ERROR(json.CheckPositive("num_train_timesteps", c.num_train_timesteps));
  ASSIGN_OR_RETURN(int64_t order, json.GetInt("solver_order", c.solver_order));
  if (order < 1 || order > 3) {
    return InvalidArgument(json.source(), ": solver_order must be 1, 2 or 3, got ", order);
  }
  c.solver_order = static_cast<int>(order);
  ASSIGN_OR_RETURN(std::string prediction, json.GetString("prediction_type", "epsilon"));
  ASSIGN_OR_RETURN(bool flow_sigmas, json.GetBool("use_flow_sigmas", false));
  if (prediction != "flow_prediction" || !flow_sigmas) {
    return absl::UnimplementedError(absl::StrCat(
        json.source(), ": prediction_type '", prediction, "' with use_flow_sigmas ",
        flow_sigmas ? "true" : "false",
        " is not supported (only flow_prediction with use_flow_sigmas true, as Wan uses)"));
  }
  ASSIGN_OR_RETURN(bool predict_x0, json.GetBool("predict_x0", true));
  if (!predict_x0) {
    // diffusers rejects flow_prediction without predict_x0 at the first step.
    return InvalidArgument(json.source(), ": predict_x0 must be true with flow_prediction");
  }
  ASSIGN_OR_RETURN(std::string solver_type, json.GetString("solver_type", "bh2"));
  if (solver_type == "bh1") {
    c.bh2 = false;
  } else if (solver_type == "bh2" || solver_type == "midpoint" || solver_type == "heun" ||
             solver_type == "logrho") {
    c.bh2 = true;  // diffusers maps the DPM-Solver names to bh2
  } else {
    return InvalidArgument(json.source(), ": solver_type must be 'bh1' or 'bh2', got '",
                           solver_type, "'");
  }
  ASSIGN_OR_RETURN(c.lower_order_final, json.GetBool("lower_order_final", c.lower_order_final));
  ASSIGN_OR_RETURN(std::vector<int64_t> disabled, json.GetIntList("disable_corrector", {}));
  for (int64_t d : disabled) c.disable_corrector.push_back(static_cast<int>(d));
  ASSIGN_OR_RETURN(c.flow_shift, json.GetDouble("flow_shift", c.flow_shift));
  if (!(c.flow_shift > 0) || !std::isfinite(c.flow_shift)) {
    return InvalidArgument(json.source(), ": flow_shift must be > 0, got ", c.flow_shift);
  }
  ASSIGN_OR_RETURN(std::string final_type, json.GetString("final_sigmas_type", "zero"));
  if (final_type != "zero" && final_type != "sigma_min") {
    return InvalidArgument(
        json.source(), ": final_sigmas_type must be 'zero' or 'sigma_min', got '", final_type, "'");
  }
  c.final_sigma_zero = final_type == "zero";
  ASSIGN_OR_RETURN(c.use_dynamic_shifting,
                   json.GetBool("use_dynamic_shifting", c.use_dynamic_shifting));
  ASSIGN_OR_RETURN(c.time_shift_type, json.GetString("time_shift_type", c.time_shift_type));
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear") {
    return InvalidArgument(json.source(),
                           ": time_shift_type must be 'exponential' or 'linear', got '",
                           c.time_shift_type, "'");
  }
  ASSIGN_OR_RETURN(c.shift_terminal, json.GetOptionalDouble("shift_terminal"));
  if (c.shift_terminal.has_value() && *c.shift_terminal == 1.0) {
    return InvalidArgument(json.source(), ": shift_terminal must not be 1");
  }
  for (const char* key :
       {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "thresholding"}) {
    ASSIGN_OR_RETURN(bool on, json.GetBool(key, false));
    if (on)
      return absl::UnimplementedError(absl::StrCat(json.source(), ": ", key, " is not supported"));
  }
  if (json.Has("solver_p")) {
    return absl::UnimplementedError(absl::StrCat(json.source(), ": solver_p is not supported"));
  }
  return c;
}

absl::StatusOr<UniPCMultistepSchedulerConfig> UniPCMultistepSchedulerConfig::FromFile(
    const std::string& path) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(path));
  return FromJson(json);
}

UniPCMultistepScheduler::UniPCMultistepScheduler(UniPCMultistepSchedulerConfig config)
    : config_(std::move(config)) {}

absl::Status UniPCMultistepScheduler::SetTimesteps(int n, std::optional<double> mu) {
  if (n < 1) return InvalidArgument("num_inference_steps must be >= 1, got ", n);
  if (config_.use_dynamic_shifting && !mu.has_value()) {
    return InvalidArgument("UniPCMultistepScheduler: mu is required with use_dynamic_shifting");
  }
  // np.linspace(1, 1 / T, n + 1)[:-1]: start + i * step, step = (stop - start) / n.
  const double start = 1.0;
  const double stop = 1.0 / static_cast<double>(config_.num_train_timesteps);
  const double step = (stop - start) / static_cast<double>(n);
  std::vector<double> s(n);
  for (int i = 0; i < n; ++i) s[i] = static_cast<double>(i) * step + start;
  if (config_.use_dynamic_shifting) {
    // time_shift(mu, 1.0, t): `(1 / t - 1) ** 1.0` is exact, so the power is left out.
    const double a = config_.time_shift_type == "exponential" ? std::exp(*mu) : *mu;
    for (double& t : s) t = a / (a + (1.0 / t - 1.0));
  } else {
    const double shift = config_.flow_shift;
    for (double& t : s) t = shift * t / (1.0 + (shift - 1.0) * t);
  }
  if (config_.shift_terminal.has_value() && *config_.shift_terminal != 0.0) {
    // stretch_shift_to_terminal.
    const double scale = (1.0 - s.back()) / (1.0 - *config_.shift_terminal);
    if (!(scale > 0.0) || !std::isfinite(scale)) {
      // diffusers divides by zero here and samples NaN; say why instead.
      return InvalidArgument("num_inference_steps = ", n,
                             " with shift_terminal = ", *config_.shift_terminal,
                             ": the shifted schedule ends at sigma ", s.back(),
                             " and cannot be stretched to the terminal value");
    }
    for (double& t : s) t = 1.0 - (1.0 - t) / scale;
  }
  constexpr double kEps = 1e-6;  // keeps log(alpha) finite at the first step
  if (std::fabs(s[0] - 1.0) < kEps) s[0] -= kEps;
  timesteps_.clear();
  sigmas_.clear();
  const double train_steps = static_cast<double>(config_.num_train_timesteps);
  for (double t : s) {
    timesteps_.push_back(static_cast<int64_t>(t * train_steps));  // truncation, as .to(int64)
    sigmas_.push_back(static_cast<float>(t));
  }
  sigmas_.push_back(config_.final_sigma_zero ? 0.0f : static_cast<float>(s.back()));
  sigmas_tensor_ =
      at::from_blob(sigmas_.data(), {static_cast<int64_t>(sigmas_.size())}, at::kFloat).clone();
  model_outputs_.assign(config_.solver_order, at::Tensor());
  last_sample_ = at::Tensor();
  lower_order_nums_ = 0;
  this_order_ = 0;
  step_index_ = 0;
  return absl::OkStatus();
}

at::Tensor UniPCMultistepScheduler::Sigma(int index) const { return sigmas_tensor_[index]; }

at::Tensor UniPCMultistepScheduler::ConvertModelOutput(const at::Tensor& model_output,
                                                       const at::Tensor& sample) const {
  // flow_prediction with predict_x0: x0 = sample - sigma_t * v.
  const at::Tensor sigma_t = Sigma(step_index_);
  return sample - sigma_t * model_output;
}

namespace {

// Flow sigmas: alpha_t = 1 - sigma, sigma_t = sigma; lambda = log(alpha) - log(sigma).
at::Tensor Lambda(const at::Tensor& sigma) { return at::log(1 - sigma) - at::log(sigma); }

// The solver's coefficients of one update: R (order x order), b (order), h_phi_1, B(h).
struct Coefficients {
  at::Tensor rks, R, b, h_phi_1, B_h;
};

Coefficients MakeCoefficients(std::vector<at::Tensor> rks, const at::Tensor& h, int order, bool bh2,
                              const at::Device& device) {
  rks.push_back(at::ones({}, at::TensorOptions().dtype(at::kFloat).device(device)));
  Coefficients c;
  c.rks = at::stack(rks);
  const at::Tensor hh = -h;  // predict_x0
  c.h_phi_1 = at::expm1(hh);
  at::Tensor h_phi_k = c.h_phi_1 / hh - 1;
  int64_t factorial_i = 1;
  c.B_h = bh2 ? at::expm1(hh) : hh;
  std::vector<at::Tensor> R, b;
  for (int i = 1; i <= order; ++i) {
    R.push_back(at::pow(c.rks, i - 1));
    b.push_back(h_phi_k * factorial_i / c.B_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / hh - 1.0 / static_cast<double>(factorial_i);
  }
  c.R = at::stack(R);
  c.b = at::stack(b);
  return c;
}

}  // namespace

// The terms the predictor and the corrector share: the step from sigmas()[s0] to sigmas()[t],
// and the differences to the older outputs at sigmas()[s0 - i], i = 1 .. order - 1 (diffusers'
// rks and D1s), with the solver's coefficients.
struct UniPCMultistepScheduler::Update {
  at::Tensor sigma_t, sigma_s0, alpha_t;
  std::vector<at::Tensor> D1s;
  Coefficients c;
};

UniPCMultistepScheduler::Update UniPCMultistepScheduler::MakeUpdate(
    int t, int s0, int order, const at::Device& device) const {
  Update u;
  const at::Tensor& m0 = model_outputs_.back();
  u.sigma_t = Sigma(t).to(device);
  u.sigma_s0 = Sigma(s0).to(device);
  u.alpha_t = 1 - u.sigma_t;
  const at::Tensor lambda_s0 = Lambda(u.sigma_s0);
  const at::Tensor h = Lambda(u.sigma_t) - lambda_s0;
  std::vector<at::Tensor> rks;
  for (int i = 1; i < order; ++i) {
    const at::Tensor& mi = model_outputs_[model_outputs_.size() - 1 - i];
    const at::Tensor rk = (Lambda(Sigma(s0 - i).to(device)) - lambda_s0) / h;
    rks.push_back(rk);
    u.D1s.push_back((mi - m0) / rk);
  }
  u.c = MakeCoefficients(rks, h, order, config_.bh2, device);
  return u;
}

at::Tensor UniPCMultistepScheduler::Predict(const at::Tensor& sample, int order) const {
  const at::Device device = sample.device();
  const at::Tensor& m0 = model_outputs_.back();
  const at::Tensor& x = sample;
  const Update u = MakeUpdate(step_index_ + 1, step_index_, order, device);
  const at::Tensor x_t_ = u.sigma_t / u.sigma_s0 * x - u.alpha_t * u.c.h_phi_1 * m0;
  at::Tensor x_t;
  if (!u.D1s.empty()) {
    at::Tensor rhos_p;
    if (order == 2) {
      rhos_p = at::ones({1}, x.options()) * 0.5;
    } else {
      using at::indexing::Slice;
      rhos_p =
          at::linalg_solve(u.c.R.index({Slice(0, -1), Slice(0, -1)}), u.c.b.index({Slice(0, -1)}))
              .to(device)
              .to(x.scalar_type());
    }
    const at::Tensor pred_res = at::einsum("k,bkc...->bc...", {rhos_p, at::stack(u.D1s, 1)});
    x_t = x_t_ - u.alpha_t * u.c.B_h * pred_res;
  } else {
    x_t = x_t_ - u.alpha_t * u.c.B_h * 0;
  }
  return x_t.to(x.scalar_type());
}

at::Tensor UniPCMultistepScheduler::Correct(const at::Tensor& this_model_output,
                                            const at::Tensor& last_sample,
                                            const at::Tensor& this_sample, int order) const {
  const at::Device device = this_sample.device();
  const at::Tensor& m0 = model_outputs_.back();
  const at::Tensor& x = last_sample;
  const Update u = MakeUpdate(step_index_, step_index_ - 1, order, device);
  const at::Tensor rhos_c = order == 1
                                ? at::ones({1}, x.options()) * 0.5
                                : at::linalg_solve(u.c.R, u.c.b).to(device).to(x.scalar_type());
  const at::Tensor x_t_ = u.sigma_t / u.sigma_s0 * x - u.alpha_t * u.c.h_phi_1 * m0;
  const at::Tensor last_term = rhos_c[-1] * (this_model_output - m0);  // rhos_c[-1] * D1_t
  at::Tensor x_t;
  if (!u.D1s.empty()) {
    using at::indexing::Slice;
    const at::Tensor corr_res =
        at::einsum("k,bkc...->bc...", {rhos_c.index({Slice(0, -1)}), at::stack(u.D1s, 1)});
    x_t = x_t_ - u.alpha_t * u.c.B_h * (corr_res + last_term);
  } else {
    x_t = x_t_ - u.alpha_t * u.c.B_h * (last_term + 0);  // diffusers: 0 + rhos_c[-1] * D1_t
  }
  return x_t.to(x.scalar_type());
}

absl::StatusOr<at::Tensor> UniPCMultistepScheduler::Step(const at::Tensor& model_output,
                                                         const at::Tensor& sample) {
  if (sigmas_.empty())
    return FailedPrecondition("UniPCMultistepScheduler: SetTimesteps not called");
  if (step_index_ >= num_inference_steps()) {
    return absl::OutOfRangeError(
        absl::StrCat("UniPCMultistepScheduler: all ", num_inference_steps(), " steps are taken"));
  }
  return TorchCall("UniPCMultistepScheduler.Step", [&]() -> absl::StatusOr<at::Tensor> {
    if (!model_output.sizes().equals(sample.sizes())) {
      return InvalidArgument("UniPCMultistepScheduler.Step: model output [",
                             absl::StrJoin(model_output.sizes(), ", "), "] and sample [",
                             absl::StrJoin(sample.sizes(), ", "), "] differ");
    }
    const bool use_corrector =
        step_index_ > 0 &&
        std::find(config_.disable_corrector.begin(), config_.disable_corrector.end(),
                  step_index_ - 1) == config_.disable_corrector.end() &&
        last_sample_.defined();
    const at::Tensor converted = ConvertModelOutput(model_output, sample);
    at::Tensor x = sample;
    if (use_corrector) x = Correct(converted, last_sample_, sample, this_order_);
    std::rotate(model_outputs_.begin(), model_outputs_.begin() + 1, model_outputs_.end());
    model_outputs_.back() = converted;
    int order = config_.solver_order;
    if (config_.lower_order_final) order = std::min(order, num_inference_steps() - step_index_);
    this_order_ = std::min(order, lower_order_nums_ + 1);  // warm-up of the multistep history
    last_sample_ = x;
    at::Tensor prev = Predict(x, this_order_);
    if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
    ++step_index_;
    return prev;
  });
}

}  // namespace dgrid
