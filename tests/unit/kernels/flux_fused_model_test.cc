// The FLUX transformer's CUDA fast path (services/denoiser/models/flux_fused_blocks.h) against its
// reference path, on a tiny random model with non-zero biases, in float32 and bfloat16.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/weight_map.h"
#include "kernels/rms_norm.h"
#include "services/denoiser/models/flux_fused_blocks.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"

namespace dgrid {
namespace {

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

TEST(FluxFusedModel, FastPathMatchesReferencePath) {
  if (!kernels::HaveCudaKernels() || !at::hasCUDA()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  FluxTransformerConfig c;
  c.num_layers = 2;
  c.num_single_layers = 2;
  c.attention_head_dim = 16;
  c.num_attention_heads = 4;
  c.in_channels = c.out_channels = 16;
  c.joint_attention_dim = 32;
  c.pooled_projection_dim = 24;
  c.guidance_embeds = true;
  c.axes_dims_rope = {4, 6, 6};
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(7);
    const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
    WeightMap w;
    for (const FluxParameter& p : FluxParameters(c)) {
      const double sd = p.kind == FluxParameter::kNormScale ? 0.2 : 0.1;
      at::Tensor t = at::randn(p.shape, o) * sd;
      if (p.kind == FluxParameter::kNormScale) t = t + 1;
      w.Insert(p.name, t);
    }
    auto model = FluxTransformer2DModel::FromWeights(c, w);
    ASSERT_TRUE(model.ok()) << model.status();
    const int64_t n = 70, s = 9;  // 7 x 10 latent grid, 9 text tokens
    FluxTransformerInputs in;
    in.hidden_states = at::randn({2, n, 16}, o);
    in.encoder_hidden_states = at::randn({2, s, 32}, o);
    in.pooled_projections = at::randn({2, 24}, o);
    in.timestep = at::full({2}, 0.6, o);
    in.guidance = at::full({2}, 3.5, o);
    const at::Tensor rows = at::arange(n, at::kCUDA);
    in.img_ids = at::stack({at::zeros({n}, at::kCUDA), at::floor_divide(rows, 10), rows % 10}, 1);
    in.txt_ids = at::zeros({s, 3}, at::kCUDA);

    flux::SetFusedBlocksEnabledForTesting(false);
    auto reference = model->Forward(in);
    flux::SetFusedBlocksEnabledForTesting(true);
    auto fused = model->Forward(in);
    ASSERT_TRUE(reference.ok()) << reference.status();
    ASSERT_TRUE(fused.ok()) << fused.status();
    EXPECT_TRUE(at::isfinite(*fused).all().item<bool>());
    // float32: reduction order only. bfloat16: the fused path skips no rounding the reference has
    // except in the GELU epilogue, so it stays within a few bf16 steps after four blocks.
    EXPECT_LT(RelError(*fused, *reference), type == at::kFloat ? 1e-5 : 1e-2) << type;
  }
}

}  // namespace
}  // namespace dgrid
