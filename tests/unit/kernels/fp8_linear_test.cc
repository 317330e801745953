// FP8 row quantization and FP8 linear layers (kernels/fp8_linear.h): the reference math on the CPU
// (scales, rounding, saturation, the dequantize-and-multiply product and its error bound), and the
// CUDA kernels and at::_scaled_mm against that reference where a GPU with FP8 is present.
#include "kernels/fp8_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>

#include <cmath>
#include <vector>

#include "kernels/flux_fused.h"
#include "kernels/rms_norm.h"

namespace dgrid::kernels {
namespace {

// E4M3 keeps 3 mantissa bits: a normal value rounds to within 2^-4 of itself (relative), a
// subnormal one (below 2^-6) to within half its step 2^-9.
constexpr double kUnit = 1.0 / 16;
constexpr double kSubnormalHalfStep = 1.0 / 1024;

at::Tensor Dequantize(const Fp8Rows& q) { return q.data.to(at::kFloat) * q.scale; }

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

TEST(Fp8Linear, ScalesAreRowAmaxOver448AndTheRowMaxHitsTheTopCode) {
  at::manual_seed(1);
  const at::Tensor x =
      at::randn({5, 64}) * at::tensor({0.01f, 1.0f, 30.0f, 1e4f, 2.5f}).unsqueeze(1);
  const Fp8Rows q = QuantizeRowsFp8Reference(x);
  ASSERT_EQ(q.data.scalar_type(), at::kFloat8_e4m3fn);
  ASSERT_EQ(q.scale.sizes(), (std::vector<int64_t>{5, 1}));
  const at::Tensor amax = x.abs().amax({1}, true);
  EXPECT_TRUE(at::equal(q.scale, amax / at::full_like(amax, kFp8E4m3Max)));
  // The element of largest magnitude of each row becomes exactly +-448.
  const at::Tensor codes = q.data.to(at::kFloat);
  EXPECT_TRUE(at::equal(codes.abs().amax({1}), at::full({5}, kFp8E4m3Max)));
  EXPECT_TRUE(at::isfinite(codes).all().item<bool>());
}

TEST(Fp8Linear, EveryValueIsWithinE4m3RoundingOfTheInput) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({16, 256}) * 3;
  const Fp8Rows q = QuantizeRowsFp8Reference(x);
  const at::Tensor err = (Dequantize(q) - x).abs();
  const at::Tensor bound = x.abs() * kUnit + q.scale * kSubnormalHalfStep;
  EXPECT_TRUE((err <= bound).all().item<bool>()) << (err - bound).max().item<double>();
  // Not just within the bound: most values are not exact in 3 mantissa bits.
  EXPECT_GT((err > 0).to(at::kFloat).mean().item<double>(), 0.5);
}

TEST(Fp8Linear, RoundsTiesToEven) {
  // amax 448 gives scale 1, so the values are quantized as they are. Between 1 and 2 the E4M3
  // step is 1/8: 1.0625 lies halfway between 1 (even mantissa) and 1.125, 1.1875 between 1.125
  // and 1.25 (even); 1.07 is nearer 1.125.
  const at::Tensor x = at::tensor({448.0f, 1.0625f, 1.1875f, -1.0625f, 1.07f, 0.0f});
  const Fp8Rows q = QuantizeRowsFp8Reference(x.unsqueeze(0));
  ASSERT_EQ(q.scale.item<float>(), 1.0f);
  EXPECT_TRUE(at::equal(q.data.to(at::kFloat).squeeze(0),
                        at::tensor({448.0f, 1.0f, 1.25f, -1.0f, 1.125f, 0.0f})));
}

TEST(Fp8Linear, ExtremeRowsAndZeroRowsStayFinite) {
  // 1.9127556 / (1.9127556 / 448) rounds to 448.00003 in float32: the top code, not past it.
  const Fp8Rows top = QuantizeRowsFp8Reference(at::tensor({1.9127556f, 1.0f}).unsqueeze(0));
  ASSERT_GT(1.9127556f / top.scale.item<float>(), kFp8E4m3Max);
  EXPECT_EQ(top.data.to(at::kFloat)[0][0].item<float>(), kFp8E4m3Max);
  // Huge and tiny magnitudes in one row, and a row of zeros.
  const at::Tensor x =
      at::tensor({3.0e38f, -3.0e38f, 1.0f, 1e-30f, 0.0f, 0.0f, 0.0f, 0.0f}).view({2, 4});
  const Fp8Rows q = QuantizeRowsFp8Reference(x);
  const at::Tensor codes = q.data.to(at::kFloat);
  EXPECT_TRUE(at::isfinite(codes).all().item<bool>());
  EXPECT_LE(codes.abs().max().item<float>(), kFp8E4m3Max);
  EXPECT_EQ(codes[0][0].item<float>(), kFp8E4m3Max);
  EXPECT_EQ(codes[0][1].item<float>(), -kFp8E4m3Max);
  EXPECT_TRUE(at::equal(codes[1], at::zeros({4})));
  EXPECT_FLOAT_EQ(q.scale[1][0].item<float>(), kFp8MinAmax / kFp8E4m3Max);
}

TEST(Fp8Linear, GeluAndConcatenatedRowsQuantizeWhatTheyName) {
  at::manual_seed(3);
  const at::Tensor a = at::randn({6, 32}).to(at::kBFloat16);
  const at::Tensor b = (at::randn({6, 48}) * 4).to(at::kBFloat16);
  const Fp8Rows gelu = QuantizeRowsFp8Reference(b, /*gelu=*/true);
  const Fp8Rows plain = QuantizeRowsFp8Reference(at::gelu(b, "tanh"));
  EXPECT_TRUE(at::equal(gelu.data.to(at::kFloat), plain.data.to(at::kFloat)));
  EXPECT_TRUE(at::equal(gelu.scale, plain.scale));
  const Fp8Rows both = QuantizeConcatRowsFp8Reference(a, b, /*gelu_b=*/true);
  const Fp8Rows joined = QuantizeRowsFp8Reference(at::cat({a, at::gelu(b, "tanh")}, 1));
  EXPECT_TRUE(at::equal(both.data.to(at::kFloat), joined.data.to(at::kFloat)));
  EXPECT_TRUE(at::equal(both.scale, joined.scale));
}

// |x^ w^T - x w^T| <= sum_k |x_k| |w_k| (2u + u^2) + the subnormal terms, elementwise.
TEST(Fp8Linear, ReferenceProductIsTheDequantizedProductWithinTheRoundingBound) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({24, 128}) * 2;
  const at::Tensor w = at::randn({40, 128}) * 0.05;
  const at::Tensor bias = (at::randn({40}) * 0.1).to(at::kBFloat16);
  const Fp8Rows qx = QuantizeRowsFp8Reference(x);
  const Fp8Rows qw = QuantizeRowsFp8Reference(w);
  const at::Tensor got = Fp8LinearReference(qx, qw, bias);
  ASSERT_EQ(got.scalar_type(), at::kBFloat16);
  // It is exactly the dequantized product (then rounded to bf16).
  const at::Tensor dequantized =
      (at::mm(Dequantize(qx), Dequantize(qw).t()) + bias.to(at::kFloat)).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(got, dequantized));
  // And within FP8's rounding of the exact product (float64), plus bf16's output rounding.
  const at::Tensor exact = at::mm(x.to(at::kDouble), w.to(at::kDouble).t()) + bias.to(at::kDouble);
  const at::Tensor magnitude = at::mm(x.abs().to(at::kDouble), w.abs().to(at::kDouble).t());
  const at::Tensor subnormal =
      2 * kSubnormalHalfStep *
      (qx.scale.to(at::kDouble) * w.abs().sum(1).to(at::kDouble).unsqueeze(0) +
       x.abs().sum(1, true).to(at::kDouble) * qw.scale.to(at::kDouble).t());
  const at::Tensor bound = magnitude * (2 * kUnit + kUnit * kUnit) + subnormal + exact.abs() / 128;
  const at::Tensor err = (got.to(at::kDouble) - exact).abs();
  EXPECT_TRUE((err <= bound).all().item<bool>()) << (err - bound).max().item<double>();
  // Typical error is far below that worst case: random rounding errors cancel.
  EXPECT_LT(RelError(got, exact), 0.05);
}

