#include "orchestrator/registry/worker_registry.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace dgrid::orchestrator {

namespace {
// A worker missing this many heartbeats in a row leaves rotation.
constexpr int kMissedHeartbeats = 3;
// Weight of one observed step in a worker's speed (after its first 10 steps, a moving average over
// about the last 10).
constexpr double kSpeedWeight = 0.1;
// Bounds of one step's measured/predicted ratio (a broken report must not make every request look
// free or impossible).
constexpr double kMinSpeed = 0.01;
constexpr double kMaxSpeed = 100;

// What a worker's speed is kept per: pixels and true CFG.
std::pair<int64_t, bool> ShapeKey(const PlacementRequest& request) {
  return {static_cast<int64_t>(request.width) * request.height, request.cfg};
}

// How often ReserveWaiting re-checks cancellation while it waits for a slot.
constexpr absl::Duration kWaitSlice = absl::Milliseconds(20);
}  // namespace

RealClock* RealClock::Get() {
  static RealClock* clock = new RealClock();
  return clock;
}

absl::string_view StageName(dgrid::v1::StageKind stage) {
  switch (stage) {
    case dgrid::v1::STAGE_KIND_ENCODER:
      return "encoder";
    case dgrid::v1::STAGE_KIND_DENOISER:
      return "denoiser";
    case dgrid::v1::STAGE_KIND_DECODER:
      return "decoder";
    default:
      return "unspecified";
  }
}

Reservation::Reservation(Reservation&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)),
      worker_id_(std::move(other.worker_id_)),
      address_(std::move(other.address_)),
      call_id_(other.call_id_) {}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    registry_ = std::exchange(other.registry_, nullptr);
    worker_id_ = std::move(other.worker_id_);
    address_ = std::move(other.address_);
    call_id_ = other.call_id_;
  }
  return *this;
}

void Reservation::Release() {
  if (registry_ != nullptr) std::exchange(registry_, nullptr)->ReleaseSlot(worker_id_, call_id_);
}

void Reservation::ObserveStep(int step, double step_ms) const {
  if (registry_ != nullptr) registry_->ObserveStep(worker_id_, call_id_, step, step_ms);
}

WorkerRegistry::WorkerRegistry(const Clock* clock, const PlacementPolicy* policy,
                               absl::Duration heartbeat_interval)
    : clock_(clock), policy_(policy), heartbeat_interval_(heartbeat_interval) {}

WorkerRegistry::~WorkerRegistry() = default;

absl::StatusOr<int64_t> WorkerRegistry::RegisterWorker(const dgrid::v1::WorkerInfo& info) {
  if (info.worker_id().empty()) return absl::InvalidArgumentError("worker.worker_id: empty");
  if (info.address().empty()) return absl::InvalidArgumentError("worker.address: empty");
  if (info.stage() != dgrid::v1::STAGE_KIND_ENCODER &&
      info.stage() != dgrid::v1::STAGE_KIND_DENOISER &&
      info.stage() != dgrid::v1::STAGE_KIND_DECODER) {
    return absl::InvalidArgumentError(absl::StrCat("worker.stage: invalid value ", info.stage()));
  }
  if (info.has_layout()) {
    const dgrid::v1::GroupLayout& l = info.layout();
    if (l.cfg() < 0 || l.cfg() > 2 || l.ring() < 0 || l.ulysses() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("worker.layout: cfg must be 0 (unset), 1 or 2 and ring, ulysses >= 0; got ",
                       l.cfg(), "/", l.ring(), "/", l.ulysses()));
    }
  }
  if (absl::StatusOr<planner::GroupScheduling> scheduling =
          planner::ParseGroupScheduling(info.scheduling(), "worker.scheduling");
      !scheduling.ok()) {
    return scheduling.status();
  }
  if (info.max_inflight() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker.max_inflight: must be >= 1, got ", info.max_inflight()));
  }
  {
    absl::MutexLock lock(&mutex_);
    Worker& worker = workers_[info.worker_id()];
    const dgrid::v1::GroupLayout& was = worker.info.layout();
    if (was.cfg() != info.layout().cfg() || was.ring() != info.layout().ring() ||
        was.ulysses() != info.layout().ulysses() ||
        worker.info.interconnect() != info.interconnect()) {
      // Another shape of group under the same id: what was measured no longer applies.
      WorkerCalls& held = calls_[info.worker_id()];
      held.overall = Speed();
      held.by_shape.clear();
    }
    worker = Worker{info, clock_->Now(), true, false, 0, 0};
    inflight_.emplace(info.worker_id(), 0);
    ++generation_;
  }
  DG_LOG_INFO("", "registered %s %s at %s (%d models, max_inflight %d)",
              std::string(StageName(info.stage())), info.worker_id(), info.address(),
              info.models_size(), info.max_inflight());
  return absl::ToInt64Milliseconds(heartbeat_interval_);
}

