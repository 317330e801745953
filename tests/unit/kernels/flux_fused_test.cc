// The fused FLUX operators against their reference op sequences (kernels/flux_fused.h), and the
// references against the model's own functions (services/denoiser/models/flux_layers.h).
#include "kernels/flux_fused.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/rms_norm.h"
#include "services/denoiser/models/flux_layers.h"

namespace dgrid::kernels {
namespace {

double RelError(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() /
         b.to(at::kDouble).norm().item<double>();
}

bool Cuda() { return HaveCudaKernels() && at::hasCUDA(); }

// Bound on the fused-vs-reference difference: float32 differs only in reduction order; half types
// may differ by one rounding of the storage type in a few elements.
double Tolerance(at::ScalarType type) { return type == at::kFloat ? 1e-6 : 4e-3; }

// Modulation vectors are chunks of one [B, 6 * D] GEMM output in the model: strided rows.
std::pair<at::Tensor, at::Tensor> Chunks(int64_t batch, int64_t d, at::TensorOptions o) {
  const at::Tensor all = at::randn({batch, 6 * d}, o) * 0.3;
  return {all.narrow(1, d, d), all.narrow(1, 4 * d, d)};
}

TEST(FluxFused, LayerNormModulateReferenceIsTheModelsOp) {
  const at::Tensor x = at::randn({2, 9, 64});
  const auto [shift, scale] = Chunks(2, 64, x.options());
  EXPECT_TRUE(at::equal(LayerNormModulateReference(x, shift, scale, 1e-6),
                        flux::LayerNormModulate(x, shift, scale)));
}

TEST(FluxFused, QkNormRopeReferenceIsTheModelsOps) {
  // Model path: Heads (linear output -> [B, L, H, D] -> at::rms_norm) then ApplyRope.
  const int64_t b = 2, l = 7, h = 3, d = 16;
  const at::Tensor src = at::randn({b, l, 3 * h * d}).narrow(2, h * d, h * d);  // strided rows
  const at::Tensor w = at::randn({d});
  const at::Tensor ids = at::randint(0, 20, {l + 5, 3});
  const flux::Rope rope = flux::ComputeRope(ids, {4, 6, 6});
  flux::Rope window{rope.cos.narrow(0, 5, l), rope.sin.narrow(0, 5, l)};
  const at::Tensor expected =
      flux::ApplyRope(at::rms_norm(src.unflatten(-1, {h, d}), {d}, w, 1e-6), window);
  at::Tensor dst = at::full({b, l + 4, h, d}, std::nan(""));
  QkNormRopeInto(src, w, 1e-6, rope.cos, rope.sin, 5, dst, 3);
  EXPECT_TRUE(at::allclose(dst.narrow(1, 3, l), expected, 0, 0));
  EXPECT_TRUE(dst.narrow(1, 0, 3).isnan().all().item<bool>());  // rows outside left alone
}

TEST(FluxFused, GatedResidualReferenceClipsHalfOnly) {
  const at::Tensor x = at::full({1, 2, 8}, 60000.0).to(at::kHalf);
  const at::Tensor gate = at::ones({1, 8}).to(at::kHalf);
  const at::Tensor y = at::full({1, 2, 8}, 30000.0).to(at::kHalf);
  EXPECT_TRUE(at::isfinite(GatedResidualReference(x, gate, y, true)).all().item<bool>());
  EXPECT_FALSE(at::isfinite(GatedResidualReference(x, gate, y, false)).all().item<bool>());
}

TEST(FluxFused, CudaLayerNormModulateMatchesReference) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t d : {64, 3072, 72}) {
      const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
      const at::Tensor x = (at::randn({2, 37, d}, at::kCUDA) * 3 + 1).to(type);
      const auto [shift, scale] = Chunks(2, d, o);
      const at::Tensor got = LayerNormModulate(x, shift, scale, 1e-6);
      const at::Tensor want = LayerNormModulateReference(x, shift, scale, 1e-6);
      EXPECT_LT(RelError(got, want), Tolerance(type)) << type << " d=" << d;
    }
  }
}

TEST(FluxFused, CudaGatedResidualMatchesReference) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
    const at::Tensor x = at::randn({3, 21, 3072}, o);
    const at::Tensor y = at::randn({3, 21, 3072}, o);
    const at::Tensor gate = Chunks(3, 3072, o).first;
    for (bool clip : {false, true}) {
      EXPECT_LT(RelError(GatedResidual(x, gate, y, clip), GatedResidualReference(x, gate, y, clip)),
                Tolerance(type))
          << type;
    }
  }
}

