#include "kernels/rms_norm.h"

#include <ATen/ATen.h>

namespace dgrid::kernels {

#ifdef DGRID_WITH_CUDA_KERNELS
// kernels/cuda/rms_norm.cu
at::Tensor RmsNormCuda(const at::Tensor& x, const at::Tensor& weight, double eps);
bool HaveCudaKernels() { return true; }
#else
bool HaveCudaKernels() { return false; }
#endif

at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor variance = x.to(at::kFloat).pow(2).mean({-1}, /*keepdim=*/true);
  at::Tensor y = x * at::rsqrt(variance + eps);
  if (!weight.defined()) return y.to(x.scalar_type());
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) {
    y = y.to(weight.scalar_type());
  }
  return y * weight;
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) return RmsNormCuda(x, weight, eps);
#endif
  return RmsNormReference(x, weight, eps);
}

}  // namespace dgrid::kernels
