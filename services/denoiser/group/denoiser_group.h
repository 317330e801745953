// One rank's membership of a denoiser group: the communicator over the group, the Ulysses / Ring /
// CFG subgroups of its ParallelLayout, and the loop that runs a request on every rank together.
//
// Rank 0 (the leader) serves the Denoise RPC; its engine calls RunRequest, which hands the request
// to the peers (group_protocol.h) and runs the model family's loop (FamilyDenoiser::Run) with the
// group's SequenceParallelContext, as every peer does. The group names no family: FLUX and Wan
// each shard their own loop.
// The other ranks call ServePeer, which waits for requests until the leader stops the group or a
// collective fails. While idle the leader sends a keep-alive every timeout / 4, so peers never
// wait longer than the communicator allows and a dead peer is noticed between requests too.
//
// Failures: a collective that fails (dead peer: UNAVAILABLE, missing peer: DEADLINE_EXCEEDED)
// ends the request with that code and leaves the group unhealthy for good (healthy() false; the
// leader then reports "not serving" and the orchestrator places work elsewhere). Re-forming a
// group means restarting its processes.
//
// Batching (--max-batch on the leader; BatchBackend): the leader's StepBatcher runs its batches
// through the group. Every step of a batch is one kBatchStep message (group_protocol.h) telling
// the peers who joins and who takes the step, then every rank runs the same BatchedSampler::Step
// with the group's context (FamilyDenoiser::NewBatch(sp)); the leader asks its members'
// cancellation hooks before the message, so a cancelled or late member leaves every rank at the
// same step, and a member's last step ends it everywhere. Lone requests (one preempting a batch,
// edf) run through RunRequest between a batch's steps. A collective failing in a batched step ends
// every member of that step with its code and breaks the group, as for a lone request.
//
// Threads: RunRequest may be called from any thread; requests, batch steps and keep-alives are
// serialised, except a request that preempts the running one between steps (edf scheduling),
// which runs nested inside it on the same thread, on every rank.
// The FamilyDenoiser passed to Join must outlive the group.
#ifndef DGRID_SERVICES_DENOISER_GROUP_DENOISER_GROUP_H_
#define DGRID_SERVICES_DENOISER_GROUP_DENOISER_GROUP_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/family_denoiser.h"
#include "services/denoiser/group/group_protocol.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/sampler_hooks.h"
#include "services/denoiser/step_batcher.h"

namespace dgrid {

// `dgrid-denoiser --ulysses U --ring R --cfg C --rank K --group-size N --leader-address H:P
// --comm gloo|nccl --group-timeout-seconds T` (also LWS_* from the environment).
struct GroupFlags {
  int ulysses = 1;
  int ring = 1;
  int cfg = 1;
  int rank = 0;
  int group_size = 1;
  std::string leader_address;
  std::string comm = "gloo";
  double timeout_seconds = 60;

  // More than one rank.
  bool grouped() const { return group_size > 1 || ulysses * ring * cfg > 1; }
};

// Removes the group flags from `args` (argv[1..]; "--name=value" or "--name value", '-' or '_' in
// names) into `flags`, then applies the LeaderWorkerSet environment. INVALID_ARGUMENT for bad
// values, a group size that is not cfg * ring * ulysses, a rank outside it, a missing leader
// address or an unknown --comm.
absl::Status ExtractGroupFlags(std::vector<std::string>& args, GroupFlags* flags);

class DenoiserGroup {
 public:
  // Forms the group (collective: every rank calls it within the timeout) for `denoiser`, the
  // family's loop every rank runs. NCCL communicates on the model's device; Gloo on CPU copies.
  // INVALID_ARGUMENT when the layout does not fit the model (heads % ulysses).
  static absl::StatusOr<std::unique_ptr<DenoiserGroup>> Join(const GroupFlags& flags,
                                                             const FamilyDenoiser& denoiser);
  // Leader: stops the keep-alive and tells healthy peers to exit.
  ~DenoiserGroup();

  const ParallelLayout& layout() const { return layout_; }
  bool healthy() const;

