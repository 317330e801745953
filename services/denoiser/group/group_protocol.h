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
// During a request the leader also broadcasts one byte before every step: continue, stop
// (cancellation, deadline), so that all ranks leave the loop at the same step, or preempt: a
// kDenoise (or, when the leader could not start the request after all, a kIdle) message follows,
// every rank runs that request to its end, and the leader then sends the step byte again.
//
// Errors: those of the communicator (DEADLINE_EXCEEDED, UNAVAILABLE), INTERNAL for a malformed
// header.
#ifndef DGRID_SERVICES_DENOISER_GROUP_GROUP_PROTOCOL_H_
#define DGRID_SERVICES_DENOISER_GROUP_GROUP_PROTOCOL_H_

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "services/denoiser/family_denoiser.h"

namespace dgrid {

enum class GroupMessageKind { kDenoise, kIdle, kStop };

struct GroupMessage {
  GroupMessageKind kind = GroupMessageKind::kIdle;
  DenoiseInput input;  // kDenoise only; its deadline is not sent.
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
