// CUDA kernels of kernels/flux_fused.h. Every kernel computes in float and rounds to the storage
// type T exactly where the reference op sequence stores an intermediate tensor of type T; products
// and sums the reference forms as separate ops use __fmul_rn / __fadd_rn so that the compiler does
// not contract them into an FMA the reference does not have.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/device_types.cuh"
#include "kernels/cuda/fp8.cuh"

namespace dgrid::kernels {
namespace {

// 16 bytes of T: the width of one vector load or store.
template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Vec<T> Load(const T* p) {
  return *reinterpret_cast<const Vec<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void Store(T* p, const Vec<T>& v) {
  *reinterpret_cast<Vec<T>*>(p) = v;
}

__device__ __forceinline__ float WarpSum(float v) { return WarpReduce(v, SumOp()); }

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float BlockSum(float v, float* scratch) { return BlockReduce(v, scratch, SumOp(), 0.f); }

constexpr int kRowThreads = 128;
// Vectors of one row each thread keeps in registers; rows longer than
// kRowThreads * kMaxVecPerThread * Vec<T>::kSize go to the reference path.
constexpr int kMaxVecPerThread = 8;

// One block per row of x [rows, D]; rows_per_sample rows share one (shift, scale) row. With kFp8
// the output row is not stored in T: it stays in registers, and its E4M3 codes (q [rows, D]) and
// scale (row_scale [rows]) are written instead (kernels/fp8_linear.h).
template <typename T, bool kFp8>
__global__ void __launch_bounds__(kRowThreads)
    LayerNormModulateKernel(const T* __restrict__ x, const T* __restrict__ shift,
                            const T* __restrict__ scale, int64_t vec_stride, T* __restrict__ y,
                            int64_t d, int64_t rows_per_sample, float eps, uint8_t* __restrict__ q,
                            float* __restrict__ row_scale) {
  constexpr int kV = Vec<T>::kSize;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t sample = row / rows_per_sample;
  const T* xr = x + row * d;
  const int64_t nvec = d / kV;
  Vec<T> cache[kMaxVecPerThread];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxVecPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kRowThreads;
    if (i < nvec) {
      cache[j] = Load(xr + i * kV);
#pragma unroll
      for (int e = 0; e < kV; ++e) sum += ToFloat(cache[j].v[e]);
    }
  }
  const float mean = BlockSum(sum, scratch) / static_cast<float>(d);
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxVecPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kRowThreads;
    if (i < nvec) {
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        const float c = ToFloat(cache[j].v[e]) - mean;
        sq += c * c;
      }
    }
  }
  const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(d) + eps);
  const T* sh = shift + sample * vec_stride;
  const T* sc = scale + sample * vec_stride;
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxVecPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kRowThreads;
    if (i < nvec) {
      const Vec<T> s = Load(sc + i * kV);
      const Vec<T> b = Load(sh + i * kV);
      Vec<T> out;
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        // layer_norm's output, (1 + scale), their product and the sum are each a stored tensor.
        const float normed = Round<T>(__fmul_rn(ToFloat(cache[j].v[e]) - mean, rstd));
        const float one_plus = Round<T>(__fadd_rn(1.f, ToFloat(s.v[e])));
        const float prod = Round<T>(__fmul_rn(normed, one_plus));
        out.v[e] = FromFloat<T>(__fadd_rn(prod, ToFloat(b.v[e])));
        if constexpr (kFp8) amax = fmaxf(amax, fabsf(ToFloat(out.v[e])));
      }
      if constexpr (kFp8) {
        cache[j] = out;
      } else {
        Store(y + row * d + i * kV, out);
      }
    }
  }
  if constexpr (kFp8) {
    const float s = Fp8RowScale(BlockMax(amax, scratch));
    if (threadIdx.x == 0) row_scale[row] = s;
#pragma unroll
    for (int j = 0; j < kMaxVecPerThread; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kRowThreads;
      if (i < nvec) {
        alignas(16) uint8_t codes[kV];
#pragma unroll
        for (int e = 0; e < kV; ++e) codes[e] = QuantizeFp8(ToFloat(cache[j].v[e]), s);
        if constexpr (kV == 8) {
          *reinterpret_cast<uint2*>(q + row * d + i * kV) = *reinterpret_cast<const uint2*>(codes);
        } else {
          *reinterpret_cast<uint32_t*>(q + row * d + i * kV) =
              *reinterpret_cast<const uint32_t*>(codes);
        }
      }
    }
  }
}

