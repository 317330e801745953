// CUDA kernels of kernels/wan_fused.h. One block of kThreads threads per row of [B, N, D]; each
// thread keeps its share of the row in registers (16-byte vector loads), so a row is read once and
// written once whatever the kernel does with it. Float math throughout, rounded to the storage
// type T where the reference stores a tensor of type T; products and sums the reference forms as
// separate ops use __fmul_rn / __fadd_rn so that the compiler does not contract them into FMAs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/device_types.cuh"

namespace dgrid::kernels {
namespace {

constexpr int kThreads = 128;
// Vectors of a row per thread, kept in registers; longer rows take the reference path (D <= 6144
// for half types, 3072 for float32: every Wan shape's inner dim, 1536 to 5120). 8 spilled.
constexpr int kMaxVec = 6;

template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ void LoadRow(const T* p, float (&out)[Vec<T>::kSize]) {
  const Vec<T> v = *reinterpret_cast<const Vec<T>*>(p);
#pragma unroll
  for (int e = 0; e < Vec<T>::kSize; ++e) out[e] = ToFloat(v.v[e]);
}

template <typename T>
__device__ __forceinline__ void StoreRow(T* p, const float (&in)[Vec<T>::kSize]) {
  Vec<T> v;
#pragma unroll
  for (int e = 0; e < Vec<T>::kSize; ++e) v.v[e] = FromFloat<T>(in[e]);
  *reinterpret_cast<Vec<T>*>(p) = v;
}

// kN floats (a multiple of 4) from a 16-byte aligned address.
template <int kN>
__device__ __forceinline__ void LoadFloats(const float* p, float (&out)[kN]) {
#pragma unroll
  for (int e = 0; e < kN; e += 4) {
    const float4 f = *reinterpret_cast<const float4*>(p + e);
    out[e] = f.x;
    out[e + 1] = f.y;
    out[e + 2] = f.z;
    out[e + 3] = f.w;
  }
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

__device__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float total = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.f;
  return WarpSum(total);
}

// A row vector of float32: element (b, n, :) at base + b * s0 + n * s1 (s1 = 0 when broadcast).
struct RowVec {
  const float* base;
  int64_t s0, s1;
  __device__ __forceinline__ const float* At(int64_t b, int64_t n) const {
    return base + b * s0 + n * s1;
  }
};

// Per row of x [B, N, D]: with kResidual, h = x + y * gate (or x + y in T without a gate) is
// written to h_out and replaces x; with kNorm, layer_norm(h) * (1 + scale | scale) + shift is
// written to norm_out.
template <typename T, bool kResidual, bool kGate, bool kNorm, bool kOnePlus>
__global__ void __launch_bounds__(kThreads)
    ResidualNormKernel(const T* __restrict__ x, const T* __restrict__ y, RowVec gate, RowVec scale,
                       RowVec shift, T* __restrict__ h_out, T* __restrict__ norm_out,
                       int64_t n_tokens, int64_t d, float eps) {
  constexpr int kV = Vec<T>::kSize;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t b = row / n_tokens;
  const int64_t n = row % n_tokens;
  const int64_t nvec = d / kV;
  const T* xr = x + row * d;
  float cache[kMaxVec][kV];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxVec; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (i < nvec) {
      LoadRow<T>(xr + i * kV, cache[j]);
      if constexpr (kResidual) {
        float yv[kV];
        LoadRow<T>(y + row * d + i * kV, yv);
        if constexpr (kGate) {
          float g[kV];
          LoadFloats<kV>(gate.At(b, n) + i * kV, g);
#pragma unroll
          for (int e = 0; e < kV; ++e) {
            cache[j][e] = Round<T>(__fadd_rn(cache[j][e], __fmul_rn(yv[e], g[e])));
          }
        } else {
#pragma unroll
          for (int e = 0; e < kV; ++e) cache[j][e] = Round<T>(__fadd_rn(cache[j][e], yv[e]));
        }
        StoreRow<T>(h_out + row * d + i * kV, cache[j]);
      }
#pragma unroll
      for (int e = 0; e < kV; ++e) sum += cache[j][e];
    }
  }
  if constexpr (kNorm) {
    const float mean = BlockSum(sum, scratch) / static_cast<float>(d);
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxVec; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      if (i < nvec) {
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          const float c = cache[j][e] - mean;
          sq += c * c;
        }
      }
    }
    const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(d) + eps);
    const float* sc = scale.At(b, n);
    const float* sh = shift.At(b, n);
