// The single-process Wan2.1 / Wan2.2 text-to-video pipeline: prompt -> UMT5 embeddings -> the
// Wan sampling loop -> the Wan VAE -> 8-bit frames. The reference that a Wan-serving cluster must
// reproduce; today the only way dgrid runs Wan (the stages do not serve it yet).
//
// Ref: diffusers WanPipeline.__call__ (pipelines/wan/pipeline_wan.py, 0.42.1), with the frames
// converted to 8 bits as VideoProcessor.postprocess_video and numpy_to_pil do
// ((x / 2 + 0.5).clamp(0, 1) * 255, rounded).
//
// Threads: Generate may run on several threads; each call runs on its caller's thread.
#ifndef DGRID_CLI_WAN_LOCAL_PIPELINE_H_
#define DGRID_CLI_WAN_LOCAL_PIPELINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "services/decoder/image_io.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "services/denoiser/wan_sampler.h"
#include "services/encoder/wan_text.h"

namespace dgrid {

// WanPipeline's defaults where a field is 0 / unset.
struct WanGenerateParams {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // unset: "" when guidance is on
  int width = 0;                               // 0: 832
  int height = 0;                              // 0: 480
  int num_frames = 0;                          // 0: 81
  int num_inference_steps = 0;                 // 0: 50
  std::optional<double> guidance_scale;        // unset: 5.0
  std::optional<double> guidance_scale_2;      // unset: guidance_scale
  std::optional<uint64_t> seed;                // unset: a random seed, reported in the result
  int max_sequence_length = 0;                 // 0: 512
};

struct WanGenerateOutput {
  std::vector<decoder::Image8> frames;  // RGB, num_frames of them
  uint64_t seed = 0;
  double encode_ms = 0, denoise_ms = 0, decode_ms = 0;
};

class WanLocalPipeline {
 public:
  // True when `model_dir`/model_index.json names WanPipeline.
  static bool IsWanModel(const std::string& model_dir);
  // Loads tokenizer, text encoder, transformer (and transformer_2 for Wan2.2 A14B), scheduler and
  // VAE from one WanPipeline folder onto `load.device`.
  static absl::StatusOr<std::unique_ptr<WanLocalPipeline>> Create(const std::string& model_dir,
                                                                  const LoadOptions& load);

  absl::StatusOr<WanGenerateOutput> Generate(
      const WanGenerateParams& params,
      const std::function<void(int, int, double)>& on_step = nullptr) const;

 private:
  WanLocalPipeline() = default;
  std::unique_ptr<encoder::WanTextEncoder> text_;
  std::unique_ptr<WanTransformer3DModel> transformer_, transformer_2_;
  WanPipelineConfig pipeline_;
  UniPCMultistepSchedulerConfig scheduler_;
  std::unique_ptr<decoder::AutoencoderKLWan> vae_;
};

}  // namespace dgrid

#endif  // DGRID_CLI_WAN_LOCAL_PIPELINE_H_
