// Fused elementwise operators of the FLUX transformer's hot loop.
//
// Each replaces a chain of ATen ops that the reference model (services/denoiser/models/flux_*.cc,
// after diffusers) runs as separate kernels, each pass reading and writing a whole activation. The
// fused CUDA kernels do one read of every input and one write of every output, compute in float32
// and round to the storage type exactly where the reference stores an intermediate tensor, so that
// float32 results match the reference to float rounding and bf16/fp16 results to within one unit
// in the last place of the reference's own roundings (reductions run in another order).
//
// On CUDA tensors of a build with CUDA kernels the fused kernel runs; elsewhere (CPU, or a build
// without CUDA) the *Reference function, which is the reference's own op sequence. Like ATen
// operators these throw c10::Error on bad input; dgrid code calls them inside a TorchCall.
//
// Shapes: `x` [B, L, D] (last dim contiguous); per-sample vectors (shift, scale, gate) [B, D] with
// a contiguous last dim and any row stride (they are chunks of one modulation GEMM's output).
#ifndef DGRID_KERNELS_FLUX_FUSED_H_
#define DGRID_KERNELS_FLUX_FUSED_H_

#include <cstdint>

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::kernels {

// LayerNorm over D without affine parameters (eps), then y * (1 + scale) + shift.
// Ref: the modulation of diffusers AdaLayerNormZero / AdaLayerNormZeroSingle /
// AdaLayerNormContinuous.
at::Tensor LayerNormModulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             double eps);
at::Tensor LayerNormModulateReference(const at::Tensor& x, const at::Tensor& shift,
                                      const at::Tensor& scale, double eps);

// x + gate * y (the gated residual of the FLUX blocks); with `clip_fp16`, float16 results are
// clamped to the float16 range as diffusers does after a block. Returns a new tensor.
at::Tensor GatedResidual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                         bool clip_fp16);
at::Tensor GatedResidualReference(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                  bool clip_fp16);

// Per-head RMSNorm (torch.nn.RMSNorm semantics: float32 math, weight applied before the single
// rounding) followed by FLUX's rotary embedding (diffusers apply_rotary_emb, use_real, pairs
// (2i, 2i+1), float32 math), written into a head-major joint buffer:
//   src  [B, L, H * Dh]  projection output (any row stride; last dim contiguous)
//   dst  [B, T, H, Dh]   contiguous; rows [dst_offset, dst_offset + L) are written
//   cos, sin [>= rope_offset + L, Dh] float32; token i uses row rope_offset + i.
// `weight` [Dh] may be undefined (no norm, rotary only).
void QkNormRopeInto(const at::Tensor& src, const at::Tensor& weight, double eps,
                    const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                    at::Tensor& dst, int64_t dst_offset);
void QkNormRopeIntoReference(const at::Tensor& src, const at::Tensor& weight, double eps,
                             const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                             at::Tensor& dst, int64_t dst_offset);

// QkNormRopeInto for q (with norm_q) and k (with norm_k) and a plain copy for v, from one fused
// projection qkv [B, L, >= 3 * H * Dh] (q | k | v along the last dim) into the joint buffers q, k,
// v [B, T, H, Dh] at rows [dst_offset, dst_offset + L), RoPE rows from rope_offset. One kernel for
// all three on CUDA (half types, Dh = 128); otherwise the same as three separate calls.
void QkvHeadsInto(const at::Tensor& qkv, const at::Tensor& norm_q, const at::Tensor& norm_k,
                  double eps, const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                  at::Tensor& q, at::Tensor& k, at::Tensor& v, int64_t dst_offset);

// dst = gelu(src, approximate="tanh") for [B, L, N] views with any row strides (e.g. column slices
// of larger buffers), written in place into dst.
void GeluTanhInto(const at::Tensor& src, at::Tensor& dst);

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_FLUX_FUSED_H_
