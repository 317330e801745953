// The tiny FLUX model, scheduler and request shared by the sequence-parallel tests (thread seam
// and multi-process Gloo): inner width 64, 4 heads of 16 (so Ulysses 4 is legal), one double and
// one single block, random weights from a fixed seed (the same in every process).
#ifndef DGRID_TESTS_UNIT_PARALLEL_SP_TINY_FLUX_H_
#define DGRID_TESTS_UNIT_PARALLEL_SP_TINY_FLUX_H_

#include <cstdint>
#include <memory>

#include <ATen/core/Tensor.h>

#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/sampler.h"

namespace dgrid::testing {

// Null (after a failed EXPECT) when the model cannot be built. `double_blocks`: the step cache
// tests (tests/unit/denoiser/step_cache_test.cc) use 2, so that blocks follow the first one.
// `heads`: 4 of 16, or 8 of 8 (the Ulysses chunk tests: two heads per rank under Ulysses 4);
// null for another count.
std::unique_ptr<FluxTransformer2DModel> TinyFluxModel(int double_blocks = 1, int heads = 4);
FlowMatchEulerSchedulerConfig TinyFluxScheduler();
// vae_scale_factor 1: a latent grid of height x width, (height / 2) * (width / 2) image tokens;
// 3 steps; with `true_cfg` negative embeddings of another text length and true_cfg_scale 2.5.
FluxSamplerRequest TinyFluxRequest(int64_t height, int64_t width, bool true_cfg);
// max |got - want| / max |want|.
double RelativeError(const at::Tensor& got, const at::Tensor& want);

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_PARALLEL_SP_TINY_FLUX_H_