#pragma unroll
    for (int j = 0; j < kMaxVec; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      if (i < nvec) {
        float s[kV], t[kV], out[kV];
        LoadFloats<kV>(sc + i * kV, s);
        LoadFloats<kV>(sh + i * kV, t);
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          // layer_norm's float32 output, (1 + scale), the product and the sum are each a float32
          // tensor in the reference; one rounding to T at the end.
          const float normed = __fmul_rn(cache[j][e] - mean, rstd);
          const float factor = kOnePlus ? __fadd_rn(1.f, s[e]) : s[e];
          out[e] = __fadd_rn(__fmul_rn(normed, factor), t[e]);
        }
        StoreRow<T>(norm_out + row * d + i * kV, out);
      }
    }
  }
}

// In place over x [B, S, D]: RMSNorm over D (weight of T), then with kRope Wan's rotary embedding
// per head of head_dim (cos / sin [S, head_dim] float32, row s for token s of every sample).
template <typename T, bool kRope>
__global__ void __launch_bounds__(kThreads)
    RmsNormRopeKernel(T* __restrict__ x, const T* __restrict__ weight,
                      const float* __restrict__ cos, const float* __restrict__ sin, int64_t tokens,
                      int64_t d, int64_t head_dim, float eps) {
  constexpr int kV = Vec<T>::kSize;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t token = row % tokens;
  const int64_t nvec = d / kV;
  T* xr = x + row * d;
  float cache[kMaxVec][kV];
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxVec; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (i < nvec) {
      LoadRow<T>(xr + i * kV, cache[j]);
#pragma unroll
      for (int e = 0; e < kV; ++e) sq += cache[j][e] * cache[j][e];
    }
  }
  const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(d) + eps);
#pragma unroll
  for (int j = 0; j < kMaxVec; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (i < nvec) {
      float w[kV], yv[kV];
      LoadRow<T>(weight + i * kV, w);
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        // torch.nn.RMSNorm: x * rstd * weight in float, one rounding to T.
        yv[e] = Round<T>(__fmul_rn(__fmul_rn(cache[j][e], rstd), w[e]));
      }
      if constexpr (kRope) {
        const int64_t col = (i * kV) % head_dim;
        float c[kV], s[kV];
        LoadFloats<kV>(cos + token * head_dim + col, c);
        LoadFloats<kV>(sin + token * head_dim + col, s);
        float out[kV];
#pragma unroll
        for (int e = 0; e < kV; e += 2) {
          out[e] = __fadd_rn(__fmul_rn(yv[e], c[e]), __fmul_rn(-yv[e + 1], s[e]));
          out[e + 1] = __fadd_rn(__fmul_rn(yv[e + 1], c[e + 1]), __fmul_rn(yv[e], s[e + 1]));
        }
        StoreRow<T>(xr + i * kV, out);
      } else {
        StoreRow<T>(xr + i * kV, yv);
      }
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A float32 row vector the kernels can read with 16-byte loads.
bool FitsRowVec(const at::Tensor& v) {
  return v.scalar_type() == at::kFloat && v.is_cuda() && v.stride(2) == 1 &&
         (v.size(0) == 1 || v.stride(0) % 4 == 0) && (v.size(1) == 1 || v.stride(1) % 4 == 0) &&
         Aligned16(v.data_ptr());
}

RowVec RowVecOf(const at::Tensor& v) {
  if (!v.defined()) return RowVec{nullptr, 0, 0};
  return RowVec{v.data_ptr<float>(), v.size(0) == 1 ? 0 : v.stride(0),
                v.size(1) == 1 ? 0 : v.stride(1)};
}

// Whether rows of d elements of `type` fit the kernels' registers and vector width.
bool FitsRow(at::ScalarType type, int64_t d) {
  if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16) return false;
  const int64_t vec = 16 / c10::elementSize(type);
  return d % vec == 0 && d / vec <= kThreads * kMaxVec;
}

template <typename Fn>
void DispatchFloating(at::ScalarType type, Fn&& fn) {
  switch (type) {
    case at::kFloat:
      return fn(float{});
    case at::kHalf:
      return fn(__half{});
    case at::kBFloat16:
      return fn(__nv_bfloat16{});
    default:
      TORCH_CHECK(false, "Wan fused kernels: unsupported dtype ", type);
  }
}

