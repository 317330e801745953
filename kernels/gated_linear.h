// The gated residual of the FLUX blocks' output projections folded into the projection's GEMM:
//
//   out = residual + gate ⊙ (x Wᵀ + b)
//
// where gate is one vector per sample, constant over its tokens (a chunk of the block's modulation
// output). Unfused this is a GEMM that writes y = x Wᵀ + b and a pass that reads residual and y
// and writes out (kernels::GatedResidual). On CUDA with bfloat16 tensors it is one cuBLASLt
// matmul per call instead: in cuBLAS's column-major terms D = W·xᵀ has one row per output channel,
// so the gate is a per-row alpha vector (CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST,
// batched over samples with CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE), C = residual with
// beta = 1, and the bias (gate ⊙ b where cuBLASLt adds the bias after the alpha scaling) in the
// bias epilogue. Whether this device's cuBLASLt runs that combination, and how it applies alpha to
// the bias, is probed once per device on a small product with exact values
// (GatedLinearResidualGemmMode); where it does not, the functions here take the unfused path.
//
// Roundings: the fused GEMM rounds once, out = bf16(residual + gate * acc + bias'), where the
// reference rounds y, gate * y and the sum to bfloat16 in turn; the two agree to the tolerance of
// the other fused kernels (a few units in the last place of bfloat16).
//
// Like ATen operators these throw c10::Error on bad input; dgrid code calls them inside a
// TorchCall. Thread-safe (the probe and the algorithm cache are guarded).
#ifndef DGRID_KERNELS_GATED_LINEAR_H_
#define DGRID_KERNELS_GATED_LINEAR_H_

#include <string>

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::kernels {

// Writes residual + gate ⊙ (x Wᵀ + b) into `out`.
//   residual, out [B, L, N]   last dim contiguous, any row and batch strides; `out` may be
//                             `residual` itself (in place) and must not overlap it otherwise
//   gate      [B, N]          last dim contiguous, any row stride
//   x         [B, L, K]       last dim contiguous, any row and batch strides (e.g. a token window
//                             of a larger buffer)
//   weight    [N, K]          last dim contiguous, any row stride (e.g. a column block of a wider
//                             weight)
//   bias      [N] or undefined
// All of one floating dtype and device. On CUDA bfloat16 tensors where the probe passed: one
// cuBLASLt matmul; elsewhere the reference.
void GatedLinearResidualInto(const at::Tensor& residual, const at::Tensor& gate,
                             const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             at::Tensor& out);
// The same into a new tensor shaped like `residual`.
at::Tensor GatedLinearResidual(const at::Tensor& residual, const at::Tensor& gate,
                               const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias);
// The unfused op sequence: GatedResidualReference(residual, gate, linear(x, weight, bias)).
at::Tensor GatedLinearResidualReference(const at::Tensor& residual, const at::Tensor& gate,
                                        const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias);

// Whether GatedLinearResidualInto runs as one GEMM for tensors like `x` (a CUDA bfloat16 tensor on
// a device whose probe passed). False on the CPU and in builds without the CUDA kernels.
bool GatedLinearResidualFused(const at::Tensor& x);
// What the probe found on x's device, for reports: "bias-unscaled" or "bias-scaled" (how cuBLASLt
// combines the alpha vector with the bias epilogue; both are used correctly), or "unsupported:
// <why>" (then the unfused path runs), or "cpu" / "no CUDA kernels".
std::string GatedLinearResidualGemmMode(const at::Tensor& x);

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_GATED_LINEAR_H_
