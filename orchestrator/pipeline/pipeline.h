// Pipeline: the orchestrator's request engine. Validates a GenerateRequest, admits it through a
// bounded queue, and runs its state machine  accepted -> [queued] -> encode -> denoise -> decode ->
// result  on the stage workers chosen by the registry's placement policy. The gRPC and HTTP front
// ends both adapt to this class; nothing here knows about either.
//
// Guarantees:
//  - Submit either fails at once (nothing is reported to the observer) or accepts the request; an
//    accepted request reports its events in order and then OnDone exactly once, with OK after the
//    result event or with an explicit error. No accepted request is lost, including on shutdown.
//  - Admission is bounded: at most max_inflight requests run stage calls and max_queued wait;
//  beyond
//    that Submit answers RESOURCE_EXHAUSTED at once.
//  - Encode and Decode failing UNAVAILABLE are retried once on another replica, Denoise too while
//  no
//    step event came back; the failing worker leaves rotation until its next good heartbeat.
//  - The request's deadline (the shorter of the client's and GenerateRequest.deadline_ms) bounds
//  the
//    queue wait and is set on every stage call.
//  - Cancel(id) (and a front end's disconnect) cancels the running stage call; the request ends
//    CANCELLED.
//  - TensorRefs from one stage are handed to the next unchanged; tensor bytes are never decoded
//  here.
//
// Threads: each accepted request runs on its own thread (the admission bound limits their number);
// observers are called from that thread. Every public method is thread-safe.
#ifndef DGRID_ORCHESTRATOR_PIPELINE_PIPELINE_H_
#define DGRID_ORCHESTRATOR_PIPELINE_PIPELINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/step_cache.h"
#include "dgrid/v1/generation.pb.h"
#include "dgrid/v1/stages.pb.h"
#include "orchestrator/pipeline/stage_channels.h"
#include "orchestrator/registry/clock.h"
#include "orchestrator/registry/worker_registry.h"

namespace dgrid::orchestrator {

// Receives one request's progress. Called from the request's thread, one call at a time.
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // accepted, queued*, encoded, step*, decoded, result — in this order.
  virtual void OnEvent(const dgrid::v1::GenerateEvent& event) = 0;
  // Called once, last. OK only after the result event.
  virtual void OnDone(const absl::Status& status) = 0;
};

struct PipelineOptions {
  // Requests running stage calls at once, >= 1.
  int max_inflight = 64;
  // Requests waiting for admission, >= 0.
  int max_queued = 256;
  // Model used when GenerateRequest.model is empty; empty: the first served model by name.
  std::string default_model;
  // Bound on a video request's frames x width x height; 0: each family's default
  // (request_validation.h).
  int64_t max_video_pixels = 0;
  // How the decoder makes a request's previews (GenerateRequest.preview_images): docs/api.md
  // compares the two.
  dgrid::v1::PreviewMode preview_mode = dgrid::v1::PREVIEW_MODE_LATENT_RGB;
  // --step-cache: the step caching of a request that sets no GenerateRequest.cache, on models
  // whose family has it (FLUX, Wan; others run uncached); method none: off.
  StepCacheConfig step_cache;
};

class RequestRun;

class Pipeline {
 public:
  // `registry`, `channels` and `clock` are not owned and must outlive the pipeline.
  Pipeline(WorkerRegistry* registry, StageChannels* channels, const Clock* clock,
           PipelineOptions options);
  // Stops accepting, cancels what still runs and waits for every request thread.
  ~Pipeline();

  // Validates `request` (INVALID_ARGUMENT / NOT_FOUND naming the field), fills defaults, and admits
  // it (RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while draining, ALREADY_EXISTS for a
  // request id that is running). `client_deadline` is the caller's own deadline (InfiniteFuture for
  // none). On success returns the request id and the observer will be called.
  absl::StatusOr<std::string> Submit(dgrid::v1::GenerateRequest request, absl::Time client_deadline,
                                     std::shared_ptr<RequestObserver> observer);

  // Cancels an accepted request that has not finished. NOT_FOUND for unknown or finished ids.
  absl::Status Cancel(absl::string_view request_id);

  // The model a request naming `model` (empty: the default model) would run on, as Submit resolves
  // it (NOT_FOUND / UNAVAILABLE naming the field "model").
  absl::StatusOr<dgrid::v1::ModelInfo> ResolveModel(absl::string_view model) const;

  // Models that a complete set of stages serves, then those that miss a stage now
  // (WorkerRegistry::ListedModels; `unavailable` set).
  std::vector<dgrid::v1::ModelInfo> ListModels() const { return registry_->ListedModels(); }

  // Draining: Submit answers UNAVAILABLE from now on.
  void StopAccepting();
  // Waits until no accepted request is left or `timeout` passes; returns whether it is idle.
  bool WaitIdle(absl::Duration timeout);
  // Cancels every accepted request.
  void CancelAll();

  // Requests accepted and not finished (running + queued).
  int ActiveCount() const;

 private:
  friend class RequestRun;

  using QueueKey = std::tuple<int, uint64_t>;  // (-priority, arrival sequence)

  absl::StatusOr<std::string> SubmitOrReject(dgrid::v1::GenerateRequest request,
                                             absl::Time client_deadline,
                                             std::shared_ptr<RequestObserver> observer);

  // Called by a queued request's thread: blocks until it is admitted (OK), cancelled, or past its
  // deadline. `on_position` is called whenever its queue position changes.
  absl::Status WaitForAdmission(RequestRun* run, QueueKey key,
                                const std::function<void(int)>& on_position);
  // Called by a request's thread when it ends (after its last stage call, before OnDone).
  void Finish(RequestRun* run, bool admitted, QueueKey key);
  void ReapFinishedThreads() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  WorkerRegistry* const registry_;
  StageChannels* const channels_;
  const Clock* const clock_;
  const PipelineOptions options_;

  mutable absl::Mutex mutex_;
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  int running_ ABSL_GUARDED_BY(mutex_) = 0;
  std::set<QueueKey> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 0;
  // Bumped whenever running_/queue_ change or a request is cancelled, so admission waiters
  // re-check.
  uint64_t admission_generation_ ABSL_GUARDED_BY(mutex_) = 0;
  std::map<std::string, std::shared_ptr<RequestRun>, std::less<>> active_ ABSL_GUARDED_BY(mutex_);
  std::map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> finished_threads_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PIPELINE_PIPELINE_H_
