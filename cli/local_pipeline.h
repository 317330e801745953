// The single-process pipeline: the encoder, denoiser and decoder engines in one process, no RPC,
// for any family the stages serve (FLUX.1 images, Wan videos). It is the reference that the
// cluster must reproduce bit for bit, and the baseline for overhead measurements. Ref: diffusers
// FluxPipeline.__call__ (text-to-image) and WanPipeline.__call__ (text-to-video).
//
// Threads: Generate may be called from several threads; each call runs on its caller's thread.
#ifndef DGRID_CLI_LOCAL_PIPELINE_H_
#define DGRID_CLI_LOCAL_PIPELINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "common/vae_tiling_flags.h"
#include "services/decoder/decoder_engine.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/encoder/encoder_engine.h"

namespace dgrid {

struct GenerateParams {
  std::string request_id = "local";
  std::string prompt;
  // FLUX: true CFG runs when true_cfg_scale > 1 and a negative prompt is given; an empty one
  // counts (CFG against "", as FluxPipeline does with negative_prompt=""). Wan: CFG runs when
  // guidance_scale > 1, against "" when no negative prompt is given (as WanPipeline does).
  std::optional<std::string> negative_prompt;
  int width = 0;  // 0: the model's default.
  int height = 0;
  int num_frames = 0;  // 0: the model's default (1 for an image model).
  int fps = 0;         // a video's frame rate; 0: the model's default.
  int num_inference_steps = 0;
  std::optional<double> guidance_scale;    // Unset: the model's default.
  std::optional<double> guidance_scale_2;  // Wan2.2 A14B's second expert; unset: guidance_scale.
  double true_cfg_scale = 1.0;             // FLUX's true CFG; 1: off.
  std::optional<uint64_t> seed;            // Unset: a random seed, reported in the result.
  int max_sequence_length = 0;             // 0: the model's default.
  // kPng (images) / kMp4 (videos) / kWebp and kRawRgb8 (either).
  decoder::ImageFormat format = decoder::ImageFormat::kPng;
  // Image-to-image (FluxImg2ImgPipeline): PNG or JPEG bytes of the input image, resized to
  // width x height; empty: text-to-image. strength unset: 0.6.
  std::string image;
  std::optional<double> strength;
  // Step caching (DenoiseInput::cache); unset: off.
  std::optional<StepCacheConfig> cache;
};

struct StageTimes {
  double encode_ms = 0;
  double denoise_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
};

struct GenerateOutput {
  decoder::DecodedImage image;  // a picture, or a video (image.video)
  uint64_t seed = 0;
  StageTimes times;
  int skipped_steps = 0;  // steps the step cache skipped
};

// How each stage loads its part of the model (device, dtype, the DiT's precision and offload):
// the text encoders and the VAE may sit elsewhere and in another precision than the DiT
// (common/component_flags.h).
struct LocalPipelineLoad {
  LoadOptions encoder;
  LoadOptions denoiser;
  LoadOptions decoder;
  // --text-encoder-device offload / --vae-device offload: the text encoders' / the VAE's weights
  // rest in host memory and come to encoder.device / decoder.device only around each use
  // (common/model_offload.h). The DiT's placement is denoiser.dit_offload (--dit-offload model:
  // services/denoiser/dit_placement.h).
  bool offload_text_encoders = false;
  bool offload_vae = false;
};

class LocalPipeline {
 public:
  // Loads all three stages from one model folder onto `load.device`; the decoder's VAE tiles as
  // `vae` says (DecoderEngineOptions::vae_tiling / vae_tile_size).
  static absl::StatusOr<std::unique_ptr<LocalPipeline>> Create(const std::string& model_path,
                                                               const LoadOptions& load,
                                                               const VaeTilingFlags& vae = {});
  // The same with each stage's own options.
  static absl::StatusOr<std::unique_ptr<LocalPipeline>> Create(const std::string& model_path,
                                                               const LocalPipelineLoad& load,
                                                               const VaeTilingFlags& vae = {});

  const ModelLimits& limits() const { return denoiser_->limits(); }
  // The offloaded components' residencies (text encoders in the order they run, then the DiT's
  // transformers with --dit-offload model, then the VAE); a test seam. Empty without offload.
  std::vector<const ModelResidency*> residencies() const;

  // Fills defaults, then encodes, denoises and decodes. `on_step(step, total, seconds)` may be
  // empty.
  absl::StatusOr<GenerateOutput> Generate(
      const GenerateParams& params,
      const std::function<void(int, int, double)>& on_step = nullptr) const;

 private:
  LocalPipeline() = default;
  std::unique_ptr<encoder::EncoderEngine> encoder_;
  std::unique_ptr<DenoiserEngine> denoiser_;
  std::unique_ptr<decoder::DecoderEngine> decoder_;
};

}  // namespace dgrid

#endif  // DGRID_CLI_LOCAL_PIPELINE_H_
