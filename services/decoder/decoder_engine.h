// The decoder stage: AutoencoderKL decode of the denoiser's latents, FluxPipeline's scaling and
// shift, VaeImageProcessor's post-processing to 8-bit RGB, and PNG encoding, behind a bounded
// queue.
//
// Threads: Decode and Enqueue may be called from any thread; callbacks run on worker threads.
#ifndef DGRID_SERVICES_DECODER_DECODER_ENGINE_H_
#define DGRID_SERVICES_DECODER_DECODER_ENGINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "services/decoder/image_io.h"
#include "services/decoder/models/autoencoder_kl.h"

namespace dgrid::decoder {

struct DecoderEngineOptions {
  std::string model_path;
  LoadOptions load;
  int workers = 1;
  int max_queued = 16;
  // --scheduling edf: the queue serves the earliest deadline first (WorkQueue::Options).
  bool earliest_deadline_first = false;
};

enum class ImageFormat { kPng, kRawRgb8 };

struct DecodeInput {
  std::string request_id;
  at::Tensor latents;  // [1, latent_channels, h, w] as the denoiser returns them.
  ImageFormat format = ImageFormat::kPng;
  absl::Time deadline = absl::InfiniteFuture();
};

struct DecodedImage {
  int width = 0;
  int height = 0;
  ImageFormat format = ImageFormat::kPng;
  std::string data;  // PNG bytes, or height * width * 3 raw bytes.
};

class DecoderEngine {
 public:
  using Done = std::function<void(absl::StatusOr<DecodedImage>)>;

  static absl::StatusOr<std::unique_ptr<DecoderEngine>> Create(const DecoderEngineOptions& options);
  ~DecoderEngine();

  // INVALID_ARGUMENT (naming `latents`) for a tensor of the wrong rank, batch or channel count.
  absl::StatusOr<DecodedImage> Decode(const DecodeInput& input,
                                      const CancellationToken& token) const;

  absl::Status Enqueue(DecodeInput input, Done done);
  absl::Status Cancel(absl::string_view request_id) { return queue_->Cancel(request_id); }
  void Shutdown(absl::Duration drain) { queue_->Shutdown(drain); }
  int queued() const { return queue_->queued(); }
  int running() const { return queue_->running(); }

 private:
  DecoderEngine() = default;
  std::optional<AutoencoderKL> vae_;
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_DECODER_ENGINE_H_
