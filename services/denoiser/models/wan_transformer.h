// The Wan2.1 / Wan2.2 text-to-video denoiser transformer.
//
// Ref: diffusers WanTransformer3DModel (models/transformers/transformer_wan.py, 0.42.1): a 3-D
// patch embedding (Conv3d, kernel = stride = patch_size), the time embedding (sinusoids ->
// time_embedder MLP -> time_proj to six modulation vectors per block), the text projection
// (linear -> GELU(tanh) -> linear), 3-axis RoPE over (frame, row, column) with head_dim split as
// [head_dim - 4 (head_dim / 6), 2 (head_dim / 6), 2 (head_dim / 6)], blocks of [modulated
// LayerNorm -> self-attention (RMSNorm on q and k across heads, RoPE) -> gated residual, LayerNorm
// (affine) -> cross-attention to the text -> residual, modulated LayerNorm -> GELU(tanh)
// feed-forward -> gated residual], then the modulated output norm, proj_out and unpatchify. Every
// step uses the dtypes diffusers uses (float32 norms and modulation, the model dtype elsewhere),
// so a float32 model matches diffusers to float rounding. Loads diffusers' parameter names.
//
// Supported: text-to-video (Wan2.1 T2V 1.3B / 14B, Wan2.2 T2V-A14B experts, TI2V-5B), with a
// timestep per sample [B] or per token [B, tokens] (Wan2.2's expand_timesteps). Image
// conditioning (image_dim, added_kv_proj_dim, pos_embed_seq_len: the I2V models) is UNIMPLEMENTED.
//
// As diffusers' _keep_in_fp32_modules, the time embedder, the scale-shift tables and the block
// norms stay float32 when LoadOptions asks for float16 / bfloat16.
//
// Sequence parallel (Forward's `sp`, one rank of a denoiser group): the video tokens after the
// patch embedding are padded to a multiple of ring * ulysses and split as FLUX's image tokens are
// (SequenceShardPlan; shard u + U * r); each rank keeps its shard's RoPE rows and, with per-token
// timesteps, its shard's timesteps. Self-attention runs through SequenceParallelAttention
// (Ulysses / Ring / USP, sequence_attention.h) with no text tokens in the joint sequence;
// cross-attention needs no exchange: each rank's queries attend to the whole text, which every
// rank holds. The output projection is gathered on every rank (padding dropped) before unpatchify.
//
// CUDA fast path (UseWanFusedBlocks): on CUDA activations in a build with dgrid's CUDA kernels the
// blocks run kernels/wan_fused.h's fused LayerNorm + modulation, residual + norm, gated residual
// and q / k RMSNorm + RoPE (in place on the projections), the feed-forward's GELU in its first
// GEMM's epilogue (cuBLASLt), and the attention on views of [B, S, H, D] buffers with no copies.
// The same function within bf16 rounding (tests/unit/denoiser/wan_fused_test.cc); the CPU always
// takes the reference path above, op for op as diffusers.
//
// RoPE tables: made once per (patch grid, device), as ComputeRope makes them (float64 on the
// host), and kept on that device for later passes (a few grids at most; the oldest is dropped).
//
// Thread safety: Forward is const and may run on several threads at once. Errors: statuses only
// (INVALID_ARGUMENT for bad inputs, the TorchCall mapping for LibTorch failures, a failed
// collective's own code under `sp`).
#ifndef DGRID_SERVICES_DENOISER_MODELS_WAN_TRANSFORMER_H_
#define DGRID_SERVICES_DENOISER_MODELS_WAN_TRANSFORMER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "services/denoiser/models/flux_layers.h"
#include "services/denoiser/models/layerwise_offload.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/sharded_blocks.h"
#include "services/denoiser/models/step_cache_step.h"