TEST(Fp8Linear, NoFp8OnTheCpu) { EXPECT_FALSE(Fp8Supported(c10::Device(at::kCPU))); }

// --- CUDA: the kernels and at::_scaled_mm against the reference above. ---

bool CudaFp8() { return HaveCudaKernels() && at::hasCUDA() && Fp8Supported(at::kCUDA); }

// Codes of two quantizations of the same values: equal bytes.
void ExpectSameCodes(const Fp8Rows& got, const Fp8Rows& want) {
  ASSERT_EQ(got.data.sizes(), want.data.sizes());
  EXPECT_TRUE(at::equal(got.data.view(at::kByte).cpu(), want.data.view(at::kByte).cpu()));
  EXPECT_TRUE(at::equal(got.scale.cpu(), want.scale.cpu()));
}

// Codes of quantizations whose inputs may differ by one bf16 rounding in a few elements: the
// scales agree to that rounding and the dequantized values to one E4M3 step.
void ExpectCodesWithinOneStep(const Fp8Rows& got, const Fp8Rows& want) {
  ASSERT_EQ(got.data.sizes(), want.data.sizes());
  EXPECT_TRUE(at::allclose(got.scale, want.scale, 1.0 / 128, 0));
  const at::Tensor a = Dequantize(got), b = Dequantize(want);
  const at::Tensor bound = b.abs() * (2 * kUnit) + want.scale * 2 * kSubnormalHalfStep;
  EXPECT_TRUE(((a - b).abs() <= bound).all().item<bool>());
  const double mismatch =
      (got.data.view(at::kByte) != want.data.view(at::kByte)).to(at::kFloat).mean().item<double>();
  EXPECT_LT(mismatch, 0.01);
}

