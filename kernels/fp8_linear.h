// FP8 (E4M3) linear layers: weights quantized once with one scale per output row, activations
// quantized per token (row) as they are produced, and the product of the two on the tensor cores
// (at::_scaled_mm with row-wise scales, bfloat16 output).
//
// The quantization of a row r of x (K values) is
//   amax  = max_k |x[r, k]|                   (float32, exact)
//   scale = max(amax, kFp8MinAmax) / 448      (float32; 448 is E4M3's largest finite value)
//   q     = E4M3(clamp(x / scale, -448, 448)) (IEEE division, round to nearest even)
// so that x ~= q * scale; a row of zeros gets q = 0. Every CUDA kernel here computes exactly this
// (the same float operations), so its codes equal the *Reference functions' codes bit for bit for
// the same float inputs; where a kernel first computes its input (LayerNorm + modulation, GELU) the
// input itself may differ from the reference's by the reference ops' own rounding (one unit in the
// last place of bfloat16 in a few elements), and so may the codes by one step.
//
// Like ATen operators these throw c10::Error on bad input; dgrid code calls them inside a
// TorchCall. On CUDA tensors of a build with the CUDA kernels the fused kernels run; elsewhere the
// reference op sequences (which is what the CPU tests check).
#ifndef DGRID_KERNELS_FP8_LINEAR_H_
#define DGRID_KERNELS_FP8_LINEAR_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace dgrid::kernels {

// E4M3's largest finite magnitude, and the floor of a row's amax (an all-zero row still gets a
// finite, non-zero scale).
inline constexpr float kFp8E4m3Max = 448.0f;
inline constexpr float kFp8MinAmax = 1e-12f;

// A row-quantized matrix: data [M, K] float8_e4m3fn (row-major, contiguous) and scale [M, 1]
// float32, data[r] * scale[r] ~= the original row r.
struct Fp8Rows {
  at::Tensor data;
  at::Tensor scale;
};

// Whether `device` runs FP8 matrix products: a CUDA device of compute capability 8.9 or newer
// (Ada, Hopper and later) in a build with dgrid's CUDA kernels. False for the CPU.
bool Fp8Supported(const c10::Device& device);

// Row-quantizes x [..., K] (any floating dtype; rows = the leading dims flattened; last dim
// contiguous, rows may be strided). With `gelu`, gelu(x, approximate="tanh") rounded to x's dtype
// is quantized instead (the MLP's activation, fused into the pass that quantizes its output).
Fp8Rows QuantizeRowsFp8(const at::Tensor& x, bool gelu = false);
Fp8Rows QuantizeRowsFp8Reference(const at::Tensor& x, bool gelu = false);

// Row-quantizes the concatenation [a | gelu?(b)] along the last dim without building it: a [M, Ka]
// and b [M, Kb] (same rows, any row strides), one scale per row over both parts. The single FLUX
// block's proj_out input [attention | MLP].
Fp8Rows QuantizeConcatRowsFp8(const at::Tensor& a, const at::Tensor& b, bool gelu_b);
Fp8Rows QuantizeConcatRowsFp8Reference(const at::Tensor& a, const at::Tensor& b, bool gelu_b);

// kernels::LayerNormModulate (flux_fused.h) with its output row-quantized in the same pass (no
// bfloat16 output is written): x [B, L, D] -> [B * L, D] codes.
Fp8Rows LayerNormModulateFp8(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             double eps);
Fp8Rows LayerNormModulateFp8Reference(const at::Tensor& x, const at::Tensor& shift,
                                      const at::Tensor& scale, double eps);

// x_q [M, K] (row-quantized activations) times w_q^T, w_q [N, K] (row-quantized weights, any row
// offset into a larger quantized weight: a view with contiguous rows), plus bias [N] (bfloat16, or
// undefined): [M, N] bfloat16. On CUDA at::_scaled_mm with scales x.scale [M, 1] and w.scale as
// [1, N]; accumulation in float32 unless `fast_accumulation` (Hopper's faster FP8 accumulation:
// fewer promotions of the partial sums to float32 along K; --dit-precision fp8-fast). The CPU
// reference has no such mode and ignores it.
at::Tensor Fp8Linear(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& bias,
                     bool fast_accumulation = false);
// Dequantize both in float32, multiply, add the bias and round to bfloat16: what Fp8Linear
// computes up to the order of the float32 sums.
at::Tensor Fp8LinearReference(const Fp8Rows& x, const Fp8Rows& w, const at::Tensor& bias);

}  // namespace dgrid::kernels

#endif  // DGRID_KERNELS_FP8_LINEAR_H_
