// FLUX.1 (Black Forest Labs), dgrid's first model family.
//
// Defaults: diffusers FluxPipeline.__call__ (pipelines/flux/pipeline_flux.py, 0.42.1): 1024 x 1024
// (default_sample_size 128 x vae_scale_factor 8), 28 steps, guidance_scale 3.5, true_cfg_scale 1,
// max_sequence_length 512 (the most it accepts), sizes a multiple of vae_scale_factor x 2 (the 2x2
// latent packing). The 2048 x 2048 ceiling is dgrid's, not diffusers'.
// Shape: diffusers FluxTransformer2DModel (models/transformers/transformer_flux.py) with the
// transformer/config.json of black-forest-labs/FLUX.1-dev and FLUX.1-schnell.
//
// Thread-safe; FluxFamily() lives until exit.
#ifndef DGRID_FAMILIES_FLUX_FLUX_FAMILY_H_
#define DGRID_FAMILIES_FLUX_FLUX_FAMILY_H_

#include <cstdint>

#include "families/model_family.h"

namespace dgrid::families::flux {

inline constexpr GenerationDefaults kFluxDefaults = [] {
  GenerationDefaults d;
  d.width = 1024;
  d.height = 1024;
  d.steps = 28;
  d.guidance_scale = 3.5;
  d.true_cfg_scale = 1.0;
  d.max_width = 2048;
  d.max_height = 2048;
  d.max_sequence_length = 512;
  d.max_text_tokens = 512;
  d.vae_scale_factor = 8;
  d.sample_size = 128;  // 128 x 8 = 1024
  d.patch_size = 2;
  d.image_input = true;  // FluxImg2ImgPipeline
  d.step_cache = true;   // services/denoiser/step_cache_policy.h
  return d;
}();

// The "flux-dev" (alias "FLUX.1-dev") and "flux-schnell" ("FLUX.1-schnell") shapes; schnell has no
// guidance embedding and 256 text tokens.
TransformerShape FluxDevShape();
TransformerShape FluxSchnellShape();

const ModelFamily& FluxFamily();

// The names of FLUX's text-conditioning tensors (FluxPipeline's): T5 hidden states and the CLIP
// pooled output.
inline constexpr char kPromptEmbeds[] = "prompt_embeds";
inline constexpr char kPooledPromptEmbeds[] = "pooled_prompt_embeds";

// FLOPs of one forward pass (batch 1): 2*M*N*K for every linear layer (the per-sample modulation
// and embedding MLPs included) plus 4*S^2*D per block for QK^T and PV, S = image + text tokens.
// Elementwise work (norms, RoPE, softmax, GELU) is not counted. bench/diffusers_denoise.py repeats
// this count in Python.
double FluxForwardFlops(const TransformerShape& shape, int64_t image_tokens);
// bf16 bytes of the linear layers' weights (norms and biases are noise).
double FluxWeightBytes(const TransformerShape& shape);
// Each block's bf16 bytes (the joint blocks, then the single ones) and the rest's: the split that
// layerwise offload makes (ModelFamily::BlockWeightBytes). FluxWeightBytes is the blocks' sum.
std::vector<double> FluxBlockWeightBytes(const TransformerShape& shape);
double FluxNonBlockWeightBytes(const TransformerShape& shape);

}  // namespace dgrid::families::flux

#endif  // DGRID_FAMILIES_FLUX_FLUX_FAMILY_H_
