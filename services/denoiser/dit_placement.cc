#include "services/denoiser/dit_placement.h"

#include "common/torch_status.h"
#include "services/denoiser/family_denoiser.h"

namespace dgrid {

BatchOnFirstMember::~BatchOnFirstMember() { Drop(); }

void BatchOnFirstMember::Drop() {
  batch_.reset();  // its members' tensors and the model references first
  hold_.reset();   // then the device copy (ModelResidency waits for the device before freeing)
}

absl::Status BatchOnFirstMember::Add(int64_t id, const DenoiseInput& input, SamplerHooks hooks) {
  if (batch_ == nullptr) {
    ASSIGN_OR_RETURN(batch_, start_(&hold_));
  }
  // An exception from the family's Add is a refusal too (caught here, so that the check below
  // still runs).
  const absl::Status added =
      TorchCall(input.request_id, [&] { return batch_->Add(id, input, std::move(hooks)); });
  // A refused first member leaves nothing to step: the weights must not wait on the device for a
  // batch that the step batcher keeps only while it has members.
  if (!added.ok() && batch_->size() == 0) Drop();
  return added;
}

std::vector<BatchedSampler::Ended> BatchOnFirstMember::Step() {
  if (batch_ == nullptr) return {};
  return batch_->Step();
}

}  // namespace dgrid
