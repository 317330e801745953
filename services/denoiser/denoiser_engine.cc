#include "services/denoiser/denoiser_engine.h"

#include <algorithm>
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
#include "families/registry.h"
#include "services/denoiser/batched_sampler.h"

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
  ASSIGN_OR_RETURN(engine->family_, families::FindFamily(engine->limits_.family));
  ASSIGN_OR_RETURN(engine->denoiser_, LoadFamilyDenoiser(*engine->family_, index, options.load));
  RETURN_IF_ERROR(ReadTestSeams(&engine->test_pause_prefix_, &engine->test_pause_,
                                &engine->test_throw_prefix_, &engine->test_throw_oom_));
  int threads = options.workers;
  if (options.max_batch > 1) {
    if (engine->denoiser_->NewBatch(/*sp=*/nullptr) == nullptr) {
      DG_LOG_INFO("", "--max-batch %d ignored: the %s family's requests run unbatched",
                  options.max_batch, engine->limits_.family);
    } else {
      // One queue thread per request a batch may hold: each waits in StepBatcher::Run.
      threads = options.workers * options.max_batch;
    }
  }
  engine->queue_ = std::make_unique<WorkQueue>(
      WorkQueue::Options{"denoiser", threads, options.max_queued, options.earliest_deadline_first});
  if (threads != options.workers) {
    WorkQueue* queue = engine->queue_.get();
    engine->batcher_ = std::make_unique<StepBatcher>(
        *engine->denoiser_,
        StepBatcher::Options{options.max_batch, options.batch_wait, options.workers,
                             options.earliest_deadline_first},
        [queue](absl::Time deadline) { return queue->TakeEarlierThan(deadline); });
    DG_LOG_INFO("",
                "step batching: up to %d requests per batch, %d batch(es) at once, %.0f ms wait",
                options.max_batch, options.workers, absl::ToDoubleMilliseconds(options.batch_wait));
  }
  DG_LOG_INFO("", "denoiser loaded %s (%s) from %s on %s", engine->limits_.name,
              engine->limits_.family, index.root, options.load.device);
  return engine;
}

absl::StatusOr<at::Tensor> DenoiserEngine::Denoise(const DenoiseInput& input,
                                                   const CancellationToken& token,
                                                   const OnStep& on_step,
                                                   const OnPreview& on_preview,
                                                   const OnCachedStep& on_cached_step) const {
  const int multiple = limits_.vae_scale_factor * family_->defaults().patch_size;
  for (auto [field, value, max] :
       {std::tuple<const char*, int, int>{"width", input.width, limits_.max_width},
        {"height", input.height, limits_.max_height}}) {
    if (value < multiple || value > max || value % multiple != 0) {
      return InvalidArgument(field, " = ", value, " must be a multiple of ", multiple, " in [",
                             multiple, ", ", max, "]");
    }
  }
  if (input.num_frames < 1 || input.num_frames > limits_.max_num_frames) {
    return InvalidArgument("num_frames = ", input.num_frames, " is outside [1, ",
                           limits_.max_num_frames, "]");
  }
  if (input.num_inference_steps < 1 || input.num_inference_steps > 1000) {
    return InvalidArgument("num_inference_steps = ", input.num_inference_steps,
                           " is outside [1, 1000]");
  }
  if (!std::isfinite(input.guidance_scale) || !std::isfinite(input.true_cfg_scale) ||
      !std::isfinite(input.guidance_scale_2.value_or(0))) {
    return InvalidArgument("guidance_scale, guidance_scale_2 and true_cfg_scale must be finite");
  }
  RETURN_IF_ERROR(denoiser_->Check(input));
  SamplerHooks hooks;
  absl::Status stop_reason;
  int steps_reported = 0;
  bool test_pause_logged = false;
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
      // The first wait is logged: the event a test waits for before acting on a held request.
      if (!test_pause_logged) {
        test_pause_logged = true;
        DG_LOG_INFO(input.request_id, "%s: holding the request after step %d",
                    kTestStepPauseVariable, steps_reported);
      }
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
  if (on_preview && !input.preview_steps.empty()) {
    hooks.wants_preview = [&input](int step) {
      return std::find(input.preview_steps.begin(), input.preview_steps.end(), step + 1) !=
             input.preview_steps.end();
    };
    hooks.on_preview = [&on_preview](int step, const at::Tensor& latents) {
      on_preview(step + 1, latents);
    };
  }
  if (on_cached_step) hooks.on_cached_step = [&](int step) { on_cached_step(step + 1); };
  absl::StatusOr<at::Tensor> latents = batcher_  ? batcher_->Run(input, hooks, token)
                                       : runner_ ? runner_(input, hooks)
                                                 : denoiser_->Run(input, hooks, /*sp=*/nullptr);
  // The sampler reports CANCELLED for any stop; say which one it was.
  if (!latents.ok() && !stop_reason.ok()) return stop_reason;
  return latents;
}

void DenoiserEngine::SetRunner(Runner runner, StepBatcher::Backend batch) {
  runner_ = std::move(runner);
  if (batcher_ == nullptr) return;
  const StepBatcher::Options options = batcher_->options();
  batcher_.reset();  // no request has come yet: its lanes are idle
  if (!batch.new_batch) {
    DG_LOG_WARN("", "--max-batch %d ignored: the %s family's requests run unbatched in a group",
                options.max_batch, limits_.family);
    return;
  }
  batch.run_alone = runner_;
  WorkQueue* queue = queue_.get();
  batcher_ = std::make_unique<StepBatcher>(
      *denoiser_, options,
      [queue](absl::Time deadline) { return queue->TakeEarlierThan(deadline); }, std::move(batch));
  DG_LOG_INFO("", "step batching over the denoiser group: up to %d requests per batch",
              options.max_batch);
}

absl::Status DenoiserEngine::Warmup(const std::vector<std::pair<int, int>>& resolutions) {
  for (const auto& [width, height] : resolutions) {
    ASSIGN_OR_RETURN(DenoiseInput input, denoiser_->WarmupInput(width, height, limits_));
    input.request_id = absl::StrCat("warmup-", width, "x", height);
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

absl::Status DenoiserEngine::Enqueue(DenoiseInput input, OnStep on_step, Done done,
                                     OnPreview on_preview, OnCachedStep on_cached_step) {
  std::string id = input.request_id;
  const absl::Time deadline = input.deadline;
  return EnqueueForResult<at::Tensor>(
      *queue_, std::move(id), deadline, std::move(input),
      [this, on_step = std::move(on_step), on_preview = std::move(on_preview),
       on_cached_step = std::move(on_cached_step)](const DenoiseInput& in,
                                                   const CancellationToken& token) {
        return Denoise(in, token, on_step, on_preview, on_cached_step);
      },
      std::move(done));
}

}  // namespace dgrid