bool WorkerRegistry::HeartbeatWorker(const dgrid::v1::HeartbeatRequest& heartbeat) {
  absl::MutexLock lock(&mutex_);
  auto it = workers_.find(heartbeat.worker_id());
  if (it == workers_.end()) return false;
  Worker& worker = it->second;
  worker.last_seen = clock_->Now();
  worker.serving = heartbeat.serving();
  worker.reported_inflight = heartbeat.inflight();
  worker.reported_queued = heartbeat.queued();
  if (heartbeat.serving()) worker.failed = false;
  ++generation_;
  return true;
}

absl::Status WorkerRegistry::DeregisterWorker(absl::string_view worker_id) {
  {
    absl::MutexLock lock(&mutex_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) {
      return absl::NotFoundError(absl::StrCat("worker_id: unknown worker '", worker_id, "'"));
    }
    workers_.erase(it);
  }
  DG_LOG_INFO("", "deregistered %s", std::string(worker_id));
  return absl::OkStatus();
}

void WorkerRegistry::MarkUnavailable(absl::string_view worker_id) {
  absl::MutexLock lock(&mutex_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.failed) return;
  it->second.failed = true;
  DG_LOG_WARN("", "worker %s out of rotation until its next good heartbeat",
              std::string(worker_id));
}

bool WorkerRegistry::InRotationLocked(const Worker& worker, absl::Time now) const {
  return worker.serving && !worker.failed &&
         now - worker.last_seen <= kMissedHeartbeats * heartbeat_interval_;
}

bool WorkerRegistry::InRotation(absl::string_view worker_id) const {
  absl::MutexLock lock(&mutex_);
  auto it = workers_.find(worker_id);
  return it != workers_.end() && InRotationLocked(it->second, clock_->Now());
}

int32_t WorkerRegistry::Inflight(absl::string_view worker_id) const {
  absl::MutexLock lock(&mutex_);
  auto it = inflight_.find(worker_id);
  return it == inflight_.end() ? 0 : it->second;
}

