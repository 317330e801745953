#include "kernels/wan_fused.h"

#include <ATen/ATen.h>

namespace dgrid::kernels {

#ifdef DGRID_WITH_CUDA_KERNELS
// kernels/cuda/wan_fused.cu. Each returns false (nothing written) when its kernel does not fit.
bool WanResidualNormCuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                         const at::Tensor& scale, const at::Tensor& shift, bool one_plus_scale,
                         double eps, at::Tensor& h, at::Tensor& normed);
bool WanRmsNormRopeCuda(at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& cos,
                        const at::Tensor& sin);
#endif

namespace {

void CheckActivation(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 3, what, ": input must be [B, N, D], got ", x.sizes());
}

void CheckRowVector(const at::Tensor& x, const at::Tensor& v, const char* what) {
  TORCH_CHECK(v.dim() == 3 && (v.size(0) == 1 || v.size(0) == x.size(0)) &&
                  (v.size(1) == 1 || v.size(1) == x.size(1)) && v.size(2) == x.size(2),
              what, ": row vector must be [B or 1, N or 1, D] for x ", x.sizes(), ", got ",
              v.sizes());
}

}  // namespace

at::Tensor WanNormModulateReference(const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& shift, bool one_plus_scale, double eps) {
  const at::Tensor normed = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, eps);
  return (normed * (one_plus_scale ? 1 + scale : scale) + shift).to(x.scalar_type());
}

at::Tensor WanGatedResidualReference(const at::Tensor& x, const at::Tensor& y,
                                     const at::Tensor& gate) {
  if (!gate.defined()) return x + y;
  return (x.to(at::kFloat) + y * gate).to(x.scalar_type());
}

at::Tensor WanRmsNormRopeReference(const at::Tensor& x, const at::Tensor& weight, double eps,
                                   const at::Tensor& cos, const at::Tensor& sin) {
  const at::Tensor y = at::rms_norm(x, {x.size(-1)}, weight, eps);
  if (!cos.defined()) return y;
  // apply_rotary_emb: out = y * cos + rotate(y) * sin in float32, rotate(y)[2i] = -y[2i+1],
  // rotate(y)[2i+1] = y[2i]; cos and sin are [S, Dh], broadcast over samples and heads.
  const int64_t head_dim = cos.size(1);
  const at::Tensor heads = y.unflatten(-1, {-1, head_dim});  // [B, S, H, Dh]
  const at::Tensor pairs = heads.unflatten(-1, {-1, 2});
  const at::Tensor rotated = at::stack({-pairs.select(-1, 1), pairs.select(-1, 0)}, -1).flatten(3);
  const at::Tensor c = cos.unsqueeze(0).unsqueeze(2);
  const at::Tensor s = sin.unsqueeze(0).unsqueeze(2);
  return (heads.to(at::kFloat) * c + rotated.to(at::kFloat) * s).to(x.scalar_type()).flatten(2);
}

std::pair<at::Tensor, at::Tensor> WanResidualNorm(const at::Tensor& x, const at::Tensor& y,
                                                  const at::Tensor& gate, const at::Tensor& scale,
                                                  const at::Tensor& shift, bool one_plus_scale,
                                                  double eps) {
  CheckActivation(x, "WanResidualNorm");
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(), "WanResidualNorm: y ",
              y.sizes(), " must match x ", x.sizes(), " in shape and dtype");
  if (gate.defined()) CheckRowVector(x, gate, "WanResidualNorm");
  CheckRowVector(x, scale, "WanResidualNorm");
  CheckRowVector(x, shift, "WanResidualNorm");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) {
    at::Tensor h, normed;
    if (WanResidualNormCuda(x, y, gate, scale, shift, one_plus_scale, eps, h, normed)) {
      return {h, normed};
    }
  }
#endif
  at::Tensor h = WanGatedResidualReference(x, y, gate);
  at::Tensor normed = WanNormModulateReference(h, scale, shift, one_plus_scale, eps);
  return {h, normed};
}

at::Tensor WanNormModulate(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           bool one_plus_scale, double eps) {
  CheckActivation(x, "WanNormModulate");
  CheckRowVector(x, scale, "WanNormModulate");
  CheckRowVector(x, shift, "WanNormModulate");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) {
    at::Tensor h, normed;
    if (WanResidualNormCuda(x, at::Tensor(), at::Tensor(), scale, shift, one_plus_scale, eps, h,
                            normed)) {
      return normed;
    }
  }
#endif
  return WanNormModulateReference(x, scale, shift, one_plus_scale, eps);
}

at::Tensor WanGatedResidual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  CheckActivation(x, "WanGatedResidual");
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type(), "WanGatedResidual: y ",
              y.sizes(), " must match x ", x.sizes(), " in shape and dtype");
  if (gate.defined()) CheckRowVector(x, gate, "WanGatedResidual");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) {
    at::Tensor h, normed;
    if (WanResidualNormCuda(x, y, gate, at::Tensor(), at::Tensor(), false, 0.0, h, normed)) {
      return h;
    }
  }
#endif
  return WanGatedResidualReference(x, y, gate);
}

at::Tensor WanRmsNormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                          const at::Tensor& cos, const at::Tensor& sin) {
  CheckActivation(x, "WanRmsNormRope");
  TORCH_CHECK(weight.defined() && weight.dim() == 1 && weight.size(0) == x.size(2),
              "WanRmsNormRope: weight must be [", x.size(2), "]");
  if (cos.defined()) {
    TORCH_CHECK(cos.dim() == 2 && sin.defined() && sin.sizes() == cos.sizes() &&
                    cos.size(0) == x.size(1) && cos.size(1) % 2 == 0 &&
                    x.size(2) % cos.size(1) == 0,
                "WanRmsNormRope: rope tables ", cos.sizes(), " do not fit x ", x.sizes());
  }
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) {
    at::Tensor out = x;
    if (WanRmsNormRopeCuda(out, weight, eps, cos, sin)) return out;
  }
#endif
  return WanRmsNormRopeReference(x, weight, eps, cos, sin);
}

}  // namespace dgrid::kernels
