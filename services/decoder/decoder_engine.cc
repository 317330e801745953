#include "services/decoder/decoder_engine.h"

#include <ATen/ATen.h>

#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"

namespace dgrid::decoder {

DecoderEngine::~DecoderEngine() {
  if (queue_) queue_->Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<DecoderEngine>> DecoderEngine::Create(
    const DecoderEngineOptions& options) {
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(options.model_path));
  ASSIGN_OR_RETURN(std::string vae_dir, index.ComponentPath("vae"));
  std::unique_ptr<DecoderEngine> engine(new DecoderEngine());
  ASSIGN_OR_RETURN(AutoencoderKL vae, AutoencoderKL::Load(vae_dir, options.load));
  engine->vae_.emplace(std::move(vae));
  engine->queue_ = std::make_unique<WorkQueue>(WorkQueue::Options{
      "decoder", options.workers, options.max_queued, options.earliest_deadline_first});
  DG_LOG_INFO("", "decoder loaded from %s on %s", index.root, options.load.device);
  return engine;
}

absl::StatusOr<DecodedImage> DecoderEngine::Decode(const DecodeInput& input,
                                                   const CancellationToken& token) const {
  const at::Tensor& latents = input.latents;
  if (!latents.defined() || latents.dim() != 4 || latents.size(0) != 1 ||
      latents.size(1) != vae_->config().latent_channels || latents.size(2) < 1 ||
      latents.size(3) < 1) {
    return InvalidArgument("latents must have shape [1, ", vae_->config().latent_channels,
                           ", h, w], got ", latents.defined() ? c10::str(latents.sizes()) : "none");
  }
  RETURN_IF_ERROR(token.Check());
  // Decode in the VAE's dtype on its device, as FluxPipeline does.
  ASSIGN_OR_RETURN(at::Tensor pixels,
                   vae_->DecodeDenoised(latents.to(vae_->device(), vae_->dtype())));
  RETURN_IF_ERROR(token.Check());
  ASSIGN_OR_RETURN(std::vector<Image8> images, PostprocessImages(pixels));
  if (images.size() != 1) return Internal("decoder produced ", images.size(), " images");
  DecodedImage out;
  out.width = static_cast<int>(images[0].width);
  out.height = static_cast<int>(images[0].height);
  out.format = input.format;
  if (input.format == ImageFormat::kPng) {
    ASSIGN_OR_RETURN(out.data, EncodePng(images[0]));
  } else {
    out.data.assign(images[0].pixels.begin(), images[0].pixels.end());
  }
  return out;
}

absl::Status DecoderEngine::Enqueue(DecodeInput input, Done done) {
  std::string id = input.request_id;
  const absl::Time deadline = input.deadline;
  return EnqueueForResult<DecodedImage>(
      *queue_, std::move(id), deadline, std::move(input),
      [this](const DecodeInput& in, const CancellationToken& token) { return Decode(in, token); },
      std::move(done));
}

}  // namespace dgrid::decoder
