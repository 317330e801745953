// The decoder stage: a model family's VAE decode of the denoiser's latents to 8-bit RGB frames (a
// LatentDecoder, services/decoder/latent_decoder.h, chosen by model_index.json's "_class_name"),
// then the picture as PNG or raw RGB (image models) or the video as MP4 or raw frames (video
// models), behind a bounded queue.
//
// Threads: Decode and Enqueue may be called from any thread; callbacks run on worker threads.
#ifndef DGRID_SERVICES_DECODER_DECODER_ENGINE_H_
#define DGRID_SERVICES_DECODER_DECODER_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_offload.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"
#include "services/decoder/image_io.h"
#include "services/decoder/latent_preview.h"

namespace dgrid::decoder {

struct DecoderEngineOptions {
  std::string model_path;
  LoadOptions load;
  int workers = 1;
  int max_queued = 16;
  // --scheduling edf: the queue serves the earliest deadline first (WorkQueue::Options).
  bool earliest_deadline_first = false;
  // --vae-tiling auto|on|off and --vae-tile-size (output pixels per tile side; 0: the VAE's
  // default): the VAE decode in overlapping tiles (services/decoder/models/vae_tiling.h). Create
  // answers INVALID_ARGUMENT naming the flag for a value the model cannot take.
  std::string vae_tiling = "auto";
  int64_t vae_tile_size = 0;
  // --vae-device offload / a decoder's --offload model: the VAE's weights rest in host memory and
  // come to load.device for each decode and image encode (common/model_offload.h).
  bool model_offload = false;
};

// kPng: images only; kMp4: videos only; kWebp and kRawRgb8: either (a still WebP of one frame or
// an animated one; a video's raw frames one after another).
enum class ImageFormat { kPng, kRawRgb8, kMp4, kWebp };

struct DecodeInput {
  std::string request_id;
  at::Tensor latents;  // As the family's denoiser returns them (batch 1).
  ImageFormat format = ImageFormat::kPng;
  int fps = 0;  // a video's frame rate, 1..240; 0: the family's default. Images: 0.
  absl::Time deadline = absl::InfiniteFuture();
  // Not kNone: a PNG preview of latents taken mid-denoise (latent_preview.h); format is ignored.
  PreviewMode preview = PreviewMode::kNone;
};

// A picture, or (video models) a video.
struct DecodedImage {
  int width = 0;
  int height = 0;
  bool video = false;  // a video (MP4, WebP or raw): data holds num_frames frames
  int num_frames = 1;
  int fps = 0;  // videos only
  ImageFormat format = ImageFormat::kPng;
  std::string data;  // PNG, MP4 or WebP bytes, or num_frames * height * width * 3 raw bytes.
};

// Image-to-image: an input image to encode (stages.proto EncodeImageRequest).
struct EncodeImageInput {
  std::string request_id;
  std::string image;  // PNG or JPEG bytes
  int width = 0;      // the size it is resized to, pixels
  int height = 0;
  uint64_t seed = 0;
  absl::Time deadline = absl::InfiniteFuture();
};

class LatentDecoder;

class DecoderEngine {
 public:
  using Done = std::function<void(absl::StatusOr<DecodedImage>)>;

  static absl::StatusOr<std::unique_ptr<DecoderEngine>> Create(const DecoderEngineOptions& options);
  ~DecoderEngine();

  // INVALID_ARGUMENT (naming `latents`) for a tensor of the wrong rank, batch or channel count;
  // naming `output_format` for PNG of more than one frame or MP4 from an image model, `fps` out
  // of range. One frame of a video model asked for as PNG comes back as a picture (video false).
  // UNIMPLEMENTED for MP4 in a build without FFmpeg, for WebP without libwebp.
  absl::StatusOr<DecodedImage> Decode(const DecodeInput& input,
                                      const CancellationToken& token) const;

  absl::Status Enqueue(DecodeInput input, Done done);

  // The family's LatentDecoder::EncodeImage of the decoded input image: the denoiser's image
  // latents on the VAE's device. INVALID_ARGUMENT naming `image` for bytes DecodeInputImage
  // refuses (common/input_image.h) or a family that takes no image, naming `width` / `height`
  // for a size that is not a positive multiple of the VAE's scale x 2.
  absl::StatusOr<at::Tensor> EncodeImage(const EncodeImageInput& input,
                                         const CancellationToken& token) const;
  using EncodeDone = std::function<void(absl::StatusOr<at::Tensor>)>;
  absl::Status EnqueueEncodeImage(EncodeImageInput input, EncodeDone done);
  absl::Status Cancel(absl::string_view request_id) { return queue_->Cancel(request_id); }
  void Shutdown(absl::Duration drain) { queue_->Shutdown(drain); }
  int queued() const { return queue_->queued(); }
  int running() const { return queue_->running(); }
  const families::ModelFamily& family() const { return *family_; }
  // The VAE's residency with model_offload (a test seam); null otherwise.
  const ModelResidency* vae_residency() const;

 private:
  DecoderEngine() = default;
  const families::ModelFamily* family_ = nullptr;
  std::unique_ptr<LatentDecoder> decoder_;
  std::unique_ptr<LatentPreviewer> previewer_;
  std::unique_ptr<WorkQueue> queue_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_DECODER_ENGINE_H_
