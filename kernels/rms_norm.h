// RMS normalisation over the last dimension, as diffusers' RMSNorm (models/normalization.py)
// computes it: the mean of squares in float32, x * rsqrt(mean + eps); with a float16/bfloat16
// weight the result is cast to the weight's dtype before the multiply, with a float32 weight it
// stays float32, and without a weight it is cast back to x's dtype.
//
// Like ATen operators these functions throw c10::Error on bad input; dgrid code calls them inside a
// TorchCall at its module boundary.
#ifndef DGRID_KERNELS_RMS_NORM_H_
#define DGRID_KERNELS_RMS_NORM_H_

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::kernels {

// `weight` may be undefined (no affine scale); when defined its size equals x.size(-1).
// On CUDA tensors of a dgrid build with CUDA, a fused kernel runs (one read of x, one write);
// elsewhere the ATen reference below.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The same computation in plain ATen operators (the reference the fused kernel is tested against).
at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps);

// Whether this build has the CUDA kernels compiled in.
bool HaveCudaKernels();

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_RMS_NORM_H_
