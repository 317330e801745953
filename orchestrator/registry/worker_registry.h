// WorkerRegistry: the orchestrator's view of the stage workers, and the dgrid.v1.Registry service
// they call (Register / Heartbeat / Deregister).
//
// A worker is *in rotation* (eligible for placement) while all of these hold:
//   - it registered and did not deregister;
//   - its last heartbeat (or registration) is at most 3 heartbeat intervals old;
//   - its last heartbeat said serving=true (registration counts as serving);
//   - no call to it failed with UNAVAILABLE since its last heartbeat (MarkUnavailable).
// The next good heartbeat (serving=true) puts it back.
//
// The registry also counts the calls this orchestrator has running on each worker (Reservation) so
// that placement can respect each worker's max_inflight. When the policy predicts service times
// (predicted-completion) it also keeps each call's predicted service and deadline, and hands the
// policy the work each worker still has (PlacementCandidate.pending): the worker is assumed to
// have worked through its calls since they were placed, in its own order (WorkerInfo.scheduling),
// at the predicted speed; a call that outlives its prediction counts as running with nothing
// left. The steps a call reports (Reservation::ObserveStep, from the denoiser's progress stream)
// correct that: the call's progress and step time become the measured ones, and the worker's
// speed (measured step time over the cost model's, a moving average over the steps seen, kept per
// image size and CFG, with one over all sizes for sizes not seen yet) scales the policy's
// predictions for its later calls (PlacementCandidate.speed), so a calibration made on another
// card, or none, is corrected by the first steps a group serves.
//
// Thread safety: every method may be called from any thread. The gRPC handlers never block.
#ifndef DGRID_ORCHESTRATOR_REGISTRY_WORKER_REGISTRY_H_
#define DGRID_ORCHESTRATOR_REGISTRY_WORKER_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dgrid/v1/registry.grpc.pb.h"
#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/registry/clock.h"

namespace dgrid::orchestrator {

// "encoder", "denoiser", "decoder" (the names used in Queued.stage and in logs).
absl::string_view StageName(dgrid::v1::StageKind stage);

class WorkerRegistry;

// One call slot on a worker, held for the duration of a stage call. Releasing (destroying) it
// lowers the worker's in-flight count. Move-only; may outlive the worker's registration (release is
// then a no-op) but not the registry.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { Release(); }

  const std::string& worker_id() const { return worker_id_; }
  const std::string& address() const { return address_; }
  bool valid() const { return registry_ != nullptr; }
  void Release();
  // The call finished sampler step `step` (1-based) in `step_ms` on the worker (a denoiser's
  // DenoiseStep). No-op on a released reservation.
  void ObserveStep(int step, double step_ms) const;

 private:
  friend class WorkerRegistry;
  Reservation(WorkerRegistry* registry, std::string worker_id, std::string address,
              uint64_t call_id)
      : registry_(registry),
        worker_id_(std::move(worker_id)),
        address_(std::move(address)),
        call_id_(call_id) {}

  WorkerRegistry* registry_ = nullptr;
  std::string worker_id_;
  std::string address_;
  uint64_t call_id_ = 0;
};

class WorkerRegistry : public dgrid::v1::Registry::CallbackService {
 public:
  // `clock` and `policy` are not owned and must outlive the registry. `heartbeat_interval` is what
  // Register tells workers (and the unit of the 3-missed-heartbeats rule).
  WorkerRegistry(const Clock* clock, const PlacementPolicy* policy,
                 absl::Duration heartbeat_interval);
  ~WorkerRegistry() override;

  // In-process forms of the RPCs (the gRPC handlers call these). Register validates the WorkerInfo
  // (INVALID_ARGUMENT naming the field) and replaces an earlier registration of the same id.
  absl::StatusOr<int64_t> RegisterWorker(const dgrid::v1::WorkerInfo& info);
  // Returns false when the worker is unknown (it must register again).
  bool HeartbeatWorker(const dgrid::v1::HeartbeatRequest& heartbeat);
  // NOT_FOUND for an unknown id.
  absl::Status DeregisterWorker(absl::string_view worker_id);

  // Takes the worker out of rotation until its next good heartbeat (a call to it failed
  // UNAVAILABLE).
  void MarkUnavailable(absl::string_view worker_id);

  // Picks, with the policy, an in-rotation worker of `stage` serving `model` and not in `excluded`,
  // and reserves one call slot on it. `request` tells the policy what is placed (size, CFG,
  // deadline). UNAVAILABLE when none serves the model, RESOURCE_EXHAUSTED when all are at
  // max_inflight, DEADLINE_EXCEEDED when a deadline-aware policy sees that none can finish in time.
  absl::StatusOr<Reservation> Reserve(dgrid::v1::StageKind stage, absl::string_view model,
                                      const std::set<std::string>& excluded,
                                      const PlacementRequest& request = PlacementRequest());

  // Like Reserve, but while every worker is full it waits (up to `deadline`, in slices so that
  // `cancelled` is polled) for a slot to free. `on_wait` is called once, with the number of
  // requests already waiting for this stage, when the call has to wait.
  absl::StatusOr<Reservation> ReserveWaiting(dgrid::v1::StageKind stage, absl::string_view model,
                                             const std::set<std::string>& excluded,
                                             absl::Time deadline,
                                             const std::function<bool()>& cancelled,
                                             const std::function<void(int)>& on_wait,
                                             const PlacementRequest& request = PlacementRequest());

