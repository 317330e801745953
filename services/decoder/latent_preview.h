// Previews of latents taken mid-denoise (stages.proto DecodeRequest.preview, DenoisePreview): a
// picture of what the image is becoming, cheaper than the final decode.
//
//  - kLatentRgb: each latent pixel's channels mapped to RGB by an affine map fitted, once, to this
//    model's own VAE (least squares between random latents and their decoded pictures averaged
//    over each latent pixel's patch). One picture pixel per latent pixel; no VAE run after the fit.
//  - kVae: the VAE itself on the latents subsampled 2x in each direction (every other latent pixel,
//    real latent values rather than averages): a quarter of the final decode's pixels.
//
// docs/api.md gives measured costs and which one the orchestrator asks for.
//
// Image models only (4-D latents [1, C, h, w]); INVALID_ARGUMENT naming `latents` otherwise.
// Thread-safe: the fit is made under a lock by the first kLatentRgb preview and kept.
#ifndef DGRID_SERVICES_DECODER_LATENT_PREVIEW_H_
#define DGRID_SERVICES_DECODER_LATENT_PREVIEW_H_

#include <ATen/core/Tensor.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/work_queue.h"
#include "services/decoder/image_io.h"

namespace dgrid::decoder {

class LatentDecoder;

enum class PreviewMode { kNone, kLatentRgb, kVae };

class LatentPreviewer {
 public:
  // `decoder` is not owned and must outlive this.
  explicit LatentPreviewer(const LatentDecoder* decoder) : decoder_(decoder) {}

  // The preview of `latents` (as the family's denoiser returns them) made as `mode` says (not
  // kNone). CANCELLED / DEADLINE_EXCEEDED from `token`.
  absl::StatusOr<Image8> Preview(const at::Tensor& latents, PreviewMode mode,
                                 const CancellationToken& token) const;

 private:
  // The fitted map for `channels` latent channels: float64 [channels + 1, 3] (the last row the
  // bias), taking latents to the VAE's output range [-1, 1].
  absl::StatusOr<at::Tensor> Fit(const at::Tensor& like, const CancellationToken& token) const;

  const LatentDecoder* const decoder_;
  mutable absl::Mutex mutex_;
  mutable at::Tensor map_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_LATENT_PREVIEW_H_
