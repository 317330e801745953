#include "kernels/flux_fused.h"

#include <ATen/ATen.h>

namespace dgrid::kernels {

#ifdef DGRID_WITH_CUDA_KERNELS
// kernels/cuda/flux_fused.cu
at::Tensor LayerNormModulateCuda(const at::Tensor& x, const at::Tensor& shift,
                                 const at::Tensor& scale, double eps);
at::Tensor GatedResidualCuda(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                             bool clip_fp16);
void QkNormRopeIntoCuda(const at::Tensor& src, const at::Tensor& weight, double eps,
                        const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                        at::Tensor& dst, int64_t dst_offset);
bool QkvHeadsIntoCuda(const at::Tensor& qkv, const at::Tensor& norm_q, const at::Tensor& norm_k,
                      double eps, const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                      at::Tensor& q, at::Tensor& k, at::Tensor& v, int64_t dst_offset);
bool GeluTanhIntoCuda(const at::Tensor& src, at::Tensor& dst);
#endif

namespace {

void CheckRows(const at::Tensor& x, const at::Tensor& v, const char* what) {
  TORCH_CHECK(x.dim() == 3, what, ": input must be [B, L, D], got ", x.sizes());
  TORCH_CHECK(v.dim() == 2 && v.size(0) == x.size(0) && v.size(1) == x.size(2), what,
              ": per-sample vector must be [B, D] = [", x.size(0), ", ", x.size(2), "], got ",
              v.sizes());
}

}  // namespace

at::Tensor LayerNormModulateReference(const at::Tensor& x, const at::Tensor& shift,
                                      const at::Tensor& scale, double eps) {
  const at::Tensor normed = at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
  return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

at::Tensor LayerNormModulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             double eps) {
  CheckRows(x, shift, "LayerNormModulate");
  CheckRows(x, scale, "LayerNormModulate");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) return LayerNormModulateCuda(x, shift, scale, eps);
#endif
  return LayerNormModulateReference(x, shift, scale, eps);
}

at::Tensor GatedResidualReference(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                  bool clip_fp16) {
  at::Tensor out = x + gate.unsqueeze(1) * y;
  if (clip_fp16 && out.scalar_type() == at::kHalf) out = at::clamp(out, -65504, 65504);
  return out;
}

at::Tensor GatedResidual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                         bool clip_fp16) {
  CheckRows(x, gate, "GatedResidual");
  TORCH_CHECK(y.sizes() == x.sizes(), "GatedResidual: y ", y.sizes(), " must match x ", x.sizes());
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) return GatedResidualCuda(x, gate, y, clip_fp16);
#endif
  return GatedResidualReference(x, gate, y, clip_fp16);
}

void QkNormRopeIntoReference(const at::Tensor& src, const at::Tensor& weight, double eps,
                             const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                             at::Tensor& dst, int64_t dst_offset) {
  const int64_t length = src.size(1);
  const int64_t head_dim = dst.size(3);
  at::Tensor y = src.unflatten(-1, {-1, head_dim});
  if (weight.defined()) y = at::rms_norm(y, {head_dim}, weight, eps);
  // apply_rotary_emb: out = x * cos + rotate(x) * sin in float32, rotate(x)[2i] = -x[2i+1],
  // rotate(x)[2i+1] = x[2i].
  const at::Tensor c = cos.narrow(0, rope_offset, length).unsqueeze(0).unsqueeze(2);
  const at::Tensor s = sin.narrow(0, rope_offset, length).unsqueeze(0).unsqueeze(2);
  const at::Tensor pairs = y.unflatten(-1, {-1, 2});
  const at::Tensor rotated = at::stack({-pairs.select(-1, 1), pairs.select(-1, 0)}, -1).flatten(3);
  const at::Tensor out = y.to(at::kFloat) * c + rotated.to(at::kFloat) * s;
  dst.narrow(1, dst_offset, length).copy_(out.to(dst.scalar_type()));
}

