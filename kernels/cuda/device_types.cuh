// Conversions between the storage types of dgrid's CUDA kernels and float, the type they compute
// in.
#ifndef DGRID_KERNELS_CUDA_DEVICE_TYPES_CUH_
#define DGRID_KERNELS_CUDA_DEVICE_TYPES_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace dgrid::kernels {

template <typename T>
__device__ __forceinline__ float ToFloat(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float ToFloat(__half v) {
  return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half FromFloat(float v) {
  return __float2half(v);
}

// Rounds a float to T's precision and back: what storing an intermediate tensor of type T does.
template <typename T>
__device__ __forceinline__ float Round(float v) {
  return ToFloat(FromFloat<T>(v));
}

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_CUDA_DEVICE_TYPES_CUH_
