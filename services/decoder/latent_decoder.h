// What the decoder stage asks of a model family: the denoiser's latents -> 8-bit RGB frames (one
// for an image model). The engine (decoder_engine.h) encodes them (PNG, MP4 or raw). Each family
// the stages serve has one implementation, found by the family's name in latent_decoder.cc's
// table: FLUX.1's AutoencoderKL with FluxPipeline's scaling and shift, Wan's AutoencoderKLWan with
// WanPipeline's latents_mean / latents_std.
//
// Thread safety: immutable once loaded; Decode may run on several threads.
#ifndef DGRID_SERVICES_DECODER_LATENT_DECODER_H_
#define DGRID_SERVICES_DECODER_LATENT_DECODER_H_

#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"
#include "services/decoder/image_io.h"

namespace dgrid::decoder {

class LatentDecoder {
 public:
  virtual ~LatentDecoder() = default;
  // The frames of `latents` (batch 1, as the family's denoiser returns them), post-processed as
  // diffusers' VaeImageProcessor / VideoProcessor do for output_type="pil". INVALID_ARGUMENT
  // naming `latents` for a tensor of the wrong rank, batch or channel count; CANCELLED /
  // DEADLINE_EXCEEDED from `token`.
  virtual absl::StatusOr<std::vector<Image8>> Decode(const at::Tensor& latents,
                                                     const CancellationToken& token) const = 0;
};

// The decoder of `family` for the pipeline at `index` (its vae/), loaded with `load`.
// UNIMPLEMENTED for a family the decoder stage has none for.
absl::StatusOr<std::unique_ptr<LatentDecoder>> LoadLatentDecoder(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_LATENT_DECODER_H_
