// What the decoder stage asks of a model family: the denoiser's latents -> 8-bit RGB frames (one
// for an image model). The engine (decoder_engine.h) encodes them (PNG, MP4 or raw). Each family
// the stages serve has one implementation, found by the family's name in latent_decoder.cc's
// table: FLUX.1's AutoencoderKL with FluxPipeline's scaling and shift, Wan's AutoencoderKLWan with
// WanPipeline's latents_mean / latents_std.
//
// Thread safety: immutable once loaded; Decode may run on several threads.
#ifndef DGRID_SERVICES_DECODER_LATENT_DECODER_H_
#define DGRID_SERVICES_DECODER_LATENT_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/diffusers_layout.h"
#include "common/input_image.h"
#include "common/model_offload.h"
#include "common/safetensors.h"
#include "common/work_queue.h"
#include "families/model_family.h"
#include "services/decoder/image_io.h"
#include "services/decoder/models/vae_tiling.h"

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
  // Image-to-image, for families whose pipeline takes an input image (FLUX:
  // FluxImg2ImgPipeline): `image` resized to width x height and normalised as VaeImageProcessor
  // does, VAE-encoded, its latent distribution sampled with the first draw of a CPU generator
  // seeded with `seed` (as retrieve_latents(..., generator) draws it), and scaled as the pipeline
  // scales it. Returns the denoiser's image latents [1, C, height/8, width/8] in the VAE's dtype,
  // on its device. This default: INVALID_ARGUMENT naming `image` (the family takes none).
  virtual absl::StatusOr<at::Tensor> EncodeImage(const RgbImage& image, int width, int height,
                                                 uint64_t seed,
                                                 const CancellationToken& token) const;
  // How the VAE decode tiles, for the log (DescribeVaeTiling): "off", "on (tiles of 32 px)", ...
  virtual std::string TilingSummary() const = 0;
  // The VAE's residency when it is offloaded (model_offload); null when it stays on its device.
  virtual const ModelResidency* vae_residency() const = 0;
};

// VaeImageProcessor.preprocess of an RGB image for a VAE: resized to width x height (PIL's
// Lanczos), x / 255 in float32, then 2x - 1: float32 [1, 3, height, width] on the CPU.
absl::StatusOr<at::Tensor> PreprocessImageForVae(const RgbImage& image, int width, int height);

// The decoder of `family` for the pipeline at `index` (its vae/), loaded with `load`, its VAE
// decode tiled and sliced as `vae` says (default: neither); with `model_offload`, the VAE's
// weights rest in host memory and come to load.device for each decode or image encode
// (common/model_offload.h). UNIMPLEMENTED for a family the decoder stage has none for;
// INVALID_ARGUMENT naming --vae-tile-size / --vae-tiling for settings its VAE cannot take.
absl::StatusOr<std::unique_ptr<LatentDecoder>> LoadLatentDecoder(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load,
    const VaeDecodeOptions& vae = {}, bool model_offload = false);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_LATENT_DECODER_H_
