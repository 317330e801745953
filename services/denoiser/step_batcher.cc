#include "services/denoiser/step_batcher.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "common/torch_status.h"
#include "services/denoiser/batched_sampler.h"

namespace dgrid {
namespace {

thread_local bool on_lane_thread = false;

// How often a request waiting to be admitted looks at its token (a batch's step may take long;
// the wait for a Notification cannot also watch an atomic flag).
constexpr absl::Duration kWaitingPoll = absl::Milliseconds(10);

}  // namespace

// One request, owned by the thread blocked in Run; a lane holds a pointer while it serves it.
struct StepBatcher::Waiter {
  int64_t id = 0;
  std::string key;
  const DenoiseInput* input = nullptr;
  SamplerHooks hooks;
  absl::Time deadline;
  absl::StatusOr<at::Tensor> result;
  absl::Notification done;
};

StepBatcher::StepBatcher(const FamilyDenoiser& family, Options options,
                         TakePreempting take_preempting, Backend backend)
    : family_(family),
      options_(std::move(options)),
      take_preempting_(std::move(take_preempting)),
      backend_(std::move(backend)) {
  if (!backend_.run_alone) {
    backend_.run_alone = [&family](const DenoiseInput& input, const SamplerHooks& hooks) {
      return family.Run(input, hooks, /*sp=*/nullptr);
    };
  }
  if (!backend_.new_batch) backend_.new_batch = [&family] { return family.NewBatch(nullptr); };
  const int lanes = std::max(1, options_.lanes);
  for (int i = 0; i < lanes; ++i) lanes_.emplace_back([this] { LaneLoop(); });
}

StepBatcher::~StepBatcher() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (std::thread& lane : lanes_) lane.join();
  // Nothing waits any more: lanes end waiting requests before they leave.
}

bool StepBatcher::OnLaneThread() { return on_lane_thread; }

int StepBatcher::waiting() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(waiting_.size());
}

int StepBatcher::batched() const {
  absl::MutexLock lock(&mutex_);
  return batched_;
}

void StepBatcher::AwaitWaiting(int n) const {
  absl::MutexLock lock(&mutex_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return static_cast<int>(waiting_.size()) >= n;
  };
  mutex_.Await(absl::Condition(&enough));
}

std::ptrdiff_t StepBatcher::NextLocked(const std::string* key) const {
  std::ptrdiff_t best = -1;
  for (size_t i = 0; i < waiting_.size(); ++i) {
    if (key != nullptr && waiting_[i]->key != *key) continue;
    if (best < 0) {
      best = static_cast<std::ptrdiff_t>(i);
      if (!options_.earliest_deadline_first) break;  // arrival order
    } else if (waiting_[i]->deadline < waiting_[best]->deadline) {
      best = static_cast<std::ptrdiff_t>(i);
    }
  }
  return best;
}

absl::StatusOr<at::Tensor> StepBatcher::Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                            const CancellationToken& token) {
  std::optional<std::string> key = family_.BatchKey(input);
  if (!key || OnLaneThread() ||
      (backend_.alone_on_this_thread && backend_.alone_on_this_thread())) {
    return backend_.run_alone(input, hooks);
  }
  Waiter waiter;
  waiter.key = *std::move(key);
  waiter.input = &input;
  waiter.hooks = hooks;
  waiter.deadline = token.deadline();
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return absl::UnavailableError("the denoiser is shutting down");
    waiter.id = next_id_++;
    waiting_.push_back(&waiter);
  }
  while (!waiter.done.WaitForNotificationWithTimeout(kWaitingPoll)) {
    const absl::Status stop = token.Check();
    if (stop.ok()) continue;
    absl::MutexLock lock(&mutex_);
    auto it = std::find(waiting_.begin(), waiting_.end(), &waiter);
    if (it == waiting_.end()) continue;  // admitted: its lane sees the stop before the next step
    waiting_.erase(it);
    return stop;
  }
  return std::move(waiter.result);
}