namespace dgrid {

class JsonConfig;
class WeightMap;
namespace flux {
class SequenceParallelAttention;
}  // namespace flux

// Whether Forward takes the fused CUDA path for activations like `x`: CUDA tensors in a build with
// the CUDA kernels, unless the environment sets DGRID_WAN_FUSED=0 (the reference path on the GPU,
// for side-by-side measurements).
bool UseWanFusedBlocks(const at::Tensor& x);
// Turns the fast path off (false) or back to the default (true) for the whole process; a test seam
// for comparing the two paths in one process.
void SetWanFusedBlocksEnabledForTesting(bool enabled);
// Also takes the fused block structure on the CPU, where kernels/wan_fused.h runs its reference
// functions: a test seam that checks the fused path's wiring without a GPU.
void SetWanFusedBlocksOnCpuForTesting(bool enabled);

// WanTransformer3DModel's config.json, with its defaults (the 14B shape).
struct WanTransformerConfig {
  std::array<int64_t, 3> patch_size = {1, 2, 2};  // frames, rows, columns
  int64_t num_attention_heads = 40;
  int64_t attention_head_dim = 128;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  int64_t text_dim = 4096;
  int64_t freq_dim = 256;
  int64_t ffn_dim = 13824;
  int64_t num_layers = 40;
  bool cross_attn_norm = true;
  double eps = 1e-6;
  int64_t rope_max_seq_len = 1024;

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // RoPE dimensions of the frame, row and column axes.
  std::array<int64_t, 3> rope_dims() const;

  // INVALID_ARGUMENT naming the key for bad values; UNIMPLEMENTED for the image-conditioning keys.
  static absl::StatusOr<WanTransformerConfig> FromJson(const JsonConfig& json);
};

struct WanTransformerInputs {
  at::Tensor hidden_states;  // [B, in_channels, frames, height, width] latents
  // The scheduler's timesteps: [B], or [B, tokens] with one per output token (expand_timesteps).
  at::Tensor timestep;
  at::Tensor encoder_hidden_states;  // [B, S, text_dim] text embeddings
};

class WanTransformer3DModel {
 public:
  // Reads "<component_folder>/config.json" and its safetensors. options.floating_dtype converts
  // the weights, except the float32 modules named in the file comment. With
  // options.dit_offload.layerwise the checkpoint is read into host memory and OffloadBlocks moves
  // what is not a block to options.device. `taken`, when not null, gets the tensors the model took
  // (after the dtype conversion), as FluxTransformer2DModel::Load.
  static absl::StatusOr<WanTransformer3DModel> Load(const std::string& component_folder,
                                                    const LoadOptions& options,
                                                    WeightMap* taken = nullptr);
  // Takes every parameter out of `weights` as it is (dtypes included).
  static absl::StatusOr<WanTransformer3DModel> FromWeights(const WanTransformerConfig& config,
                                                           WeightMap& weights);

  // Layerwise offload (--dit-offload layerwise, layerwise_offload.h), as
  // FluxTransformer2DModel::OffloadBlocks: for a model whose weights are all on the CPU, the patch
  // embedding, condition embedder, proj_out and output modulation move to `device`; the blocks
  // stay in host memory (pinned for CUDA) and each forward copies them to `device` ahead of use,
  // at most offload.PrefetchDepth(blocks) + 1 there at once; the output is unchanged bit for bit.
  // INVALID_ARGUMENT naming --dit-offload for a second call or weights not on the CPU.
  absl::Status OffloadBlocks(const std::string& device, const DitOffload& offload);
  // The host side of layerwise offload; null without it.
  const LayerwiseOffload* offload() const { return offload_.get(); }
  // Test seam, as FluxTransformer2DModel::SetOffloadObserverForTesting.
  void SetOffloadObserverForTesting(LayerwiseOffload::ResidencyObserverForTesting observer);

