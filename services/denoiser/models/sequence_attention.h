// Joint text+image attention across the ranks of a sequence-parallel group: Ulysses (all-to-all
// sequence <-> heads), Ring (K/V blocks passed around the ring, partial results merged by
// log-sum-exp) and USP (Ulysses inside Ring).
//
// Ref: DeepSpeed-Ulysses (Jacobs et al. 2023), Ring Attention (Liu et al. 2023) and USP (Fang and
// Zhao 2024, xDiT's xFuserLongContextAttention) for the algorithms; diffusers FluxAttnProcessor
// (models/transformers/transformer_flux.py, 0.42.1) for the attention they replace.
//
// Layout of the inputs on a rank: the S text tokens (replicated, identical on every rank of the
// branch) followed by this rank's n image tokens, shard SequenceShardPlan::shard of the padded
// image sequence. How the text is handled and why the result is exact is explained in the .cc.
//
// One object per Forward call, used by the thread running it. Attend throws c10::Error on bad
// shapes and on a failed collective; the failed collective's status (DEADLINE_EXCEEDED,
// UNAVAILABLE, ...) is kept in status() so that Forward returns it instead of INTERNAL.
#ifndef DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_
#define DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_

#include <array>
#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "services/denoiser/models/flux_layers.h"
#include "services/denoiser/models/sequence_parallel.h"

namespace dgrid::flux {

// Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] with the 1/sqrt(D) scale and no mask.
// Returns the output [B, Lq, H, D] in float32 and the natural-log log-sum-exp of the scaled scores
// [B, H, Lq] in float32. CUDA half/bfloat16 use the flash kernel's LSE, CUDA float32 the
// memory-efficient kernel's; elsewhere both are computed in float32 with plain ATen ops.
std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v);

// Merges a partial result (out_b, lse_b) over one key block into (out, lse) over the keys seen so
// far: softmax attention over a union of disjoint key sets. `out`/`lse` undefined = nothing yet.
void MergeAttention(at::Tensor& out, at::Tensor& lse, const at::Tensor& out_b,
                    const at::Tensor& lse_b);

class SequenceParallelAttention {
 public:
  // `image_length` is the real (unpadded) number of image tokens of the whole sequence. The
  // context must be valid (SequenceParallelContext::Validate) and outlive this object.
  SequenceParallelAttention(const SequenceParallelContext& context, int64_t image_length);

  const SequenceShardPlan& plan() const { return plan_; }

  // q, k, v: [B, S + n, H, D] after RoPE (S = text_length text tokens, then this rank's n image
  // tokens). Returns [B, S + n, H * D] in q's dtype: attention over the text and all real image
  // tokens of the group, for the text and this rank's image tokens (padded queries get finite
  // values that the caller drops).
  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    int64_t text_length) const;

  // This rank's shard of the image tokens: rows [start, start + n) of `image` [B, N, ...] padded
  // with zeros to the padded length.
  at::Tensor ShardImage(const at::Tensor& image) const;
  // RoPE tables of the text plus this rank's image shard, from the tables of the whole joint
  // sequence (text first) — each token keeps its global position; padded rows do not rotate.
  Rope ShardRope(const Rope& rope, int64_t text_length) const;
  // Inverse of ShardImage on every rank: AllGather of `local` [B, n, ...] over the Ulysses, then
  // the Ring group, padding dropped: [B, N, ...].
  at::Tensor GatherImage(const at::Tensor& local) const;

  // The first failed collective's status, OK otherwise.
  const absl::Status& status() const { return status_; }

 private:
  // Throws c10::Error (keeping `status`) when it is not OK.
  void Check(absl::Status status) const;
  // Ulysses forward exchange: this rank's image q, k, v [B, n, H, D] (rows S.. of the joint
  // inputs) go to the rank holding each head group; returns q, k, v [B, S + U * n, H / U, D] of
  // this rank's heads — its text rows first, then the U * n image tokens of its ring block.
  std::array<at::Tensor, 3> SequenceToHeads(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, int64_t text_length) const;
  // Inverse for the output [B, S + U * n, H / U, D]: every rank gets the text rows and its own
  // image rows of every head group, [B, S + n, H * D]. The text rows travel in the same
  // all-to-all (each rank sends its head group's text to every rank), not in a separate gather.
  at::Tensor HeadsToSequence(const at::Tensor& out, int64_t text_length) const;
  // Attention of `q` over the joint keys/values k, v [B, S + block, H', D] (text first, then this
  // rank's image block) and every other real image K/V block of the ring.
  at::Tensor RingAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t text_length) const;

  const SequenceParallelContext& context_;
  SequenceShardPlan plan_;
  mutable absl::Status status_;
};

}  // namespace dgrid::flux

#endif  // DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_
