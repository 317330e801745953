// The FLUX transformer's CUDA fast path (services/denoiser/models/flux_fused_blocks.h) against its
// reference path, on a tiny random model with non-zero biases, in float32 and bfloat16; and its
// FP8 linear layers (--dit-precision fp8) against the bf16 ones.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "common/weight_map.h"
#include "kernels/cuda_graph.h"
#include "kernels/fp8_linear.h"
#include "kernels/rms_norm.h"
#include "services/denoiser/models/flux_blocks.h"
#include "services/denoiser/models/flux_fused_blocks.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"

namespace dgrid {
namespace {

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

FluxTransformerConfig TinyConfig() {
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
  return c;
}

// Random weights with non-zero biases and norm scales near 1.
WeightMap RandomWeights(const FluxTransformerConfig& c, const at::TensorOptions& o) {
  WeightMap w;
  for (const FluxParameter& p : FluxParameters(c)) {
    const double sd = p.kind == FluxParameter::kNormScale ? 0.2 : 0.1;
    at::Tensor t = at::randn(p.shape, o) * sd;
    if (p.kind == FluxParameter::kNormScale) t = t + 1;
    w.Insert(p.name, t);
  }
  return w;
}

WeightMap Copy(const WeightMap& w) {
  WeightMap copy;
  for (const auto& [name, t] : w.tensors()) copy.Insert(name, t.clone());
  return copy;
}

// Batch 2, a 7 x 10 latent grid and 9 text tokens on `o`'s device.
FluxTransformerInputs TinyInputs(const at::TensorOptions& o) {
  const int64_t n = 70, s = 9;
  FluxTransformerInputs in;
  in.hidden_states = at::randn({2, n, 16}, o);
  in.encoder_hidden_states = at::randn({2, s, 32}, o);
  in.pooled_projections = at::randn({2, 24}, o);
  in.timestep = at::full({2}, 0.6, o);
  in.guidance = at::full({2}, 3.5, o);
  const at::Tensor rows = at::arange(n, o.dtype(at::kLong));
  in.img_ids = at::stack({at::zeros_like(rows), at::floor_divide(rows, 10), rows % 10}, 1);
  in.txt_ids = at::zeros({s, 3}, o.dtype(at::kLong));
  return in;
}

TEST(FluxFusedModel, FastPathMatchesReferencePath) {
  if (!kernels::HaveCudaKernels() || !at::hasCUDA()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const FluxTransformerConfig c = TinyConfig();
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(7);
    const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
    WeightMap w = RandomWeights(c, o);
    auto model = FluxTransformer2DModel::FromWeights(c, w);
    ASSERT_TRUE(model.ok()) << model.status();
    const FluxTransformerInputs in = TinyInputs(o);

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

    // The opt-in gated residuals in the output GEMMs (bf16 only; float32 keeps the path above):
    // one rounding where the reference has three, so within the same bound.
    flux::SetGatedResidualGemmEnabled(true);
    const bool gated = flux::UseGatedResidualGemm(in.hidden_states);
    auto folded = model->Forward(in);
    flux::SetGatedResidualGemmEnabled(false);
    ASSERT_TRUE(folded.ok()) << folded.status();
    EXPECT_TRUE(at::isfinite(*folded).all().item<bool>());
    const double err = RelError(*folded, *reference);
    std::printf("%s: gated GEMMs %s, vs reference path %.2e\n", c10::toString(type),
                gated ? "on" : "off", err);
    EXPECT_LT(err, type == at::kFloat ? 1e-5 : 1e-2) << type;
  }
}

TEST(FluxFp8Model, PrecisionFlagValues) {
  EXPECT_EQ(*flux::ParseLinearPrecision(""), flux::LinearPrecision::kModelDtype);
  EXPECT_EQ(*flux::ParseLinearPrecision("bf16"), flux::LinearPrecision::kModelDtype);
  EXPECT_EQ(*flux::ParseLinearPrecision("fp8"), flux::LinearPrecision::kFp8);
  EXPECT_EQ(*flux::ParseLinearPrecision("fp8-fast"), flux::LinearPrecision::kFp8Fast);
  for (const char* name : {"bf16", "fp8", "fp8-fast"}) {
    EXPECT_STREQ(flux::LinearPrecisionName(*flux::ParseLinearPrecision(name)), name);
  }
  EXPECT_FALSE(flux::IsFp8(flux::LinearPrecision::kModelDtype));
  EXPECT_TRUE(flux::IsFp8(flux::LinearPrecision::kFp8Fast));
  const absl::Status bad = flux::ParseLinearPrecision("fp4").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("--dit-precision"), std::string::npos) << bad;
}

TEST(FluxFp8Model, RefusedWhereTheDeviceHasNoFp8) {
  // No CPU fallback for either FP8 precision: a clear FAILED_PRECONDITION naming the flag value.
  for (const auto& [precision, flag] :
       {std::pair{flux::LinearPrecision::kFp8, "--dit-precision fp8:"},
        std::pair{flux::LinearPrecision::kFp8Fast, "--dit-precision fp8-fast:"}}) {
    WeightMap w = RandomWeights(TinyConfig(), at::TensorOptions().dtype(at::kBFloat16));
    const absl::Status s = FluxTransformer2DModel::FromWeights(TinyConfig(), w, precision).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(s.message().find(flag), std::string::npos) << s;
    EXPECT_NE(s.message().find("cpu"), std::string::npos) << s;
  }
}

// fp8-fast marks every FP8 layer of a block (the concatenated projections' views too) for fast
// accumulation and quantizes exactly as fp8 does; fp8 marks none.
TEST(FluxFp8Model, FastAccumulationIsAPropertyOfEveryFp8Layer) {
  const FluxTransformerConfig c = TinyConfig();
  const int64_t dim = c.inner_dim();
  WeightMap w = RandomWeights(c, at::TensorOptions().dtype(at::kBFloat16));
  WeightMap wf = Copy(w);
  auto block = flux::TakeSingleBlock(w, "single_transformer_blocks.0", dim, c.attention_head_dim);
  auto fast = flux::TakeSingleBlock(wf, "single_transformer_blocks.0", dim, c.attention_head_dim);
  ASSERT_TRUE(block.ok() && fast.ok());
  flux::QuantizeBlockFp8(*block);
  flux::QuantizeBlockFp8(*fast, /*fast_accumulation=*/true);
  for (const auto& [plain, f] :
       {std::pair{&block->qkv_mlp, &fast->qkv_mlp}, std::pair{&block->attn.to_k, &fast->attn.to_k},
        std::pair{&block->proj_mlp, &fast->proj_mlp},
        std::pair{&block->proj_out, &fast->proj_out}}) {
    EXPECT_FALSE(plain->fp8_fast_accumulation);
    EXPECT_TRUE(f->fp8_fast_accumulation);
    EXPECT_TRUE(at::equal(plain->weight.to(at::kFloat), f->weight.to(at::kFloat)));
    EXPECT_TRUE(at::equal(plain->weight_scale, f->weight_scale));
  }
  EXPECT_FALSE(fast->norm.fp8_fast_accumulation);  // the modulation linear stays bf16
}

// On the CPU through the reference ops (kernels/fp8_linear.h): the blocks' layers become FP8
// views of the concatenated projections, the modulation stays bf16, and a block computes nearly
// what its bf16 original does.
TEST(FluxFp8Model, BlocksQuantizeInPlaceAndStayCloseToBf16) {
  at::manual_seed(11);
  const FluxTransformerConfig c = TinyConfig();
  const int64_t dim = c.inner_dim();
  WeightMap w = RandomWeights(c, at::TensorOptions().dtype(at::kBFloat16));
  WeightMap w8 = Copy(w);
  auto block = flux::TakeDoubleBlock(w, "transformer_blocks.0", dim, c.attention_head_dim);
  auto block8 = flux::TakeDoubleBlock(w8, "transformer_blocks.0", dim, c.attention_head_dim);
  ASSERT_TRUE(block.ok() && block8.ok());
  flux::QuantizeBlockFp8(*block8);
  const flux::AttentionWeights& a = block8->attn;
  ASSERT_TRUE(flux::IsFp8(a.qkv) && flux::IsFp8(a.to_k) && flux::IsFp8(block8->ff_out));
  EXPECT_EQ(a.to_k.weight.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(a.to_k.weight.data_ptr(),
            static_cast<char*>(a.qkv.weight.data_ptr()) + dim * a.qkv.weight.size(1));
  EXPECT_TRUE(at::equal(a.to_k.weight_scale, a.qkv.weight_scale.narrow(0, dim, dim)));
  EXPECT_FALSE(flux::IsFp8(block8->norm1));
  EXPECT_EQ(block8->norm1.weight.scalar_type(), at::kBFloat16);
  const at::Tensor dequantized = a.to_k.weight.to(at::kFloat) * a.to_k.weight_scale;
  EXPECT_LT(RelError(dequantized, block->attn.to_k.weight), 0.05);

  const at::Tensor hidden = at::randn({1, 24, dim}).to(at::kBFloat16);
  const at::Tensor context = at::randn({1, 5, dim}).to(at::kBFloat16);
  const at::Tensor temb = at::randn({1, dim}).to(at::kBFloat16);
  const flux::Rope rope = flux::ComputeRope(at::zeros({29, 3}), c.axes_dims_rope);
  const auto [ctx, h] = flux::DoubleBlockForward(*block, hidden, context, temb, rope);
  const auto [ctx8, h8] = flux::DoubleBlockForward(*block8, hidden, context, temb, rope);
  EXPECT_TRUE(at::isfinite(h8).all().item<bool>());
  // The residual stream carries the input, so compare what the block added to it: within 2u
  // (u = 2^-4, E4M3's unit roundoff), the worst case of one FP8 product per element; random
  // rounding errors keep the norm well inside it.
  const double err = RelError(h8 - hidden, h - hidden);
  std::printf("fp8 vs bf16 double block, update of the image stream: rel err %.4f\n", err);
  EXPECT_LT(err, 0.125);
}

// On a GPU with FP8: the fast path against the reference path with the same FP8 weights, and the
// FP8 model against the bf16 one with the same weights.
TEST(FluxFp8Model, CudaFastPathMatchesReferencePathAndStaysCloseToBf16) {
  if (!kernels::HaveCudaKernels() || !at::hasCUDA() || !kernels::Fp8Supported(at::kCUDA)) {
    GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  }
  const FluxTransformerConfig c = TinyConfig();
  at::manual_seed(12);
  const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(at::kBFloat16);
  WeightMap w = RandomWeights(c, o);
  WeightMap w8 = Copy(w);
  WeightMap w32 = Copy(w);
  WeightMap wf = Copy(w);
  auto bf16 = FluxTransformer2DModel::FromWeights(c, w);
  auto fp8 = FluxTransformer2DModel::FromWeights(c, w8, flux::LinearPrecision::kFp8);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  const FluxTransformerInputs in = TinyInputs(o);
  flux::SetFusedBlocksEnabledForTesting(false);
  auto reference = fp8->Forward(in);
  flux::SetFusedBlocksEnabledForTesting(true);
  auto fused = fp8->Forward(in);
  auto base = bf16->Forward(in);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE(fused.ok()) << fused.status();
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_TRUE(at::isfinite(*fused).all().item<bool>());
  const double paths = RelError(*fused, *reference);
  const double precision = RelError(*fused, *base);
  std::printf("fp8 fused vs fp8 reference path: %.4f; fp8 vs bf16: %.4f\n", paths, precision);
  // The two FP8 paths quantize the same values except where a bf16 rounding of the fused norms
  // or a reduction differs, and such an element then lands one E4M3 step away in ~1/32 of cases:
  // a few times the bf16 paths' difference (1e-2 above). FP8 against bf16: within 2u as above.
  EXPECT_LT(paths, 3e-2);
  EXPECT_LT(precision, 0.125);

  // fp8-fast: the same FP8 weights with fast accumulation, against fp8 and bf16.
  auto fp8_fast = FluxTransformer2DModel::FromWeights(c, wf, flux::LinearPrecision::kFp8Fast);
  ASSERT_TRUE(fp8_fast.ok()) << fp8_fast.status();
  auto fast = fp8_fast->Forward(in);
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_TRUE(at::isfinite(*fast).all().item<bool>());
  const double fast_vs_fp8 = RelError(*fast, *fused);
  const double fast_vs_bf16 = RelError(*fast, *base);
  std::printf("fp8-fast vs fp8: %.4f; fp8-fast vs bf16: %.4f\n", fast_vs_fp8, fast_vs_bf16);
  EXPECT_LT(fast_vs_fp8, 3e-2);
  EXPECT_LT(fast_vs_bf16, 0.125);

  // float32 weights: FP8 layers need bfloat16 activations.
  WeightMap f32;
  for (const auto& [name, t] : w32.tensors()) f32.Insert(name, t.to(at::kFloat));
  const absl::Status s =
      FluxTransformer2DModel::FromWeights(c, f32, flux::LinearPrecision::kFp8).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("--dtype bfloat16"), std::string::npos) << s;
}

// CUDA graphs of the forward pass (FluxTransformer2DModel::EnableCudaGraphs): warm-up, capture and
// replays with new values give the eager velocity bit for bit.
TEST(FluxFusedModel, ForwardWithCudaGraphsEqualsWithout) {
  if (!GraphCache::Built() || !at::hasCUDA()) GTEST_SKIP() << "no CUDA build or no GPU";
  const FluxTransformerConfig c = TinyConfig();
  const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(at::kBFloat16);
  at::manual_seed(3);
  WeightMap w = RandomWeights(c, o);
  auto model = FluxTransformer2DModel::FromWeights(c, w);
  ASSERT_TRUE(model.ok()) << model.status();
  FluxTransformer2DModel graphed = *model;  // shares the weights
  graphed.EnableCudaGraphs(2);
  ASSERT_NE(graphed.cuda_graphs(), nullptr);
  ASSERT_EQ(model->cuda_graphs(), nullptr);
  const FluxTransformerInputs base = TinyInputs(o);
  auto rope = model->ComputeRope(base.txt_ids, base.img_ids);
  ASSERT_TRUE(rope.ok()) << rope.status();
  for (int step = 0; step < 5; ++step) {
    FluxTransformerInputs in = TinyInputs(o);  // new random values, the same shapes
    in.timestep = at::full({2}, 1.0 - 0.2 * step, o);
    in.rope = &*rope;
    auto eager = model->Forward(in);
    auto replayed = graphed.Forward(in);
    ASSERT_TRUE(eager.ok()) << eager.status();
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    EXPECT_TRUE(at::equal(*eager, *replayed)) << "step " << step;
  }
  const GraphCache::Stats st = graphed.cuda_graphs()->stats();
  EXPECT_EQ(st.failures, 0);
  EXPECT_EQ(st.captures, 1);
  EXPECT_EQ(st.replays, 4);
}

}  // namespace
}  // namespace dgrid
