// What the encoder stage asks of a model family: one prompt's text conditioning as named tensors.
// Each family that the stages serve has one implementation (flux_text.h: CLIP + T5; wan_text.h:
// UMT5), found by the family's name in text_conditioner.cc's table.
//
// Thread safety: a TextConditioner is immutable once loaded; Encode may run on several threads.
#ifndef DGRID_SERVICES_ENCODER_TEXT_CONDITIONER_H_
#define DGRID_SERVICES_ENCODER_TEXT_CONDITIONER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/diffusers_layout.h"
#include "common/model_offload.h"
#include "common/named_tensors.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"

namespace dgrid::encoder {

class TextConditioner {
 public:
  virtual ~TextConditioner() = default;

  // `text` (valid UTF-8, possibly empty) -> the family's text_embedding_names(), each with batch 1,
  // in the encoders' dtype on their device. `field` ("prompt", "negative_prompt") and
  // `request_id` name the text in log lines (truncation warnings). CANCELLED /
  // DEADLINE_EXCEEDED from `token` between encoders.
  virtual absl::StatusOr<NamedTensors> Encode(absl::string_view request_id, absl::string_view field,
                                              const std::string& text, int max_sequence_length,
                                              const CancellationToken& token) const = 0;

  // With model offload, each text encoder's residency, in the order Encode runs them (a test
  // seam and the load log); empty when they stay on their device.
  virtual std::vector<const ModelResidency*> residencies() const = 0;
};

// The conditioner of `family` for the pipeline at `index`, loaded with `load`; with
// `model_offload`, each text encoder's weights rest in host memory and come to load.device only
// while it encodes (common/model_offload.h), so one text encoder is on the device at a time.
// NOT_FOUND for a missing component, INVALID_ARGUMENT / DATA_LOSS for bad files, UNIMPLEMENTED
// for a family the encoder stage has none for.
absl::StatusOr<std::unique_ptr<TextConditioner>> LoadTextConditioner(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load,
    bool model_offload = false);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TEXT_CONDITIONER_H_