// out = x + gate * y over [B, L, D] (vectors of kV elements; D % kV == 0).
template <typename T, bool kClip>
__global__ void GatedResidualKernel(const T* __restrict__ x, const T* __restrict__ gate,
                                    int64_t gate_stride, const T* __restrict__ y,
                                    T* __restrict__ out, int64_t d, int64_t sample_elems,
                                    int64_t total_vec) {
  constexpr int kV = Vec<T>::kSize;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_vec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = i * kV;
    const int64_t sample = e0 / sample_elems;
    const int64_t col = e0 % d;
    const Vec<T> xv = Load(x + e0);
    const Vec<T> yv = Load(y + e0);
    const Vec<T> gv = Load(gate + sample * gate_stride + col);
    Vec<T> o;
#pragma unroll
    for (int e = 0; e < kV; ++e) {
      const float gated = Round<T>(__fmul_rn(ToFloat(gv.v[e]), ToFloat(yv.v[e])));
      float r = __fadd_rn(ToFloat(xv.v[e]), gated);
      if constexpr (kClip) r = fminf(fmaxf(r, -65504.f), 65504.f);
      o.v[e] = FromFloat<T>(r);
    }
    Store(out + e0, o);
  }
}

// One warp per (sample, token, head); lane l handles the pairs l, l + 32, ... of the head.
template <typename T>
__global__ void QkNormRopeKernel(const T* __restrict__ src, int64_t src_stride0,
                                 int64_t src_stride1, const T* __restrict__ weight,
                                 const float* __restrict__ cos, const float* __restrict__ sin,
                                 int64_t rope_offset, T* __restrict__ dst, int64_t dst_tokens,
                                 int64_t dst_offset, int64_t length, int64_t heads,
                                 int64_t head_dim, float eps, int64_t total_warps) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  if (warp >= total_warps) return;
  const int lane = threadIdx.x & 31;
  const int64_t head = warp % heads;
  const int64_t token = (warp / heads) % length;
  const int64_t sample = warp / (heads * length);
  const T* s = src + sample * src_stride0 + token * src_stride1 + head * head_dim;
  const int64_t pairs = head_dim / 2;

  float rstd = 1.f;
  if (weight != nullptr) {
    float sq = 0.f;
    for (int64_t p = lane; p < pairs; p += 32) {
      const float a = ToFloat(s[2 * p]);
      const float b = ToFloat(s[2 * p + 1]);
      sq += a * a + b * b;
    }
    rstd = rsqrtf(WarpSum(sq) / static_cast<float>(head_dim) + eps);
  }
  const float* c = cos + (rope_offset + token) * head_dim;
  const float* n = sin + (rope_offset + token) * head_dim;
  T* o = dst + ((sample * dst_tokens + dst_offset + token) * heads + head) * head_dim;
  for (int64_t p = lane; p < pairs; p += 32) {
    float a = ToFloat(s[2 * p]);
    float b = ToFloat(s[2 * p + 1]);
    if (weight != nullptr) {
      // torch.nn.RMSNorm: x * rstd * weight in float, one rounding to T.
      a = Round<T>(__fmul_rn(__fmul_rn(a, rstd), ToFloat(weight[2 * p])));
      b = Round<T>(__fmul_rn(__fmul_rn(b, rstd), ToFloat(weight[2 * p + 1])));
    }
    // apply_rotary_emb in float: x * cos + rotate(x) * sin, rotate(a, b) = (-b, a).
    const float out_a = __fadd_rn(__fmul_rn(a, c[2 * p]), __fmul_rn(-b, n[2 * p]));
    const float out_b = __fadd_rn(__fmul_rn(b, c[2 * p + 1]), __fmul_rn(a, n[2 * p + 1]));
    o[2 * p] = FromFloat<T>(out_a);
    o[2 * p + 1] = FromFloat<T>(out_b);
  }
}