  // Sharded weights in a denoiser group (--dit-shard-weights, sharded_blocks.h), as
  // FluxTransformer2DModel::ShardBlocks: for a model whose weights are all on the CPU, this rank
  // keeps 1/shard.size of every block's weights on `device`, the patch embedding, condition
  // embedder, proj_out and output modulation move there whole, and each forward pass (which then
  // needs `sp` with the group's communicator) gathers a block from the group just before it runs;
  // the output is unchanged bit for bit. INVALID_ARGUMENT naming --dit-shard-weights for a group
  // below 2 ranks, layerwise offload, a second call or weights not on the CPU.
  absl::Status ShardBlocks(const std::string& device, const DitShard& shard);
  // This rank's shards; null without sharding.
  const ShardedBlocks* sharded() const { return sharded_.get(); }
  // Test seam, as FluxTransformer2DModel::SetShardObserverForTesting.
  void SetShardObserverForTesting(ShardedBlocks::GatherObserverForTesting observer);

  const WanTransformerConfig& config() const { return config_; }
  // Device and dtype of the blocks' weights: where and in what the model computes.
  at::TensorOptions options() const;

  // One forward pass: the predicted flow [B, out_channels, frames, height, width] in the model's
  // dtype on its device. INVALID_ARGUMENT when frames / height / width are not multiples of the
  // patch, a patch grid axis exceeds rope_max_seq_len, or the shapes disagree.
  //
  // `sp` (null: one rank): this rank's part of a sequence-parallel forward (see the file comment);
  // every rank of the CFG branch calls it with the same inputs and gets the same whole output.
  // INVALID_ARGUMENT when the context does not fit the model (SequenceParallelContext::Validate)
  // or, with sharded blocks, lacks the group's communicator.
  //
  // With `cache` (step caching, models/step_cache_step.h; null: none, the path above unchanged):
  // fbcache runs block 0 and may skip the others, teacache measures block 0's modulated input and
  // may skip every block; a step that runs in full computes the same output as without `cache`,
  // bit for bit. Only the video tokens are kept (the text is not changed by the blocks).
  absl::StatusOr<at::Tensor> Forward(const WanTransformerInputs& inputs,
                                     const SequenceParallelContext* sp = nullptr,
                                     StepCacheStep* cache = nullptr) const;
  // Forward for a batch whose rows belong to separate requests, each with a step cache of its own
  // (WanBatchedSampler), as FluxTransformer2DModel::ForwardCachedRows: `member_caches[k]` (null:
  // that request has no caching) serves rows [k r, (k + 1) r), r = batch / member_caches.size()
  // (1, or 2 for a request's conditional and unconditional rows run as one pair). Each member
  // decides alone on its own rows, exactly as Forward with its cache would on them alone: a
  // teacache member that skips runs no block, an fbcache member runs block 0 and, if it skips,
  // none of the others; the blocks run once for the members left, and when no member runs a block
  // none runs. In a group every rank must pass the same members (their decisions are summed over
  // the group, step_cache_loop.h). INVALID_ARGUMENT, besides Forward's, when the batch is not a
  // multiple of the members.
  absl::StatusOr<at::Tensor> ForwardCachedRows(const WanTransformerInputs& inputs,
                                               const std::vector<StepCacheStep*>& member_caches,
                                               const SequenceParallelContext* sp = nullptr) const;

 private:
  struct Attention {
    flux::Linear to_q, to_k, to_v, to_out;
    at::Tensor norm_q, norm_k;  // RMSNorm weights [inner_dim]
  };
  struct Block {
    Attention attn1, attn2;
    at::Tensor norm2_weight, norm2_bias;  // undefined without cross_attn_norm
    flux::Linear ffn_in, ffn_out;         // ffn.net.0.proj, ffn.net.2
    at::Tensor scale_shift_table;         // [1, 6, inner_dim]
  };

