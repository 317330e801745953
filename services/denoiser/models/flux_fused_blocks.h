// The FLUX blocks' fast path for CUDA: the same functions of the inputs as DoubleBlockForward /
// SingleBlockForward (flux_blocks.h), computed with fewer, larger kernels.
//
// What differs from the reference path, and why it stays within rounding of it:
// - One GEMM for the q, k, v projections of each stream (and, in single blocks, for proj_mlp too):
//   the weights are concatenated at load time (flux_blocks.cc), the reference's to_q/... are views
//   into them, so the products are the same dot products.
// - LayerNorm + modulation, gated residuals and QK RMSNorm + RoPE are fused kernels
//   (kernels/flux_fused.h) with the reference's roundings.
// - GELU-tanh runs in the MLP GEMM's epilogue (cuBLASLt, at::_addmm_activation): on the float
//   accumulator instead of the rounded product, so half-precision results differ from the
//   reference by at most a rounding step there.
// - Opt-in, in bf16: the gated residuals after the output projections run inside those GEMMs
//   (UseGatedResidualGemm): one rounding instead of three (kernels/gated_linear.h).
// - q, k, v are written straight into the joint [B, T, H, D] buffers (no concatenation), and the
//   attention output is read in the layout the attention kernel wrote it.
//
// Thread-safety and errors as flux_blocks.h (c10::Error; read-only weights).
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_FUSED_BLOCKS_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_FUSED_BLOCKS_H_

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

#include "services/denoiser/models/flux_blocks.h"

namespace dgrid::flux {

// Whether the fused path serves activations like `x`: CUDA tensors in a build with the CUDA
// kernels, unless the environment sets DGRID_FUSED_BLOCKS=0 (for side-by-side measurements).
bool UseFusedBlocks(const at::Tensor& x);
// Turns the fast path off (false) or back to the default (true) for the whole process; a test seam
// for comparing the two paths in one process.
void SetFusedBlocksEnabledForTesting(bool enabled);

// Whether the bf16 output projections (attention out, MLP down, single blocks' proj_out) run with
// the gated residual folded into their GEMM (kernels/gated_linear.h) for activations like `x`:
// opt-in (the environment sets DGRID_GATED_GEMM=1, or SetGatedResidualGemmEnabled(true) was
// called) and CUDA bfloat16 tensors on a device where that GEMM runs. Otherwise, the default until
// the fold is measured faster on a GPU (docs/perf-notes.md), each such layer is a GEMM then the
// fused gated-residual kernel.
bool UseGatedResidualGemm(const at::Tensor& x);
// Process-wide switch of the above, overriding DGRID_GATED_GEMM; for side-by-side measurements and
// tests.
void SetGatedResidualGemmEnabled(bool enabled);

// Whether every block of the model has its concatenated projection weights.
bool HasFusedWeights(const DoubleBlockWeights& block);
bool HasFusedWeights(const SingleBlockWeights& block);

// As DoubleBlockForward.
std::pair<at::Tensor, at::Tensor> DoubleBlockForwardFused(
    const DoubleBlockWeights& block, const at::Tensor& hidden, const at::Tensor& context,
    const Conditioning& conditioning, const Rope& rope, const SequenceParallelAttention* sp);

// As SingleBlockForward, on the joint sequence x = [context, hidden] ([B, S + N, dim], text first)
// kept joined from one single block to the next; returns the new x.
at::Tensor SingleBlockForwardFused(const SingleBlockWeights& block, const at::Tensor& x,
                                   int64_t text_len, const Conditioning& conditioning,
                                   const Rope& rope, const SequenceParallelAttention* sp);

}  // namespace dgrid::flux

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_FUSED_BLOCKS_H_