absl::StatusOr<Reservation> WorkerRegistry::ReserveLocked(dgrid::v1::StageKind stage,
                                                          absl::string_view model,
                                                          const std::set<std::string>& excluded,
                                                          const PlacementRequest& request) {
  const absl::Time now = clock_->Now();
  std::vector<PlacementCandidate> candidates;
  for (const auto& [id, worker] : workers_) {
    if (worker.info.stage() != stage || !InRotationLocked(worker, now)) continue;
    const auto& models = worker.info.models();
    if (std::find(models.begin(), models.end(), model) == models.end()) continue;
    PlacementCandidate c;
    c.worker_id = id;
    c.address = worker.info.address();
    c.inflight = inflight_[id];
    c.max_inflight = std::max(1, worker.info.max_inflight());
    c.reported_inflight = worker.reported_inflight;
    c.reported_queued = worker.reported_queued;
    // Denoiser groups report their layout; unset degrees read as 1 (a one-GPU group).
    c.layout =
        GroupShapeFromRegistration(worker.info.layout().cfg(), worker.info.layout().ring(),
                                   worker.info.layout().ulysses(), worker.info.interconnect());
    // Validated at registration.
    c.scheduling = planner::ParseGroupScheduling(worker.info.scheduling(), "")
                       .value_or(planner::GroupScheduling::kFifo);
    c.speed = calls_[id].SpeedFor(ShapeKey(request));
    FillPendingLocked(calls_[id], now, c);
    candidates.push_back(std::move(c));
  }
  absl::StatusOr<size_t> chosen = policy_->Choose(request, candidates, excluded);
  if (!chosen.ok()) {
    return absl::Status(
        chosen.status().code(),
        absl::StrCat(StageName(stage), " for model '", model, "': ", chosen.status().message()));
  }
  const PlacementCandidate& c = candidates[*chosen];
  ++inflight_[c.worker_id];
  HeldCall call;
  call.id = next_call_id_++;
  // Only a described request (the denoiser stage's) has a predicted service time (the policy's,
  // at the worker's observed speed).
  call.service_ms = request.width > 0 ? policy_->ServiceMs(request, c) : -1;
  if (!std::isfinite(call.service_ms)) call.service_ms = -1;
  call.steps = request.steps > 0 ? request.steps : PlacementRequest().steps;
  call.step_ms = call.service_ms > 0 ? call.service_ms / call.steps : 0;
  if (call.service_ms > 0) {
    // The cost model's own prediction, which the worker's speed is relative to.
    PlacementCandidate unmeasured = c;
    unmeasured.speed = 1;
    const double model_ms = policy_->ServiceMs(request, unmeasured);
    if (std::isfinite(model_ms) && model_ms > 0) call.model_step_ms = model_ms / call.steps;
  }
  call.shape = ShapeKey(request);
  if (request.deadline_ms > 0) call.deadline = now + absl::Milliseconds(request.deadline_ms);
  calls_[c.worker_id].calls.push_back(call);
  return Reservation(this, c.worker_id, c.address, call.id);
}

void WorkerRegistry::FillPendingLocked(WorkerCalls& held, absl::Time now,
                                       PlacementCandidate& candidate) {
  std::vector<HeldCall>& calls = held.calls;
  // Work the worker has done since the last look (none before its first call).
  double elapsed = held.accounted == absl::InfinitePast() || calls.empty()
                       ? 0
                       : std::max(0.0, absl::ToDoubleMilliseconds(now - held.accounted));
  held.accounted = now;
  for (const HeldCall& call : calls) {
    if (call.service_ms < 0) return;  // unknown work: the policy estimates from the count
  }
  const bool edf = candidate.scheduling == planner::GroupScheduling::kEarliestDeadline;
  // The order the worker serves them in (placement order = arrival order at the worker).
  std::vector<size_t> order(calls.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (edf) {
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return calls[a].deadline < calls[b].deadline; });
  }
  // That work goes to the calls in the worker's order.
  size_t running = order.empty() ? 0 : order.back();
  for (size_t i : order) {
    HeldCall& call = calls[i];
    const double take = std::min(elapsed, call.service_ms - call.done_ms);
    call.done_ms += std::max(0.0, take);
    elapsed -= std::max(0.0, take);
    running = i;
    if (call.done_ms < call.service_ms) break;  // the one under way
  }
  candidate.outstanding_ms = 0;
  candidate.pending.clear();
  for (size_t i = 0; i < calls.size(); ++i) {
    planner::PendingWork p;
    p.remaining_ms = std::max(0.0, calls[i].service_ms - calls[i].done_ms);
    p.step_ms = calls[i].step_ms;
    p.running = i == running;
    if (p.running && p.step_ms > 0 && p.remaining_ms > 0) {
      // Where the running call is inside its current step, at the predicted speed (a call just
      // started, or at a boundary, e.g. right after it reported a step, has the whole step
      // ahead; done_ms = k x step_ms may land a rounding error short of the boundary).
      double into = std::fmod(calls[i].done_ms, p.step_ms);
      if (p.step_ms - into <= 1e-9 * p.step_ms) into = 0;
      p.step_left_ms = p.step_ms - into;
    }
    if (calls[i].deadline != absl::InfiniteFuture()) {
      p.deadline_ms = std::max(1e-3, absl::ToDoubleMilliseconds(calls[i].deadline - now));
    }
    candidate.outstanding_ms += p.remaining_ms;
    if (p.running) {
      candidate.pending.insert(candidate.pending.begin(), p);
    } else {
      candidate.pending.push_back(p);
    }
  }
}

