// Wan's CUDA fast path against its reference path: the fused kernels (kernels/wan_fused.h) on
// random inputs, the fused transformer blocks (UseWanFusedBlocks) on a tiny random model, and the
// sampler's batched CFG passes (UseWanCfgBatch, opt-in) against two passes. The CUDA tests skip
// without a GPU; on the CPU every dispatcher must be its reference exactly.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/weight_map.h"
#include "kernels/rms_norm.h"
#include "kernels/wan_fused.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/schedulers/unipc_multistep.h"
#include "services/denoiser/wan_sampler.h"

namespace dgrid {
namespace {

bool HaveGpu() { return kernels::HaveCudaKernels() && at::hasCUDA(); }

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).norm().item<double>() /
         b.to(at::kDouble).cpu().norm().item<double>();
}

// bf16 results differ from the reference by rounding steps (the reference rounds the same values,
// reductions run in another order); float32 by float rounding.
double Tolerance(at::ScalarType type) { return type == at::kFloat ? 1e-5 : 1e-2; }

// A [B, 6, D] float32 modulation tensor's part i as a row vector [B, 1, D] (a strided view), or a
// [B, N, 6, D] one's as [B, N, D].
at::Tensor Part(const at::Tensor& mod, int64_t i) {
  return mod.dim() == 4 ? mod.select(2, i) : mod.narrow(1, i, 1);
}

struct KernelCase {
  at::ScalarType type;
  bool per_token;
};

void CheckKernels(const at::TensorOptions& device, const KernelCase& c, bool exact) {
  const int64_t batch = 2, tokens = 37, heads = 5, head_dim = 16, d = heads * head_dim;
  const at::TensorOptions o = device.dtype(c.type);
  const at::TensorOptions f32 = device.dtype(at::kFloat);
  const at::Tensor x = at::randn({batch, tokens, d}, o) * 3 + 0.5;
  const at::Tensor y = at::randn({batch, tokens, d}, o);
  const at::Tensor mod = c.per_token ? at::randn({batch, tokens, 6, d}, f32) * 0.3
                                     : at::randn({batch, 6, d}, f32) * 0.3;
  const double eps = 1e-6;
  const auto check = [&](const at::Tensor& got, const at::Tensor& want, const std::string& what) {
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
    if (exact) {
      EXPECT_TRUE(at::equal(got, want)) << what;
    } else {
      EXPECT_TRUE(at::isfinite(got).all().item<bool>()) << what;
      EXPECT_LT(RelError(got, want), Tolerance(c.type)) << what << " " << c.type;
    }
  };
  for (bool one_plus : {true, false}) {
    check(kernels::WanNormModulate(x, Part(mod, 1), Part(mod, 0), one_plus, eps),
          kernels::WanNormModulateReference(x, Part(mod, 1), Part(mod, 0), one_plus, eps),
          absl::StrCat("WanNormModulate one_plus=", one_plus));
  }
  // norm2's affine weight and bias as [1, 1, D] row vectors.
  const at::Tensor w = (at::randn({d}, f32) * 0.2 + 1).view({1, 1, d});
  const at::Tensor bias = (at::randn({d}, f32) * 0.2).view({1, 1, d});
  check(kernels::WanNormModulate(x, w, bias, false, eps),
        kernels::WanNormModulateReference(x, w, bias, false, eps), "WanNormModulate affine");
  for (bool gated : {true, false}) {
    const at::Tensor gate = gated ? Part(mod, 2) : at::Tensor();
    check(kernels::WanGatedResidual(x, y, gate), kernels::WanGatedResidualReference(x, y, gate),
          absl::StrCat("WanGatedResidual gated=", gated));
    const auto [h, normed] = kernels::WanResidualNorm(x, y, gate, Part(mod, 4), Part(mod, 3),
                                                      /*one_plus_scale=*/true, eps);
    const at::Tensor h_ref = kernels::WanGatedResidualReference(x, y, gate);
    check(h, h_ref, absl::StrCat("WanResidualNorm h gated=", gated));
    check(normed, kernels::WanNormModulateReference(h_ref, Part(mod, 4), Part(mod, 3), true, eps),
          absl::StrCat("WanResidualNorm normed gated=", gated));
  }
  const at::Tensor norm_weight = (at::randn({d}, f32) * 0.2 + 1).to(c.type);
  const at::Tensor angles = at::rand({tokens, head_dim / 2}, f32.dtype(at::kDouble)) * 6.28;
  const at::Tensor cos = at::repeat_interleave(at::cos(angles), 2, 1).to(at::kFloat);
  const at::Tensor sin = at::repeat_interleave(at::sin(angles), 2, 1).to(at::kFloat);
  for (bool rope : {true, false}) {
    const at::Tensor c_table = rope ? cos : at::Tensor();
    const at::Tensor s_table = rope ? sin : at::Tensor();
    at::Tensor work = x.clone();
    const at::Tensor got = kernels::WanRmsNormRope(work, norm_weight, eps, c_table, s_table);
    check(got, kernels::WanRmsNormRopeReference(x, norm_weight, eps, c_table, s_table),
          absl::StrCat("WanRmsNormRope rope=", rope));
    // On CUDA the kernel, not a fallback, ran: it wrote the projection in place.
    if (device.device().is_cuda()) {
      EXPECT_EQ(got.data_ptr(), work.data_ptr());
    }
  }
}

