// The encoder stage: FLUX's two tokenizers and text encoders behind a bounded work queue.
//
// Ref: diffusers FluxPipeline.encode_prompt (pipelines/flux/pipeline_flux.py, 0.42.1): CLIP
// (tokenizer / text_encoder) gives the pooled embedding from a prompt padded to the tokenizer's
// model_max_length (77); T5 (tokenizer_2 / text_encoder_2) gives the sequence embedding from a
// prompt padded to max_sequence_length; both are cast to their encoder's dtype. Over-long prompts
// are truncated with a warning naming the removed text, as the pipeline does.
//
// The gRPC server and the single-process pipeline both use this engine. Threads: Encode and
// Enqueue may be called from any thread; callbacks run on the engine's worker threads.
#ifndef DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_
#define DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_

#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/flux/flux_family.h"

namespace dgrid::encoder {

struct EncoderEngineOptions {
  std::string model_path;  // Diffusers root (model_index.json), HF cache entry or snapshot.
  LoadOptions load;        // Device and dtype of the text encoders.
  int workers = 1;
  int max_queued = 16;
  // --scheduling edf: the queue serves the earliest deadline first (WorkQueue::Options).
  bool earliest_deadline_first = false;
};

struct TextEmbeddings {
  at::Tensor prompt_embeds;         // [1, max_sequence_length, d_model of T5]
  at::Tensor pooled_prompt_embeds;  // [1, hidden of CLIP]
};

struct EncodeInput {
  std::string request_id;
  std::string prompt;
  std::string negative_prompt;
  bool encode_negative = false;
  // 1..FluxPipeline's most T5 tokens (512).
  int max_sequence_length = families::flux::kFluxDefaults.max_sequence_length;
  absl::Time deadline = absl::InfiniteFuture();
};

struct EncodeOutput {
  TextEmbeddings positive;
  TextEmbeddings negative;  // Undefined tensors unless encode_negative.
};

class EncoderEngine {
 public:
  using Done = std::function<void(absl::StatusOr<EncodeOutput>)>;

  // Loads tokenizer/, text_encoder/, tokenizer_2/, text_encoder_2/ of the model. NOT_FOUND for a
  // missing component, INVALID_ARGUMENT / DATA_LOSS for bad files.
  static absl::StatusOr<std::unique_ptr<EncoderEngine>> Create(const EncoderEngineOptions& options);
  ~EncoderEngine();

  // Encodes on the calling thread. INVALID_ARGUMENT for an empty prompt (named `prompt`), invalid
  // UTF-8, or max_sequence_length outside [1, 512]; CANCELLED / DEADLINE_EXCEEDED from `token`.
  absl::StatusOr<EncodeOutput> Encode(const EncodeInput& input,
                                      const CancellationToken& token) const;

  // Queues the work; `done` is called exactly once unless an error is returned here
  // (RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while shutting down).
  absl::Status Enqueue(EncodeInput input, Done done);
  absl::Status Cancel(absl::string_view request_id) { return queue_->Cancel(request_id); }
  void Shutdown(absl::Duration drain) { queue_->Shutdown(drain); }
  int queued() const { return queue_->queued(); }
  int running() const { return queue_->running(); }

 private:
  struct Models;
  EncoderEngine() = default;
  std::unique_ptr<Models> models_;
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_ENCODER_ENGINE_H_
