#include "kernels/rms_norm.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace dgrid::kernels {
namespace {

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

// Float64 ground truth of the same definition.
at::Tensor Truth(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xd = x.to(at::kDouble);
  at::Tensor y = xd * at::rsqrt(xd.pow(2).mean({-1}, true) + eps);
  return w.defined() ? y * w.to(at::kDouble) : y;
}

TEST(RmsNorm, ReferenceMatchesDefinition) {
  at::Tensor x = at::randn({3, 7, 64});
  at::Tensor w = at::randn({64});
  EXPECT_LT(RelError(RmsNormReference(x, w, 1e-6), Truth(x, w, 1e-6)), 1e-6);
  EXPECT_LT(RelError(RmsNormReference(x, at::Tensor(), 1e-6), Truth(x, at::Tensor(), 1e-6)), 1e-6);
}

TEST(RmsNorm, DtypeRulesFollowDiffusers) {
  at::Tensor x = at::randn({4, 32}).to(at::kBFloat16);
  EXPECT_EQ(RmsNormReference(x, at::randn({32}).to(at::kBFloat16), 1e-6).scalar_type(),
            at::kBFloat16);
  EXPECT_EQ(RmsNormReference(x, at::randn({32}), 1e-6).scalar_type(), at::kFloat);
  EXPECT_EQ(RmsNormReference(x, at::Tensor(), 1e-6).scalar_type(), at::kBFloat16);
}

TEST(RmsNorm, CudaKernelMatchesReference) {
  if (!HaveCudaKernels() || !at::hasCUDA()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t cols : {64, 128, 3072, 77}) {
      at::Tensor x = at::randn({5, 33, cols}, at::kCUDA).to(type);
      at::Tensor w = at::randn({cols}, at::kCUDA).to(type);
      const at::Tensor ref = RmsNormReference(x, w, 1e-6);
      const at::Tensor got = RmsNorm(x, w, 1e-6);
      ASSERT_EQ(got.scalar_type(), ref.scalar_type());
      const double tol = type == at::kFloat ? 1e-6 : 1e-2;
      EXPECT_LT(RelError(got, ref), tol) << c10::toString(type) << " cols " << cols;
      EXPECT_FALSE(got.isnan().any().item<bool>());
    }
  }
}

}  // namespace
}  // namespace dgrid::kernels
