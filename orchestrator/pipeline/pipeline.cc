#include "orchestrator/pipeline/pipeline.h"

#include <system_error>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "orchestrator/api/request_validation.h"
#include "orchestrator/pipeline/request_run.h"

namespace dgrid::orchestrator {

namespace {

// Server-assigned ids: 16 hex digits.
std::string NewRequestId() {
  static absl::Mutex mutex(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mutex);
  return absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(*gen), absl::kZeroPad16));
}

// How often a queued request re-checks cancellation and its deadline while nothing else changes.
constexpr absl::Duration kAdmissionSlice = absl::Milliseconds(50);

}  // namespace

Pipeline::Pipeline(WorkerRegistry* registry, StageChannels* channels, const Clock* clock,
                   PipelineOptions options)
    : registry_(registry), channels_(channels), clock_(clock), options_(std::move(options)) {}

Pipeline::~Pipeline() {
  StopAccepting();
  CancelAll();
  std::map<uint64_t, std::thread> threads;
  {
    absl::MutexLock lock(&mutex_);
    threads.swap(threads_);
  }
  for (auto& [key, thread] : threads) thread.join();
}

absl::StatusOr<std::string> Pipeline::Submit(dgrid::v1::GenerateRequest request,
                                             absl::Time client_deadline,
                                             std::shared_ptr<RequestObserver> observer) {
  const std::string client_id = request.request_id();
  absl::StatusOr<std::string> id =
      SubmitOrReject(std::move(request), client_deadline, std::move(observer));
  // Rejections are logged once here for both front ends; accepted requests log from their thread.
  if (!id.ok()) DG_LOG_INFO(client_id, "rejected: %s", id.status().ToString());
  return id;
}

absl::StatusOr<std::string> Pipeline::SubmitOrReject(dgrid::v1::GenerateRequest request,
                                                     absl::Time client_deadline,
                                                     std::shared_ptr<RequestObserver> observer) {
  const absl::Time arrival = absl::Now();
  absl::StatusOr<dgrid::v1::ModelInfo> model = ValidateGenerateRequest(
      request, registry_->ListedModels(), options_.default_model, options_.max_video_pixels);
  if (!model.ok()) {
    // A model that workers registered but that lacks a serving stage right now (a worker died or is
    // loading) is a transient condition, not a client error.
    if (absl::IsNotFound(model.status()) && !request.model().empty() &&
        registry_->KnowsModel(request.model())) {
      return absl::UnavailableError(
          absl::StrCat("model: '", request.model(), "' has no complete set of serving stages now"));
    }
    return model.status();
  }
  dgrid::v1::Accepted accepted = FillDefaults(*model, &request);
  if (!request.has_cache() && options_.step_cache.enabled() && TakesStepCache(*model)) {
    StepCacheToProto(options_.step_cache, request.mutable_cache());  // --step-cache
  }
  const bool cfg = RunsCfg(*model, request);
  if (request.request_id().empty()) request.set_request_id(NewRequestId());
  absl::Time deadline = client_deadline;
  if (request.deadline_ms() > 0) {
    deadline = std::min(deadline, arrival + absl::Milliseconds(request.deadline_ms()));
  }
  const std::string id = request.request_id();

  absl::MutexLock lock(&mutex_);
  ReapFinishedThreads();
  if (!accepting_) return absl::UnavailableError("orchestrator is shutting down");
  if (active_.count(id) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("request_id: '", id, "' is already running"));
  }
  const QueueKey key{-static_cast<int>(request.priority()), next_sequence_++};
  bool admitted = false;
  if (running_ < options_.max_inflight && queue_.empty()) {
    ++running_;
    admitted = true;
  } else if (static_cast<int>(queue_.size()) < options_.max_queued) {
    queue_.insert(key);
  } else {
    return absl::ResourceExhaustedError(absl::StrCat("orchestrator queue full (", running_,
                                                     " running, ", queue_.size(), " queued)"));
  }
  ++admission_generation_;
  auto run = std::make_shared<RequestRun>(this, std::move(request), std::move(accepted), cfg,
                                          arrival, deadline, std::move(observer));
  active_[id] = run;
  const uint64_t thread_key = std::get<1>(key);
  std::thread thread;
  try {
    thread = std::thread([this, run, admitted, key, thread_key] {
      run->Run(admitted, key);
      absl::MutexLock lock(&mutex_);
      finished_threads_.push_back(thread_key);
    });
  } catch (const std::system_error& e) {
    // Out of threads: undo the admission; nothing was reported to the observer yet.
    if (admitted) --running_;
    queue_.erase(key);
    active_.erase(id);
    ++admission_generation_;
    return absl::ResourceExhaustedError(absl::StrCat("cannot start a request thread: ", e.what()));
  }
  threads_.emplace(thread_key, std::move(thread));
  return id;
}