template <typename T, bool kResidual, bool kGate, bool kNorm>
void LaunchResidualNorm(bool one_plus, dim3 grid, cudaStream_t stream, const T* x, const T* y,
                        RowVec gate, RowVec scale, RowVec shift, T* h, T* normed, int64_t n,
                        int64_t d, float eps) {
  if (one_plus) {
    ResidualNormKernel<T, kResidual, kGate, kNorm, true>
        <<<grid, kThreads, 0, stream>>>(x, y, gate, scale, shift, h, normed, n, d, eps);
  } else {
    ResidualNormKernel<T, kResidual, kGate, kNorm, false>
        <<<grid, kThreads, 0, stream>>>(x, y, gate, scale, shift, h, normed, n, d, eps);
  }
}

}  // namespace

// y undefined: no residual (normed only); scale undefined: no norm (h only).
bool WanResidualNormCuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                         const at::Tensor& scale, const at::Tensor& shift, bool one_plus_scale,
                         double eps, at::Tensor& h, at::Tensor& normed) {
  const bool residual = y.defined();
  const bool norm = scale.defined();
  const int64_t d = x.size(2);
  const bool fits = x.is_contiguous() && Aligned16(x.data_ptr()) && FitsRow(x.scalar_type(), d) &&
                    (!residual || (y.is_contiguous() && Aligned16(y.data_ptr()) && y.is_cuda())) &&
                    (!gate.defined() || FitsRowVec(gate)) &&
                    (!norm || (shift.defined() && FitsRowVec(scale) && FitsRowVec(shift)));
  if (!fits || (!residual && !norm)) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  if (residual) h = at::empty_like(x);
  if (norm) normed = at::empty_like(x);
  const int64_t rows = x.size(0) * x.size(1);
  if (rows == 0) return true;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(rows));
  const float e = static_cast<float>(eps);
  DispatchFloating(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = reinterpret_cast<const T*>(x.data_ptr());
    const T* yp = residual ? reinterpret_cast<const T*>(y.data_ptr()) : nullptr;
    T* hp = residual ? reinterpret_cast<T*>(h.data_ptr()) : nullptr;
    T* np = norm ? reinterpret_cast<T*>(normed.data_ptr()) : nullptr;
    const RowVec g = RowVecOf(gate), sc = RowVecOf(scale), sh = RowVecOf(shift);
    const int64_t n = x.size(1);
    if (!residual) {
      LaunchResidualNorm<T, false, false, true>(one_plus_scale, grid, stream, xp, yp, g, sc, sh, hp,
                                                np, n, d, e);
    } else if (gate.defined() && norm) {
      LaunchResidualNorm<T, true, true, true>(one_plus_scale, grid, stream, xp, yp, g, sc, sh, hp,
                                              np, n, d, e);
    } else if (gate.defined()) {
      LaunchResidualNorm<T, true, true, false>(false, grid, stream, xp, yp, g, sc, sh, hp, np, n, d,
                                               e);
    } else if (norm) {
      LaunchResidualNorm<T, true, false, true>(one_plus_scale, grid, stream, xp, yp, g, sc, sh, hp,
                                               np, n, d, e);
    } else {
      LaunchResidualNorm<T, true, false, false>(false, grid, stream, xp, yp, g, sc, sh, hp, np, n,
                                                d, e);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

bool WanRmsNormRopeCuda(at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& cos,
                        const at::Tensor& sin) {
  const int64_t d = x.size(2);
  const bool rope = cos.defined();
  const int64_t vec = 16 / static_cast<int64_t>(x.element_size());
  const int64_t head_dim = rope ? cos.size(1) : d;
  const bool fits = x.is_contiguous() && Aligned16(x.data_ptr()) && FitsRow(x.scalar_type(), d) &&
                    weight.scalar_type() == x.scalar_type() && weight.is_contiguous() &&
                    weight.is_cuda() && Aligned16(weight.data_ptr()) &&
                    (!rope || (head_dim % vec == 0 && cos.scalar_type() == at::kFloat &&
                               sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                               sin.is_contiguous() && cos.is_cuda() && sin.is_cuda() &&
                               Aligned16(cos.data_ptr()) && Aligned16(sin.data_ptr())));
  if (!fits) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0) * x.size(1);
  if (rows == 0) return true;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  DispatchFloating(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* xp = reinterpret_cast<T*>(x.data_ptr());
    const T* wp = reinterpret_cast<const T*>(weight.data_ptr());
    if (rope) {
      RmsNormRopeKernel<T, true><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          xp, wp, cos.data_ptr<float>(), sin.data_ptr<float>(), x.size(1), d, head_dim,
          static_cast<float>(eps));
    } else {
      RmsNormRopeKernel<T, false><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          xp, wp, nullptr, nullptr, x.size(1), d, head_dim, static_cast<float>(eps));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace dgrid::kernels
