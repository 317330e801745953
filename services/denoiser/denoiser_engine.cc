#include "services/denoiser/denoiser_engine.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/sampler.h"

namespace dgrid {
namespace {

constexpr char kTestStepPauseVariable[] = "DGRID_TEST_STEP_PAUSE";
constexpr char kTestStepThrowVariable[] = "DGRID_TEST_STEP_THROW";

// Reads a test seam's "<request-id prefix>:<value>" from the environment: false when unset or
// empty; INVALID_ARGUMENT naming the variable and `form` when malformed.
absl::StatusOr<bool> ReadTestSeam(const char* variable, const char* form, std::string* prefix,
                                  std::string* value) {
  const char* text = std::getenv(variable);
  if (text == nullptr || *text == '\0') return false;
  const absl::string_view all(text);
  const size_t colon = all.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || colon + 1 == all.size()) {
    return InvalidArgument(variable, " = '", all, "' must be <request-id prefix>:", form);
  }
  *prefix = std::string(all.substr(0, colon));
  *value = std::string(all.substr(colon + 1));
  return true;
}

absl::Status ReadTestSeams(std::string* pause_prefix, absl::Duration* pause,
                           std::string* throw_prefix, bool* throw_oom) {
  std::string value;
  ASSIGN_OR_RETURN(bool pausing,
                   ReadTestSeam(kTestStepPauseVariable, "<milliseconds>", pause_prefix, &value));
  int64_t ms = 0;
  if (pausing && (!absl::SimpleAtoi(value, &ms) || ms <= 0)) {
    return InvalidArgument(kTestStepPauseVariable, ": '", value, "' is not a number of ms > 0");
  }
  *pause = absl::Milliseconds(ms);
  ASSIGN_OR_RETURN(bool throwing,
                   ReadTestSeam(kTestStepThrowVariable, "oom|error", throw_prefix, &value));
  if (throwing && value != "oom" && value != "error") {
    return InvalidArgument(kTestStepThrowVariable, ": '", value, "' must be oom or error");
  }
  *throw_oom = value == "oom";
  for (const auto& [variable, prefix] :
       {std::pair<const char*, const std::string*>{kTestStepPauseVariable, pause_prefix},
        {kTestStepThrowVariable, throw_prefix}}) {
    if (!prefix->empty()) {
      DG_LOG_WARN("", "test seam %s is set: requests '%s*' are affected", variable, *prefix);
    }
  }
  return absl::OkStatus();
}

}  // namespace

DenoiserEngine::~DenoiserEngine() {
  if (queue_) queue_->Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<DenoiserEngine>> DenoiserEngine::Create(
    const DenoiserEngineOptions& options) {
  std::unique_ptr<DenoiserEngine> engine(new DenoiserEngine());
  ASSIGN_OR_RETURN(engine->limits_, ReadModelLimits(options.model_path));
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(options.model_path));
  ASSIGN_OR_RETURN(std::string transformer_dir, index.ComponentPath("transformer"));
  ASSIGN_OR_RETURN(FluxTransformer2DModel model,
                   FluxTransformer2DModel::Load(transformer_dir, options.load));
  engine->model_.emplace(std::move(model));
  ASSIGN_OR_RETURN(std::string scheduler_dir, index.ComponentPath("scheduler"));
  ASSIGN_OR_RETURN(engine->scheduler_, FlowMatchEulerSchedulerConfig::FromFile(
                                           scheduler_dir + "/scheduler_config.json"));
  RETURN_IF_ERROR(ReadTestSeams(&engine->test_pause_prefix_, &engine->test_pause_,
                                &engine->test_throw_prefix_, &engine->test_throw_oom_));
  engine->queue_ = std::make_unique<WorkQueue>(WorkQueue::Options{
      "denoiser", options.workers, options.max_queued, options.earliest_deadline_first});
  DG_LOG_INFO("", "denoiser loaded %s from %s on %s", engine->limits_.name, index.root,
              options.load.device);
  return engine;
}

