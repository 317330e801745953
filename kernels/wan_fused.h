// Fused elementwise operators of the Wan transformer's hot loop (services/denoiser/models/
// wan_transformer.cc, after diffusers WanTransformerBlock).
//
// Wan's block differs from FLUX's in where it rounds: its norms are FP32LayerNorm (the input cast
// to float32 first), its modulation vectors are float32 (scale_shift_table + the time projection
// in float32), and `(norm(x.float()) * (1 + scale) + shift).type_as(x)` and
// `(x.float() + y * gate).type_as(x)` round once, at the end. The fused CUDA kernels do the same
// float32 math with one read of each input and one write of each output; the reference functions
// are the op sequences the reference block runs (one kernel and one whole-activation round trip per
// op), and run on the CPU and wherever a kernel does not fit (shapes, dtypes, alignment).
//
// Vectors broadcast over the rows of x [B, N, D] ("row vectors"): float32 tensors of shape
// [B or 1, N or 1, D] with a contiguous last dimension and any other strides (chunks of one
// modulation tensor). Like ATen operators these throw c10::Error on bad input; dgrid code calls
// them inside a TorchCall. Stateless and thread-safe.
#ifndef DGRID_KERNELS_WAN_FUSED_H_
#define DGRID_KERNELS_WAN_FUSED_H_

#include <utility>

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::kernels {

// (layer_norm(x.float(), eps) * (1 + scale) + shift).to(x.dtype) with `one_plus_scale` (the
// modulated norm1 / norm3 / norm_out of WanTransformerBlock), else
// (layer_norm(x.float(), eps) * scale + shift).to(x.dtype) (FP32LayerNorm with affine weight and
// bias: norm2). x [B, N, D]; scale and shift row vectors.
at::Tensor WanNormModulate(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           bool one_plus_scale, double eps);
at::Tensor WanNormModulateReference(const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& shift, bool one_plus_scale, double eps);

// (x.float() + y * gate).to(x.dtype) with a row-vector `gate` (the gated residuals), or x + y in
// x's dtype when `gate` is undefined (the cross-attention residual). x, y [B, N, D] of one dtype.
at::Tensor WanGatedResidual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);
at::Tensor WanGatedResidualReference(const at::Tensor& x, const at::Tensor& y,
                                     const at::Tensor& gate);

// h = WanGatedResidual(x, y, gate), then WanNormModulate(h, scale, shift, one_plus_scale, eps):
// returns {h, normed}. One pass over the rows on CUDA (the norm reads the rounded h, as the
// reference's does).
std::pair<at::Tensor, at::Tensor> WanResidualNorm(const at::Tensor& x, const at::Tensor& y,
                                                  const at::Tensor& gate, const at::Tensor& scale,
                                                  const at::Tensor& shift, bool one_plus_scale,
                                                  double eps);

// torch.nn.RMSNorm over the whole last dimension of x [B, S, D] (float32 math, x * rsqrt(mean(x^2)
// + eps) * weight, one rounding to x's dtype; Wan's norm_q / norm_k span every head), then, when
// `cos` is defined, Wan's rotary embedding per head of head_dim = cos.size(1) (diffusers
// apply_rotary_emb with the real tables: pairs (2i, 2i+1), float32 math, one rounding), token s of
// every sample using row s of cos / sin [S, head_dim] (float32). Returns [B, S, D] in x's dtype;
// on CUDA it overwrites x (contiguous) and returns it, so callers pass a tensor they own.
at::Tensor WanRmsNormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                          const at::Tensor& cos, const at::Tensor& sin);
at::Tensor WanRmsNormRopeReference(const at::Tensor& x, const at::Tensor& weight, double eps,
                                   const at::Tensor& cos, const at::Tensor& sin);

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_WAN_FUSED_H_
