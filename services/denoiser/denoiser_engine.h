// The denoiser stage on one process: a model family's transformer, scheduler and sampling loop (a
// FamilyDenoiser, services/denoiser/family_denoiser.h, chosen by model_index.json's
// "_class_name") behind a bounded work queue. In a denoiser group the leader's engine runs its
// requests through the group instead (SetRunner; services/denoiser/group/denoiser_group.h), which
// runs the family's loop on every rank.
//
// Requests are checked against the model's ModelLimits (common/model_limits.h).
//
// Test seam: with DGRID_TEST_STEP_PAUSE="<request-id prefix>:<milliseconds>" in the environment,
// a request whose id starts with the prefix waits that long before each of its steps once one
// step has been reported (on CPU from the second step; on a GPU, where step i is reported once
// step i + 1 is queued, from the third). The wait ends at once when the request is cancelled,
// passes its deadline, or (edf) a request due sooner is queued, so cancellation, deadlines and
// preemption behave as without it. Likewise DGRID_TEST_STEP_THROW="<request-id prefix>:oom|error"
// makes such a request throw LibTorch's c10::OutOfMemoryError (oom) or c10::Error (error) from
// inside the sampler loop, at the first of those points, as a failing kernel would. The end-to-end
// tests use them to hold a request mid-denoise whatever the machine's speed, and to fail one;
// nothing else should set them, and the engine logs a warning when one is set. (A group's leader
// that throws leaves its peers waiting until the group timeout: use the throw seam on one-process
// denoisers.)
//
// Threads: Denoise and Enqueue may be called from any thread; Denoise runs on (and calls on_step
// from) the calling thread, Enqueue's callbacks run on worker threads.
#ifndef DGRID_SERVICES_DENOISER_DENOISER_ENGINE_H_
#define DGRID_SERVICES_DENOISER_DENOISER_ENGINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_limits.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"
#include "services/denoiser/family_denoiser.h"
#include "services/denoiser/step_batcher.h"

namespace dgrid {

struct DenoiserEngineOptions {
  std::string model_path;
  LoadOptions load;
  int workers = 1;
  int max_queued = 8;
  // --scheduling edf: the queue serves the earliest deadline first, and before every sampler
  // step a queued request with an earlier deadline than the running one runs first, to
  // completion, on the same thread (step-level preemption; planner/scheduling.h).
  bool earliest_deadline_first = false;
  // --max-batch / --batch-wait-ms: continuous batching at step boundaries (step_batcher.h). 1:
  // every request runs its own loop (unbatched). Above 1, requests with equal batch keys share
  // one forward per step, up to max_batch per batch and `workers` batches at once; a lone request
  // waits up to batch_wait for company. FLUX and Wan batch; a family without batching ignores it,
  // with a log line; a denoiser group's leader batches through the group (SetRunner).
  int max_batch = 1;
  absl::Duration batch_wait = absl::ZeroDuration();
};

class DenoiserEngine {
 public:
  // step is 1-based.
  using OnStep = std::function<void(int step, int total, double step_seconds)>;
  using Done = std::function<void(absl::StatusOr<at::Tensor>)>;
  // A preview's step (1-based) and the clean-latent estimate there (DenoiseInput::preview_steps).
  using OnPreview = std::function<void(int step, const at::Tensor& latents)>;
  // A step (1-based) that reused the step cache (DenoiseInput::cache), before its OnStep.
  using OnCachedStep = std::function<void(int step)>;

  static absl::StatusOr<std::unique_ptr<DenoiserEngine>> Create(
      const DenoiserEngineOptions& options);
  ~DenoiserEngine();

  const ModelLimits& limits() const { return limits_; }
  const families::ModelFamily& family() const { return *family_; }
  // The family's denoiser (a denoiser group's ranks run its loop).
  const FamilyDenoiser& family_denoiser() const { return *denoiser_; }

  // Replaces the family's loop on this process by `runner` (a denoiser group's leader:
  // DenoiserGroup::RunRequest, which runs the loop on every rank). Requests are checked as before
  // and reach `runner` with the engine's hooks. With --max-batch > 1 and `batch.new_batch` set (the
  // group's batches, DenoiserGroup::BatchBackend) requests with a batch key run in those batches
  // and the batcher's lone requests go to `runner`; without it they all reach `runner` unbatched
  // (--max-batch ignored, with a log line). Set once, before the first request.
  using Runner =
      std::function<absl::StatusOr<at::Tensor>(const DenoiseInput&, const SamplerHooks&)>;
  void SetRunner(Runner runner, StepBatcher::Backend batch = {});
  // The step batcher (--max-batch > 1 on a family that batches), or null.
  const StepBatcher* batcher() const { return batcher_.get(); }

  // Runs the loop on the calling thread and returns the final latents (CPU copy not made: on the
  // model's device). INVALID_ARGUMENT names the field for a width or height outside the limits or
  // not a multiple of vae_scale_factor x patch_size, frames outside [1, max_num_frames], steps
  // outside [1, 1000], a non-finite guidance scale, and what the family's Check refuses (a
  // missing embedding, a negative one missing under CFG); CANCELLED / DEADLINE_EXCEEDED between
  // steps.
  absl::StatusOr<at::Tensor> Denoise(const DenoiseInput& input, const CancellationToken& token,
                                     const OnStep& on_step, const OnPreview& on_preview = nullptr,
                                     const OnCachedStep& on_cached_step = nullptr) const;

  absl::Status Enqueue(DenoiseInput input, OnStep on_step, Done done,
                       OnPreview on_preview = nullptr, OnCachedStep on_cached_step = nullptr);

  // Before serving (--warmup-resolutions): runs a two-step request at each (width, height) with
  // zero prompt embeddings, so the first real request at that size does not pay for kernel
  // selection, allocator growth or lazy initialisation. INVALID_ARGUMENT naming the resolution
  // when the model cannot make it; other errors as Denoise.
  absl::Status Warmup(const std::vector<std::pair<int, int>>& resolutions);
  absl::Status Cancel(absl::string_view request_id) { return queue_->Cancel(request_id); }
  int Position(absl::string_view request_id) const { return queue_->Position(request_id); }
  void Shutdown(absl::Duration drain) { queue_->Shutdown(drain); }
  int queued() const { return queue_->queued(); }
  int running() const { return queue_->running(); }

 private:
  DenoiserEngine() = default;
  ModelLimits limits_;
  const families::ModelFamily* family_ = nullptr;
  std::unique_ptr<FamilyDenoiser> denoiser_;
  Runner runner_;  // empty: denoiser_->Run on this process
  std::unique_ptr<WorkQueue> queue_;
  // After queue_: destroyed first (the engine shuts the queue down before), while its lanes may
  // still ask queue_ for preempting work.
  std::unique_ptr<StepBatcher> batcher_;
  // DGRID_TEST_STEP_PAUSE / DGRID_TEST_STEP_THROW (see the top of this file); empty prefix: off.
  std::string test_pause_prefix_;
  absl::Duration test_pause_ = absl::ZeroDuration();
  std::string test_throw_prefix_;
  bool test_throw_oom_ = false;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_DENOISER_ENGINE_H_
