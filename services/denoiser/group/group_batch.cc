// Step-level batching through a denoiser group: the leader's side of a batch (a BatchedSampler
// that tells the peers each step, kBatchStep) and the peers' side (ServeBatchStepLocked). The
// protocol is in group_protocol.h; why the ranks stay in step is below.
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/group/denoiser_group.h"

namespace dgrid {

// The leader's side of one batch: its own rank's batch (`local_`, the family's, with the group's
// context) plus what the peers must hear before each step. Every rank ends a member at the same
// step because every rank's is_cancelled answers from the same list (the message's `members`),
// and what else ends a member (its last step, NaN / Inf, a failed forward) is the same arithmetic
// on every rank. What ends a member on the leader alone (a progress hook that throws) leaves it on
// the peers until the batch's next message, which does not list it, or the batch's end: the lane
// drops a batch once it is empty (step_batcher.cc), and the destructor below tells the peers.
class DenoiserGroup::LeaderBatch final : public BatchedSampler {
 public:
  LeaderBatch(DenoiserGroup& group, int64_t id, std::unique_ptr<BatchedSampler> local)
      : group_(group), id_(id), local_(std::move(local)) {}

  // Members the peers may still hold are dropped there (the batch is destroyed by its lane once
  // empty, or after an unexpected error): a message listing no member, so every rank ends what it
  // holds of this batch without a forward, and nothing stays.
  ~LeaderBatch() override {
    if (!told_peers_) return;
    absl::MutexLock lock(&group_.mu_);
    if (!group_.failure_.ok() || group_.stopped_) return;
    GroupMessage drop;
    drop.kind = GroupMessageKind::kBatchStep;
    drop.batch_step.batch = id_;
    if (absl::Status s = SendGroupMessage(*group_.comm_, drop, group_.comm_device_); !s.ok()) {
      group_.Failed(s).IgnoreError();
    }
  }

  absl::Status Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) override {
    SamplerHooks local = hooks;
    local.is_cancelled = [stepping = stepping_, id] { return stepping->count(id) == 0; };
    RETURN_IF_ERROR(local_->Add(id, input, std::move(local)));
    hooks_[id] = std::move(hooks);
    admitted_.emplace_back(id, input);
    return absl::OkStatus();
  }

  std::vector<Ended> Step() override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    // Who takes this step: the leader's hooks decide, before the step as the lone loop asks them;
    // a hook that throws ends its member with the error.
    stepping_->clear();
    std::map<int64_t, absl::Status> thrown;
    for (const auto& [id, hooks] : hooks_) {
      if (hooks.is_cancelled) {
        absl::StatusOr<bool> stop = TorchCall(absl::StrCat("batch member ", id),
                                              [&, &hooks = hooks] { return hooks.is_cancelled(); });
        if (!stop.ok()) thrown[id] = stop.status();
        if (!stop.ok() || *stop) continue;
      }
      stepping_->insert(id);
    }
    absl::Status failure;
    {
      absl::MutexLock lock(&group_.mu_);
      if (!group_.failure_.ok() || group_.stopped_) {
        failure = absl::UnavailableError(
            absl::StrCat("denoiser group ", group_.layout_.ToString(), " is not serving: ",
                         group_.failure_.ok() ? std::string("stopped")
                                              : std::string(group_.failure_.message())));
      } else {
        GroupMessage message;
        message.kind = GroupMessageKind::kBatchStep;
        message.batch_step.batch = id_;
        message.batch_step.admitted = std::move(admitted_);
        message.batch_step.members.assign(stepping_->begin(), stepping_->end());
        admitted_.clear();
        failure = group_.Failed(SendGroupMessage(*group_.comm_, message, group_.comm_device_));
        if (failure.ok()) {
          told_peers_ = true;
          std::vector<Ended> ended = local_->Step();
          Finish(ended, thrown);
          return ended;
        }
      }
    }
    // The group cannot run the step: every member ends with the reason (the local batch drops
    // them as cancelled, no forward runs).
    stepping_->clear();
    std::vector<Ended> ended = local_->Step();
    for (Ended& e : ended) {
      e.result = failure;
      hooks_.erase(e.id);
    }
    return ended;
  }

  int size() const override { return local_->size(); }

 private:
  // After the step, on the leader holding the group's lock: leader-only errors restored, members
  // forgotten, and a failed collective breaks the group.
  void Finish(std::vector<Ended>& ended,
              std::map<int64_t, absl::Status>& thrown) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (Ended& e : ended) {
      if (auto it = thrown.find(e.id); it != thrown.end()) e.result = it->second;
      hooks_.erase(e.id);
      if (!e.result.ok()) group_.GroupFailure(absl::OkStatus(), e.result.status()).IgnoreError();
    }
    // What the leader alone ended the peers drop at the next message (it is not listed there).
  }

  DenoiserGroup& group_;
  const int64_t id_;
  std::unique_ptr<BatchedSampler> local_;
  // The members' own hooks (the engine's), by member id.
  std::map<int64_t, SamplerHooks> hooks_;
  // Joined since the last message.
  std::vector<std::pair<int64_t, DenoiseInput>> admitted_;
  // The members taking the current step; the local batch's is_cancelled reads it.
  std::shared_ptr<std::set<int64_t>> stepping_ = std::make_shared<std::set<int64_t>>();
  // Whether a message of this batch reached the peers.
  bool told_peers_ = false;
};