void Pipeline::ReapFinishedThreads() {
  for (uint64_t key : finished_threads_) {
    auto it = threads_.find(key);
    if (it == threads_.end()) continue;
    // The thread has pushed its key as its last act; joining waits only for it to return.
    it->second.join();
    threads_.erase(it);
  }
  finished_threads_.clear();
}

absl::Status Pipeline::WaitForAdmission(RequestRun* run, QueueKey key,
                                        const std::function<void(int)>& on_position) {
  absl::MutexLock lock(&mutex_);
  int last_position = -1;
  while (true) {
    auto it = queue_.find(key);
    const int position = static_cast<int>(std::distance(queue_.begin(), it));
    if (position == 0 && running_ < options_.max_inflight) {
      queue_.erase(it);
      ++running_;
      ++admission_generation_;
      return absl::OkStatus();
    }
    if (run->cancelled() || absl::Now() >= run->deadline()) {
      queue_.erase(it);
      ++admission_generation_;
      return run->cancelled() ? absl::CancelledError("request cancelled while queued")
                              : absl::DeadlineExceededError("deadline passed while queued");
    }
    if (position != last_position) {
      last_position = position;
      mutex_.Unlock();
      on_position(position);
      mutex_.Lock();
      continue;
    }
    const uint64_t seen = admission_generation_;
    auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return admission_generation_ != seen;
    };
    mutex_.AwaitWithDeadline(absl::Condition(&changed),
                             std::min(run->deadline(), absl::Now() + kAdmissionSlice));
  }
}

void Pipeline::Finish(RequestRun* run, bool admitted, QueueKey key) {
  absl::MutexLock lock(&mutex_);
  if (admitted) --running_;
  queue_.erase(key);  // no-op unless it left the queue without being admitted
  auto it = active_.find(run->id());
  if (it != active_.end() && it->second.get() == run) active_.erase(it);
  ++admission_generation_;
}

absl::StatusOr<dgrid::v1::ModelInfo> Pipeline::ResolveModel(absl::string_view model) const {
  return orchestrator::ResolveModel(model, registry_->ListedModels(), options_.default_model);
}

absl::Status Pipeline::Cancel(absl::string_view request_id) {
  std::shared_ptr<RequestRun> run;
  {
    absl::MutexLock lock(&mutex_);
    auto it = active_.find(request_id);
    if (it == active_.end()) {
      return absl::NotFoundError(absl::StrCat("request_id: no running request '", request_id, "'"));
    }
    run = it->second;
    ++admission_generation_;  // wakes it if it is queued
  }
  run->Cancel();
  absl::MutexLock lock(&mutex_);
  ++admission_generation_;
  return absl::OkStatus();
}

void Pipeline::StopAccepting() {
  absl::MutexLock lock(&mutex_);
  accepting_ = false;
}

bool Pipeline::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return active_.empty(); };
  return mutex_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Pipeline::CancelAll() {
  std::vector<std::shared_ptr<RequestRun>> runs;
  {
    absl::MutexLock lock(&mutex_);
    for (auto& [id, run] : active_) runs.push_back(run);
  }
  for (auto& run : runs) run->Cancel();
  absl::MutexLock lock(&mutex_);
  ++admission_generation_;
}

int Pipeline::ActiveCount() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(active_.size());
}

}  // namespace dgrid::orchestrator