void QkNormRopeInto(const at::Tensor& src, const at::Tensor& weight, double eps,
                    const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                    at::Tensor& dst, int64_t dst_offset) {
  TORCH_CHECK(src.dim() == 3 && dst.dim() == 4,
              "QkNormRopeInto: src must be [B, L, H*Dh] and dst "
              "[B, T, H, Dh], got ",
              src.sizes(), " and ", dst.sizes());
  const int64_t length = src.size(1);
  TORCH_CHECK(src.size(0) == dst.size(0) && src.size(2) == dst.size(2) * dst.size(3) &&
                  dst_offset >= 0 && dst_offset + length <= dst.size(1),
              "QkNormRopeInto: src ", src.sizes(), " does not fit dst ", dst.sizes(), " at row ",
              dst_offset);
  TORCH_CHECK(dst.size(3) % 2 == 0, "QkNormRopeInto: head dim must be even");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == dst.size(3) &&
                  rope_offset >= 0 && rope_offset + length <= cos.size(0),
              "QkNormRopeInto: rope tables ", cos.sizes(), " do not cover rows [", rope_offset,
              ", ", rope_offset + length, ")");
  TORCH_CHECK(!weight.defined() || (weight.dim() == 1 && weight.size(0) == dst.size(3)),
              "QkNormRopeInto: norm weight must be [", dst.size(3), "]");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (src.is_cuda())
    return QkNormRopeIntoCuda(src, weight, eps, cos, sin, rope_offset, dst, dst_offset);
#endif
  QkNormRopeIntoReference(src, weight, eps, cos, sin, rope_offset, dst, dst_offset);
}

void QkvHeadsInto(const at::Tensor& qkv, const at::Tensor& norm_q, const at::Tensor& norm_k,
                  double eps, const at::Tensor& cos, const at::Tensor& sin, int64_t rope_offset,
                  at::Tensor& q, at::Tensor& k, at::Tensor& v, int64_t dst_offset) {
  const int64_t dim = q.size(2) * q.size(3);
  TORCH_CHECK(
      qkv.dim() == 3 && qkv.size(2) >= 3 * dim && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
      "QkvHeadsInto: qkv ", qkv.sizes(), " must be [B, L, >= 3 * ", dim,
      "] and q, k, v of one shape");
  const at::Tensor q_src = qkv.narrow(2, 0, dim);
  // Validates shapes, offsets and tables like the separate calls would.
  TORCH_CHECK(q_src.size(0) == q.size(0) && dst_offset >= 0 &&
                  dst_offset + q_src.size(1) <= q.size(1) && cos.dim() == 2 &&
                  cos.sizes() == sin.sizes() && cos.size(1) == q.size(3) && rope_offset >= 0 &&
                  rope_offset + q_src.size(1) <= cos.size(0),
              "QkvHeadsInto: qkv ", qkv.sizes(), " does not fit q ", q.sizes(), " at row ",
              dst_offset, " with rope tables ", cos.sizes(), " from row ", rope_offset);
#ifdef DGRID_WITH_CUDA_KERNELS
  if (qkv.is_cuda() &&
      QkvHeadsIntoCuda(qkv, norm_q, norm_k, eps, cos, sin, rope_offset, q, k, v, dst_offset)) {
    return;
  }
#endif
  QkNormRopeInto(q_src, norm_q, eps, cos, sin, rope_offset, q, dst_offset);
  QkNormRopeInto(qkv.narrow(2, dim, dim), norm_k, eps, cos, sin, rope_offset, k, dst_offset);
  v.narrow(1, dst_offset, qkv.size(1))
      .copy_(qkv.narrow(2, 2 * dim, dim).unflatten(2, {q.size(2), q.size(3)}));
}

void GeluTanhInto(const at::Tensor& src, at::Tensor& dst) {
  TORCH_CHECK(src.dim() == 3 && src.sizes() == dst.sizes(), "GeluTanhInto: src ", src.sizes(),
              " and dst ", dst.sizes(), " must be one [B, L, N] shape");
  for (int64_t b = 0; b < src.size(0); ++b) {
    at::Tensor out = dst.select(0, b);
#ifdef DGRID_WITH_CUDA_KERNELS
    if (src.is_cuda() && GeluTanhIntoCuda(src.select(0, b), out)) continue;
#endif
    at::gelu_out(out, src.select(0, b), "tanh");
  }
}

}  // namespace dgrid::kernels
