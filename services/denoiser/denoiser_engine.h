// The denoiser stage on one process: the FLUX transformer, its scheduler and the sampler loop
// behind a bounded work queue. In a denoiser group the leader's engine runs its requests through
// the group instead (SetSampler; services/denoiser/group/denoiser_group.h).
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
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler.h"
#include "services/denoiser/schedulers/flow_match_euler.h"

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
};

struct DenoiseInput {
  std::string request_id;
  int width = 0;
  int height = 0;
  int num_inference_steps = 0;
  double guidance_scale = families::flux::kFluxDefaults.guidance_scale;
  double true_cfg_scale = families::flux::kFluxDefaults.true_cfg_scale;
  uint64_t seed = 0;
  at::Tensor prompt_embeds;
  at::Tensor pooled_prompt_embeds;
  at::Tensor negative_prompt_embeds;         // Used when true_cfg_scale > 1.
  at::Tensor negative_pooled_prompt_embeds;  // Likewise.
  absl::Time deadline = absl::InfiniteFuture();
};

class DenoiserEngine {
 public:
  // step is 1-based.
  using OnStep = std::function<void(int step, int total, double step_seconds)>;
  using Done = std::function<void(absl::StatusOr<at::Tensor>)>;

  static absl::StatusOr<std::unique_ptr<DenoiserEngine>> Create(
      const DenoiserEngineOptions& options);
  ~DenoiserEngine();

  const ModelLimits& limits() const { return limits_; }
  const FluxTransformer2DModel& model() const { return *model_; }
  const FlowMatchEulerSchedulerConfig& scheduler() const { return scheduler_; }

  // Replaces the single-process sampler call (denoiser groups: the leader's DenoiserGroup hands the
  // request to its peers and runs the loop with them). Set once, before the first request.
  using Sampler =
      std::function<absl::StatusOr<at::Tensor>(const FluxSamplerRequest&, const FluxSamplerHooks&)>;
  void SetSampler(Sampler sampler) { sampler_ = std::move(sampler); }

  // Runs the loop on the calling thread and returns the final latents (CPU copy not made: on the
  // model's device). INVALID_ARGUMENT names the field for a width or height outside the limits or
  // not a multiple of 2 x vae_scale_factor, steps outside [1, 1000], a non-finite guidance scale, a
  // missing negative embedding with true CFG; CANCELLED / DEADLINE_EXCEEDED between steps.
  absl::StatusOr<at::Tensor> Denoise(const DenoiseInput& input, const CancellationToken& token,
                                     const OnStep& on_step) const;

  absl::Status Enqueue(DenoiseInput input, OnStep on_step, Done done);

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
  std::optional<FluxTransformer2DModel> model_;
  FlowMatchEulerSchedulerConfig scheduler_;
  std::unique_ptr<WorkQueue> queue_;
  Sampler sampler_;
  // DGRID_TEST_STEP_PAUSE / DGRID_TEST_STEP_THROW (see the top of this file); empty prefix: off.
  std::string test_pause_prefix_;
  absl::Duration test_pause_ = absl::ZeroDuration();
  std::string test_throw_prefix_;
  bool test_throw_oom_ = false;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_DENOISER_ENGINE_H_
