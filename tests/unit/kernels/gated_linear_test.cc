// The gated residual folded into the output projection's GEMM (kernels/gated_linear.h) against the
// unfused op sequence: exactly on the CPU (where it is that sequence), and within the fused
// kernels' bfloat16 tolerance on the GPU (one cuBLASLt matmul), for the layouts the FLUX blocks
// pass: token windows of the joint attention output, column blocks of proj_out's weight, strided
// gate rows of a modulation output, batch 2 (CFG) with a gate per sample, in place.
#include "kernels/gated_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "kernels/flux_fused.h"
#include "kernels/rms_norm.h"

namespace dgrid::kernels {
namespace {

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

// The operands as the FLUX blocks hold them, drawn fresh: x is a token window [B, L, K] of a
// longer buffer, the weight a column block of a wider one, the gate a chunk of a [B, 6 N]
// modulation row.
struct Operands {
  at::Tensor residual, gate, x, weight, bias;
};
Operands Draw(int64_t batch, int64_t l, int64_t k, int64_t n, bool bias, at::TensorOptions o) {
  Operands p;
  p.residual = at::randn({batch, l, n}, o);
  p.gate = (at::randn({batch, 6 * n}, o) * 0.5).narrow(1, 2 * n, n);
  p.x = at::randn({batch, l + 24, k}, o).narrow(1, 16, l);
  p.weight = (at::randn({n, k + 64}, o) / std::sqrt(static_cast<double>(k))).narrow(1, 64, k);
  if (bias) p.bias = at::randn({n}, o);
  return p;
}

TEST(GatedLinearResidual, ReferenceIsLinearThenGatedResidual) {
  const Operands p = Draw(2, 7, 32, 24, true, at::TensorOptions());
  const at::Tensor want = p.residual + p.gate.unsqueeze(1) * at::linear(p.x, p.weight, p.bias);
  EXPECT_TRUE(at::allclose(GatedLinearResidualReference(p.residual, p.gate, p.x, p.weight, p.bias),
                           want, 1e-6, 1e-6));
}

TEST(GatedLinearResidual, CpuRunsTheReferenceAlsoInPlace) {
  for (bool bias : {true, false}) {
    const Operands p = Draw(2, 5, 16, 8, bias, at::TensorOptions());
    const at::Tensor want = GatedLinearResidualReference(p.residual, p.gate, p.x, p.weight, p.bias);
    EXPECT_TRUE(at::equal(GatedLinearResidual(p.residual, p.gate, p.x, p.weight, p.bias), want));
    at::Tensor in_place = p.residual.clone();
    GatedLinearResidualInto(in_place, p.gate, p.x, p.weight, p.bias, in_place);
    EXPECT_TRUE(at::equal(in_place, want)) << "bias " << bias;
  }
  EXPECT_FALSE(GatedLinearResidualFused(at::zeros({1}, at::kBFloat16)));
  EXPECT_EQ(GatedLinearResidualGemmMode(at::zeros({1})), "cpu");
}

TEST(GatedLinearResidual, ShapesThatDoNotFitAreRefused) {
  const Operands p = Draw(1, 4, 16, 8, true, at::TensorOptions());
  EXPECT_THROW(GatedLinearResidual(p.residual, p.gate, p.x, p.weight.narrow(0, 0, 4), p.bias),
               c10::Error);
  EXPECT_THROW(GatedLinearResidual(p.residual, p.gate.narrow(1, 0, 4), p.x, p.weight, p.bias),
               c10::Error);
  EXPECT_THROW(GatedLinearResidual(p.residual, p.gate, p.x, p.weight, p.bias.narrow(0, 0, 3)),
               c10::Error);
}

bool Cuda() { return HaveCudaKernels() && at::hasCUDA(); }

TEST(GatedLinearResidualCuda, OneGemmMatchesTheUnfusedPath) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(at::kBFloat16);
  const std::string mode = GatedLinearResidualGemmMode(at::zeros({1}, o));
  std::printf("gated GEMM mode on this GPU: %s\n", mode.c_str());
  if (!GatedLinearResidualFused(at::zeros({1}, o))) {
    GTEST_SKIP() << "cuBLASLt does not run the fused GEMM here (" << mode
                 << "); the unfused path serves";
  }
  // (batch, tokens, K, N): FLUX's image/text streams at small scale, an odd token count, CFG 2.
  const int64_t shapes[][4] = {
      {1, 256, 512, 384}, {2, 77, 256, 128}, {1, 512, 1024, 256}, {2, 64, 3072, 3072}};
  for (const auto& s : shapes) {
    for (bool bias : {true, false}) {
      const Operands p = Draw(s[0], s[1], s[2], s[3], bias, o);
      const at::Tensor want =
          GatedLinearResidualReference(p.residual, p.gate, p.x, p.weight, p.bias);
      at::Tensor out = at::full(p.residual.sizes(), std::nan(""), o);  // every element written
      GatedLinearResidualInto(p.residual, p.gate, p.x, p.weight, p.bias, out);
      const double err = RelError(out, want);
      EXPECT_FALSE(out.isnan().any().item<bool>());
      EXPECT_LT(err, 4e-3) << s[0] << "x" << s[1] << "x" << s[2] << "x" << s[3] << " bias " << bias;
      // In place (the single blocks' second GEMM adds into the first one's output).
      at::Tensor in_place = p.residual.clone();
      GatedLinearResidualInto(in_place, p.gate, p.x, p.weight, p.bias, in_place);
      const double err_in_place = RelError(in_place, want);
      EXPECT_LT(err_in_place, 4e-3) << "in place " << s[0] << "x" << s[1] << "x" << s[2];
      std::printf("gated GEMM %ldx%ldx%ldx%ld bias %d: rel err %.2e, in place %.2e\n",
                  static_cast<long>(s[0]), static_cast<long>(s[1]), static_cast<long>(s[2]),
                  static_cast<long>(s[3]), bias ? 1 : 0, err, err_in_place);
    }
  }
}

TEST(GatedLinearResidualCuda, OtherDtypesTakeTheUnfusedPath) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const Operands p = Draw(1, 32, 64, 48, true, at::TensorOptions(at::kCUDA));
  EXPECT_FALSE(GatedLinearResidualFused(p.x));
  EXPECT_LT(RelError(GatedLinearResidual(p.residual, p.gate, p.x, p.weight, p.bias),
                     GatedLinearResidualReference(p.residual, p.gate, p.x, p.weight, p.bias)),
            1e-5);
}

}  // namespace
}  // namespace dgrid::kernels
