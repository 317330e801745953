#include "services/denoiser/models/flux_fused_blocks.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>

#include "kernels/flux_fused.h"
#include "kernels/fp8_linear.h"
#include "kernels/gated_linear.h"
#include "kernels/rms_norm.h"
#include "services/denoiser/models/sequence_attention.h"

namespace dgrid::flux {
namespace {

// diffusers' eps for the AdaLayerNorm LayerNorms and the QK RMSNorms of Flux.
constexpr double kEps = 1e-6;

// F.gelu(F.linear(x, W, b), approximate="tanh") as one GEMM with the GELU in its epilogue.
at::Tensor GeluLinear(const Linear& linear, const at::Tensor& x) {
  const at::Tensor flat = x.reshape({-1, x.size(-1)});
  const at::Tensor y =
      linear.bias.defined()
          ? at::_addmm_activation(linear.bias, flat, linear.weight.t(), 1, 1, /*use_gelu=*/true)
          : at::gelu(at::mm(flat, linear.weight.t()), "tanh");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(linear.weight.size(0));
  return y.view(shape);
}

// linear(LayerNormModulate(x, shift, scale)) for x [B, L, D]; for an FP8 layer the modulated rows
// are quantized in the norm's own kernel (no bfloat16 copy is written).
at::Tensor NormLinear(const Linear& linear, const at::Tensor& x, const at::Tensor& shift,
                      const at::Tensor& scale) {
  if (!IsFp8(linear)) return ApplyLinear(linear, kernels::LayerNormModulate(x, shift, scale, kEps));
  const at::Tensor y = kernels::Fp8Linear(kernels::LayerNormModulateFp8(x, shift, scale, kEps),
                                          {linear.weight, linear.weight_scale}, linear.bias,
                                          linear.fp8_fast_accumulation);
  return y.view({x.size(0), x.size(1), linear.weight.size(0)});
}

// -1: DGRID_GATED_GEMM decides; 0 / 1: SetGatedResidualGemmEnabled(false / true).
std::atomic<int> gated_gemm_override{-1};

// Whether the bf16 output projections run with the gated residual in their GEMM here (see
// UseGatedResidualGemm in the header).
bool GatedGemm(const at::Tensor& x) {
  static const bool from_environment = [] {
    const char* v = std::getenv("DGRID_GATED_GEMM");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  const int forced = gated_gemm_override.load(std::memory_order_relaxed);
  const bool enabled = forced < 0 ? from_environment : forced == 1;
  return enabled && kernels::GatedLinearResidualFused(x);
}

// residual + gate * linear(x) (the gated residual after an output projection): one GEMM with the
// gate and the residual in it (kernels/gated_linear.h) for bf16 layers where it runs, else the
// linear layer then the fused residual kernel.
at::Tensor GatedOut(const Linear& linear, const at::Tensor& residual, const at::Tensor& gate,
                    const at::Tensor& x, bool clip_fp16) {
  if (!IsFp8(linear) && GatedGemm(x)) {
    return kernels::GatedLinearResidual(residual, gate, x, linear.weight, linear.bias);
  }
  return kernels::GatedResidual(residual, gate, ApplyLinear(linear, x), clip_fp16);
}

// out(gelu_tanh(in(LayerNormModulate(x, shift, scale)))): the GELU runs in the first GEMM's
// epilogue, or for FP8 layers in the kernel that quantizes the second GEMM's input.
at::Tensor NormMlp(const Linear& in, const Linear& out, const at::Tensor& x,
                   const at::Tensor& shift, const at::Tensor& scale) {
  if (!IsFp8(out)) {
    return ApplyLinear(out, GeluLinear(in, kernels::LayerNormModulate(x, shift, scale, kEps)));
  }
  const at::Tensor hidden = NormLinear(in, x, shift, scale);  // before the GELU
  const at::Tensor y =
      kernels::Fp8Linear(kernels::QuantizeRowsFp8(hidden, /*gelu=*/true),
                         {out.weight, out.weight_scale}, out.bias, out.fp8_fast_accumulation);
  return y.view({x.size(0), x.size(1), out.weight.size(0)});
}

// x + gate * NormMlp(in, out, x, shift, scale): the block's MLP with its gated residual, folded
// into the down-projection's GEMM where GatedOut does that.
at::Tensor GatedMlp(const Linear& in, const Linear& out, const at::Tensor& x,
                    const at::Tensor& shift, const at::Tensor& scale, const at::Tensor& gate,
                    bool clip_fp16) {
  if (IsFp8(out) || !GatedGemm(x)) {
    return kernels::GatedResidual(x, gate, NormMlp(in, out, x, shift, scale), clip_fp16);
  }
  return GatedOut(out, x, gate, GeluLinear(in, kernels::LayerNormModulate(x, shift, scale, kEps)),
                  clip_fp16);
}

// Joint attention over q, k, v [B, T, H, D] (RoPE applied): the single-rank SDPA, or the group's
// attention with `sp`. Returns [B, T, H * D].
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t text_len,
                  const SequenceParallelAttention* sp) {
  if (sp != nullptr) return sp->Attend(q, k, v);
  // The [B, H, T, D] views of [B, T, H, D] buffers: the attention kernels write their output in
  // the query's layout, so transposing it back is free.
  const at::Tensor out =
      at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
  return out.transpose(1, 2).reshape({q.size(0), q.size(1), q.size(2) * q.size(3)});
}

// SingleBlockForwardFused with FP8 layers: one GEMM for q | k | v | mlp (there is no GELU
// epilogue to split off), the GELU of the MLP half in the kernel that quantizes proj_out's input
// [attention | MLP] as one row (one scale per token over both parts), and proj_out as one GEMM.
at::Tensor SingleBlockForwardFp8(const SingleBlockWeights& block, const at::Tensor& x,
                                 int64_t text_len, const std::vector<at::Tensor>& m,
                                 const Rope& rope, const SequenceParallelAttention* sp) {
  const AttentionWeights& a = block.attn;
  const int64_t dim = x.size(2);
  const int64_t mlp_dim = block.proj_mlp.weight.size(0);
  const at::Tensor proj = NormLinear(block.qkv_mlp, x, m[0], m[1]);  // [B, L, 3 dim + mlp_dim]
  const std::vector<int64_t> joint_shape = {x.size(0), x.size(1), dim / a.head_dim, a.head_dim};
  at::Tensor q = at::empty(joint_shape, x.options());
  at::Tensor k = at::empty(joint_shape, x.options());
  at::Tensor v = at::empty(joint_shape, x.options());
  kernels::QkvHeadsInto(proj, a.norm_q, a.norm_k, kEps, rope.cos, rope.sin, 0, q, k, v, 0);
  const at::Tensor attn = Attend(q, k, v, text_len, sp);
  const kernels::Fp8Rows input = kernels::QuantizeConcatRowsFp8(
      attn.reshape({-1, dim}), proj.narrow(2, 3 * dim, mlp_dim).reshape({-1, mlp_dim}),
      /*gelu_b=*/true);
  const Linear& po = block.proj_out;
  const at::Tensor out =
      kernels::Fp8Linear(input, {po.weight, po.weight_scale}, po.bias, po.fp8_fast_accumulation);
  return kernels::GatedResidual(x, m[2], out.view(x.sizes()), /*clip_fp16=*/true);
}

std::atomic<bool> fused_enabled_for_testing{true};

}  // namespace

bool UseFusedBlocks(const at::Tensor& x) {
  static const bool disabled = [] {
    const char* v = std::getenv("DGRID_FUSED_BLOCKS");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  return !disabled && fused_enabled_for_testing.load(std::memory_order_relaxed) && x.is_cuda() &&
         kernels::HaveCudaKernels();
}

void SetFusedBlocksEnabledForTesting(bool enabled) { fused_enabled_for_testing.store(enabled); }

void SetGatedResidualGemmEnabled(bool enabled) { gated_gemm_override.store(enabled ? 1 : 0); }

bool UseGatedResidualGemm(const at::Tensor& x) { return GatedGemm(x); }

bool HasFusedWeights(const DoubleBlockWeights& block) {
  return block.attn.qkv.weight.defined() && block.attn.add_qkv.weight.defined();
}

bool HasFusedWeights(const SingleBlockWeights& block) { return block.qkv_mlp.weight.defined(); }

std::pair<at::Tensor, at::Tensor> DoubleBlockForwardFused(
    const DoubleBlockWeights& block, const at::Tensor& hidden, const at::Tensor& context,
    const Conditioning& conditioning, const Rope& rope, const SequenceParallelAttention* sp) {
  // One silu for both linears when they compute.
  const Conditioning act =
      conditioning.rows.defined() ? conditioning : Conditioning(at::silu(conditioning.temb));
  const auto modulation = [&](const Linear& linear, int64_t column) {
    return act.rows.defined() ? Modulation(linear, act, column) : ApplyLinear(linear, act.temb);
  };
  // (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), as DoubleBlockForward.
  const std::vector<at::Tensor> m = modulation(block.norm1, block.norm1_column).chunk(6, 1);
  const std::vector<at::Tensor> c =
      modulation(block.norm1_context, block.norm1_context_column).chunk(6, 1);
  const AttentionWeights& a = block.attn;
  const int64_t batch = hidden.size(0);
  const int64_t text_len = context.size(1);
  const int64_t image_len = hidden.size(1);
  const int64_t heads = hidden.size(2) / a.head_dim;

  const at::Tensor qkv_context = NormLinear(a.add_qkv, context, c[0], c[1]);
  const at::Tensor qkv_hidden = NormLinear(a.qkv, hidden, m[0], m[1]);
  const std::vector<int64_t> joint_shape = {batch, text_len + image_len, heads, a.head_dim};
  at::Tensor q = at::empty(joint_shape, hidden.options());
  at::Tensor k = at::empty(joint_shape, hidden.options());
  at::Tensor v = at::empty(joint_shape, hidden.options());
  // Text tokens first, then image tokens, as the reference concatenates them; each stream's rows
  // of the joint buffers use the RoPE rows of the same positions.
  kernels::QkvHeadsInto(qkv_context, a.norm_added_q, a.norm_added_k, kEps, rope.cos, rope.sin, 0, q,
                        k, v, 0);
  kernels::QkvHeadsInto(qkv_hidden, a.norm_q, a.norm_k, kEps, rope.cos, rope.sin, text_len, q, k, v,
                        text_len);
  const at::Tensor joint = Attend(q, k, v, text_len, sp);

  at::Tensor h = GatedOut(a.to_out, hidden, m[2], joint.narrow(1, text_len, image_len), false);
  h = GatedMlp(block.ff_in, block.ff_out, h, m[3], m[4], m[5], false);
  at::Tensor ctx = GatedOut(a.to_add_out, context, c[2], joint.narrow(1, 0, text_len), false);
  ctx = GatedMlp(block.ff_context_in, block.ff_context_out, ctx, c[3], c[4], c[5],
                 /*clip_fp16=*/true);
  return {ctx, h};
}

at::Tensor SingleBlockForwardFused(const SingleBlockWeights& block, const at::Tensor& x,
                                   int64_t text_len, const Conditioning& conditioning,
                                   const Rope& rope, const SequenceParallelAttention* sp) {
  // (shift, scale, gate), as SingleBlockForward.
  const std::vector<at::Tensor> m =
      Modulation(block.norm, conditioning, block.norm_column).chunk(3, 1);
  const AttentionWeights& a = block.attn;
  const int64_t dim = x.size(2);
  const int64_t heads = dim / a.head_dim;
  const int64_t mlp_dim = block.proj_mlp.weight.size(0);
  if (IsFp8(block.proj_out)) return SingleBlockForwardFp8(block, x, text_len, m, rope, sp);

  // q | k | v, and the MLP branch with its GELU in the GEMM's epilogue: two GEMMs over rows of the
  // concatenated weight (contiguous views), so the GELU is no separate pass over the strided MLP
  // columns of one wide product.
  const at::Tensor normed = kernels::LayerNormModulate(x, m[0], m[1], kEps);
  const at::Tensor& fused_bias = block.qkv_mlp.bias;
  const Linear qkv{block.qkv_mlp.weight.narrow(0, 0, 3 * dim),
                   fused_bias.defined() ? fused_bias.narrow(0, 0, 3 * dim) : at::Tensor()};
  const at::Tensor proj = ApplyLinear(qkv, normed);
  const at::Tensor mlp = GeluLinear(block.proj_mlp, normed);
  const std::vector<int64_t> joint_shape = {x.size(0), x.size(1), heads, a.head_dim};
  at::Tensor q = at::empty(joint_shape, x.options());
  at::Tensor k = at::empty(joint_shape, x.options());
  at::Tensor v = at::empty(joint_shape, x.options());
  kernels::QkvHeadsInto(proj, a.norm_q, a.norm_k, kEps, rope.cos, rope.sin, 0, q, k, v, 0);
  const at::Tensor attn = Attend(q, k, v, text_len, sp);

  // proj_out([attn | mlp]) as two products over column blocks of its weight (strided views cuBLAS
  // takes as they are): no concatenated input is built.
  const at::Tensor& w = block.proj_out.weight;  // [dim, dim + mlp_dim]
  if (GatedGemm(x)) {
    // x + gate * (attn W1^T + b), then + gate * (mlp W2^T) in place: the gated residual in the two
    // GEMMs (one more bfloat16 rounding of the running sum than one accumulator, no extra pass).
    at::Tensor out = kernels::GatedLinearResidual(x, m[2], attn.reshape(x.sizes()),
                                                  w.narrow(1, 0, dim), block.proj_out.bias);
    kernels::GatedLinearResidualInto(out, m[2], mlp, w.narrow(1, dim, mlp_dim), at::Tensor(), out);
    return out;
  }
  const at::Tensor attn_flat = attn.reshape({-1, dim});
  at::Tensor out = block.proj_out.bias.defined()
                       ? at::addmm(block.proj_out.bias, attn_flat, w.narrow(1, 0, dim).t())
                       : at::mm(attn_flat, w.narrow(1, 0, dim).t());
  out.addmm_(mlp.reshape({-1, mlp_dim}), w.narrow(1, dim, mlp_dim).t());
  return kernels::GatedResidual(x, m[2], out.view(x.sizes()), /*clip_fp16=*/true);
}

}  // namespace dgrid::flux
