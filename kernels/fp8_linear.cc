#include "kernels/fp8_linear.h"

#include <vector>

#include <ATen/ATen.h>

#include "kernels/flux_fused.h"

namespace dgrid::kernels {

#ifdef DGRID_WITH_CUDA_KERNELS
// kernels/cuda/fp8_linear.cu and kernels/cuda/flux_fused.cu. The *Cuda functions return false
// (nothing done) for layouts they have no kernel for.
bool Fp8SupportedCuda(c10::DeviceIndex index);
bool QuantizeConcatRowsFp8Cuda(const at::Tensor& a, bool gelu_a, const at::Tensor& b, bool gelu_b,
                               Fp8Rows& out);
bool LayerNormModulateFp8Cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                              double eps, Fp8Rows& out);
#endif

namespace {

at::Tensor Rows2d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "FP8 quantization: input must have a last dim");
  return x.reshape({-1, x.size(-1)});
}

// Rows already in float32 (the values to quantize) -> codes and scales, as the header states.
Fp8Rows QuantizeFloatRows(const at::Tensor& rows) {
  const at::Tensor amax = rows.abs().amax({1}, /*keepdim=*/true);
  // Divided by a tensor, not a host scalar: ATen's CUDA division by a host scalar multiplies by
  // its reciprocal, which rounds differently from the kernels' IEEE division.
  const at::Tensor scale = amax.clamp_min(kFp8MinAmax) / at::full_like(amax, kFp8E4m3Max);
  const at::Tensor q =
      (rows / scale).clamp(-kFp8E4m3Max, kFp8E4m3Max).to(at::kFloat8_e4m3fn).contiguous();
  return {q, scale.contiguous()};
}

// The values the reference quantizes: x, or gelu(x) rounded to x's dtype, as float32 rows.
at::Tensor ValuesToQuantize(const at::Tensor& x, bool gelu) {
  const at::Tensor v = gelu ? at::gelu(x, "tanh") : x;
  return Rows2d(v).to(at::kFloat);
}

}  // namespace

bool Fp8Supported(const c10::Device& device) {
#ifdef DGRID_WITH_CUDA_KERNELS
  if (device.is_cuda()) return Fp8SupportedCuda(device.has_index() ? device.index() : -1);
#endif
  (void)device;
  return false;
}

Fp8Rows QuantizeRowsFp8Reference(const at::Tensor& x, bool gelu) {
  return QuantizeFloatRows(ValuesToQuantize(x, gelu));
}

Fp8Rows QuantizeConcatRowsFp8Reference(const at::Tensor& a, const at::Tensor& b, bool gelu_b) {
  return QuantizeFloatRows(at::cat({ValuesToQuantize(a, false), ValuesToQuantize(b, gelu_b)}, 1));
}

Fp8Rows QuantizeRowsFp8(const at::Tensor& x, bool gelu) {
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda() && x.dim() >= 1) {
    Fp8Rows out;
    // A [rows, K] view without a copy where the rows are evenly strided.
    const at::Tensor rows = x.dim() == 2 ? x : x.reshape({-1, x.size(-1)});
    if (QuantizeConcatRowsFp8Cuda(rows, gelu, at::Tensor(), false, out)) return out;
  }
#endif
  return QuantizeRowsFp8Reference(x, gelu);
}

Fp8Rows QuantizeConcatRowsFp8(const at::Tensor& a, const at::Tensor& b, bool gelu_b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0), "QuantizeConcatRowsFp8: a ",
              a.sizes(), " and b ", b.sizes(), " must be [M, Ka] and [M, Kb]");
#ifdef DGRID_WITH_CUDA_KERNELS
  if (a.is_cuda()) {
    Fp8Rows out;
    if (QuantizeConcatRowsFp8Cuda(a, false, b, gelu_b, out)) return out;
  }
#endif
  return QuantizeConcatRowsFp8Reference(a, b, gelu_b);
}

Fp8Rows LayerNormModulateFp8Reference(const at::Tensor& x, const at::Tensor& shift,
                                      const at::Tensor& scale, double eps) {
  return QuantizeRowsFp8Reference(LayerNormModulateReference(x, shift, scale, eps));
}

Fp8Rows LayerNormModulateFp8(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             double eps) {
  TORCH_CHECK(x.dim() == 3, "LayerNormModulateFp8: input must be [B, L, D], got ", x.sizes());
#ifdef DGRID_WITH_CUDA_KERNELS
  if (x.is_cuda()) {
    Fp8Rows out;
    if (LayerNormModulateFp8Cuda(x, shift, scale, eps, out)) return out;
  }
#endif
  // Same values as the reference: the fused LayerNorm + modulate, then the row quantization.
  return QuantizeRowsFp8(LayerNormModulate(x, shift, scale, eps));
}

at::Tensor Fp8LinearReference(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& bias) {
  const at::Tensor xd = x.data.to(at::kFloat) * x.scale;
  const at::Tensor wd = w.data.to(at::kFloat) * w.scale.reshape({-1, 1});
  at::Tensor y = at::mm(xd, wd.t());
  if (bias.defined()) y = y + bias.to(at::kFloat);
  return y.to(at::kBFloat16);
}

at::Tensor Fp8Linear(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& bias,
                     bool fast_accumulation) {
  TORCH_CHECK(x.data.dim() == 2 && w.data.dim() == 2 && x.data.size(1) == w.data.size(1),
              "Fp8Linear: x ", x.data.sizes(), " and w ", w.data.sizes(),
              " must be [M, K] and [N, K]");
  TORCH_CHECK(x.scale.numel() == x.data.size(0) && w.scale.numel() == w.data.size(0),
              "Fp8Linear: one scale per row expected");
  if (!x.data.is_cuda()) return Fp8LinearReference(x, w, bias);
  // cuBLASLt / CUTLASS want the second operand column-major: w_q^T of a row-major w_q is.
  const std::optional<at::Tensor> b =
      bias.defined() ? std::optional<at::Tensor>(bias) : std::optional<at::Tensor>();
  return at::_scaled_mm(x.data, w.data.t(), x.scale, w.scale.reshape({1, -1}), b,
                        /*scale_result=*/std::nullopt, at::kBFloat16, fast_accumulation);
}

}  // namespace dgrid::kernels
