// Forward passes follow diffusers' statement order so that every intermediate has the dtype and the
// rounding diffusers gives it (the parity tests hold float32 results to 1e-5).
#include "services/denoiser/models/flux_blocks.h"

#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/weight_map.h"
#include "services/denoiser/models/sequence_attention.h"

namespace dgrid::flux {
namespace {

// diffusers builds every Flux attention with eps=1e-6 (FluxTransformerBlock's default and the
// explicit eps of FluxSingleTransformerBlock).
constexpr double kQkNormEps = 1e-6;

// Makes each part a view of consecutive output rows of `fused` (weight, bias and FP8 scales).
void ViewParts(const Linear& fused, const std::vector<Linear*>& parts) {
  int64_t row = 0;
  for (Linear* p : parts) {
    const int64_t rows = p->weight.size(0);
    p->weight = fused.weight.narrow(0, row, rows);
    p->bias = fused.bias.narrow(0, row, rows);
    p->weight_scale =
        fused.weight_scale.defined() ? fused.weight_scale.narrow(0, row, rows) : at::Tensor();
    p->fp8_fast_accumulation = fused.fp8_fast_accumulation;
    row += rows;
  }
}

// Concatenates the projections along their output dimension and makes each part a view of the
// result (same values, one copy in memory). Leaves `fused` undefined when a part has no bias.
void FuseProjections(const std::vector<Linear*>& parts, Linear& fused) {
  std::vector<at::Tensor> weights, biases;
  for (const Linear* p : parts) {
    if (!p->bias.defined()) return;
    weights.push_back(p->weight);
    biases.push_back(p->bias);
  }
  fused.weight = at::cat(weights, 0);
  fused.bias = at::cat(biases, 0);
  ViewParts(fused, parts);
}

// Quantizes a concatenated projection (or a lone one, when `fused` is undefined) and re-points
// its parts; per-row scales make a row block of the quantized whole the part's own quantization.
void QuantizeFused(Linear& fused, const std::vector<Linear*>& parts, bool fast_accumulation) {
  if (!fused.weight.defined()) {
    for (Linear* p : parts) *p = QuantizeLinearFp8(*p, fast_accumulation);
    return;
  }
  fused = QuantizeLinearFp8(fused, fast_accumulation);
  ViewParts(fused, parts);
}

absl::Status TakeAttention(WeightMap& weights, absl::string_view prefix, int64_t dim,
                           int64_t head_dim, bool joint, AttentionWeights& attn) {
  attn.head_dim = head_dim;
  ASSIGN_OR_RETURN(attn.to_q, TakeLinear(weights, absl::StrCat(prefix, ".to_q"), dim, dim));
  ASSIGN_OR_RETURN(attn.to_k, TakeLinear(weights, absl::StrCat(prefix, ".to_k"), dim, dim));
  ASSIGN_OR_RETURN(attn.to_v, TakeLinear(weights, absl::StrCat(prefix, ".to_v"), dim, dim));
  ASSIGN_OR_RETURN(attn.norm_q, weights.Take(absl::StrCat(prefix, ".norm_q.weight"), {head_dim}));
  ASSIGN_OR_RETURN(attn.norm_k, weights.Take(absl::StrCat(prefix, ".norm_k.weight"), {head_dim}));
  if (!joint) return absl::OkStatus();  // TakeSingleBlock fuses q, k, v with proj_mlp.
  FuseProjections({&attn.to_q, &attn.to_k, &attn.to_v}, attn.qkv);
  ASSIGN_OR_RETURN(attn.to_out, TakeLinear(weights, absl::StrCat(prefix, ".to_out.0"), dim, dim));
  ASSIGN_OR_RETURN(attn.add_q_proj,
                   TakeLinear(weights, absl::StrCat(prefix, ".add_q_proj"), dim, dim));
  ASSIGN_OR_RETURN(attn.add_k_proj,
                   TakeLinear(weights, absl::StrCat(prefix, ".add_k_proj"), dim, dim));
  ASSIGN_OR_RETURN(attn.add_v_proj,
                   TakeLinear(weights, absl::StrCat(prefix, ".add_v_proj"), dim, dim));
  ASSIGN_OR_RETURN(attn.norm_added_q,
                   weights.Take(absl::StrCat(prefix, ".norm_added_q.weight"), {head_dim}));
  ASSIGN_OR_RETURN(attn.norm_added_k,
                   weights.Take(absl::StrCat(prefix, ".norm_added_k.weight"), {head_dim}));
  ASSIGN_OR_RETURN(attn.to_add_out,
                   TakeLinear(weights, absl::StrCat(prefix, ".to_add_out"), dim, dim));
  FuseProjections({&attn.add_q_proj, &attn.add_k_proj, &attn.add_v_proj}, attn.add_qkv);
  return absl::OkStatus();
}

// [B, L, dim] -> [B, L, heads, head_dim], then the per-head RMSNorm when `norm` is defined.
//
// The QK norms of diffusers' FluxAttention are torch.nn.RMSNorm, not diffusers' own RMSNorm class:
// for bfloat16, torch multiplies by the weight in float32 and rounds once, while diffusers' RMSNorm
// (and kernels::RmsNorm, which reproduces that class) rounds to bfloat16 before the multiply. The
// extra rounding alone moved bf16 outputs by ~2e-3 relative, so at::rms_norm (the op
// torch.nn.RMSNorm calls, fused by torch on CUDA) is used here.
at::Tensor Heads(const Linear& proj, const at::Tensor& norm, const at::Tensor& x,
                 int64_t head_dim) {
  at::Tensor y = ApplyLinear(proj, x).unflatten(-1, {-1, head_dim});
  if (norm.defined()) y = at::rms_norm(y, {head_dim}, norm, kQkNormEps);
  return y;
}

// Rotary embedding on q and k, then softmax attention over the whole joint sequence (no mask).
// Inputs [B, L, H, D]; output [B, L, H*D] in q's dtype. With `sp` the L tokens are this rank's
// text and image shards and the attention spans the group (sequence_attention.h); the
// single-rank path below is untouched by it.
at::Tensor RopeAttention(at::Tensor q, at::Tensor k, const at::Tensor& v, const Rope& rope,
                         int64_t text_len, const SequenceParallelAttention* sp) {
  q = ApplyRope(q, rope);
  k = ApplyRope(k, rope);
  if (sp != nullptr) return sp->Attend(q, k, v);
  // SDPA wants [B, H, L, D]; the permuted views are passed as diffusers' native backend passes
  // them.
  const at::Tensor out = at::scaled_dot_product_attention(
      q.permute({0, 2, 1, 3}), k.permute({0, 2, 1, 3}), v.permute({0, 2, 1, 3}));
  return out.permute({0, 2, 1, 3}).flatten(2, 3).to(q.scalar_type());
}

at::Tensor GeluTanhMlp(const Linear& in, const Linear& out, const at::Tensor& x) {
  return ApplyLinear(out, at::gelu(ApplyLinear(in, x), "tanh"));
}

// float16 activations are clipped to the float16 range after each block, as diffusers does.
at::Tensor ClipFloat16(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? at::clamp(x, -65504, 65504) : x;
}

}  // namespace

absl::StatusOr<DoubleBlockWeights> TakeDoubleBlock(WeightMap& weights, absl::string_view prefix,
                                                   int64_t dim, int64_t head_dim) {
  DoubleBlockWeights b;
  ASSIGN_OR_RETURN(b.norm1,
                   TakeLinear(weights, absl::StrCat(prefix, ".norm1.linear"), dim, 6 * dim));
  ASSIGN_OR_RETURN(
      b.norm1_context,
      TakeLinear(weights, absl::StrCat(prefix, ".norm1_context.linear"), dim, 6 * dim));
  RETURN_IF_ERROR(
      TakeAttention(weights, absl::StrCat(prefix, ".attn"), dim, head_dim, /*joint=*/true, b.attn));
  ASSIGN_OR_RETURN(b.ff_in,
                   TakeLinear(weights, absl::StrCat(prefix, ".ff.net.0.proj"), dim, 4 * dim));
  ASSIGN_OR_RETURN(b.ff_out, TakeLinear(weights, absl::StrCat(prefix, ".ff.net.2"), 4 * dim, dim));
  ASSIGN_OR_RETURN(
      b.ff_context_in,
      TakeLinear(weights, absl::StrCat(prefix, ".ff_context.net.0.proj"), dim, 4 * dim));
  ASSIGN_OR_RETURN(b.ff_context_out,
                   TakeLinear(weights, absl::StrCat(prefix, ".ff_context.net.2"), 4 * dim, dim));
  return b;
}

absl::StatusOr<SingleBlockWeights> TakeSingleBlock(WeightMap& weights, absl::string_view prefix,
                                                   int64_t dim, int64_t head_dim) {
  SingleBlockWeights b;
  ASSIGN_OR_RETURN(b.norm, TakeLinear(weights, absl::StrCat(prefix, ".norm.linear"), dim, 3 * dim));
  RETURN_IF_ERROR(TakeAttention(weights, absl::StrCat(prefix, ".attn"), dim, head_dim,
                                /*joint=*/false, b.attn));
  // mlp_ratio 4.0: int(dim * 4.0) == 4 * dim for every integer dim.
  ASSIGN_OR_RETURN(b.proj_mlp,
                   TakeLinear(weights, absl::StrCat(prefix, ".proj_mlp"), dim, 4 * dim));
  ASSIGN_OR_RETURN(b.proj_out,
                   TakeLinear(weights, absl::StrCat(prefix, ".proj_out"), 5 * dim, dim));
  FuseProjections({&b.attn.to_q, &b.attn.to_k, &b.attn.to_v, &b.proj_mlp}, b.qkv_mlp);
  return b;
}

void QuantizeBlockFp8(DoubleBlockWeights& b, bool fast_accumulation) {
  AttentionWeights& a = b.attn;
  QuantizeFused(a.qkv, {&a.to_q, &a.to_k, &a.to_v}, fast_accumulation);
  QuantizeFused(a.add_qkv, {&a.add_q_proj, &a.add_k_proj, &a.add_v_proj}, fast_accumulation);
  for (Linear* l :
       {&a.to_out, &a.to_add_out, &b.ff_in, &b.ff_out, &b.ff_context_in, &b.ff_context_out}) {
    *l = QuantizeLinearFp8(*l, fast_accumulation);
  }
}

void QuantizeBlockFp8(SingleBlockWeights& b, bool fast_accumulation) {
  QuantizeFused(b.qkv_mlp, {&b.attn.to_q, &b.attn.to_k, &b.attn.to_v, &b.proj_mlp},
                fast_accumulation);
  b.proj_out = QuantizeLinearFp8(b.proj_out, fast_accumulation);
}

std::pair<at::Tensor, at::Tensor> DoubleBlockForward(
    const DoubleBlockWeights& block, const at::Tensor& hidden, const at::Tensor& context,
    const Conditioning& conditioning, const Rope& rope, const SequenceParallelAttention* sp) {
  // AdaLayerNormZero: (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
  const std::vector<at::Tensor> m =
      Modulation(block.norm1, conditioning, block.norm1_column).chunk(6, 1);
  const std::vector<at::Tensor> c =
      Modulation(block.norm1_context, conditioning, block.norm1_context_column).chunk(6, 1);
  const at::Tensor norm_hidden = LayerNormModulate(hidden, m[0], m[1]);
  const at::Tensor norm_context = LayerNormModulate(context, c[0], c[1]);

  const AttentionWeights& a = block.attn;
  const int64_t d = a.head_dim;
  // Joint attention: text tokens first, then image tokens.
  const at::Tensor q = at::cat({Heads(a.add_q_proj, a.norm_added_q, norm_context, d),
                                Heads(a.to_q, a.norm_q, norm_hidden, d)},
                               1);
  const at::Tensor k = at::cat({Heads(a.add_k_proj, a.norm_added_k, norm_context, d),
                                Heads(a.to_k, a.norm_k, norm_hidden, d)},
                               1);
  const at::Tensor v = at::cat({Heads(a.add_v_proj, at::Tensor(), norm_context, d),
                                Heads(a.to_v, at::Tensor(), norm_hidden, d)},
                               1);
  const int64_t text_len = context.size(1);
  const at::Tensor joint = RopeAttention(q, k, v, rope, text_len, sp);
  const at::Tensor attn_context =
      ApplyLinear(a.to_add_out, joint.narrow(1, 0, text_len).contiguous());
  const at::Tensor attn_hidden =
      ApplyLinear(a.to_out, joint.narrow(1, text_len, joint.size(1) - text_len).contiguous());

  at::Tensor h = hidden + m[2].unsqueeze(1) * attn_hidden;
  const at::Tensor ff = GeluTanhMlp(block.ff_in, block.ff_out, LayerNormModulate(h, m[3], m[4]));
  h = h + m[5].unsqueeze(1) * ff;

  at::Tensor ctx = context + c[2].unsqueeze(1) * attn_context;
  const at::Tensor ff_ctx =
      GeluTanhMlp(block.ff_context_in, block.ff_context_out, LayerNormModulate(ctx, c[3], c[4]));
  ctx = ClipFloat16(ctx + c[5].unsqueeze(1) * ff_ctx);
  return {ctx, h};
}

std::pair<at::Tensor, at::Tensor> SingleBlockForward(
    const SingleBlockWeights& block, const at::Tensor& hidden, const at::Tensor& context,
    const Conditioning& conditioning, const Rope& rope, const SequenceParallelAttention* sp) {
  const int64_t text_len = context.size(1);
  const at::Tensor x = at::cat({context, hidden}, 1);
  // AdaLayerNormZeroSingle: (shift, scale, gate).
  const std::vector<at::Tensor> m =
      Modulation(block.norm, conditioning, block.norm_column).chunk(3, 1);
  const at::Tensor norm_x = LayerNormModulate(x, m[0], m[1]);
  const at::Tensor mlp = at::gelu(ApplyLinear(block.proj_mlp, norm_x), "tanh");

  const AttentionWeights& a = block.attn;
  const at::Tensor attn = RopeAttention(
      Heads(a.to_q, a.norm_q, norm_x, a.head_dim), Heads(a.to_k, a.norm_k, norm_x, a.head_dim),
      Heads(a.to_v, at::Tensor(), norm_x, a.head_dim), rope, text_len, sp);
  const at::Tensor out =
      ClipFloat16(x + m[2].unsqueeze(1) * ApplyLinear(block.proj_out, at::cat({attn, mlp}, 2)));
  return {out.narrow(1, 0, text_len), out.narrow(1, text_len, out.size(1) - text_len)};
}

}  // namespace dgrid::flux
