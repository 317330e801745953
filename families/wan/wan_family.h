// Wan2.1 / Wan2.2 (Alibaba's Wan video models): text-to-video.
//
// Defaults: diffusers WanPipeline.__call__ (pipelines/wan/pipeline_wan.py, 0.42.1): 832 x 480, 81
// frames, 50 steps, guidance_scale 5.0 (classifier-free guidance against the negative prompt),
// max_sequence_length 512; frames 4k + 1 (the VAE's temporal factor 4), sizes a multiple of 16 (the
// VAE's 8 x the 2 x 2 patch), 16 frames per second (the Wan repository's export rate). The 1280 x
// 1280 and 129-frame ceilings are dgrid's.
// Shapes: diffusers WanTransformer3DModel with the transformer/config.json of the released
// Wan2.1-T2V-1.3B, Wan2.1-T2V-14B, Wan2.2-T2V-A14B (two experts of the 14B shape) and
// Wan2.2-TI2V-5B checkpoints.
//
// Thread-safe; WanFamily() lives until exit.
#ifndef DGRID_FAMILIES_WAN_WAN_FAMILY_H_
#define DGRID_FAMILIES_WAN_WAN_FAMILY_H_

#include <cstdint>

#include "families/model_family.h"

namespace dgrid::families::wan {

inline constexpr GenerationDefaults kWanDefaults = [] {
  GenerationDefaults d;
  d.width = 832;
  d.height = 480;
  d.steps = 50;
  d.guidance_scale = 5.0;
  d.true_cfg_scale = 1.0;
  d.max_width = 1280;
  d.max_height = 1280;
  d.max_sequence_length = 512;
  d.max_text_tokens = 512;
  d.vae_scale_factor = 8;
  d.step_cache = true;  // services/denoiser/step_cache_loop.h
  d.patch_size = 2;
  d.num_frames = 81;
  d.max_num_frames = 129;
  d.frame_step = 4;
  d.fps = 16;
  // 121 frames at 1280x720 (Wan2.2 TI2V-5B's largest released setting; Wan2.1's is 81 frames).
  d.max_video_pixels = int64_t{121} * 1280 * 720;
  return d;
}();

// "wan2.1-1.3b" (alias "Wan2.1-T2V-1.3B"), "wan2.1-14b" ("Wan2.1-T2V-14B"; also each expert of
// "Wan2.2-T2V-A14B"), "wan2.2-ti2v-5b" ("Wan2.2-TI2V-5B").
TransformerShape Wan13BShape();
TransformerShape Wan14BShape();
TransformerShape WanTi2v5BShape();

const ModelFamily& WanFamily();

// The name of Wan's text-conditioning tensor (WanPipeline's): UMT5's hidden states.
inline constexpr char kPromptEmbeds[] = "prompt_embeds";

// FLOPs of one forward pass (batch 1) over `image_tokens` latent tokens (frames x rows x columns
// after the 1 x 2 x 2 patch) and shape.text_tokens text tokens: 2*M*N*K for every linear layer
// (patch embedding, text and time embedders, per block self-attention q/k/v/o, cross-attention q/o
// over the video and k/v over the text, the two feed-forward layers, proj_out) plus 4*S*S'*D for
// the attention products (S' = S for self-attention, the text length for cross-attention).
// Elementwise work is not counted.
double WanForwardFlops(const TransformerShape& shape, int64_t image_tokens);
// bf16 bytes of the linear layers' weights.
double WanWeightBytes(const TransformerShape& shape);
// Each block's bf16 bytes and the rest's: the split that layerwise offload makes
// (ModelFamily::BlockWeightBytes).
std::vector<double> WanBlockWeightBytes(const TransformerShape& shape);
double WanNonBlockWeightBytes(const TransformerShape& shape);

}  // namespace dgrid::families::wan

#endif  // DGRID_FAMILIES_WAN_WAN_FAMILY_H_
