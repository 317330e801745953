#include "kernels/gated_linear.h"

#include <ATen/ATen.h>

#include "kernels/flux_fused.h"

namespace dgrid::kernels {

#ifdef DGRID_WITH_CUDA_KERNELS
// kernels/cuda/gated_linear.cu: false (nothing written) where the device's cuBLASLt does not run
// the fused GEMM or the tensors' layout does not fit it.
bool GatedLinearResidualCuda(const at::Tensor& residual, const at::Tensor& gate,
                             const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             at::Tensor& out);
std::string GatedLinearResidualCudaMode(const at::Tensor& x);
#endif

namespace {

void CheckShapes(const at::Tensor& residual, const at::Tensor& gate, const at::Tensor& x,
                 const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && residual.dim() == 3 && gate.dim() == 2,
              "GatedLinearResidual: x ", x.sizes(), ", weight ", weight.sizes(), ", residual ",
              residual.sizes(), ", gate ", gate.sizes(),
              " must be [B, L, K], [N, K], [B, L, N], [B, N]");
  const int64_t b = x.size(0), l = x.size(1), k = x.size(2), n = weight.size(0);
  TORCH_CHECK(weight.size(1) == k && residual.size(0) == b && residual.size(1) == l &&
                  residual.size(2) == n && gate.size(0) == b && gate.size(1) == n,
              "GatedLinearResidual: x ", x.sizes(), ", weight ", weight.sizes(), ", residual ",
              residual.sizes(), ", gate ", gate.sizes(), " do not fit together");
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == n),
              "GatedLinearResidual: bias ", bias.sizes(), " must be [", n, "]");
  TORCH_CHECK(out.sizes() == residual.sizes(), "GatedLinearResidual: out ", out.sizes(),
              " must be shaped like residual ", residual.sizes());
}

}  // namespace

at::Tensor GatedLinearResidualReference(const at::Tensor& residual, const at::Tensor& gate,
                                        const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias) {
  return GatedResidualReference(residual, gate, at::linear(x, weight, bias), /*clip_fp16=*/false);
}

void GatedLinearResidualInto(const at::Tensor& residual, const at::Tensor& gate,
                             const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             at::Tensor& out) {
  CheckShapes(residual, gate, x, weight, bias, out);
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda() && GatedLinearResidualCuda(residual, gate, x, weight, bias, out)) return;
#endif
  // The reference computes into a new tensor first, so `out` may alias `residual`.
  out.copy_(GatedResidual(residual, gate, at::linear(x, weight, bias), /*clip_fp16=*/false));
}

at::Tensor GatedLinearResidual(const at::Tensor& residual, const at::Tensor& gate,
                               const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias) {
  at::Tensor out = at::empty(residual.sizes(), residual.options());
  GatedLinearResidualInto(residual, gate, x, weight, bias, out);
  return out;
}

std::string GatedLinearResidualGemmMode(const at::Tensor& x) {
  if (!x.is_cuda()) return "cpu";
#ifdef DGRID_WITH_CUDA_KERNELS
  return GatedLinearResidualCudaMode(x);
#else
  return "no CUDA kernels";
#endif
}

bool GatedLinearResidualFused(const at::Tensor& x) {
  const std::string mode = GatedLinearResidualGemmMode(x);
  return x.scalar_type() == at::kBFloat16 && (mode == "bias-unscaled" || mode == "bias-scaled");
}

}  // namespace dgrid::kernels
