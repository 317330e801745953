// Device helpers of the FP8 row quantization (kernels/fp8_linear.h states the math they follow).
#ifndef DGRID_KERNELS_CUDA_FP8_CUH_
#define DGRID_KERNELS_CUDA_FP8_CUH_

#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/fp8_linear.h"

namespace dgrid::kernels {

// Max over the block of non-negative values (block_reduce.cuh's contract).
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  return BlockReduce(v, scratch, MaxOp(), 0.f);
}

// A row's scale from its amax.
__device__ __forceinline__ float Fp8RowScale(float amax) {
  return __fdiv_rn(fmaxf(amax, kFp8MinAmax), kFp8E4m3Max);
}

// One E4M3 code: IEEE division by the row's scale, clamp, round to nearest even.
__device__ __forceinline__ uint8_t QuantizeFp8(float v, float scale) {
  const float r = fminf(fmaxf(__fdiv_rn(v, scale), -kFp8E4m3Max), kFp8E4m3Max);
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(r, __NV_SATFINITE, __NV_E4M3));
}

// gelu(a, approximate="tanh") in float, the formula and float math of ATen's GeluCUDAKernelImpl.
__device__ __forceinline__ float GeluTanhFloat(float a) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const float cube = a * a * a;
  const float inner = kBeta * (a + kKappa * cube);
  return 0.5f * a * (1.f + tanhf(inner));
}

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_CUDA_FP8_CUH_