  // Whether the worker is in rotation now (false for unknown ids).
  bool InRotation(absl::string_view worker_id) const;
  // In-flight calls this orchestrator has on the worker (0 for unknown ids).
  int32_t Inflight(absl::string_view worker_id) const;

  // Models served by at least one in-rotation encoder, denoiser and decoder, sorted by name. The
  // ModelInfo comes from a denoiser's model_infos when one declares it, else from any worker's,
  // else only the name is set.
  std::vector<dgrid::v1::ModelInfo> ServedModels() const;
  // ServedModels, then the models a complete set served earlier (since this registry started)
  // that miss a stage now, with `unavailable` set and their last ModelInfo.
  std::vector<dgrid::v1::ModelInfo> ListedModels() const;

  // Models this orchestrator is configured to serve: listed (ListedModels) as unavailable, and so
  // answered UNAVAILABLE rather than NOT_FOUND, until a complete set of stages serves them — e.g.
  // right after the orchestrator restarted, before its stages have registered again.
  void ExpectModel(const std::string& model);

  // Whether any registered worker (in rotation or not) lists `model`.
  bool KnowsModel(absl::string_view model) const;

  absl::Duration heartbeat_interval() const { return heartbeat_interval_; }

  // dgrid.v1.Registry.
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const dgrid::v1::RegisterRequest* request,
                                     dgrid::v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const dgrid::v1::HeartbeatRequest* request,
                                      dgrid::v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Deregister(grpc::CallbackServerContext* context,
                                       const dgrid::v1::DeregisterRequest* request,
                                       dgrid::v1::DeregisterResponse* response) override;

 private:
  friend class Reservation;

  struct Worker {
    dgrid::v1::WorkerInfo info;
    absl::Time last_seen;
    bool serving = true;
    bool failed = false;  // a call failed UNAVAILABLE since the last good heartbeat
    int32_t reported_inflight = 0;
    int32_t reported_queued = 0;
  };

  bool InRotationLocked(const Worker& worker, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<Reservation> ReserveLocked(dgrid::v1::StageKind stage, absl::string_view model,
                                            const std::set<std::string>& excluded,
                                            const PlacementRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ReleaseSlot(const std::string& worker_id, uint64_t call_id) ABSL_LOCKS_EXCLUDED(mutex_);
  void ObserveStep(const std::string& worker_id, uint64_t call_id, int step, double step_ms)
      ABSL_LOCKS_EXCLUDED(mutex_);

  // Measured step time over the cost model's: the mean of the steps seen while they are few (a
  // worker's first step, often slower, does not stick), then a moving average.
  struct Speed {
    double value = 1;  // 1 = none seen
    int steps = 0;
    void Add(double ratio);
  };
  // A call placed on a worker, as the registry predicts it.
  struct HeldCall {
    uint64_t id = 0;
    double service_ms = -1;  // < 0: unknown
    double done_ms = 0;      // predicted work already done
    double step_ms = 0;      // predicted, then the mean of the steps it reported
    int steps = 0;
    std::pair<int64_t, bool> shape;  // pixels, true CFG: the speed it reports to
    double model_step_ms = 0;        // the cost model's step time (speed 1); 0 = none
    int observed_steps = 0;          // steps it reported, and their total time
    double observed_ms = 0;
    absl::Time deadline = absl::InfiniteFuture();
  };
  struct WorkerCalls {
    std::vector<HeldCall> calls;                  // in placement order
    absl::Time accounted = absl::InfinitePast();  // done_ms is up to date to here
    Speed overall;
    std::map<std::pair<int64_t, bool>, Speed> by_shape;
    // The speed for a request of `shape`: its own when seen, else the overall one.
    double SpeedFor(const std::pair<int64_t, bool>& shape) const;
  };
  // Advances `calls` to `now` in the worker's order and fills the candidate's pending work (left
  // empty when a call's service time is unknown).
  void FillPendingLocked(WorkerCalls& calls, absl::Time now, PlacementCandidate& candidate)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const Clock* const clock_;
  const PlacementPolicy* const policy_;
  const absl::Duration heartbeat_interval_;

  mutable absl::Mutex mutex_;
  std::map<std::string, Worker, std::less<>> workers_ ABSL_GUARDED_BY(mutex_);
  // Every model a complete set of stages has served, by name (ServedModels records them).
  mutable std::map<std::string, dgrid::v1::ModelInfo> served_once_ ABSL_GUARDED_BY(mutex_);
  // Kept apart from workers_ so that a re-registration or deregistration does not lose the count of
  // calls still running.
  std::map<std::string, int32_t, std::less<>> inflight_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, WorkerCalls, std::less<>> calls_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_call_id_ ABSL_GUARDED_BY(mutex_) = 1;
  // Requests waiting in ReserveWaiting, per stage.
  std::map<int, int> waiting_ ABSL_GUARDED_BY(mutex_);
  // Bumped on every release / registration so waiters wake up.
  uint64_t generation_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_REGISTRY_WORKER_REGISTRY_H_