TEST(Fp8LinearCuda, QuantizeRowsMatchesReferenceBitForBit) {
  if (!CudaFp8()) GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  at::manual_seed(5);
  for (at::ScalarType type : {at::kBFloat16, at::kHalf}) {
    for (int64_t k : {8, 3072, 15360}) {
      // Strided rows (a column block of a wider matrix), a row of zeros, mixed magnitudes.
      at::Tensor wide =
          (at::randn({37, k + 16}, at::kCUDA) * at::logspace(-3, 3, 37, 10, at::kCUDA).unsqueeze(1))
              .to(type);
      wide[3].zero_();
      const at::Tensor x = wide.narrow(1, 8, k);
      ExpectSameCodes(QuantizeRowsFp8(x), QuantizeRowsFp8Reference(x));
      ExpectSameCodes(QuantizeRowsFp8(x.unsqueeze(0)), QuantizeRowsFp8Reference(x));
    }
  }
}

TEST(Fp8LinearCuda, GeluAndConcatenatedRowsMatchReference) {
  if (!CudaFp8()) GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  at::manual_seed(6);
  const at::Tensor proj = (at::randn({2, 300, 7 * 64}, at::kCUDA) * 2).to(at::kBFloat16);
  const at::Tensor attn = at::randn({600, 64}, at::kCUDA).to(at::kBFloat16);
  const at::Tensor mlp = proj.narrow(2, 3 * 64, 4 * 64).reshape({-1, 4 * 64});  // strided rows
  // GELU on the GPU: the kernel's float GELU and ATen's CUDA GELU are one formula.
  ExpectCodesWithinOneStep(QuantizeRowsFp8(mlp, /*gelu=*/true),
                           QuantizeRowsFp8Reference(mlp, /*gelu=*/true));
  ExpectCodesWithinOneStep(QuantizeConcatRowsFp8(attn, mlp, /*gelu_b=*/true),
                           QuantizeConcatRowsFp8Reference(attn, mlp, /*gelu_b=*/true));
  ExpectSameCodes(QuantizeConcatRowsFp8(attn, mlp, /*gelu_b=*/false),
                  QuantizeConcatRowsFp8Reference(attn, mlp, /*gelu_b=*/false));
}