TEST(WanFusedKernels, CpuDispatchIsTheReference) {
  at::manual_seed(1);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    for (bool per_token : {false, true}) {
      CheckKernels(at::TensorOptions(at::kCPU), {type, per_token}, /*exact=*/true);
    }
  }
}

TEST(WanFusedKernels, CudaMatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  at::manual_seed(2);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (bool per_token : {false, true}) {
      CheckKernels(at::TensorOptions(at::kCUDA), {type, per_token}, /*exact=*/false);
    }
  }
}

// A tiny Wan transformer (2 blocks, 4 heads of 16) with random weights under diffusers' names:
// non-zero biases and norm scales off 1, float32 where diffusers keeps float32.
WanTransformerConfig TinyConfig() {
  WanTransformerConfig c;
  c.patch_size = {1, 2, 2};
  c.num_attention_heads = 4;
  c.attention_head_dim = 16;
  c.in_channels = c.out_channels = 4;
  c.text_dim = 24;
  c.freq_dim = 32;
  c.ffn_dim = 96;
  c.num_layers = 2;
  return c;
}

WanTransformer3DModel TinyModel(const WanTransformerConfig& c, const at::TensorOptions& o) {
  WeightMap w("tiny Wan weights");
  const at::TensorOptions f32 = o.dtype(at::kFloat);
  const int64_t d = c.inner_dim();
  const auto linear = [&](const std::string& name, int64_t in, int64_t out,
                          const at::TensorOptions& t) {
    w.Insert(name + ".weight", at::randn({out, in}, t) / std::sqrt(static_cast<double>(in)));
    w.Insert(name + ".bias", at::randn({out}, t) * 0.1);
  };
  const auto scale = [&](int64_t n, const at::TensorOptions& t) {
    return at::randn({n}, t) * 0.2 + 1;
  };
  const auto& p = c.patch_size;
  w.Insert("patch_embedding.weight", at::randn({d, c.in_channels, p[0], p[1], p[2]}, o) * 0.3);
  w.Insert("patch_embedding.bias", at::randn({d}, o) * 0.1);
  linear("condition_embedder.time_embedder.linear_1", c.freq_dim, d, f32);
  linear("condition_embedder.time_embedder.linear_2", d, d, f32);
  linear("condition_embedder.time_proj", d, 6 * d, o);
  linear("condition_embedder.text_embedder.linear_1", c.text_dim, d, o);
  linear("condition_embedder.text_embedder.linear_2", d, d, o);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i);
    for (const char* attn : {".attn1", ".attn2"}) {
      const std::string prefix = block + attn;
      for (const char* proj : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
        linear(prefix + proj, d, d, o);
      }
      w.Insert(prefix + ".norm_q.weight", scale(d, o));
      w.Insert(prefix + ".norm_k.weight", scale(d, o));
    }
    w.Insert(block + ".norm2.weight", scale(d, f32));
    w.Insert(block + ".norm2.bias", at::randn({d}, f32) * 0.1);
    linear(block + ".ffn.net.0.proj", d, c.ffn_dim, o);
    linear(block + ".ffn.net.2", c.ffn_dim, d, o);
    w.Insert(block + ".scale_shift_table", at::randn({1, 6, d}, f32) * 0.2);
  }
  linear("proj_out", d, c.out_channels * p[0] * p[1] * p[2], o);
  w.Insert("scale_shift_table", at::randn({1, 2, d}, f32) * 0.2);
  absl::StatusOr<WanTransformer3DModel> model = WanTransformer3DModel::FromWeights(c, w);
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(w.size(), 0u);
  return *std::move(model);
}

