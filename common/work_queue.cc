#include "common/work_queue.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

absl::Status CancellationToken::Check() const {
  if (cancelled()) return absl::CancelledError("request was cancelled");
  if (absl::Now() >= deadline_) return absl::DeadlineExceededError("request deadline exceeded");
  return absl::OkStatus();
}

WorkQueue::WorkQueue(Options options) : options_(std::move(options)) {
  const int n = std::max(1, options_.workers);
  workers_.reserve(n);
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void WorkQueue::ReaperLoop() {
  while (true) {
    std::vector<Item> expired;
    {
      absl::MutexLock lock(&mutex_);
      mutex_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(20));
      if (stopping_) return;
      expired = TakeExpiredLocked();
    }
    for (Item& e : expired) {
      if (e.dropped) e.dropped(absl::DeadlineExceededError("request deadline passed while queued"));
    }
  }
}

WorkQueue::~WorkQueue() { Shutdown(absl::ZeroDuration()); }

absl::Status WorkQueue::Enqueue(std::string request_id, absl::Time deadline, Run run,
                                Dropped dropped) {
  if (request_id.empty()) return absl::InvalidArgumentError("request_id is empty");
  absl::MutexLock lock(&mutex_);
  if (!accepting_) {
    return absl::UnavailableError(absl::StrCat(options_.name, " is shutting down"));
  }
  const auto running = running_.find(request_id);
  if ((running != running_.end() && !running->second->answered()) ||
      std::any_of(queue_.begin(), queue_.end(),
                  [&](const Item& item) { return item.request_id == request_id; })) {
    return absl::AlreadyExistsError(
        absl::StrCat("request '", request_id, "' is already in ", options_.name));
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queued) {
    return QueueFull(
        absl::StrCat(options_.name, " queue is full (", options_.max_queued, " waiting)"));
  }
  queue_.push_back(Item{std::move(request_id), std::move(run), std::move(dropped),
                        std::make_shared<CancellationToken>(deadline)});
  return absl::OkStatus();
}

absl::Status WorkQueue::Cancel(absl::string_view request_id) {
  Item dropped;
  {
    absl::MutexLock lock(&mutex_);
    auto running = running_.find(request_id);
    if (running != running_.end() && !running->second->answered()) {
      running->second->Cancel();
      return absl::OkStatus();
    }
    auto it = std::find_if(queue_.begin(), queue_.end(),
                           [&](const Item& item) { return item.request_id == request_id; });
    if (it == queue_.end()) {
      return absl::NotFoundError(
          absl::StrCat("request '", request_id, "' is not in ", options_.name));
    }
    dropped = std::move(*it);
    queue_.erase(it);
  }
  if (dropped.dropped) dropped.dropped(absl::CancelledError("request was cancelled while queued"));
  return absl::OkStatus();
}

size_t WorkQueue::NextLocked() const {
  size_t next = 0;
  if (options_.earliest_deadline_first) {
    for (size_t i = 1; i < queue_.size(); ++i) {
      if (queue_[i].token->deadline() < queue_[next].token->deadline()) next = i;
    }
  }
  return next;
}

std::ptrdiff_t WorkQueue::EarlierThanLocked(absl::Time deadline) const {
  if (!options_.earliest_deadline_first || queue_.empty() || stopping_) return -1;
  const size_t next = NextLocked();
  return queue_[next].token->deadline() < deadline ? static_cast<std::ptrdiff_t>(next) : -1;
}

std::function<void()> WorkQueue::TakeEarlierThan(absl::Time deadline) {
  auto item = std::make_shared<Item>();
  {
    absl::MutexLock lock(&mutex_);
    const std::ptrdiff_t next = EarlierThanLocked(deadline);
    if (next < 0) return nullptr;
    *item = std::move(queue_[next]);
    queue_.erase(queue_.begin() + next);
    running_[item->request_id] = item->token;
  }
  return [this, item] { RunItem(*item); };
}