absl::StatusOr<at::Tensor> DenoiserEngine::Denoise(const DenoiseInput& input,
                                                   const CancellationToken& token,
                                                   const OnStep& on_step) const {
  const int multiple = 2 * limits_.vae_scale_factor;
  for (auto [field, value, max] :
       {std::tuple<const char*, int, int>{"width", input.width, limits_.max_width},
        {"height", input.height, limits_.max_height}}) {
    if (value < multiple || value > max || value % multiple != 0) {
      return InvalidArgument(field, " = ", value, " must be a multiple of ", multiple, " in [",
                             multiple, ", ", max, "]");
    }
  }
  if (input.num_inference_steps < 1 || input.num_inference_steps > 1000) {
    return InvalidArgument("num_inference_steps = ", input.num_inference_steps,
                           " is outside [1, 1000]");
  }
  if (!std::isfinite(input.guidance_scale) || !std::isfinite(input.true_cfg_scale)) {
    return InvalidArgument("guidance_scale and true_cfg_scale must be finite");
  }
  if (input.true_cfg_scale > 1 && !input.negative_prompt_embeds.defined()) {
    return InvalidArgument("true_cfg_scale > 1 needs negative prompt embeddings");
  }
  FluxSamplerRequest request;
  request.request_id = input.request_id;
  request.width = input.width;
  request.height = input.height;
  request.num_inference_steps = input.num_inference_steps;
  request.seed = input.seed;
  request.guidance_scale = input.guidance_scale;
  request.true_cfg_scale = input.true_cfg_scale;
  request.vae_scale_factor = limits_.vae_scale_factor;
  auto on_device = [&](const at::Tensor& t) {
    return t.defined() ? t.to(model_->options().device()) : t;
  };
  request.prompt_embeds = on_device(input.prompt_embeds);
  request.pooled_prompt_embeds = on_device(input.pooled_prompt_embeds);
  request.negative_prompt_embeds = on_device(input.negative_prompt_embeds);
  request.negative_pooled_prompt_embeds = on_device(input.negative_pooled_prompt_embeds);
  FluxSamplerHooks hooks;
  absl::Status stop_reason;
  int steps_reported = 0;
  const bool test_pause =
      !test_pause_prefix_.empty() && absl::StartsWith(input.request_id, test_pause_prefix_);
  const bool test_throw =
      !test_throw_prefix_.empty() && absl::StartsWith(input.request_id, test_throw_prefix_);
  hooks.is_cancelled = [&] {
    if (test_throw && steps_reported > 0) {
      // The DGRID_TEST_STEP_THROW seam: LibTorch's own exception, from inside the sampler loop.
      if (test_throw_oom_) {
        TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory (", kTestStepThrowVariable,
                         ")");
      }
      TORCH_CHECK(false, "a model step failed (", kTestStepThrowVariable, ")");
    }
    if (test_pause && steps_reported > 0) {
      // The DGRID_TEST_STEP_PAUSE seam: wait, but never past a stop or a preempting arrival.
      const absl::Time end = absl::Now() + test_pause_;
      while (absl::Now() < end && token.Check().ok() && !queue_->HasEarlierThan(token.deadline())) {
        absl::SleepFor(absl::Milliseconds(2));
      }
    }
    stop_reason = token.Check();
    return !stop_reason.ok();
  };
  static metrics::Histogram* const step_seconds = metrics::Registry::Global().GetHistogram(
      "dgrid_denoise_step_seconds", "Time of one sampler step (seconds)", {{"stage", "denoiser"}},
      metrics::StepBuckets());
  // Step-level preemption (an earliest-deadline-first queue only): a queued request due before
  // this one runs first.
  hooks.take_preempting = [this, &input, deadline = token.deadline()] {
    std::function<void()> first = queue_->TakeEarlierThan(deadline);
    if (first) DG_LOG_INFO(input.request_id, "a request due sooner runs first, between steps");
    return first;
  };
  hooks.on_step = [&](int step, int total, double seconds) {
    ++steps_reported;
    step_seconds->Observe(seconds);
    if (on_step) on_step(step + 1, total, seconds);
  };
  absl::StatusOr<at::Tensor> latents =
      sampler_ ? sampler_(request, hooks) : RunFluxSampler(*model_, scheduler_, request, hooks);
  // The sampler reports CANCELLED for any stop; say which one it was.
  if (!latents.ok() && !stop_reason.ok()) return stop_reason;
  return latents;
}

absl::Status DenoiserEngine::Warmup(const std::vector<std::pair<int, int>>& resolutions) {
  const FluxTransformerConfig& c = model_->config();
  const at::TensorOptions opts = model_->options();
  for (const auto& [width, height] : resolutions) {
    DenoiseInput input;
    input.request_id = absl::StrCat("warmup-", width, "x", height);
    input.width = width;
    input.height = height;
    input.num_inference_steps = 2;
    input.guidance_scale = limits_.default_guidance;
    ASSIGN_OR_RETURN(
        input.prompt_embeds, TorchCall("denoiser warm-up inputs", [&] {
          return at::zeros({1, limits_.max_sequence_length, c.joint_attention_dim}, opts);
        }));
    ASSIGN_OR_RETURN(input.pooled_prompt_embeds, TorchCall("denoiser warm-up inputs", [&] {
                       return at::zeros({1, c.pooled_projection_dim}, opts);
                     }));
    const absl::Time start = absl::Now();
    absl::StatusOr<at::Tensor> out = Denoise(input, CancellationToken(), nullptr);
    if (!out.ok()) {
      return absl::Status(out.status().code(), absl::StrCat("--warmup-resolutions ", width, "x",
                                                            height, ": ", out.status().message()));
    }
    DG_LOG_INFO("", "warm-up %dx%d: 2 steps in %.0f ms", width, height,
                absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  return absl::OkStatus();
}

absl::Status DenoiserEngine::Enqueue(DenoiseInput input, OnStep on_step, Done done) {
  std::string id = input.request_id;
  const absl::Time deadline = input.deadline;
  return EnqueueForResult<at::Tensor>(
      *queue_, std::move(id), deadline, std::move(input),
      [this, on_step = std::move(on_step)](const DenoiseInput& in, const CancellationToken& token) {
        return Denoise(in, token, on_step);
      },
      std::move(done));
}

}  // namespace dgrid