// The fused block structure with the kernels' reference functions (the CPU): the wiring of the
// modulation parts, residuals and norms is the reference block's.
TEST(WanFusedModel, FusedWiringOnCpuMatchesReferencePath) {
  const WanTransformerConfig c = TinyConfig();
  for (bool per_token : {false, true}) {
    at::manual_seed(5);
    const at::TensorOptions o = at::TensorOptions(at::kCPU).dtype(at::kFloat);
    const WanTransformer3DModel model = TinyModel(c, o);
    const int64_t batch = 2, tokens = 3 * 3 * 5;
    WanTransformerInputs in;
    in.hidden_states = at::randn({batch, c.in_channels, 3, 6, 10}, o);
    in.encoder_hidden_states = at::randn({batch, 7, c.text_dim}, o);
    in.timestep = per_token ? at::full({batch, tokens}, 731.0, o)
                            : at::tensor({731, 402}, o.dtype(at::kLong));
    EXPECT_FALSE(UseWanFusedBlocks(in.hidden_states));
    absl::StatusOr<at::Tensor> reference = model.Forward(in);
    SetWanFusedBlocksOnCpuForTesting(true);
    EXPECT_TRUE(UseWanFusedBlocks(in.hidden_states));
    absl::StatusOr<at::Tensor> fused = model.Forward(in);
    SetWanFusedBlocksOnCpuForTesting(false);
    ASSERT_TRUE(reference.ok()) << reference.status();
    ASSERT_TRUE(fused.ok()) << fused.status();
    EXPECT_LT(RelError(*fused, *reference), 1e-5) << "per_token=" << per_token;
  }
}

TEST(WanFusedModel, FastPathMatchesReferencePath) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const WanTransformerConfig c = TinyConfig();
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    for (bool per_token : {false, true}) {
      at::manual_seed(3);
      const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
      const WanTransformer3DModel model = TinyModel(c, o);
      // 3 latent frames of 6 x 10: a 3 x 3 x 5 patch grid, 45 tokens; batch 2 (a CFG pair).
      const int64_t batch = 2, tokens = 3 * 3 * 5;
      WanTransformerInputs in;
      in.hidden_states = at::randn({batch, c.in_channels, 3, 6, 10}, o);
      in.encoder_hidden_states = at::randn({batch, 7, c.text_dim}, o);
      in.timestep = per_token ? at::full({batch, tokens}, 731.0, o.dtype(at::kFloat))
                              : at::tensor({731, 402}, o.dtype(at::kLong));
      SetWanFusedBlocksEnabledForTesting(false);
      absl::StatusOr<at::Tensor> reference = model.Forward(in);
      SetWanFusedBlocksEnabledForTesting(true);
      absl::StatusOr<at::Tensor> fused = model.Forward(in);
      // A second pass reads the cached RoPE tables.
      absl::StatusOr<at::Tensor> again = model.Forward(in);
      ASSERT_TRUE(reference.ok()) << reference.status();
      ASSERT_TRUE(fused.ok()) << fused.status();
      ASSERT_TRUE(again.ok()) << again.status();
      EXPECT_TRUE(at::equal(*fused, *again));
      EXPECT_TRUE(at::isfinite(*fused).all().item<bool>());
      // bf16: the GELU epilogue and reduction order move a few rounding steps over two blocks.
      EXPECT_LT(RelError(*fused, *reference), type == at::kFloat ? 1e-5 : 1e-2)
          << type << " per_token=" << per_token;
    }
  }
}

TEST(WanFusedSampler, BatchedCfgMatchesTwoPasses) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const WanTransformerConfig c = TinyConfig();
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(4);
    const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
    const WanTransformer3DModel model = TinyModel(c, o);
    WanSamplerRequest req;
    req.height = 48;
    req.width = 80;
    req.num_frames = 9;
    req.num_inference_steps = 3;
    req.seed = 11;
    req.guidance_scale = 5.0;
    req.prompt_embeds = at::randn({1, 6, c.text_dim}, o);
    req.negative_prompt_embeds = at::randn({1, 6, c.text_dim}, o);
    UniPCMultistepSchedulerConfig sched;
    sched.flow_shift = 3.0;
    const WanPipelineConfig pipeline;
    SetWanCfgBatchEnabledForTesting(false);
    EXPECT_FALSE(UseWanCfgBatch(at::Device(at::kCUDA)));
    absl::StatusOr<at::Tensor> two_passes = RunWanSampler(model, nullptr, pipeline, sched, req);
    SetWanCfgBatchEnabledForTesting(true);
    EXPECT_TRUE(UseWanCfgBatch(at::Device(at::kCUDA)));
    absl::StatusOr<at::Tensor> batched = RunWanSampler(model, nullptr, pipeline, sched, req);
    SetWanCfgBatchEnabledForTesting(false);
    ASSERT_TRUE(two_passes.ok()) << two_passes.status();
    ASSERT_TRUE(batched.ok()) << batched.status();
    EXPECT_LT(RelError(*batched, *two_passes), type == at::kFloat ? 1e-5 : 1e-2) << type;
  }
}

TEST(WanFusedSampler, CpuNeverBatches) {
  EXPECT_FALSE(UseWanCfgBatch(at::Device(at::kCPU)));
  SetWanCfgBatchEnabledForTesting(true);
  EXPECT_FALSE(UseWanCfgBatch(at::Device(at::kCPU)));
  SetWanCfgBatchEnabledForTesting(false);
}

}  // namespace
}  // namespace dgrid