  // Self-attention when `context` is undefined (through `sp` when given), else cross-attention.
  at::Tensor AttentionForward(const Attention& attn, const at::Tensor& x, const at::Tensor& context,
                              const flux::Rope* rope,
                              const flux::SequenceParallelAttention* sp) const;
  at::Tensor BlockForward(const Block& block, const at::Tensor& x, const at::Tensor& context,
                          const at::Tensor& timestep_proj, const flux::Rope& rope,
                          const flux::SequenceParallelAttention* sp) const;
  // A block's six float32 modulation vectors (shift_msa, scale_msa, gate_msa, c_shift, c_scale,
  // c_gate), each [B, D] or, with one timestep per token, [B, N, D].
  static std::vector<at::Tensor> BlockModulation(const Block& block,
                                                 const at::Tensor& timestep_proj);
  // The blocks of one forward pass: the model's own, with offload their device copies, with
  // sharding the gathered blocks.
  class BlockSource;
  // Every tensor outside the blocks, for moving them to the device and counting their bytes.
  std::vector<at::Tensor*> OutsideBlockTensors();
  // Blocks [first, end) on the fused or the plain path.
  at::Tensor RunBlocks(size_t first, at::Tensor h, const at::Tensor& context,
                       const at::Tensor& timestep_proj, const flux::Rope& rope,
                       const flux::SequenceParallelAttention* sp, bool fused,
                       BlockSource& blocks) const;
  // Forward and ForwardCachedRows (`member_caches` null: no caching; Forward's one cache is one
  // member of the whole batch).
  absl::StatusOr<at::Tensor> ForwardPass(const WanTransformerInputs& inputs,
                                         const SequenceParallelContext* sp,
                                         const std::vector<StepCacheStep*>* member_caches) const;
  // The step-cached block stack, per member (ForwardCachedRows).
  absl::StatusOr<at::Tensor> RunCachedRows(const std::vector<StepCacheStep*>& member_caches,
                                           const at::Tensor& h, const at::Tensor& context,
                                           const at::Tensor& timestep_proj, const flux::Rope& rope,
                                           const flux::SequenceParallelAttention* sp, bool fused,
                                           BlockSource& blocks) const;
  // The same two on the fused CUDA path (see the file comment).
  at::Tensor AttentionForwardFused(const Attention& attn, const at::Tensor& x,
                                   const at::Tensor& context, const flux::Rope* rope,
                                   const flux::SequenceParallelAttention* sp) const;
  at::Tensor BlockForwardFused(const Block& block, const at::Tensor& x, const at::Tensor& context,
                               const at::Tensor& timestep_proj, const flux::Rope& rope,
                               const flux::SequenceParallelAttention* sp) const;
  // The RoPE tables of a patch grid on `device`, from the cache or made and cached.
  flux::Rope RopeFor(int64_t frames, int64_t rows, int64_t columns, const at::Device& device) const;

  struct RopeCache;

  WanTransformerConfig config_;
  at::Tensor patch_weight_, patch_bias_;  // patch_embedding (Conv3d)
  flux::TimestepMlp time_embedder_;       // condition_embedder.time_embedder
  flux::Linear time_proj_;                // condition_embedder.time_proj
  flux::Linear text_in_, text_out_;       // condition_embedder.text_embedder.linear_1 / _2
  std::vector<Block> blocks_;
  flux::Linear proj_out_;
  at::Tensor scale_shift_table_;  // [1, 2, inner_dim]
  // Shared by copies of the model (as its weights are); never null after FromWeights.
  std::shared_ptr<RopeCache> rope_cache_;
  // Layerwise offload: the blocks' host copies (blocks_ then view them); null without offload.
  std::shared_ptr<const LayerwiseOffload> offload_;
  std::shared_ptr<LayerwiseOffload::ResidencyObserverForTesting> offload_observer_;
  // Sharded weights: this rank's shards of the blocks (blocks_ then hold no tensors); null
  // without sharding.
  std::shared_ptr<const ShardedBlocks> sharded_;
  std::shared_ptr<ShardedBlocks::GatherObserverForTesting> shard_observer_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_WAN_TRANSFORMER_H_
