// The encoder stage: a model family's tokenizers and text encoders (a TextConditioner,
// services/encoder/text_conditioner.h, chosen by model_index.json's "_class_name") behind a
// bounded work queue. FLUX.1: CLIP + T5 (flux_text.h); Wan: UMT5 (wan_text.h).
//
// The gRPC server and the single-process pipeline both use this engine. Threads: Encode and
// Enqueue may be called from any thread; callbacks run on the engine's worker threads.
#ifndef DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_
#define DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_offload.h"
#include "common/named_tensors.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"

namespace dgrid::encoder {

struct EncoderEngineOptions {
  std::string model_path;  // Diffusers root (model_index.json), HF cache entry or snapshot.
  LoadOptions load;        // Device and dtype of the text encoders.
  int workers = 1;
  int max_queued = 16;
  // --scheduling edf: the queue serves the earliest deadline first (WorkQueue::Options).
  bool earliest_deadline_first = false;
  // --text-encoder-device offload / an encoder's --offload model: each text encoder's weights
  // rest in host memory and come to load.device only while it encodes (common/model_offload.h).
  bool model_offload = false;
};

struct EncodeInput {
  std::string request_id;
  std::string prompt;
  std::string negative_prompt;
  bool encode_negative = false;
  // 1..the family's max_text_tokens; 0: the family's default.
  int max_sequence_length = 0;
  absl::Time deadline = absl::InfiniteFuture();
};

// The family's text_embedding_names() for each prompt.
struct EncodeOutput {
  NamedTensors positive;
  NamedTensors negative;  // Empty unless encode_negative.
};

class TextConditioner;

class EncoderEngine {
 public:
  using Done = std::function<void(absl::StatusOr<EncodeOutput>)>;

  // Loads the model family's tokenizers and text encoders. NOT_FOUND for a missing component,
  // INVALID_ARGUMENT / DATA_LOSS for bad files or a pipeline class no family serves.
  static absl::StatusOr<std::unique_ptr<EncoderEngine>> Create(const EncoderEngineOptions& options);
  ~EncoderEngine();

  // Encodes on the calling thread. INVALID_ARGUMENT for an empty prompt (named `prompt`), invalid
  // UTF-8, or max_sequence_length outside [1, max_text_tokens]; CANCELLED / DEADLINE_EXCEEDED
  // from `token`.
  absl::StatusOr<EncodeOutput> Encode(const EncodeInput& input,
                                      const CancellationToken& token) const;

  // Queues the work; `done` is called exactly once unless an error is returned here
  // (RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while shutting down).
  absl::Status Enqueue(EncodeInput input, Done done);
  absl::Status Cancel(absl::string_view request_id) { return queue_->Cancel(request_id); }
  void Shutdown(absl::Duration drain) { queue_->Shutdown(drain); }
  int queued() const { return queue_->queued(); }
  int running() const { return queue_->running(); }
  const families::ModelFamily& family() const { return *family_; }
  // With model_offload, each text encoder's residency in the order they run (a test seam); empty
  // otherwise.
  std::vector<const ModelResidency*> residencies() const;

 private:
  EncoderEngine() = default;
  const families::ModelFamily* family_ = nullptr;
  std::unique_ptr<TextConditioner> conditioner_;
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_