StepBatcher::Backend DenoiserGroup::BatchBackend() {
  StepBatcher::Backend backend;
  backend.alone_on_this_thread = [this] { return holder_.load() == std::this_thread::get_id(); };
  std::unique_ptr<BatchedSampler> probe;
  {
    absl::MutexLock lock(&mu_);
    probe = denoiser_.NewBatch(&sp_->context);
  }
  if (probe == nullptr) return backend;
  backend.new_batch = [this]() -> std::unique_ptr<BatchedSampler> {
    std::unique_ptr<BatchedSampler> local;
    {
      absl::MutexLock lock(&mu_);
      local = denoiser_.NewBatch(&sp_->context);
    }
    return std::make_unique<LeaderBatch>(*this, next_batch_++, std::move(local));
  };
  return backend;
}

absl::Status DenoiserGroup::ServeBatchStepLocked(GroupBatchStep& step) {
  PeerBatch& batch = peer_batches_[step.batch];
  if (batch.sampler == nullptr) {
    batch.sampler = denoiser_.NewBatch(&sp_->context);
    if (batch.sampler == nullptr) {
      return Failed(absl::InternalError("the leader runs a batch this rank's family cannot make"));
    }
    batch.stepping = std::make_shared<std::set<int64_t>>();
  }
  for (auto& [id, input] : step.admitted) {
    RETURN_IF_ERROR(ToModelDeviceLocked(input));
    SamplerHooks hooks;
    hooks.is_cancelled = [stepping = batch.stepping, id = id] { return stepping->count(id) == 0; };
    const absl::Status added =
        TorchCall(input.request_id, [&] { return batch.sampler->Add(id, input, hooks); });
    if (!added.ok()) {
      return Failed(absl::InternalError(
          absl::StrCat("rank ", layout_.rank(), ": ", input.request_id,
                       " joined the leader's batch but not this rank's: ", added.ToString())));
    }
    batch.members.insert(id);
  }
  batch.stepping->clear();
  for (const int64_t id : step.members) {
    if (!batch.members.count(id)) {
      return Failed(absl::InternalError(absl::StrCat("rank ", layout_.rank(), ": batch ",
                                                     step.batch, " member ", id,
                                                     " steps on the leader but is not held here")));
    }
    batch.stepping->insert(id);
  }
  absl::StatusOr<std::vector<BatchedSampler::Ended>> ended =
      TorchCall("batched step", [&] { return batch.sampler->Step(); });
  if (!ended.ok()) return Failed(ended.status());  // this rank's batch is lost: the group breaks
  for (const BatchedSampler::Ended& e : *ended) {
    batch.members.erase(e.id);
    if (e.result.ok()) continue;
    RETURN_IF_ERROR(GroupFailure(absl::OkStatus(), e.result.status()));
    if (e.result.status().code() != absl::StatusCode::kCancelled) {
      DG_LOG_WARN("", "denoiser group peer: batch member %d: %s", e.id,
                  e.result.status().ToString());
    }
  }
  if (batch.members.empty()) peer_batches_.erase(step.batch);
  return absl::OkStatus();
}

}  // namespace dgrid
