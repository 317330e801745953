// What the leader of a denoiser group tells its peers, over the group's Communicator.
//
// A message is a JSON header (BroadcastBytes from rank 0) followed by the tensors it lists
// (Broadcast from rank 0, in order, on the communicator's device: CPU for Gloo, the rank's GPU for
// NCCL). Kinds:
//   kDenoise  a request: the family-generic DenoiseInput (sizes, frames, steps, seed, the guidance
//             scales and the positive / negative named tensors); every rank then runs the model
//             family's sampling loop together (FamilyDenoiser::Run with the group's
//             SequenceParallelContext). The deadline stays with the leader, which stops the loop.
//   kIdle     a keep-alive while no request runs (so that the peers' wait never exceeds the
//             communicator's timeout, and a dead peer is noticed between requests too).
//   kStop     the leader shuts the group down; peers exit cleanly.
//   kBatchStep one step of a batch (step-level batching, --max-batch; step_batcher.h): `batch`
//             names the leader's batch (a group leader may run several, one per lane), `admitted`
//             the members joining before this step, each with its id and DenoiseInput (as
//             kDenoise sends one; its tensors follow in that order), and `members` every member
//             taking this step, admitted ones included. A peer adds the admitted members to its
//             side of that batch (FamilyDenoiser::NewBatch with the group's context; a batch it
//             does not hold yet starts empty), ends before the step every member it holds that is
//             not listed (cancelled, past its deadline, or ended on the leader alone, e.g. by a
//             failing progress report), and then every rank runs the same BatchedSampler::Step.
//             Members whose last step that was end on every rank by themselves; a peer drops a
//             batch once it is empty. A member listed that a peer does not hold, or an admitted
//             one its Add refuses, means the ranks disagree: the peer breaks the group.
// During a lone (kDenoise) request the leader also broadcasts one byte before every step:
// continue, stop (cancellation, deadline), so that all ranks leave the loop at the same step, or
// preempt: a kDenoise (or, when the leader could not start the request after all, a kIdle) message
// follows, every rank runs that request to its end, and the leader then sends the step byte again.
// A batch has no step byte: its kBatchStep is the step's decision, and a request that preempts a
// batch (edf) is a kDenoise sent between two kBatchStep messages, run to its end on every rank
// while the batch waits. Between a batch's steps the leader may also send kIdle or another batch's
// kBatchStep.
//
// Errors: those of the communicator (DEADLINE_EXCEEDED, UNAVAILABLE), INTERNAL for a malformed
// header.
#ifndef DGRID_SERVICES_DENOISER_GROUP_GROUP_PROTOCOL_H_
#define DGRID_SERVICES_DENOISER_GROUP_GROUP_PROTOCOL_H_

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "services/denoiser/family_denoiser.h"

namespace dgrid {

enum class GroupMessageKind { kDenoise, kIdle, kStop, kBatchStep };

// kBatchStep's content (see above).
struct GroupBatchStep {
  int64_t batch = 0;
  // (member id, request) joining before this step; deadlines and preview steps are not sent.
  std::vector<std::pair<int64_t, DenoiseInput>> admitted;
  std::vector<int64_t> members;
};

struct GroupMessage {
  GroupMessageKind kind = GroupMessageKind::kIdle;
  DenoiseInput input;         // kDenoise only; its deadline is not sent.
  GroupBatchStep batch_step;  // kBatchStep only.
};

// Rank 0: sends `message` (tensors are moved to `device` first).
absl::Status SendGroupMessage(Communicator& comm, const GroupMessage& message, at::Device device);
// Other ranks: receives the next message; tensors end up on `device`.
absl::StatusOr<GroupMessage> ReceiveGroupMessage(Communicator& comm, at::Device device);

enum class StepDecision { kContinue, kStop, kPreempt };

// The per-step decision: rank 0 passes its decision, every rank gets rank 0's value.
absl::StatusOr<StepDecision> AgreeOnStep(Communicator& comm, StepDecision decision);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_GROUP_GROUP_PROTOCOL_H_
