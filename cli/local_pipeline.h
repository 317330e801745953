// The single-process pipeline: the encoder, denoiser and decoder engines in one process, no RPC.
// It is the reference that the cluster must reproduce bit for bit, and the baseline for overhead
// measurements. Ref: diffusers FluxPipeline.__call__ (text-to-image).
//
// Threads: Generate may be called from several threads; each call runs on its caller's thread.
#ifndef DGRID_CLI_LOCAL_PIPELINE_H_
#define DGRID_CLI_LOCAL_PIPELINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "families/flux/flux_family.h"
#include "services/decoder/decoder_engine.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/encoder/encoder_engine.h"

namespace dgrid {

struct GenerateParams {
  std::string request_id = "local";
  std::string prompt;
  // True CFG runs when true_cfg_scale > 1 and a negative prompt is given; an empty one counts
  // (CFG against "", as FluxPipeline does with negative_prompt="").
  std::optional<std::string> negative_prompt;
  int width = 0;  // 0: the model's default.
  int height = 0;
  int num_inference_steps = 0;
  std::optional<double> guidance_scale;  // Unset: the model's default.
  double true_cfg_scale = families::flux::kFluxDefaults.true_cfg_scale;  // 1: off.
  std::optional<uint64_t> seed;  // Unset: a random seed, reported in the result.
  int max_sequence_length = 0;   // 0: the model's default.
  decoder::ImageFormat format = decoder::ImageFormat::kPng;
};

struct StageTimes {
  double encode_ms = 0;
  double denoise_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
};

struct GenerateOutput {
  decoder::DecodedImage image;
  uint64_t seed = 0;
  StageTimes times;
};

class LocalPipeline {
 public:
  // Loads all three stages from one model folder onto `load.device`.
  static absl::StatusOr<std::unique_ptr<LocalPipeline>> Create(const std::string& model_path,
                                                               const LoadOptions& load);

  const ModelLimits& limits() const { return denoiser_->limits(); }

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
