// TEST SEAM: scripted stage workers for the orchestrator's tests.
//
// A ScriptedStage is a real gRPC server on loopback that implements dgrid.v1.Encoder, Denoiser and
// Decoder from stages.proto with scripted behaviour instead of models: the encoder returns small
// inline tensors, the denoiser streams one DenoiseStep per step (sleeping step_sleep_ms each) and
// then tiny inline latents, the decoder returns a RAW_RGB8 image of the requested size. Knobs: fail
// the next N calls with UNAVAILABLE or RESOURCE_EXHAUSTED (a full queue, or not), fail after the
// first step, sleep per step, hold after a step until released or cancelled (so a test can keep a
// request mid-denoise without assuming how fast steps are), and Kill() to die mid-run. It uses the
// synchronous gRPC API on purpose (blocking sleeps are the point of a scripted worker); production
// stage servers live in services/.
#ifndef DGRID_TESTS_UNIT_ORCHESTRATOR_SCRIPTED_STAGES_H_
#define DGRID_TESTS_UNIT_ORCHESTRATOR_SCRIPTED_STAGES_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "dgrid/v1/generation.pb.h"
#include "dgrid/v1/registry.pb.h"

namespace dgrid::testing {

class ScriptedStage {
 public:
  // Starts a server on 127.0.0.1 (free port). `stage` is what worker_info() declares; all three
  // services answer regardless.
  ScriptedStage(std::string worker_id, dgrid::v1::StageKind stage, std::vector<std::string> models);
  ~ScriptedStage();

  const std::string& address() const { return address_; }
  const std::string& worker_id() const { return worker_id_; }
  // A WorkerInfo to register; the denoiser's carries `model_infos` for every model (64x64 default,
  // 4 steps, 256x256 max).
  dgrid::v1::WorkerInfo worker_info(int max_inflight = 4) const;

  // Shuts the server down at once; calls in progress fail (UNAVAILABLE / CANCELLED on the client).
  void Kill();

  // --- script ---
  // The next N calls (any service) fail with UNAVAILABLE before doing anything.
  std::atomic<int> fail_unavailable{0};
  // The next N calls fail with RESOURCE_EXHAUSTED marked as a full queue (back-pressure,
  // common/status.h QueueFull), before doing anything.
  std::atomic<int> fail_queue_full{0};
  // The next N calls fail with a plain RESOURCE_EXHAUSTED (e.g. out of memory), unmarked.
  std::atomic<int> fail_resource_exhausted{0};
  // The next N calls fail as if their input tensors could not be pulled (ABORTED marked InputLost,
  // common/status.h), before doing anything.
  std::atomic<int> fail_input_lost{0};
  // Denoise: milliseconds to sleep per step.
  std::atomic<int> step_sleep_ms{1};
  // Denoise: after the first step, fail with UNAVAILABLE.
  std::atomic<bool> fail_after_first_step{false};
  // Denoise: the next N calls hold once step `hold_after_step` is sent, until ReleaseHeld() or
  // until they are cancelled (the client's cancel or deadline, a killed server): a test keeps a
  // request mid-denoise whatever the machine's speed.
  std::atomic<int> hold_calls{0};
  std::atomic<int> hold_after_step{1};
  // Lets the calls holding now go on.
  void ReleaseHeld() { ++releases_; }
  // Encode / Decode: milliseconds to sleep before answering.
  std::atomic<int> delay_ms{0};
  // Denoise: the step-cache count the latents event reports (DenoiseEvent.skipped_steps).
  std::atomic<int> skipped_steps{0};

  // --- observations ---
  std::atomic<int> calls{0};            // calls received (including failed ones)
  std::atomic<int> cancelled_calls{0};  // calls that saw the client cancel / deadline
  std::atomic<int> max_concurrent{0};   // most calls running at once
  std::atomic<int> running{0};
  std::atomic<int> held{0};  // Denoise calls holding now (hold_after_step)
  // Request ids of the Denoise calls received, in arrival order.
  std::vector<std::string> denoise_order() const;
  // The step caching setting of the last Denoise call received (DenoiseRequest.cache; unset when
  // it had none).
  dgrid::v1::StepCache last_denoise_cache() const;

 private:
  class Services;
  const std::string worker_id_;
  const dgrid::v1::StageKind stage_;
  const std::vector<std::string> models_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::atomic<int> releases_{0};
  mutable absl::Mutex mutex_;
  std::vector<std::string> denoise_order_ ABSL_GUARDED_BY(mutex_);
  dgrid::v1::StepCache last_denoise_cache_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_ORCHESTRATOR_SCRIPTED_STAGES_H_
