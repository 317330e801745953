// CUDA kernels of kernels/fp8_linear.h: the row quantization of activations (optionally of their
// GELU, optionally of two column blocks as one row) in one kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/device_types.cuh"
#include "kernels/cuda/fp8.cuh"
#include "kernels/fp8_linear.h"

namespace dgrid::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kV = 8;  // 2-byte elements per 16-byte load; 8 codes per 8-byte store

struct alignas(16) Pack8 {
  uint16_t v[kV];
};

template <typename T>
__device__ __forceinline__ float Value(uint16_t bits, bool gelu) {
  const float x = ToFloat(*reinterpret_cast<const T*>(&bits));
  return gelu ? Round<T>(GeluTanhFloat(x)) : x;
}

// One column block of a row: its amax over the block (pass 1), or its codes (pass 2).
template <typename T>
__device__ float BlockAmax(const T* src, int64_t k, bool gelu) {
  float amax = 0.f;
  for (int64_t i = threadIdx.x; i < k / kV; i += blockDim.x) {
    const Pack8 p = *reinterpret_cast<const Pack8*>(src + i * kV);
#pragma unroll
    for (int e = 0; e < kV; ++e) amax = fmaxf(amax, fabsf(Value<T>(p.v[e], gelu)));
  }
  return amax;
}

template <typename T>
__device__ void BlockCodes(const T* src, int64_t k, bool gelu, float scale, uint8_t* dst) {
  for (int64_t i = threadIdx.x; i < k / kV; i += blockDim.x) {
    const Pack8 p = *reinterpret_cast<const Pack8*>(src + i * kV);
    alignas(8) uint8_t codes[kV];
#pragma unroll
    for (int e = 0; e < kV; ++e) codes[e] = QuantizeFp8(Value<T>(p.v[e], gelu), scale);
    *reinterpret_cast<uint2*>(dst + i * kV) = *reinterpret_cast<const uint2*>(codes);
  }
}

// One block per row r: q[r] = codes of [a[r] | b[r]] (b may be empty), scale[r]. The second read
// of the row mostly hits L2 (a row is at most a few tens of KB).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    QuantizeRowsKernel(const T* __restrict__ a, int64_t a_stride, int64_t ka, bool gelu_a,
                       const T* __restrict__ b, int64_t b_stride, int64_t kb, bool gelu_b,
                       uint8_t* __restrict__ q, float* __restrict__ scales) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* ar = a + row * a_stride;
  const T* br = b == nullptr ? nullptr : b + row * b_stride;
  float amax = BlockAmax(ar, ka, gelu_a);
  if (br != nullptr) amax = fmaxf(amax, BlockAmax(br, kb, gelu_b));
  const float s = Fp8RowScale(BlockMax(amax, scratch));
  if (threadIdx.x == 0) scales[row] = s;
  uint8_t* qr = q + row * (ka + kb);
  BlockCodes(ar, ka, gelu_a, s, qr);
  if (br != nullptr) BlockCodes(br, kb, gelu_b, s, qr + ka);
}

bool Aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// [M, K] of a 2-byte type with contiguous rows, 16-byte aligned rows and K % 8 == 0.
bool Fits(const at::Tensor& t) {
  return t.dim() == 2 && t.element_size() == 2 && t.is_floating_point() && t.stride(1) == 1 &&
         t.size(1) % kV == 0 && (t.stride(0) % kV == 0 || t.size(0) <= 1) &&
         Aligned(t.data_ptr(), 16);
}

}  // namespace

bool Fp8SupportedCuda(c10::DeviceIndex index) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();  // clear the error the failed query left
    return false;
  }
  if (index < 0) {
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess) return false;
    index = static_cast<c10::DeviceIndex>(current);
  }
  if (index >= count) return false;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return false;
  return prop.major * 10 + prop.minor >= 89;
}

bool QuantizeConcatRowsFp8Cuda(const at::Tensor& a, bool gelu_a, const at::Tensor& b, bool gelu_b,
                               Fp8Rows& out) {
  const bool has_b = b.defined() && b.size(1) > 0;
  if (!Fits(a) || (has_b && (!Fits(b) || b.scalar_type() != a.scalar_type() ||
                             b.size(0) != a.size(0) || b.device() != a.device()))) {
    return false;
  }
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t rows = a.size(0);
  const int64_t kb = has_b ? b.size(1) : 0;
  out.data = at::empty({rows, a.size(1) + kb}, a.options().dtype(at::kFloat8_e4m3fn));
  out.scale = at::empty({rows, 1}, a.options().dtype(at::kFloat));
  if (rows == 0) return true;
  const auto launch = [&](auto tag) {
    using T = decltype(tag);
    QuantizeRowsKernel<T><<<rows, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(a.data_ptr()), a.stride(0), a.size(1), gelu_a,
        has_b ? reinterpret_cast<const T*>(b.data_ptr()) : nullptr, has_b ? b.stride(0) : 0, kb,
        gelu_b, reinterpret_cast<uint8_t*>(out.data.data_ptr()), out.scale.data_ptr<float>());
  };
  if (a.scalar_type() == at::kBFloat16) {
    launch(__nv_bfloat16{});
  } else {
    launch(__half{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace dgrid::kernels