void StepBatcher::LaneLoop() {
  on_lane_thread = true;
  std::unique_ptr<BatchedSampler> batch;
  std::string key;
  std::map<int64_t, Waiter*> members;
  const auto finish = [](Waiter* w, absl::StatusOr<at::Tensor> result) {
    w->result = std::move(result);
    w->done.Notify();
  };
  while (true) {
    std::vector<Waiter*> admitted;
    {
      absl::MutexLock lock(&mutex_);
      if (members.empty()) {
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
          return stopping_ || !waiting_.empty();
        };
        mutex_.Await(absl::Condition(&ready));
        if (stopping_) break;
        key = waiting_[NextLocked(nullptr)]->key;
        if (options_.wait > absl::ZeroDuration()) {
          // Company for the first request: up to `wait`, or until a batch's worth waits.
          auto full = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
            return stopping_ || std::count_if(waiting_.begin(), waiting_.end(),
                                              [&](const Waiter* w) { return w->key == key; }) >=
                                    options_.max_batch;
          };
          mutex_.AwaitWithTimeout(absl::Condition(&full), options_.wait);
          if (stopping_) break;
        }
      }
      if (stopping_) break;
      while (static_cast<int>(members.size() + admitted.size()) < options_.max_batch) {
        const std::ptrdiff_t next = NextLocked(&key);
        if (next < 0) break;
        admitted.push_back(waiting_[next]);
        waiting_.erase(waiting_.begin() + next);
      }
      batched_ += static_cast<int>(admitted.size());
    }
    if (!admitted.empty() && !batch) batch = backend_.new_batch();
    int left = 0;
    for (Waiter* w : admitted) {
      SamplerHooks hooks = w->hooks;
      hooks.take_preempting = nullptr;  // the lane preempts for the whole batch
      absl::Status added = batch ? TorchCall(w->input->request_id,
                                             [&] { return batch->Add(w->id, *w->input, hooks); })
                                 : absl::InternalError("the family has no batched sampler");
      if (added.ok()) {
        members[w->id] = w;
        DG_LOG_INFO(w->input->request_id, "joins a batch of %d (%s)", batch->size(), key);
        continue;
      }
      ++left;
      finish(w, added);
    }
    if (members.empty()) {
      absl::MutexLock lock(&mutex_);
      batched_ -= left;
      continue;
    }
    if (options_.earliest_deadline_first) {
      absl::Time earliest = absl::InfiniteFuture();
      for (const auto& [id, w] : members) earliest = std::min(earliest, w->deadline);
      // Due before every member, in the engine's queue or waiting here (another key, or a full
      // batch): it runs first, alone, on this thread, as it would preempt a lone request.
      while (true) {
        if (std::function<void()> first = take_preempting_ ? take_preempting_(earliest) : nullptr) {
          DG_LOG_INFO("", "a request due sooner runs first, between the batch's steps");
          first();
          continue;
        }
        Waiter* first = nullptr;
        {
          absl::MutexLock lock(&mutex_);
          const std::ptrdiff_t next = NextLocked(nullptr);
          if (next >= 0 && waiting_[next]->deadline < earliest) {
            first = waiting_[next];
            waiting_.erase(waiting_.begin() + next);
          }
        }
        if (first == nullptr) break;
        DG_LOG_INFO(first->input->request_id, "due sooner: runs alone between the batch's steps");
        finish(first, TorchCall(first->input->request_id,
                                [&] { return backend_.run_alone(*first->input, first->hooks); }));
      }
    }
    // Step() ends a member whose own work or hooks throw; this is the last guard of the lane.
    absl::StatusOr<std::vector<BatchedSampler::Ended>> step =
        TorchCall("batched step", [&] { return batch->Step(); });
    if (!step.ok()) {  // the batch's state is unknown: every member ends, the batch is new
      const absl::Status failed = step.status();
      step.emplace();
      for (const auto& [id, w] : members) step->push_back({id, failed});
      batch.reset();
    }
    for (BatchedSampler::Ended& e : *step) {
      auto it = members.find(e.id);
      ++left;
      finish(it->second, std::move(e.result));
      members.erase(it);
    }
    // An emptied batch goes: the next one starts fresh (a group's batch tells its peers to drop
    // whatever they may still hold of it, DenoiserGroup::LeaderBatch).
    if (members.empty()) batch.reset();
    absl::MutexLock lock(&mutex_);
    batched_ -= left;
  }
  // Stopping: end what this lane holds; the last lane out ends whoever still waits.
  for (const auto& [id, w] : members) {
    finish(w, absl::UnavailableError("the denoiser is shutting down"));
  }
  std::deque<Waiter*> left;
  {
    absl::MutexLock lock(&mutex_);
    batched_ -= static_cast<int>(members.size());
    left.swap(waiting_);
  }
  for (Waiter* w : left) finish(w, absl::UnavailableError("the denoiser is shutting down"));
}

}  // namespace dgrid