TEST(FluxFused, CudaQkNormRopeMatchesReference) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA kernels or no GPU";
  const at::Tensor ids = at::randint(0, 64, {300, 3}, at::kCUDA);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t d : {128, 16}) {
      const flux::Rope rope = flux::ComputeRope(
          ids, d == 128 ? std::vector<int64_t>{16, 56, 56} : std::vector<int64_t>{4, 6, 6});
      const at::TensorOptions o = at::TensorOptions(at::kCUDA).dtype(type);
      const int64_t b = 2, l = 50, h = 4;
      const at::Tensor qkv = at::randn({b, l, 3 * h * d}, o) * 2;
      const at::Tensor w = at::rand({d}, o) + 0.5;
      for (bool with_norm : {true, false}) {
        const at::Tensor norm = with_norm ? w : at::Tensor();
        at::Tensor got = at::full({b, l + 10, h, d}, std::nan(""), o);
        at::Tensor want = got.clone();
        QkNormRopeInto(qkv.narrow(2, h * d, h * d), norm, 1e-6, rope.cos, rope.sin, 200, got, 10);
        QkNormRopeIntoReference(qkv.narrow(2, h * d, h * d), norm, 1e-6, rope.cos, rope.sin, 200,
                                want, 10);
        EXPECT_FALSE(got.narrow(1, 10, l).isnan().any().item<bool>()) << "unwritten output";
        EXPECT_LT(RelError(got.narrow(1, 10, l), want.narrow(1, 10, l)), Tolerance(type))
            << type << " d=" << d << " norm=" << with_norm;
      }
    }
  }
}

TEST(FluxFused, QkvHeadsMatchesSeparateReferences) {
  // CPU here (the reference composition); on CUDA the single-launch kernel for Dh = 128.
  std::vector<at::Device> devices = {at::kCPU};
  if (Cuda()) devices.push_back(at::kCUDA);
  for (const at::Device& device : devices) {
    for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (int64_t d : {128, 16}) {
        const at::TensorOptions o = at::TensorOptions(device).dtype(type);
        const at::Tensor ids = at::randint(0, 64, {80, 3}, device);
        const flux::Rope rope = flux::ComputeRope(
            ids, d == 128 ? std::vector<int64_t>{16, 56, 56} : std::vector<int64_t>{4, 6, 6});
        const int64_t b = 2, l = 30, h = 3, dim = h * d;
        // A fused projection with a 4th part after q | k | v, as in the single blocks.
        const at::Tensor proj = at::randn({b, l, 4 * dim}, o) * 2;
        const at::Tensor wq = at::rand({d}, o) + 0.5, wk = at::rand({d}, o) + 0.5;
        const std::vector<int64_t> shape = {b, l + 7, h, d};
        at::Tensor q = at::full(shape, std::nan(""), o), k = q.clone(), v = q.clone();
        QkvHeadsInto(proj, wq, wk, 1e-6, rope.cos, rope.sin, 40, q, k, v, 7);
        at::Tensor rq = at::zeros(shape, o), rk = rq.clone();
        QkNormRopeIntoReference(proj.narrow(2, 0, dim), wq, 1e-6, rope.cos, rope.sin, 40, rq, 7);
        QkNormRopeIntoReference(proj.narrow(2, dim, dim), wk, 1e-6, rope.cos, rope.sin, 40, rk, 7);
        const at::Tensor rv = proj.narrow(2, 2 * dim, dim).unflatten(2, {h, d});
        EXPECT_FALSE(q.narrow(1, 7, l).isnan().any().item<bool>()) << "unwritten q";
        EXPECT_LT(RelError(q.narrow(1, 7, l), rq.narrow(1, 7, l)), Tolerance(type)) << type << d;
        EXPECT_LT(RelError(k.narrow(1, 7, l), rk.narrow(1, 7, l)), Tolerance(type)) << type << d;
        EXPECT_TRUE(at::equal(v.narrow(1, 7, l), rv)) << type << " d=" << d;
        EXPECT_TRUE(q.narrow(1, 0, 7).isnan().all().item<bool>()) << "rows outside written";
      }
    }
  }
}

TEST(FluxFused, GeluTanhIntoStridedSlices) {
  std::vector<at::Device> devices = {at::kCPU};
  if (Cuda()) devices.push_back(at::kCUDA);
  for (const at::Device& device : devices) {
    for (at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const at::TensorOptions o = at::TensorOptions(device).dtype(type);
      const at::Tensor proj = at::randn({2, 33, 7 * 64}, o) * 3;
      at::Tensor joined = at::full({2, 33, 5 * 64}, std::nan(""), o);
      at::Tensor part = joined.narrow(2, 64, 4 * 64);
      GeluTanhInto(proj.narrow(2, 3 * 64, 4 * 64), part);
      const at::Tensor want = at::gelu(proj.narrow(2, 3 * 64, 4 * 64), "tanh");
      EXPECT_LT(RelError(part, want), Tolerance(type)) << type << " " << device;
      EXPECT_TRUE(joined.narrow(2, 0, 64).isnan().all().item<bool>());
    }
  }
}

}  // namespace
}  // namespace dgrid::kernels
