// A bounded queue of requests served by a fixed pool of worker threads: the core of every stage
// engine (encoder, denoiser, decoder). The gRPC layer and the single-process pipeline both submit
// here.
//
// Bounded: Enqueue answers RESOURCE_EXHAUSTED at once when `max_queued` items already wait; nothing
// grows without bound. Every accepted item ends exactly once: either its `run` is called, or — when
// it is cancelled while waiting, expires while waiting, or the queue shuts down first — its
// `dropped` callback is called with the reason (CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE).
//
// Exceptions stop here: when an item's `run` throws (LibTorch's c10::Error, std::bad_alloc, ...),
// the worker catches it, logs it, and calls the item's `dropped` with its status
// (RESOURCE_EXHAUSTED for out of memory, INVALID_ARGUMENT / INTERNAL otherwise; common/
// torch_status.h); the queue keeps serving. A `run` that throws must not have ended its item
// already (EnqueueForResult catches inside, before its `done`).
//
// Thread safety: all methods may be called from any thread. Callbacks run on worker threads (or,
// for `dropped`, on the thread that called Cancel / Shutdown), never under the queue's lock.
#ifndef DGRID_COMMON_WORK_QUEUE_H_
#define DGRID_COMMON_WORK_QUEUE_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/torch_status.h"

namespace dgrid {

// Shared between a work item and whoever may cancel it. Work polls Check() between steps.
class CancellationToken {
 public:
  explicit CancellationToken(absl::Time deadline = absl::InfiniteFuture()) : deadline_(deadline) {}
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  absl::Time deadline() const { return deadline_; }
  // OK while the work should go on; CANCELLED after Cancel(); DEADLINE_EXCEEDED past the deadline.
  absl::Status Check() const;
  // The work has answered its caller (EnqueueForResult marks it right before `done`): from then on
  // the queue takes a new item with the same request id (a client retrying at once) although this
  // one's worker has not yet returned, and Cancel of that id no longer reaches this one.
  void MarkAnswered() const { answered_.store(true, std::memory_order_release); }
  bool answered() const { return answered_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
  mutable std::atomic<bool> answered_{false};
  absl::Time deadline_;
};

class WorkQueue {
 public:
  struct Options {
    std::string name = "work";  // For log lines.
    int workers = 1;            // >= 1.
    int max_queued = 16;        // Items waiting (not running) at most; >= 0.
    // Which waiting item runs next: false = arrival order; true = the earliest deadline (items
    // without one last, ties in arrival order).
    bool earliest_deadline_first = false;
  };
  using Run = std::function<void(const CancellationToken&)>;
  using Dropped = std::function<void(const absl::Status&)>;

  explicit WorkQueue(Options options);
  // Shuts down without draining (queued items are dropped with UNAVAILABLE; running ones are
  // cancelled and waited for).
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Adds an item. RESOURCE_EXHAUSTED marked QueueFull (common/status.h) when the queue is full,
  // UNAVAILABLE after Shutdown began, ALREADY_EXISTS when `request_id` is queued or running (and
  // has not answered yet: CancellationToken::MarkAnswered), INVALID_ARGUMENT for an empty id. On
  // error neither callback is called.
  [[nodiscard]] absl::Status Enqueue(std::string request_id, absl::Time deadline, Run run,
                                     Dropped dropped);

  // Cancels a queued item (its `dropped` gets CANCELLED) or flags a running one (its token reports
  // CANCELLED; the work stops at its next check). NOT_FOUND when the id is unknown or its work has
  // already answered.
  absl::Status Cancel(absl::string_view request_id);

  // Preemption at a step boundary of running work whose deadline is `deadline`: on an
  // earliest-deadline-first queue, when the item that would run next has an earlier deadline, takes
  // it off the queue (it counts as running from now) and returns a function that runs it on the
  // caller's thread, as a worker would; the caller resumes its own work afterwards. Empty when
  // there is no such item, and always on an arrival-order queue (it never preempts).
  std::function<void()> TakeEarlierThan(absl::Time deadline);
  // Whether TakeEarlierThan(deadline) would return work now (it takes nothing).
  bool HasEarlierThan(absl::Time deadline) const;

  // Items ahead of `request_id` in the queue (0 = next to run); -1 when it is running or unknown.
  int Position(absl::string_view request_id) const;
  int queued() const;
  int running() const;

  // Stops accepting, lets queued and running work finish for up to `drain`, then cancels what is
  // left (dropping queued items with UNAVAILABLE and flagging running ones) and joins the workers.
  // Idempotent.
  void Shutdown(absl::Duration drain);

 private:
  struct Item {
    std::string request_id;
    Run run;
    Dropped dropped;
    std::shared_ptr<CancellationToken> token;
    absl::Time enqueued = absl::Now();  // For dgrid_queue_seconds.
  };
  void WorkerLoop();
  // Runs a taken item (already in running_) on this thread, then removes it from running_ (unless a
  // newer item of the same id, taken after this one answered, is there).
  void RunItem(Item& item);
  // Index in queue_ of the item to run next (queue_ not empty).
  size_t NextLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Index in queue_ of the item that preempts running work due at `deadline`, or -1 (see
  // TakeEarlierThan).
  std::ptrdiff_t EarlierThanLocked(absl::Time deadline) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Drops queued items whose deadline passed, even while every worker is busy.
  void ReaperLoop();
  // Removes items whose deadline passed; returns them for dropping outside the lock.
  std::vector<Item> TakeExpiredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const Options options_;
  mutable absl::Mutex mutex_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, std::shared_ptr<CancellationToken>, std::less<>> running_
      ABSL_GUARDED_BY(mutex_);
  bool accepting_ ABSL_GUARDED_BY(mutex_) = true;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> workers_;
  std::thread reaper_;
};

// Enqueues `compute(input, token)` (returning absl::StatusOr<Output>) and hands its result — or the
// reason the item was dropped unrun — to `done`, exactly once unless Enqueue itself fails. An
// exception out of `compute` becomes its status (TorchCall), so it reaches `done` too.
template <typename Output, typename Input, typename Compute>
absl::Status EnqueueForResult(WorkQueue& queue, std::string request_id, absl::Time deadline,
                              Input input, Compute compute,
                              std::function<void(absl::StatusOr<Output>)> done) {
  auto shared_done = std::make_shared<std::function<void(absl::StatusOr<Output>)>>(std::move(done));
  std::string context = request_id;
  return queue.Enqueue(
      std::move(request_id), deadline,
      [input = std::move(input), compute = std::move(compute), shared_done,
       context = std::move(context)](const CancellationToken& token) {
        absl::StatusOr<Output> result =
            TorchCall(context, [&]() -> absl::StatusOr<Output> { return compute(input, token); });
        token.MarkAnswered();
        (*shared_done)(std::move(result));
      },
      [shared_done](const absl::Status& status) { (*shared_done)(status); });
}

}  // namespace dgrid

#endif  // DGRID_COMMON_WORK_QUEUE_H_