  // Leader only: runs `request` on every rank; the latents of rank 0. `hooks.is_cancelled` is
  // asked before each step and the answer shared with the peers; so is `hooks.take_preempting`:
  // a request it hands over runs on every rank before the step (when it comes back here, on the
  // same thread, it runs nested inside this one).
  absl::StatusOr<at::Tensor> RunRequest(const DenoiseInput& input,
                                        const SamplerHooks& hooks) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Leader only: step-level batching through the group, for DenoiserEngine::SetRunner (which adds
  // run_alone: RunRequest). new_batch makes batches whose every step runs on all ranks (one per
  // StepBatcher lane; a batch must not outlive the group); empty when the family does not batch
  // in groups (its NewBatch(sp) is null). alone_on_this_thread: the calling thread is inside
  // RunRequest, so what it starts runs nested there (the lanes' steps wait for the group).
  StepBatcher::Backend BatchBackend();
  // Leader only: starts the keep-alive thread.
  void StartKeepAlive();
  // Leader only: stops the keep-alive and sends kStop (when healthy). Idempotent.
  void Stop();

  // Peers only: serves requests until the leader stops the group (OK) or a collective fails.
  absl::Status ServePeer();

  // Test seam: forms the group over `comm`, a communicator over the whole group already connected
  // (rank = layout.rank()), as Join does over Gloo or NCCL; `comm_device` is where it carries
  // tensors. Collective over the group's ranks.
  static absl::StatusOr<std::unique_ptr<DenoiserGroup>> JoinOver(
      std::unique_ptr<Communicator> comm, const ParallelLayout& layout,
      const FamilyDenoiser& denoiser, at::Device comm_device, absl::Duration keep_alive_interval);

 private:
  class LeaderBatch;  // group_batch.cc
  // Peers: one side of a leader's batch.
  struct PeerBatch {
    std::unique_ptr<BatchedSampler> sampler;
    std::set<int64_t> members;
    // The members taking the current step (the others' is_cancelled says stop).
    std::shared_ptr<std::set<int64_t>> stepping;
  };

  DenoiserGroup(const ParallelLayout& layout, const FamilyDenoiser& denoiser,
                at::Device comm_device)
      : layout_(layout), denoiser_(denoiser), comm_device_(comm_device) {}
  void KeepAliveLoop();
  absl::StatusOr<at::Tensor> RunRequestLocked(const DenoiseInput& input, const SamplerHooks& hooks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Peers: runs one request (and any that preempt it) with the leader; an error breaks the group.
  absl::Status ServeRequestLocked(DenoiseInput& input) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Peers: one kBatchStep; an error (the ranks disagree, a failed collective) breaks the group.
  absl::Status ServeBatchStepLocked(GroupBatchStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a received request's tensors to the model's device; an error breaks the group.
  absl::Status ToModelDeviceLocked(DenoiseInput& input) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a communication failure (logged once); returns `status` (OK passes through).
  absl::Status Failed(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a request's loop on any rank: the failure that breaks the group (a step decision that
  // did not get through, or a collective inside the model that failed), recorded; OK otherwise
  // (request errors and cancellation leave the group healthy).
  absl::Status GroupFailure(const absl::Status& comm_failure, const absl::Status& loop)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ParallelLayout layout_;
  const FamilyDenoiser& denoiser_;
  at::Device comm_device_;
  absl::Duration keep_alive_interval_ = absl::Seconds(15);

  mutable absl::Mutex mu_;  // One user of the communicators at a time.
  std::unique_ptr<Communicator> comm_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<SequenceParallelGroup> sp_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  // The thread inside RunRequest (holding mu_), so that a preempting request recognises it.
  std::atomic<std::thread::id> holder_{};
  // Leader: a preempting request was announced and its kDenoise message is not yet sent.
  bool preempt_announced_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // Leader: the next batch's id.
  std::atomic<int64_t> next_batch_{0};
  // Peers: the leader's batches by id.
  std::map<int64_t, PeerBatch> peer_batches_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_keep_alive_;
  std::thread keep_alive_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_GROUP_DENOISER_GROUP_H_
