// Joint text+image attention across the ranks of a sequence-parallel group: Ulysses (all-to-all
// sequence <-> heads), Ring (K/V blocks passed around the ring, partial results merged by
// log-sum-exp) and USP (Ulysses inside Ring).
//
// Ref: DeepSpeed-Ulysses (Jacobs et al. 2023), Ring Attention (Liu et al. 2023) and USP (Fang and
// Zhao 2024, xDiT's xFuserLongContextAttention) for the algorithms; diffusers FluxAttnProcessor
// (models/transformers/transformer_flux.py, 0.42.1) for the attention they replace.
//
// Layout of the inputs on a rank: its shard of the text tokens, then its shard of the image tokens
// (both sequences are sharded the same way: shard SequenceShardPlan::shard of each, each padded
// at its end to a multiple of ring * ulysses). Every rank thus runs the linear layers on 1/SP of
// the text as well as of the image. Why the result is exact is explained in the .cc.
//
// Wan's self-attention has no text part: it uses this class with text_length 0 (the "image"
// tokens are the video's patches), and its cross-attention to the text needs no exchange.
//
// One object per Forward call, used by the thread running it. Attend throws c10::Error on bad
// shapes and on a failed collective; the failed collective's status (DEADLINE_EXCEEDED,
// UNAVAILABLE, ...) is kept in status() so that Forward returns it instead of INTERNAL.
#ifndef DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_
#define DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "services/denoiser/models/flux_layers.h"
#include "services/denoiser/models/sequence_parallel.h"

namespace dgrid::flux {

// Attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] with the 1/sqrt(D) scale and no mask.
// Returns the output [B, Lq, H, D] in q's dtype and the natural-log log-sum-exp of the scaled
// scores [B, H, Lq] in float32. CUDA half/bfloat16 use the cuDNN kernel's LSE (the flash kernel's
// if cuDNN refuses), CUDA float32 the memory-efficient kernel's; elsewhere both are computed in
// float32 with plain ATen ops.
std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v);

// Merges a partial result (out_b, lse_b) over one key block into (out, lse) over the keys seen so
// far: softmax attention over a union of disjoint key sets. `out`/`lse` undefined = nothing yet;
// `out` is float32 after the first merge and updated in place.
void MergeAttention(at::Tensor& out, at::Tensor& lse, const at::Tensor& out_b,
                    const at::Tensor& lse_b);

class SequenceParallelAttention {
 public:
  // `text_length` / `image_length`: the real (unpadded) numbers of text and image tokens of the
  // whole sequence. The context must be valid (SequenceParallelContext::Validate) and outlive
  // this object.
  SequenceParallelAttention(const SequenceParallelContext& context, int64_t text_length,
                            int64_t image_length);

  const SequenceShardPlan& text_plan() const { return text_plan_; }
  const SequenceShardPlan& image_plan() const { return image_plan_; }
  // Rows of text at the front of this rank's local sequence (padding included).
  int64_t local_text_length() const { return text_plan_.shard_length; }

  // q, k, v: [B, St + n, H, D] after RoPE (this rank's St text and n image tokens, padded rows
  // included). Returns [B, St + n, H * D] in q's dtype: attention over every real text and image
  // token of the group, for this rank's tokens (padded queries get finite values that the
  // caller drops). Under Ulysses the heads go in SequenceParallelContext::ulysses_chunks chunks
  // whose exchanges overlap the neighbouring chunks' attention (on NCCL; Gloo exchanges
  // synchronously).
  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;

  // This rank's shard of the text tokens [B, S, ...] / image tokens [B, N, ...], zero-padded.
  at::Tensor ShardText(const at::Tensor& text) const;
  at::Tensor ShardImage(const at::Tensor& image) const;
  // RoPE tables of this rank's local sequence (text shard, then image shard) from the tables of
  // the whole joint sequence (text first): each token keeps its global position; padded rows do
  // not rotate.
  Rope ShardRope(const Rope& rope) const;
  // Inverses of ShardText / ShardImage on every rank: AllGather of `local` [B, n, ...] over the
  // Ulysses, then the Ring group, padding dropped: [B, S or N, ...].
  at::Tensor GatherText(const at::Tensor& local) const;
  at::Tensor GatherImage(const at::Tensor& local) const;

  // The first failed collective's status, OK otherwise.
  const absl::Status& status() const { return status_; }

 private:
  // Throws c10::Error (keeping `status`) when it is not OK.
  void Check(absl::Status status) const;
  at::Tensor Shard(const at::Tensor& x, const SequenceShardPlan& plan) const;
  at::Tensor Gather(const at::Tensor& local, const SequenceShardPlan& plan) const;
  // Real-token rows of the local sequence of `shard` ([text shard | image shard]), as a mask.
  std::vector<bool> RealRows(int shard) const;
  // The rows of the keys/values of ring block `block` (U local sequences, Ulysses order) that are
  // real tokens: undefined when all are (no padding anywhere in the block), else an index tensor.
  at::Tensor RealKeyIndex(int block, const at::Device& device) const;
  // Head chunks of the Ulysses exchange for `local_heads` heads per rank
  // (SequenceParallelContext::ulysses_chunks).
  int64_t UlyssesChunks(int64_t local_heads) const;
  // Attention of `q` over every real key/value of the group: k, v [B, U * (St + n), H', D] hold
  // this rank's ring block; the other ring blocks come round the ring.
  at::Tensor RingAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;

  const SequenceParallelContext& context_;
  SequenceShardPlan text_plan_;
  SequenceShardPlan image_plan_;
  mutable absl::Status status_;
  // RealKeyIndex of every ring block, filled by the first RingAttention call.
  mutable std::vector<at::Tensor> key_index_;
};

}  // namespace dgrid::flux

#endif  // DGRID_SERVICES_DENOISER_MODELS_SEQUENCE_ATTENTION_H_
