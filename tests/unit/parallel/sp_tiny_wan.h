// The tiny Wan models, pipeline configs and requests shared by the sequence-parallel Wan tests
// (thread seam and multi-process Gloo): WanTransformer3DModels of inner width 48 (4 heads of 12,
// so Ulysses 4 is legal), 2 blocks, 4 latent channels, random weights from a fixed seed (the same
// in every process).
#ifndef DGRID_TESTS_UNIT_PARALLEL_SP_TINY_WAN_H_
#define DGRID_TESTS_UNIT_PARALLEL_SP_TINY_WAN_H_

#include <cstdint>
#include <memory>
#include <string>

#include "common/weight_map.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/wan_sampler.h"

namespace dgrid::testing {

// The tiny models' config, and their random weights under diffusers' names (what a checkpoint of
// the model holds).
WanTransformerConfig TinyWanConfig();
WeightMap TinyWanWeights(uint64_t seed);

// `seed` picks the weights (two experts: two seeds). Null when the model cannot be built.
std::unique_ptr<WanTransformer3DModel> TinyWanModel(uint64_t seed);

// One Wan pipeline variant of the tests.
enum class TinyWanVariant {
  kT2V,    // Wan2.1: one transformer, UniPC (flow_shift 3)
  kA14B,   // Wan2.2 A14B: two experts, boundary_ratio 0.875, guidance_scale_2
  kTI2V,   // Wan2.2 TI2V: per-token timesteps (expand_timesteps)
  kEuler,  // Wan2.1 with FlowMatchEulerDiscreteScheduler
};

// Parses "t2v", "a14b", "ti2v", "euler"; false for another name.
bool ParseTinyWanVariant(const std::string& name, TinyWanVariant* variant);

// The models, pipeline config and scheduler of a variant (transformer_2 only for kA14B).
struct TinyWanPipeline {
  std::unique_ptr<WanTransformer3DModel> transformer, transformer_2;
  WanPipelineConfig pipeline;
  WanSchedulerConfig scheduler;
};
TinyWanPipeline MakeTinyWanPipeline(TinyWanVariant variant);

// VAE factors 4 (frames) and 8 (pixels): num_frames frames of height x width pixels make
// ((num_frames - 1) / 4 + 1) x (height / 16) x (width / 16) tokens. 4 steps (A14B: 6, so both
// experts run); with `cfg` guidance 5 (A14B: 5 then 3) against negative embeddings of another text
// length, else guidance 1.
WanSamplerRequest TinyWanRequest(TinyWanVariant variant, int64_t num_frames, int64_t height,
                                 int64_t width, bool cfg);

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_PARALLEL_SP_TINY_WAN_H_
