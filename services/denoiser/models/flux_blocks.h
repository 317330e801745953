// The two block kinds of the FLUX.1 transformer and their joint attention, as weight structs plus
// plain forward functions.
//
// Ref: diffusers FluxTransformerBlock, FluxSingleTransformerBlock, FluxAttention and
// FluxAttnProcessor (models/transformers/transformer_flux.py, 0.42.1). Weight names under a block
// prefix are diffusers' own ("attn.to_q.weight", "ff.net.0.proj.weight", ...). Forward functions
// throw c10::Error on bad input (caught by FluxTransformer2DModel) and are thread-safe: they only
// read the weights.
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_BLOCKS_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_BLOCKS_H_

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/denoiser/models/flux_layers.h"

namespace dgrid {

class WeightMap;

namespace flux {

class SequenceParallelAttention;

// Projections of one attention layer. The added_* members (the text stream of a double block) and
// to_out are undefined in single blocks.
struct AttentionWeights {
  int64_t head_dim = 0;
  Linear to_q, to_k, to_v;
  at::Tensor norm_q, norm_k;  // RMSNorm weights [head_dim], eps 1e-6.
  Linear to_out;              // "to_out.0"
  Linear add_q_proj, add_k_proj, add_v_proj;
  at::Tensor norm_added_q, norm_added_k;
  Linear to_add_out;
  // to_q | to_k | to_v (and add_q_proj | add_k_proj | add_v_proj) concatenated along the output
  // dimension at load time; the separate projections above are views into them, so a model holds
  // each weight once. Undefined when a projection has no bias (the fused path then is not used).
  Linear qkv, add_qkv;
};

// Ref: diffusers FluxTransformerBlock (MMDiT double-stream block).
struct DoubleBlockWeights {
  Linear norm1;          // "norm1.linear": AdaLayerNormZero, 6 x dim.
  Linear norm1_context;  // "norm1_context.linear"
  // Where norm1's and norm1_context's outputs sit in precomputed modulation rows (Conditioning;
  // set by the model, -1 outside one).
  int64_t norm1_column = -1, norm1_context_column = -1;
  AttentionWeights attn;
  Linear ff_in, ff_out;                  // "ff.net.0.proj", "ff.net.2"
  Linear ff_context_in, ff_context_out;  // "ff_context.net.0.proj", "ff_context.net.2"
};

// Ref: diffusers FluxSingleTransformerBlock (parallel attention + MLP on the joint sequence).
struct SingleBlockWeights {
  Linear norm;               // "norm.linear": AdaLayerNormZeroSingle, 3 x dim.
  int64_t norm_column = -1;  // as DoubleBlockWeights::norm1_column
  AttentionWeights attn;
  Linear proj_mlp;  // dim -> 4 dim
  Linear proj_out;  // 5 dim -> dim
  // to_q | to_k | to_v | proj_mlp concatenated (attn.qkv and the four projections are views).
  Linear qkv_mlp;
};

// Load one block from `weights` under `prefix` (e.g. "transformer_blocks.3"). `dim` is the inner
// width, `heads` x `head_dim` == dim. NOT_FOUND / INVALID_ARGUMENT from WeightMap::Take.
absl::StatusOr<DoubleBlockWeights> TakeDoubleBlock(WeightMap& weights, absl::string_view prefix,
                                                   int64_t dim, int64_t head_dim);
absl::StatusOr<SingleBlockWeights> TakeSingleBlock(WeightMap& weights, absl::string_view prefix,
                                                   int64_t dim, int64_t head_dim);

// FP8 (--dit-precision fp8): quantizes the block's attention projections (q, k, v, the outputs)
// and MLP layers in place with QuantizeLinearFp8; the separate q/k/v (and proj_mlp) projections
// stay views of the concatenated ones. The modulation linears (norm1, norm1_context, norm) keep
// the model's dtype: they are matrix-vector products bound by weight reads, and their shifts,
// scales and gates multiply every activation of the block. With `fast_accumulation`
// (--dit-precision fp8-fast) their products use Hopper's fast FP8 accumulation.
void QuantizeBlockFp8(DoubleBlockWeights& block, bool fast_accumulation = false);
void QuantizeBlockFp8(SingleBlockWeights& block, bool fast_accumulation = false);

// Runs a double block. `hidden` [B, N, dim] (image tokens), `context` [B, S, dim] (text tokens),
// `conditioning` (temb [B, dim], or the modulations precomputed for the B rows), `rope` for the
// S + N joint tokens (text first). Returns (context, hidden).
//
// With `sp` (sequence parallelism), `hidden` is this rank's shard of the image tokens, `rope`
// covers the text plus that shard (global positions) and the attention runs across the group
// through `sp`; without it (null) the attention is the plain single-rank SDPA. The same holds for
// SingleBlockForward.
std::pair<at::Tensor, at::Tensor> DoubleBlockForward(const DoubleBlockWeights& block,
                                                     const at::Tensor& hidden,
                                                     const at::Tensor& context,
                                                     const Conditioning& conditioning,
                                                     const Rope& rope,
                                                     const SequenceParallelAttention* sp = nullptr);

// Runs a single block on the concatenation [context, hidden]; returns (context, hidden) split back.
std::pair<at::Tensor, at::Tensor> SingleBlockForward(const SingleBlockWeights& block,
                                                     const at::Tensor& hidden,
                                                     const at::Tensor& context,
                                                     const Conditioning& conditioning,
                                                     const Rope& rope,
                                                     const SequenceParallelAttention* sp = nullptr);

}  // namespace flux
}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_BLOCKS_H_
