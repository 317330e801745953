// Continuous batching at step boundaries (--max-batch N, --batch-wait-ms; issue #21 item 1): the
// denoiser's requests with equal batch keys (FamilyDenoiser::BatchKey: FLUX's size, text lengths,
// dtype and CFG mode; Wan's size, frames, text lengths and CFG mode) run as one batch, one
// transformer forward per step (batched_sampler.h, wan_batched_sampler.h).
//
// How it runs. The engine's work queue (common/work_queue.h) has max_batch threads per lane; each
// runs one request's Run here, which blocks until that request ends. A lane is a thread of the
// batcher that owns one batch at a time: when idle it takes the waiting request due first (edf:
// the earliest deadline; fifo: the first to arrive), waits up to `wait` for company with the same
// key, and starts; before every step it admits waiting requests with its key (up to max_batch), so
// a new request joins at the next step boundary, and a request that finished, was cancelled, or
// passed its deadline leaves after its step, the others going on untouched. Requests of another
// key wait for a free lane. Because the queue hands requests to threads in its own order (edf or
// fifo) and a lane picks what is due first, a batch is formed from what is due first; with
// earliest_deadline_first, before each step a lane also runs, alone and to completion on its own
// thread, a request due before every member of its batch, whether still in the engine's queue
// (`take_preempting`: WorkQueue::TakeEarlierThan) or waiting here (another key, or a full batch),
// as a lone request would be preempted.
//
// Per request, as alone: on_step after each of its steps (with the batched step's time), previews,
// is_cancelled before each of its steps (so cancellation and deadlines end it with the same
// status); while a request waits to be admitted its token is checked too. What is shared: the
// forward's time, and its failure (an exception or OOM in the batched forward fails every member
// of that step).
//
// Not batched (run alone on the calling thread, as without a batcher): a family without batching,
// a request without a key (missing embeddings: it fails as alone), and work run on a lane's own
// thread (the preempting request). Step-cached requests batch (each member keeps its own cache).
//
// Where the work runs is the Backend's: by default this process (the family's Run and
// NewBatch(nullptr)); a denoiser group's leader passes its own (DenoiserGroup::BatchBackend), whose
// batches step on every rank of the group and whose lone requests run through the group.
//
// Thread safety: Run may be called from any number of threads at once; hooks are called on a lane
// thread. The destructor ends waiting requests with UNAVAILABLE and running ones after their step,
// and joins the lanes; stop the callers first (the engine shuts its queue down before).
#ifndef DGRID_SERVICES_DENOISER_STEP_BATCHER_H_
#define DGRID_SERVICES_DENOISER_STEP_BATCHER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/work_queue.h"
#include "services/denoiser/family_denoiser.h"

namespace dgrid {

class StepBatcher {
 public:
  struct Options {
    int max_batch = 2;  // requests in one batch at most; >= 2
    // How long an idle lane's first request waits for company before its first step (0: starts
    // at once; others join at the next step boundary).
    absl::Duration wait = absl::ZeroDuration();
    int lanes = 1;  // batches running at once (the engine's --workers)
    bool earliest_deadline_first = false;
  };
  // Given the earliest deadline of a batch's members: queued work due before it, to run first on
  // the lane's thread, or an empty function.
  using TakePreempting = std::function<std::function<void()>(absl::Time)>;
  // Where requests run; an empty member takes this process's default.
  struct Backend {
    // Runs a request alone (no batch key, or on a lane's thread between steps). Default:
    // family.Run(input, hooks, nullptr).
    std::function<absl::StatusOr<at::Tensor>(const DenoiseInput&, const SamplerHooks&)> run_alone;
    // An empty batch. Default: family.NewBatch(nullptr).
    std::function<std::unique_ptr<BatchedSampler>()> new_batch;
    // Whether a request arriving on the calling thread must run alone there, as on a lane (a
    // thread inside a group's lone request holds the group, which the lanes' steps need). Default:
    // never.
    std::function<bool()> alone_on_this_thread;
  };

  // `family` must outlive the batcher.
  StepBatcher(const FamilyDenoiser& family, Options options, TakePreempting take_preempting,
              Backend backend = {});
  ~StepBatcher();
  StepBatcher(const StepBatcher&) = delete;
  StepBatcher& operator=(const StepBatcher&) = delete;

  // Runs `input` in a batch and returns its final latents, as the backend's run_alone would
  // (take_preempting aside); blocks the calling thread until it ends. `token` is checked
  // while the request waits to be admitted (its CANCELLED / DEADLINE_EXCEEDED then). UNAVAILABLE
  // when the batcher is being destroyed.
  absl::StatusOr<at::Tensor> Run(const DenoiseInput& input, const SamplerHooks& hooks,
                                 const CancellationToken& token);

  const Options& options() const { return options_; }
  // Requests waiting to be admitted / in running batches.
  int waiting() const;
  int batched() const;
  // For tests: blocks until at least `n` requests wait to be admitted.
  void AwaitWaiting(int n) const;
  // Whether the calling thread is a lane (what it runs between steps runs alone).
  static bool OnLaneThread();

 private:
  struct Waiter;
  void LaneLoop();
  // Index in waiting_ of the request a lane serves next among those with `key` (any key when
  // null), or -1.
  std::ptrdiff_t NextLocked(const std::string* key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const FamilyDenoiser& family_;
  const Options options_;
  const TakePreempting take_preempting_;
  Backend backend_;
  mutable absl::Mutex mutex_;
  std::deque<Waiter*> waiting_ ABSL_GUARDED_BY(mutex_);
  int batched_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t next_id_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> lanes_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_STEP_BATCHER_H_