// The vectorised form of QkNormRopeKernel for head_dim == 4 * 32 * kPairs / 2 (each lane holds
// 2 * kPairs consecutive elements of a head, one 4 * kPairs-byte load): one block per (sample,
// token) handles q, k and v of every head, so the token's RoPE row is read once per block.
// which 0 = q (norm_q), 1 = k (norm_k), 2 = v (copied).
template <typename T, int kPairs>
__global__ void QkvHeadsKernel(const T* __restrict__ src, int64_t src_stride0, int64_t src_stride1,
                               int64_t dim, const T* __restrict__ norm_q,
                               const T* __restrict__ norm_k, const float* __restrict__ cos,
                               const float* __restrict__ sin, int64_t rope_offset,
                               T* __restrict__ q, T* __restrict__ k, T* __restrict__ v,
                               int64_t dst_tokens, int64_t dst_offset, int64_t length,
                               int64_t heads, float eps) {
  constexpr int kElems = 2 * kPairs;
  constexpr int64_t kHeadDim = 32 * kElems;
  struct alignas(sizeof(T) * kElems) Pack {
    T v[kElems];
  };
  struct alignas(4 * kElems) FPack {
    float v[kElems];
  };
  const int64_t token = blockIdx.x % length;
  const int64_t sample = blockIdx.x / length;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const T* row = src + sample * src_stride0 + token * src_stride1;
  const FPack c =
      *reinterpret_cast<const FPack*>(cos + (rope_offset + token) * kHeadDim + lane * kElems);
  const FPack n =
      *reinterpret_cast<const FPack*>(sin + (rope_offset + token) * kHeadDim + lane * kElems);
  const int64_t out_row = ((sample * dst_tokens + dst_offset + token) * heads) * kHeadDim;
  for (int64_t task = warp; task < 3 * heads; task += warps) {
    const int which = static_cast<int>(task / heads);
    const int64_t head = task % heads;
    const Pack in =
        *reinterpret_cast<const Pack*>(row + which * dim + head * kHeadDim + lane * kElems);
    T* out = (which == 0 ? q : which == 1 ? k : v) + out_row + head * kHeadDim + lane * kElems;
    if (which == 2) {
      *reinterpret_cast<Pack*>(out) = in;
      continue;
    }
    const T* weight = which == 0 ? norm_q : norm_k;
    float x[kElems];
#pragma unroll
    for (int e = 0; e < kElems; ++e) x[e] = ToFloat(in.v[e]);
    if (weight != nullptr) {
      float sq = 0.f;
#pragma unroll
      for (int e = 0; e < kElems; ++e) sq += x[e] * x[e];
      const float rstd = rsqrtf(WarpSum(sq) / static_cast<float>(kHeadDim) + eps);
      const Pack w = *reinterpret_cast<const Pack*>(weight + lane * kElems);
#pragma unroll
      for (int e = 0; e < kElems; ++e) {
        x[e] = Round<T>(__fmul_rn(__fmul_rn(x[e], rstd), ToFloat(w.v[e])));
      }
    }
    Pack o;
#pragma unroll
    for (int e = 0; e < kElems; e += 2) {
      o.v[e] = FromFloat<T>(__fadd_rn(__fmul_rn(x[e], c.v[e]), __fmul_rn(-x[e + 1], n.v[e])));
      o.v[e + 1] =
          FromFloat<T>(__fadd_rn(__fmul_rn(x[e + 1], c.v[e + 1]), __fmul_rn(x[e], n.v[e + 1])));
    }
    *reinterpret_cast<Pack*>(out) = o;
  }
}

