// Fused RMSNorm: one block per row, float accumulation, the rounding steps of diffusers' RMSNorm.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/device_types.cuh"

namespace dgrid::kernels {
namespace {

constexpr int kThreads = 256;

// x: [rows, cols] of TIn; w: [cols] of TOut or null; y: [rows, cols] of TOut.
// With a half-precision weight the normalised value is rounded to TOut before the multiply, as the
// reference does; with a float weight or none, the product is formed in float.
template <typename TIn, typename TOut, bool kRoundBeforeWeight>
__global__ void RmsNormKernel(const TIn* __restrict__ x, const TOut* __restrict__ w,
                              TOut* __restrict__ y, int64_t cols, float eps) {
  const int64_t row = blockIdx.x;
  const TIn* xr = x + row * cols;
  TOut* yr = y + row * cols;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float v = ToFloat(xr[i]);
    sum += v * v;
  }
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
  __syncthreads();
  __shared__ float inv_rms;
  if (threadIdx.x < 32) {
    float s = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    if (threadIdx.x == 0) inv_rms = rsqrtf(s / static_cast<float>(cols) + eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    float v = ToFloat(xr[i]) * inv_rms;
    if (w != nullptr) {
      if constexpr (kRoundBeforeWeight) v = ToFloat(FromFloat<TOut>(v));
      v *= ToFloat(w[i]);
    }
    yr[i] = FromFloat<TOut>(v);
  }
}

template <typename TIn, typename TOut, bool kRound>
void Launch(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, double eps) {
  const int64_t cols = x.size(-1);
  const int64_t rows = x.numel() / cols;
  if (rows == 0) return;
  RmsNormKernel<TIn, TOut, kRound><<<rows, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const TIn*>(x.data_ptr()),
      w.defined() ? reinterpret_cast<const TOut*>(w.data_ptr()) : nullptr,
      reinterpret_cast<TOut*>(y.data_ptr()), cols, static_cast<float>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename TIn>
void Dispatch(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, double eps) {
  switch (y.scalar_type()) {
    case at::kFloat:
      return Launch<TIn, float, false>(x, w, y, eps);
    case at::kHalf:
      return Launch<TIn, __half, true>(x, w, y, eps);
    case at::kBFloat16:
      return Launch<TIn, __nv_bfloat16, true>(x, w, y, eps);
    default:
      TORCH_CHECK(false, "RmsNorm: unsupported output dtype ", y.scalar_type());
  }
}

}  // namespace

at::Tensor RmsNormCuda(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, "RmsNorm: input needs a non-empty last dim");
  const at::Tensor x = x_in.contiguous();
  at::Tensor w;
  at::ScalarType out_type = x.scalar_type();
  if (weight.defined()) {
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "RmsNorm: weight has shape ",
                weight.sizes(), ", expected [", x.size(-1), "]");
    w = weight.contiguous();
    // Mirrors the reference's type promotion: half weights set the output type, a float32 weight
    // gives float32.
    out_type = weight.scalar_type() == at::kFloat ? at::kFloat : weight.scalar_type();
    if (out_type == at::kFloat && x.scalar_type() != at::kFloat) out_type = at::kFloat;
  } else if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kHalf &&
             x.scalar_type() != at::kBFloat16) {
    TORCH_CHECK(false, "RmsNorm: unsupported dtype ", x.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_type));
  switch (x.scalar_type()) {
    case at::kFloat:
      Dispatch<float>(x, w, y, eps);
      break;
    case at::kHalf:
      Dispatch<__half>(x, w, y, eps);
      break;
    case at::kBFloat16:
      Dispatch<__nv_bfloat16>(x, w, y, eps);
      break;
    default:
      TORCH_CHECK(false, "RmsNorm: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace dgrid::kernels
