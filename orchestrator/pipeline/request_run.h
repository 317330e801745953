// RequestRun: the state machine of one accepted request (internal to Pipeline).
//
// Owned by Pipeline (shared with the request's thread). Run() executes on that thread; Cancel() may
// be called from any thread and cancels the stage call in progress through its grpc::ClientContext.
#ifndef DGRID_ORCHESTRATOR_PIPELINE_REQUEST_RUN_H_
#define DGRID_ORCHESTRATOR_PIPELINE_REQUEST_RUN_H_

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dgrid/v1/generation.pb.h"
#include "dgrid/v1/stages.pb.h"
#include "orchestrator/pipeline/pipeline.h"

namespace dgrid::orchestrator {

class RequestRun {
 public:
  // `cfg`: the request runs classifier-free guidance (its model family's policy, RunsCfg in
  // orchestrator/api/request_validation.h), so the negative prompt is encoded too.
  RequestRun(Pipeline* pipeline, dgrid::v1::GenerateRequest request, dgrid::v1::Accepted accepted,
             bool cfg, absl::Time arrival, absl::Time deadline,
             std::shared_ptr<RequestObserver> observer);

  const std::string& id() const { return request_.request_id(); }
  absl::Time deadline() const { return deadline_; }

  // Runs the whole request and reports to the observer; returns after OnDone. `admitted` says
  // whether it was admitted at Submit (else it waits in the queue under `key`).
  void Run(bool admitted, Pipeline::QueueKey key);

  // Marks the request cancelled and cancels the stage call in progress. Idempotent.
  void Cancel();
  bool cancelled() const;

 private:
  // One attempt of a stage call on the reserved worker. Sets *retryable when a failure may be
  // retried on another replica (UNAVAILABLE and, for Denoise, no step seen yet).
  using Attempt = std::function<absl::Status(const Reservation& slot, grpc::ClientContext* context,
                                             bool* retryable)>;

  absl::Status RunStages();
  // Places and runs one stage call. A worker whose queue was full (QueueFull) is back-pressure:
  // the request is held and placed again after a short back-off, for as long as its deadline
  // allows, and this is not one of its two tries. UNAVAILABLE (retryable) is tried once more on
  // another replica.
  absl::Status CallWithRetry(dgrid::v1::StageKind stage, const Attempt& attempt);
  // Waits the back-off before the `round`-th placement after a full queue (1, 2, 4 ... 100 ms),
  // waking to stop on cancel (CANCELLED) or the deadline (DEADLINE_EXCEEDED).
  absl::Status BackOff(dgrid::v1::StageKind stage, int round) const;
  absl::Status Encode(dgrid::v1::EncodeResponse* response);
  // Image-to-image: the decoder stage's VAE encode of the request's input image.
  absl::Status EncodeImage(dgrid::v1::TensorRef* image_latents);
  absl::Status Denoise(const dgrid::v1::EncodeResponse& embeddings,
                       const dgrid::v1::TensorRef& image_latents, dgrid::v1::TensorRef* latents);
  // `preview`: a preview's PNG of latents taken mid-denoise after `preview_step` (EmitPreview)
  // instead of the result.
  absl::Status Decode(const dgrid::v1::TensorRef& latents, dgrid::v1::DecodeResponse* response,
                      dgrid::v1::PreviewMode preview = dgrid::v1::PREVIEW_MODE_UNSPECIFIED,
                      int preview_step = 0);
  // The steps the denoiser runs: num_inference_steps, fewer for image-to-image.
  int StepsRun() const;
  // The 1-based steps after which previews are taken (GenerateRequest.preview_images, evenly
  // spaced over StepsRun(), before the last step).
  std::vector<int> PreviewSteps() const;
  // Decodes `preview` into a Preview event; a failure skips it (logged), never the request.
  void EmitPreview(const dgrid::v1::DenoisePreview& preview);

  // Registers `context` as a call to cancel (a preview's decode runs inside the denoise call);
  // false when the request is already cancelled. Detach removes the last one attached.
  bool Attach(grpc::ClientContext* context);
  void Detach();
  // The error to end with for a failed call: CANCELLED when the request was cancelled, the stage's
  // status with the stage and worker named otherwise (a full queue keeps its QueueFull mark).
  absl::Status StageError(dgrid::v1::StageKind stage, const Reservation& slot,
                          const grpc::Status& status) const;

  dgrid::v1::GenerateEvent NewEvent() const;
  void Emit(dgrid::v1::GenerateEvent event);

  Pipeline* const pipeline_;
  dgrid::v1::GenerateRequest request_;
  const dgrid::v1::Accepted accepted_;
  const bool cfg_;
  const absl::Time arrival_;
  const absl::Time deadline_;
  std::shared_ptr<RequestObserver> observer_;
  dgrid::v1::StageTimings timings_;
  int skipped_steps_ = 0;   // step caching: the denoiser's count (request thread only)
  int steps_reported_ = 0;  // the last step event sent to the client (request thread only)
  int previews_sent_ = 0;   // Preview events sent (request thread only)
  // The last preview's step: latents made again (RunStages) replay previews the client has seen.
  int last_preview_step_ = 0;

  mutable absl::Mutex mutex_;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_PIPELINE_REQUEST_RUN_H_