// dst = gelu_tanh(src) over [rows, cols] with any row strides (cols % Vec<T>::kSize == 0).
template <typename T>
__global__ void GeluTanhKernel(const T* __restrict__ src, int64_t src_stride, T* __restrict__ dst,
                               int64_t dst_stride, int64_t cols, int64_t total_vec) {
  constexpr int kV = Vec<T>::kSize;
  const int64_t vec_per_row = cols / kV;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_vec;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / vec_per_row;
    const int64_t c = (i % vec_per_row) * kV;
    const Vec<T> x = Load(src + r * src_stride + c);
    Vec<T> y;
#pragma unroll
    for (int e = 0; e < kV; ++e) y.v[e] = FromFloat<T>(GeluTanhFloat(ToFloat(x.v[e])));
    Store(dst + r * dst_stride + c, y);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename Fn>
void DispatchFloating(at::ScalarType type, const char* what, Fn&& fn) {
  switch (type) {
    case at::kFloat:
      return fn(float{});
    case at::kHalf:
      return fn(__half{});
    case at::kBFloat16:
      return fn(__nv_bfloat16{});
    default:
      TORCH_CHECK(false, what, ": unsupported dtype ", type);
  }
}

int GridFor(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

}  // namespace

at::Tensor LayerNormModulateReference(const at::Tensor& x, const at::Tensor& shift,
                                      const at::Tensor& scale, double eps);
at::Tensor GatedResidualReference(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                  bool clip_fp16);
void QkNormRopeIntoReference(const at::Tensor& src, const at::Tensor& weight, double eps,
                             const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                             at::Tensor& dst, int64_t dst_offset);
namespace {

// Whether LayerNormModulateKernel takes x (contiguous) with these modulation vectors.
bool LayerNormModulateFits(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  const int64_t d = x.size(2);
  const int vec = static_cast<int>(16 / x.element_size());
  return d % vec == 0 && d / vec <= kRowThreads * kMaxVecPerThread &&
         shift.scalar_type() == x.scalar_type() && scale.scalar_type() == x.scalar_type() &&
         shift.stride(1) == 1 && scale.stride(1) == 1 && shift.stride(0) == scale.stride(0) &&
         shift.stride(0) % vec == 0 && Aligned16(shift.data_ptr()) && Aligned16(scale.data_ptr()) &&
         Aligned16(x.data_ptr()) && x.scalar_type() != at::kDouble;
}

template <bool kFp8>
void LaunchLayerNormModulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             double eps, void* y, uint8_t* q, float* row_scale) {
  const int64_t rows = x.size(0) * x.size(1);
  if (rows == 0) return;
  DispatchFloating(x.scalar_type(), "LayerNormModulate", [&](auto tag) {
    using T = decltype(tag);
    LayerNormModulateKernel<T, kFp8><<<rows, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(shift.data_ptr()),
        reinterpret_cast<const T*>(scale.data_ptr()), shift.stride(0), reinterpret_cast<T*>(y),
        x.size(2), x.size(1), static_cast<float>(eps), q, row_scale);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor LayerNormModulateCuda(const at::Tensor& x_in, const at::Tensor& shift,
                                 const at::Tensor& scale, double eps) {
  const at::Tensor x = x_in.contiguous();
  if (!LayerNormModulateFits(x, shift, scale)) {
    return LayerNormModulateReference(x_in, shift, scale, eps);
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  LaunchLayerNormModulate<false>(x, shift, scale, eps, y.data_ptr(), nullptr, nullptr);
  return y;
}

// False (nothing done) where the kernel does not fit; then the caller quantizes the bf16 output.
bool LayerNormModulateFp8Cuda(const at::Tensor& x_in, const at::Tensor& shift,
                              const at::Tensor& scale, double eps, Fp8Rows& out) {
  const at::Tensor x = x_in.contiguous();
  if (x.element_size() != 2 || !LayerNormModulateFits(x, shift, scale)) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0) * x.size(1);
  out.data = at::empty({rows, x.size(2)}, x.options().dtype(at::kFloat8_e4m3fn));
  out.scale = at::empty({rows, 1}, x.options().dtype(at::kFloat));
  LaunchLayerNormModulate<true>(x, shift, scale, eps, nullptr,
                                reinterpret_cast<uint8_t*>(out.data.data_ptr()),
                                out.scale.data_ptr<float>());
  return true;
}

at::Tensor GatedResidualCuda(const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y_in,
                             bool clip_fp16) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t d = x.size(2);
  const int vec = static_cast<int>(16 / x.element_size());
  const bool fits =
      d % vec == 0 && y.scalar_type() == x.scalar_type() && gate.scalar_type() == x.scalar_type() &&
      gate.stride(1) == 1 && gate.stride(0) % vec == 0 && Aligned16(gate.data_ptr()) &&
      Aligned16(x.data_ptr()) && Aligned16(y.data_ptr()) && x.scalar_type() != at::kDouble;
  if (!fits) return GatedResidualReference(x_in, gate, y_in, clip_fp16);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const int64_t total_vec = x.numel() / vec;
  if (total_vec == 0) return out;
  constexpr int kThreads = 256;
  const bool clip = clip_fp16 && x.scalar_type() == at::kHalf;
  DispatchFloating(x.scalar_type(), "GatedResidual", [&](auto tag) {
    using T = decltype(tag);
    auto* kernel = clip ? GatedResidualKernel<T, true> : GatedResidualKernel<T, false>;
    kernel<<<GridFor(total_vec, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(gate.data_ptr()),
        gate.stride(0), reinterpret_cast<const T*>(y.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), d, x.size(1) * d, total_vec);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void QkNormRopeIntoCuda(const at::Tensor& src, const at::Tensor& weight, double eps,
                        const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                        at::Tensor& dst, int64_t dst_offset) {
  const bool fits =
      src.stride(2) == 1 && dst.is_contiguous() && dst.scalar_type() == src.scalar_type() &&
      (!weight.defined() ||
       (weight.scalar_type() == src.scalar_type() && weight.is_contiguous())) &&
      cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
      sin.is_contiguous() && cos.is_cuda() && src.scalar_type() != at::kDouble;
  if (!fits) {
    return QkNormRopeIntoReference(src, weight, eps, cos, sin, rope_offset, dst, dst_offset);
  }
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t heads = dst.size(2);
  const int64_t total_warps = src.size(0) * src.size(1) * heads;
  if (total_warps == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total_warps * 32 + kThreads - 1) / kThreads;
  DispatchFloating(src.scalar_type(), "QkNormRopeInto", [&](auto tag) {
    using T = decltype(tag);
    QkNormRopeKernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(src.data_ptr()), src.stride(0), src.stride(1),
        weight.defined() ? reinterpret_cast<const T*>(weight.data_ptr()) : nullptr,
        cos.data_ptr<float>(), sin.data_ptr<float>(), rope_offset,
        reinterpret_cast<T*>(dst.data_ptr()), dst.size(1), dst_offset, src.size(1), heads,
        dst.size(3), static_cast<float>(eps), total_warps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// False (nothing done) for shapes, dtypes or layouts without a vectorised kernel.
bool QkvHeadsIntoCuda(const at::Tensor& qkv, const at::Tensor& norm_q, const at::Tensor& norm_k,
                      double eps, const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                      at::Tensor& q, at::Tensor& k, at::Tensor& v, int64_t dst_offset) {
  const int64_t heads = q.size(2);
  const int64_t head_dim = q.size(3);
  const int64_t dim = heads * head_dim;
  const int64_t esize = qkv.element_size();
  const bool norms_ok = (!norm_q.defined() ||
                         (norm_q.scalar_type() == qkv.scalar_type() && norm_q.is_contiguous())) &&
                        (!norm_k.defined() ||
                         (norm_k.scalar_type() == qkv.scalar_type() && norm_k.is_contiguous())) &&
                        norm_q.defined() == norm_k.defined();
  const bool fits = head_dim == 128 && esize == 2 && qkv.stride(2) == 1 && qkv.stride(1) % 4 == 0 &&
                    qkv.stride(0) % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(qkv.data_ptr()) % 8 == 0 && q.is_contiguous() &&
                    k.is_contiguous() && v.is_contiguous() &&
                    q.scalar_type() == qkv.scalar_type() && k.scalar_type() == qkv.scalar_type() &&
                    v.scalar_type() == qkv.scalar_type() && cos.scalar_type() == at::kFloat &&
                    sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
                    cos.is_cuda() && norms_ok;
  if (!fits) return false;
  const c10::cuda::CUDAGuard guard(qkv.device());
  const int64_t blocks = qkv.size(0) * qkv.size(1);
  if (blocks == 0) return true;
  DispatchFloating(qkv.scalar_type(), "QkvHeadsInto", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      QkvHeadsKernel<T, 2><<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
          reinterpret_cast<const T*>(qkv.data_ptr()), qkv.stride(0), qkv.stride(1), dim,
          norm_q.defined() ? reinterpret_cast<const T*>(norm_q.data_ptr()) : nullptr,
          norm_k.defined() ? reinterpret_cast<const T*>(norm_k.data_ptr()) : nullptr,
          cos.data_ptr<float>(), sin.data_ptr<float>(), rope_offset,
          reinterpret_cast<T*>(q.data_ptr()), reinterpret_cast<T*>(k.data_ptr()),
          reinterpret_cast<T*>(v.data_ptr()), q.size(1), dst_offset, qkv.size(1), heads,
          static_cast<float>(eps));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

bool GeluTanhIntoCuda(const at::Tensor& src, at::Tensor& dst) {
  const int vec = static_cast<int>(16 / src.element_size());
  const int64_t cols = src.size(1);
  const bool fits = src.dim() == 2 && dst.dim() == 2 && src.sizes() == dst.sizes() &&
                    src.scalar_type() == dst.scalar_type() && src.scalar_type() != at::kDouble &&
                    src.stride(1) == 1 && dst.stride(1) == 1 && cols % vec == 0 &&
                    src.stride(0) % vec == 0 && dst.stride(0) % vec == 0 &&
                    Aligned16(src.data_ptr()) && Aligned16(dst.data_ptr());
  if (!fits) return false;
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t total_vec = src.size(0) * cols / vec;
  if (total_vec == 0) return true;
  constexpr int kThreads = 256;
  DispatchFloating(src.scalar_type(), "GeluTanhInto", [&](auto tag) {
    using T = decltype(tag);
    GeluTanhKernel<T>
        <<<GridFor(total_vec, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const T*>(src.data_ptr()), src.stride(0),
            reinterpret_cast<T*>(dst.data_ptr()), dst.stride(0), cols, total_vec);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace dgrid::kernels
