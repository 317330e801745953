#include "services/decoder/decoder_engine.h"

#include <utility>

#include <ATen/ATen.h>

#include "absl/time/clock.h"
#include "common/diffusers_layout.h"
#include "common/input_image.h"
#include "common/logging.h"
#include "common/status.h"
#include "families/registry.h"
#include "services/decoder/latent_decoder.h"
#include "services/decoder/models/vae_tiling.h"
#include "services/decoder/video_io.h"
#include "services/decoder/webp_io.h"

namespace dgrid::decoder {

DecoderEngine::~DecoderEngine() {
  if (queue_) queue_->Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<DecoderEngine>> DecoderEngine::Create(
    const DecoderEngineOptions& options) {
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(options.model_path));
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(index.pipeline_class);
  if (!family.ok()) {
    return InvalidArgument(index.root,
                           "/model_index.json: _class_name: ", family.status().message());
  }
  std::unique_ptr<DecoderEngine> engine(new DecoderEngine());
  engine->family_ = *family;
  VaeDecodeOptions vae;
  ASSIGN_OR_RETURN(vae.tiling, ParseVaeTilingMode(options.vae_tiling, "--vae-tiling"));
  vae.tile_size = options.vae_tile_size;
  vae.slicing = true;  // batches of one here; kept on so that a larger batch would not OOM
  ASSIGN_OR_RETURN(engine->decoder_,
                   LoadLatentDecoder(**family, index, options.load, vae, options.model_offload));
  engine->previewer_ = std::make_unique<LatentPreviewer>(engine->decoder_.get());
  engine->queue_ = std::make_unique<WorkQueue>(WorkQueue::Options{
      "decoder", options.workers, options.max_queued, options.earliest_deadline_first});
  DG_LOG_INFO("", "decoder (%s) loaded from %s on %s, VAE tiling %s",
              std::string((*family)->name()), index.root, options.load.device,
              engine->decoder_->TilingSummary());
  if (const ModelResidency* residency = engine->decoder_->vae_residency()) {
    DG_LOG_INFO("", "model offload: %s", DescribeOffload(*residency));
  }
  return engine;
}

const ModelResidency* DecoderEngine::vae_residency() const { return decoder_->vae_residency(); }

absl::StatusOr<DecodedImage> DecoderEngine::Decode(const DecodeInput& input,
                                                   const CancellationToken& token) const {
  if (input.preview != PreviewMode::kNone) {
    const absl::Time start = absl::Now();
    ASSIGN_OR_RETURN(Image8 picture, previewer_->Preview(input.latents, input.preview, token));
    DecodedImage out;
    out.width = static_cast<int>(picture.width);
    out.height = static_cast<int>(picture.height);
    ASSIGN_OR_RETURN(out.data, EncodePng(picture));
    DG_LOG_INFO(input.request_id, "preview (%s) %dx%d in %.1f ms",
                input.preview == PreviewMode::kVae ? "vae" : "latent-rgb", out.width, out.height,
                absl::ToDoubleMilliseconds(absl::Now() - start));
    return out;
  }
  const families::GenerationDefaults& defaults = family_->defaults();
  const bool video = defaults.makes_video();
  if (!video && input.format == ImageFormat::kMp4) {
    return InvalidArgument("output_format: MP4 is for video models; this one makes images");
  }
  const int fps = input.fps == 0 ? defaults.fps : input.fps;
  if (video && (fps < 1 || fps > 240))
    return InvalidArgument("fps = ", fps, " is outside [1, 240]");
  ASSIGN_OR_RETURN(std::vector<Image8> frames, decoder_->Decode(input.latents, token));
  if (frames.empty()) return Internal("decoder produced no frames");
  RETURN_IF_ERROR(token.Check());
  if (input.format == ImageFormat::kPng && frames.size() > 1) {
    return InvalidArgument("output_format: PNG holds one picture; ", frames.size(),
                           " frames are MP4 or RAW_RGB8");
  }
  DecodedImage out;
  out.width = static_cast<int>(frames[0].width);
  out.height = static_cast<int>(frames[0].height);
  // One frame of a video model asked for as PNG is a picture, as the API's GenerateResult says.
  out.video = video && input.format != ImageFormat::kPng;
  out.num_frames = static_cast<int>(frames.size());
  out.fps = video ? fps : 0;
  out.format = input.format;
  switch (input.format) {
    case ImageFormat::kPng: {
      ASSIGN_OR_RETURN(out.data, EncodePng(frames[0]));
      break;
    }
    case ImageFormat::kMp4: {
      Mp4Options mp4;
      mp4.fps = fps;
      ASSIGN_OR_RETURN(out.data, EncodeMp4(frames, mp4));
      break;
    }
    case ImageFormat::kWebp: {
      WebpOptions webp;
      if (video) webp.fps = fps;
      ASSIGN_OR_RETURN(out.data, EncodeWebp(frames, webp));
      break;
    }
    case ImageFormat::kRawRgb8: {
      for (const Image8& frame : frames) {
        out.data.append(frame.pixels.begin(), frame.pixels.end());
      }
      break;
    }
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

absl::StatusOr<at::Tensor> DecoderEngine::EncodeImage(const EncodeImageInput& input,
                                                      const CancellationToken& token) const {
  // Multiples of the VAE's scale are the family encoder's check (it knows the VAE).
  for (const auto& [field, value] : {std::pair<const char*, int>{"width", input.width},
                                     std::pair<const char*, int>{"height", input.height}}) {
    if (value < 1 || value > kMaxInputImageSide) {
      return InvalidArgument(field, " = ", value, ": must be 1 to ", kMaxInputImageSide);
    }
  }
  ASSIGN_OR_RETURN(RgbImage image, DecodeInputImage(input.image));
  RETURN_IF_ERROR(token.Check());
  return decoder_->EncodeImage(image, input.width, input.height, input.seed, token);
}

absl::Status DecoderEngine::EnqueueEncodeImage(EncodeImageInput input, EncodeDone done) {
  std::string id = input.request_id;
  const absl::Time deadline = input.deadline;
  return EnqueueForResult<at::Tensor>(
      *queue_, std::move(id), deadline, std::move(input),
      [this](const EncodeImageInput& in, const CancellationToken& token) {
        return EncodeImage(in, token);
      },
      std::move(done));
}

}  // namespace dgrid::decoder