bool WorkQueue::HasEarlierThan(absl::Time deadline) const {
  absl::MutexLock lock(&mutex_);
  return EarlierThanLocked(deadline) >= 0;
}

int WorkQueue::Position(absl::string_view request_id) const {
  absl::MutexLock lock(&mutex_);
  for (size_t i = 0; i < queue_.size(); ++i) {
    if (queue_[i].request_id != request_id) continue;
    if (!options_.earliest_deadline_first) return static_cast<int>(i);
    // Items that run first: an earlier deadline, or the same one and queued before.
    const absl::Time own = queue_[i].token->deadline();
    int ahead = 0;
    for (size_t j = 0; j < queue_.size(); ++j) {
      const absl::Time other = queue_[j].token->deadline();
      if (other < own || (other == own && j < i)) ++ahead;
    }
    return ahead;
  }
  return -1;
}

int WorkQueue::queued() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(queue_.size());
}

int WorkQueue::running() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(running_.size());
}

std::vector<WorkQueue::Item> WorkQueue::TakeExpiredLocked() {
  std::vector<Item> expired;
  const absl::Time now = absl::Now();
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (it->token->deadline() <= now) {
      expired.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return expired;
}

void WorkQueue::WorkerLoop() {
  while (true) {
    Item item;
    {
      absl::MutexLock lock(&mutex_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || !queue_.empty();
      };
      mutex_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping
      const size_t next = NextLocked();
      item = std::move(queue_[next]);
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(next));
      running_[item.request_id] = item.token;
    }
    RunItem(item);
  }
}

void WorkQueue::RunItem(Item& item) {
  // An item whose deadline passed since the reaper's last look still runs; its token reports
  // DEADLINE_EXCEEDED at the first check.
  // Stage metrics, labelled with the queue's name (the stage); looked up per item, which costs
  // far less than any stage's work. An item run inside another (preemption) counts in both.
  metrics::Registry& registry = metrics::Registry::Global();
  const metrics::Labels labels = {{"stage", options_.name}};
  registry
      .GetHistogram("dgrid_queue_seconds", "Time requests waited in a stage's queue (seconds)",
                    labels)
      ->ObserveDuration(absl::Now() - item.enqueued);
  const absl::Time start = absl::Now();
  if (item.run) {
    const absl::Status thrown = TorchCall(absl::StrCat(options_.name, " request ", item.request_id),
                                          [&] { item.run(*item.token); });
    if (!thrown.ok()) {
      // The item ends here, with the reason; the worker goes on serving.
      DG_LOG_ERROR(item.request_id, "%s: a request's work threw: %s", options_.name,
                   thrown.ToString());
      if (item.dropped) item.dropped(thrown);
    }
  }
  registry
      .GetHistogram("dgrid_compute_seconds", "Time a stage worked on a request (seconds)", labels)
      ->ObserveDuration(absl::Now() - start);
  absl::MutexLock lock(&mutex_);
  const auto running = running_.find(item.request_id);
  if (running != running_.end() && running->second == item.token) running_.erase(running);
}

void WorkQueue::Shutdown(absl::Duration drain) {
  {
    absl::MutexLock lock(&mutex_);
    accepting_ = false;
    const absl::Time until = absl::Now() + drain;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return queue_.empty() && running_.empty();
    };
    while (!idle() && absl::Now() < until) {
      mutex_.AwaitWithDeadline(absl::Condition(&idle),
                               std::min(until, absl::Now() + absl::Milliseconds(50)));
    }
  }
  std::deque<Item> left;
  {
    absl::MutexLock lock(&mutex_);
    left.swap(queue_);
    for (auto& [id, token] : running_) token->Cancel();
    stopping_ = true;
  }
  if (!left.empty()) {
    DG_LOG_WARN("", "%s: dropping %d queued requests at shutdown", options_.name, left.size());
  }
  for (Item& item : left) {
    if (item.dropped) item.dropped(absl::UnavailableError("server is shutting down"));
  }
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  if (reaper_.joinable()) reaper_.join();
}

}  // namespace dgrid