void WorkerRegistry::Speed::Add(double ratio) {
  ++steps;
  value += std::max(kSpeedWeight, 1.0 / steps) * (ratio - value);
}

double WorkerRegistry::WorkerCalls::SpeedFor(const std::pair<int64_t, bool>& shape) const {
  auto it = by_shape.find(shape);
  if (it != by_shape.end() && it->second.steps > 0) return it->second.value;
  return overall.value;
}

void WorkerRegistry::ObserveStep(const std::string& worker_id, uint64_t call_id, int step,
                                 double step_ms) {
  if (step < 1 || !(step_ms > 0) || !std::isfinite(step_ms)) return;
  absl::MutexLock lock(&mutex_);
  auto held = calls_.find(worker_id);
  if (held == calls_.end()) return;
  WorkerCalls& worker = held->second;
  auto call = std::find_if(worker.calls.begin(), worker.calls.end(),
                           [&](const HeldCall& c) { return c.id == call_id; });
  if (call == worker.calls.end() || call->service_ms < 0) return;
  // The worker was running this call: the time since the last look was its (a call that ran
  // meanwhile reports its own steps), and its progress becomes what it reported.
  worker.accounted = clock_->Now();
  ++call->observed_steps;
  call->observed_ms += step_ms;
  call->step_ms = call->observed_ms / call->observed_steps;
  call->service_ms = call->step_ms * call->steps;
  call->done_ms = std::min(step, call->steps) * call->step_ms;
  if (call->model_step_ms > 0) {
    const double ratio = std::clamp(step_ms / call->model_step_ms, kMinSpeed, kMaxSpeed);
    worker.overall.Add(ratio);
    worker.by_shape[call->shape].Add(ratio);
  }
}

absl::StatusOr<Reservation> WorkerRegistry::Reserve(dgrid::v1::StageKind stage,
                                                    absl::string_view model,
                                                    const std::set<std::string>& excluded,
                                                    const PlacementRequest& request) {
  absl::MutexLock lock(&mutex_);
  return ReserveLocked(stage, model, excluded, request);
}

absl::StatusOr<Reservation> WorkerRegistry::ReserveWaiting(
    dgrid::v1::StageKind stage, absl::string_view model, const std::set<std::string>& excluded,
    absl::Time deadline, const std::function<bool()>& cancelled,
    const std::function<void(int)>& on_wait, const PlacementRequest& request) {
  absl::MutexLock lock(&mutex_);
  bool waiting = false;
  absl::StatusOr<Reservation> result;
  while (true) {
    result = ReserveLocked(stage, model, excluded, request);
    if (result.ok() || !absl::IsResourceExhausted(result.status())) break;
    if (cancelled()) {
      result = absl::CancelledError("request cancelled");
      break;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      result = absl::DeadlineExceededError(
          absl::StrCat("deadline passed while waiting for a ", StageName(stage)));
      break;
    }
    if (!waiting) {
      waiting = true;
      const int ahead = waiting_[stage]++;
      if (on_wait) {
        mutex_.Unlock();
        on_wait(ahead);
        mutex_.Lock();
      }
      continue;
    }
    const uint64_t seen = generation_;
    auto changed = [this, seen]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return generation_ != seen; };
    mutex_.AwaitWithDeadline(absl::Condition(&changed), std::min(deadline, now + kWaitSlice));
  }
  if (waiting) --waiting_[stage];
  return result;
}

void WorkerRegistry::ReleaseSlot(const std::string& worker_id, uint64_t call_id) {
  HeldCall released;
  double speed = 1;
  {
    absl::MutexLock lock(&mutex_);
    auto it = inflight_.find(worker_id);
    if (it != inflight_.end() && it->second > 0) --it->second;
    if (auto held = calls_.find(worker_id); held != calls_.end()) {
      std::vector<HeldCall>& calls = held->second.calls;
      auto call = std::find_if(calls.begin(), calls.end(),
                               [&](const HeldCall& c) { return c.id == call_id; });
      if (call != calls.end()) {
        released = *call;
        calls.erase(call);
      }
      speed = held->second.SpeedFor(released.shape);
    }
    ++generation_;
  }
  if (released.observed_steps > 0) {
    DG_LOG_INFO("",
                "%s: %d steps observed at %.2f ms per step, cost model %.2f ms; speed %.3f at "
                "this size",
                worker_id, released.observed_steps, released.step_ms, released.model_step_ms,
                speed);
  }
}