TEST(Fp8LinearCuda, LayerNormModulateFp8QuantizesTheFusedNormsOutput) {
  if (!CudaFp8()) GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  at::manual_seed(7);
  for (int64_t d : {64, 3072}) {
    const at::Tensor x = (at::randn({2, 41, d}, at::kCUDA) * 3 + 1).to(at::kBFloat16);
    const at::Tensor mod = (at::randn({2, 6 * d}, at::kCUDA) * 0.3).to(at::kBFloat16);
    const at::Tensor shift = mod.narrow(1, d, d), scale = mod.narrow(1, 4 * d, d);
    // The same kernel's LayerNorm + modulate values, quantized in registers: the same codes.
    ExpectSameCodes(LayerNormModulateFp8(x, shift, scale, 1e-6),
                    QuantizeRowsFp8Reference(LayerNormModulate(x, shift, scale, 1e-6)));
    // And against the ATen op sequence: within its reductions' rounding.
    ExpectCodesWithinOneStep(LayerNormModulateFp8(x, shift, scale, 1e-6),
                             LayerNormModulateFp8Reference(x, shift, scale, 1e-6));
  }
}

TEST(Fp8LinearCuda, ScaledMmMatchesTheDequantizedProduct) {
  if (!CudaFp8()) GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  at::manual_seed(8);
  const at::Tensor x = (at::randn({300, 512}, at::kCUDA) * 2).to(at::kBFloat16);
  // Rows 64.. of a larger weight: the row-block views the model uses for q, k, v.
  const at::Tensor w = (at::randn({320, 512}, at::kCUDA) * 0.05).to(at::kBFloat16);
  const at::Tensor bias = (at::randn({256}, at::kCUDA) * 0.1).to(at::kBFloat16);
  const Fp8Rows qw_all = QuantizeRowsFp8Reference(w);
  const Fp8Rows qw{qw_all.data.narrow(0, 64, 256), qw_all.scale.narrow(0, 64, 256)};
  const Fp8Rows qx = QuantizeRowsFp8(x);
  for (const bool with_bias : {true, false}) {
    const at::Tensor b = with_bias ? bias : at::Tensor();
    const at::Tensor got = Fp8Linear(qx, qw, b);
    ASSERT_EQ(got.scalar_type(), at::kBFloat16);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{300, 256}));
    // Both round a float32 sum to bf16; only the order of the sums differs.
    EXPECT_LT(RelError(got, Fp8LinearReference(qx, qw, b)), 4e-3) << "bias " << with_bias;
  }
}

// Fast accumulation (--dit-precision fp8-fast) on the same codes: the products differ from the
// dequantized float32 product only by how the partial sums are kept along K, which must stay
// within bf16 output rounding at the model's widths (K = 64, the tiny test model; 3072 and 12288,
// FLUX.1-dev's projections and MLP down-projection).
TEST(Fp8LinearCuda, FastAccumulationStaysWithinTheOutputRounding) {
  if (!CudaFp8()) GTEST_SKIP() << "no CUDA kernels or no GPU with FP8";
  at::manual_seed(9);
  for (int64_t k : {64, 3072, 12288}) {
    const at::Tensor x = (at::randn({256, k}, at::kCUDA) * 2).to(at::kBFloat16);
    const at::Tensor w = (at::randn({192, k}, at::kCUDA) * 0.05).to(at::kBFloat16);
    const Fp8Rows qx = QuantizeRowsFp8(x), qw = QuantizeRowsFp8(w);
    const at::Tensor want = Fp8LinearReference(qx, qw, at::Tensor());
    const double exact = RelError(Fp8Linear(qx, qw, at::Tensor()), want);
    const double fast = RelError(Fp8Linear(qx, qw, at::Tensor(), /*fast_accumulation=*/true), want);
    std::printf("K = %ld: float32 accumulation %.2e, fast accumulation %.2e\n",
                static_cast<long>(k), exact, fast);
    EXPECT_LT(exact, 4e-3) << "K = " << k;
    EXPECT_LT(fast, 4e-3) << "K = " << k;
  }
}

}  // namespace
}  // namespace dgrid::kernels