bool WorkerRegistry::KnowsModel(absl::string_view model) const {
  absl::MutexLock lock(&mutex_);
  for (const auto& [id, worker] : workers_) {
    const auto& models = worker.info.models();
    if (std::find(models.begin(), models.end(), model) != models.end()) return true;
  }
  return false;
}

std::vector<dgrid::v1::ModelInfo> WorkerRegistry::ServedModels() const {
  absl::MutexLock lock(&mutex_);
  const absl::Time now = clock_->Now();
  // model -> stages seen (bit per StageKind), and the best ModelInfo found.
  std::map<std::string, int> stages;
  std::map<std::string, std::pair<int, dgrid::v1::ModelInfo>> infos;  // rank: 2 denoiser, 1 other
  for (const auto& [id, worker] : workers_) {
    if (!InRotationLocked(worker, now)) continue;
    for (const std::string& model : worker.info.models()) stages[model] |= 1 << worker.info.stage();
    const int rank = worker.info.stage() == dgrid::v1::STAGE_KIND_DENOISER ? 2 : 1;
    for (const dgrid::v1::ModelInfo& mi : worker.info.model_infos()) {
      auto it = infos.find(mi.name());
      if (it == infos.end() || it->second.first < rank) infos[mi.name()] = {rank, mi};
    }
  }
  constexpr int kAll = (1 << dgrid::v1::STAGE_KIND_ENCODER) |
                       (1 << dgrid::v1::STAGE_KIND_DENOISER) | (1 << dgrid::v1::STAGE_KIND_DECODER);
  std::vector<dgrid::v1::ModelInfo> out;
  for (const auto& [model, mask] : stages) {
    if ((mask & kAll) != kAll) continue;
    auto it = infos.find(model);
    if (it != infos.end()) {
      out.push_back(it->second.second);
    } else {
      out.emplace_back().set_name(model);
    }
    served_once_[model] = out.back();
  }
  return out;
}

void WorkerRegistry::ExpectModel(const std::string& model) {
  absl::MutexLock lock(&mutex_);
  if (served_once_.count(model) == 0) served_once_[model].set_name(model);
}

std::vector<dgrid::v1::ModelInfo> WorkerRegistry::ListedModels() const {
  std::vector<dgrid::v1::ModelInfo> out = ServedModels();
  absl::MutexLock lock(&mutex_);
  for (const auto& [name, info] : served_once_) {
    const bool served = std::any_of(out.begin(), out.end(), [&](const dgrid::v1::ModelInfo& m) {
      return m.name() == name && !m.unavailable();
    });
    if (served) continue;
    out.push_back(info);
    out.back().set_unavailable(true);
  }
  return out;
}

grpc::ServerUnaryReactor* WorkerRegistry::Register(grpc::CallbackServerContext* context,
                                                   const dgrid::v1::RegisterRequest* request,
                                                   dgrid::v1::RegisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<int64_t> interval = RegisterWorker(request->worker());
  if (interval.ok()) response->set_heartbeat_interval_ms(*interval);
  reactor->Finish(ToGrpcStatus(interval.status()));
  return reactor;
}

grpc::ServerUnaryReactor* WorkerRegistry::Heartbeat(grpc::CallbackServerContext* context,
                                                    const dgrid::v1::HeartbeatRequest* request,
                                                    dgrid::v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  response->set_known(HeartbeatWorker(*request));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerRegistry::Deregister(grpc::CallbackServerContext* context,
                                                     const dgrid::v1::DeregisterRequest* request,
                                                     dgrid::v1::DeregisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(DeregisterWorker(request->worker_id())));
  return reactor;
}

}  // namespace dgrid::orchestrator
