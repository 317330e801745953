// FLUX.1 denoiser transformer (dev, schnell and tiny test variants).
//
// Ref: diffusers FluxTransformer2DModel (models/transformers/transformer_flux.py, 0.42.1). Loads a
// Diffusers "transformer" component folder (config.json + single-file or sharded safetensors) by
// diffusers' parameter names, so real FLUX.1 checkpoints load without renaming, and reproduces its
// forward pass: x_embedder on packed latents, context_embedder, time/guidance/pooled-text
// embedding, 3-axis RoPE, double-stream and single-stream blocks, AdaLayerNormContinuous and
// proj_out.
//
// The model runs on the device and in the dtype of its weights (LoadOptions decides both); inputs
// are moved there. With layerwise offload (LoadOptions::dit_offload, OffloadBlocks) the blocks'
// weights stay in host memory and each block is copied to the device just ahead of its use.
// Ownership: the model owns its weight tensors; copies share them (cheap, like at::Tensor). Thread
// safety: Forward is const and may be called from several threads at once. Errors: Load gives
// NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS from the config and checkpoint, and INVALID_ARGUMENT for
// missing or mis-shaped parameters; Forward gives INVALID_ARGUMENT for inputs of the wrong shape
// and the TorchCall mapping (RESOURCE_EXHAUSTED for OOM, INTERNAL otherwise) for failures inside
// LibTorch. Nothing throws.
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_TRANSFORMER_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_TRANSFORMER_H_

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "services/denoiser/models/flux_blocks.h"
#include "services/denoiser/models/flux_config.h"
#include "services/denoiser/models/flux_layers.h"
#include "services/denoiser/models/layerwise_offload.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/models/sharded_blocks.h"
#include "services/denoiser/models/step_cache_step.h"

namespace dgrid {

class GraphCache;  // kernels/cuda_graph.h
class WeightMap;

// Inputs of one forward pass (batch B, N image tokens, S text tokens), as diffusers'
// FluxTransformer2DModel.forward takes them.
struct FluxTransformerInputs {
  at::Tensor hidden_states;          // [B, N, in_channels] packed latents.
  at::Tensor encoder_hidden_states;  // [B, S, joint_attention_dim] T5 embeddings.
  at::Tensor pooled_projections;     // [B, pooled_projection_dim] CLIP pooled embedding.
  at::Tensor timestep;               // [B] sigma in [0, 1]; the model multiplies by 1000.
  at::Tensor img_ids;                // [N, 3] image position ids.
  at::Tensor txt_ids;                // [S, 3] text position ids.
  // [B] guidance scale; required when config().guidance_embeds, must be undefined otherwise.
  at::Tensor guidance;
  // Optional RoPE tables for cat(txt_ids, img_ids) from ComputeRope(), to reuse across steps. When
  // null they are computed from the ids.
  const flux::Rope* rope = nullptr;
  // Optional: the modulation linears' outputs for these B rows ([B, modulation_width()], rows of
  // ComputeModulation for each row's timestep, guidance and pooled embedding). The pass then
  // slices them instead of computing temb and the linears (timestep, guidance and
  // pooled_projections are still checked, not read). Undefined: computed here, as always.
  at::Tensor modulation;
};

class FluxTransformer2DModel {
 public:
  // Reads "<component_folder>/config.json" and the folder's safetensors with `options`. With
  // options.dit_offload.layerwise the checkpoint is read into host memory and OffloadBlocks moves
  // what is not a block to options.device. `taken`, when not null, gets the checkpoint tensors the
  // model took (TakenWeights, common/weight_map.h: what FromWeights builds the model from again,
  // for model offload, services/denoiser/dit_placement.h).
  static absl::StatusOr<FluxTransformer2DModel> Load(const std::string& component_folder,
                                                     const LoadOptions& options,
                                                     WeightMap* taken = nullptr);
  // Builds the model from an already-parsed config and weights; takes every parameter it needs out
  // of `weights` (what is left is reported by the caller, or logged by Load).
  //
  // With `precision` kFp8 or kFp8Fast (LoadOptions::dit_precision "fp8" / "fp8-fast": the same
  // with fast FP8 accumulation) the blocks' projection and MLP
  // layers are quantized to FP8 E4M3 as they are taken (flux_blocks.h QuantizeBlockFp8); the
  // embedders, modulation linears, norm_out and proj_out stay in the weights' dtype. That needs
  // bfloat16 weights (INVALID_ARGUMENT naming --dtype otherwise) on a device that runs FP8
  // products (FAILED_PRECONDITION naming --dit-precision: the CPU, a GPU older than sm_89, or a
  // build without the CUDA kernels).
  static absl::StatusOr<FluxTransformer2DModel> FromWeights(
      const FluxTransformerConfig& config, WeightMap& weights,
      flux::LinearPrecision precision = flux::LinearPrecision::kModelDtype);

  // Layerwise offload (--dit-offload layerwise, layerwise_offload.h), for a model whose weights
  // are all on the CPU (as Load reads them with offload on, or FromWeights' result in tests): the
  // embedders, norm_out and proj_out move to `device`; the blocks (double blocks as layers 0 ..
  // num_layers - 1, then the single blocks) stay in host memory, pinned when `device` is CUDA,
  // and each forward pass copies them to `device` with a prefetch depth of
  // offload.PrefetchDepth(number of blocks), holding at most depth + 1 blocks there. Forward then
  // computes the same as without offload, bit for bit (given the same `modulation` input: an
  // offloaded model cannot ComputeModulation, so the samplers' default rows are the plain model's
  // only). Nothing happens unless offload.layerwise.
  // Errors: INVALID_ARGUMENT naming --dit-offload for a model with FP8 layers (not combined yet)
  // or a weight not on the CPU; the TorchCall mapping for a bad device or failed allocation. Call
  // before the model is shared between threads.
  absl::Status OffloadBlocks(const std::string& device, const DitOffload& offload);
  // The host side of layerwise offload; null without it.
  const LayerwiseOffload* offload() const { return offload_.get(); }
  // Test seam: with offload, `observer` sees each block as it is handed to compute, with the blocks
  // that forward pass holds on the device then (LayerwiseOffload::ResidencyObserverForTesting).
  // Set it before Forward runs, never while one runs; empty to remove it.
  void SetOffloadObserverForTesting(LayerwiseOffload::ResidencyObserverForTesting observer);

  // Sharded weights in a denoiser group (--dit-shard-weights, sharded_blocks.h): this rank
  // (shard.rank of shard.size) keeps 1/size of every block's weights (double blocks, then single
  // blocks) on `device`, and each forward pass all-gathers a block from the group just before it
  // runs, shard.prefetch blocks ahead; everything else (embedders, norm_out, proj_out) moves to
  // `device` whole. For a model whose weights are all on the CPU (as Load reads them with the
  // flag, or FromWeights' result in tests). Forward then needs `sp` with the group's communicator
  // (SequenceParallelContext::group) on every call, and every rank must run the same forward
  // passes; it computes the same as the unsharded model, bit for bit (given the same
  // `modulation` input, as for offload). Nothing happens unless
  // shard.weights. Errors: INVALID_ARGUMENT naming --dit-shard-weights for a group below 2 ranks,
  // a model with FP8 layers or layerwise offload, a second call, or weights not on the CPU; the
  // TorchCall mapping for a bad device or failed allocation. Call before the model is shared.
  absl::Status ShardBlocks(const std::string& device, const DitShard& shard);
  // This rank's shards; null without sharding.
  const ShardedBlocks* sharded() const { return sharded_.get(); }
  // Test seam: with sharding, `observer` sees each block as it is handed to compute, with the
  // blocks that forward pass holds gathered then. Set it before Forward runs, never while one runs.
  void SetShardObserverForTesting(ShardedBlocks::GatherObserverForTesting observer);

  // CUDA graphs (kernels/cuda_graph.h): Forward without `sp` and `cache`, on a CUDA device, with
  // the RoPE tables given, and without offload or sharding, runs its first pass of a shape
  // eagerly, captures the second and replays the graph from then on, for up to `max_graphs`
  // shapes (each keeps its activations' memory). The same velocity as eager, bit for bit; nothing
  // changes on the CPU or with 0. Load turns it on from DGRID_CUDA_GRAPHS=N (the number of
  // shapes; unset or 0: off). Call before the model is shared between threads.
  void EnableCudaGraphs(int max_graphs);
  // Null without CUDA graphs.
  const GraphCache* cuda_graphs() const { return graphs_.get(); }

  // Modulation rows (FluxTransformerInputs::modulation): every modulation linear of the model
  // (each double block's norm1 and norm1_context, each single block's norm, then norm_out) for
  // the T rows of `timestep` [T] (sigma, as FluxTransformerInputs::timestep), `guidance` [T]
  // (with guidance_embeds, else undefined) and `pooled` [T, pooled_projection_dim]: [T,
  // modulation_width()] in the model's dtype on its device. What a forward pass would compute
  // from the same row, with each weight read once for all T rows (a request computes the rows of
  // several steps at once, as the M = 1 products of one step are bound by reading the weights);
  // equal to the pass' own up to how a product of T rows rounds. FAILED_PRECONDITION when
  // CanComputeModulation() is false; INVALID_ARGUMENT for bad shapes.
  absl::StatusOr<at::Tensor> ComputeModulation(const at::Tensor& timestep,
                                               const at::Tensor& guidance,
                                               const at::Tensor& pooled) const;
  // Whether the modulation linears are on the device (no layerwise offload or sharding).
  bool CanComputeModulation() const;
  int64_t modulation_width() const { return modulation_width_; }

  const FluxTransformerConfig& config() const { return config_; }
  // Options (device, dtype) of the weights: where the model computes.
  at::TensorOptions options() const;
  flux::LinearPrecision precision() const { return precision_; }

  // RoPE tables for the joint sequence cat(txt_ids, img_ids), on the model's device.
  absl::StatusOr<flux::Rope> ComputeRope(const at::Tensor& txt_ids,
                                         const at::Tensor& img_ids) const;

  // One forward pass. Returns the predicted velocity [B, N, patch_size^2 * out_channels] in the
  // model's dtype, on its device.
  //
  // With `sp` (sequence parallelism; null = the single-rank path, unchanged) every rank of the
  // branch's ring * ulysses group calls Forward with the same whole inputs; each computes its shard
  // of the image tokens (attention across the group) and all get the whole velocity back. The
  // communicators must hold tensors on the model's device. Extra errors: INVALID_ARGUMENT for a
  // context that does not fit the model (or, with sharded blocks, lacks the group's
  // communicator), the collective's code (DEADLINE_EXCEEDED, UNAVAILABLE) when a peer fails.
  //
  // With `cache` (step caching; null: none, the path above unchanged) the pass runs block 0 (or
  // its modulation, teacache), may skip the rest (cache->decide), and refreshes cache->tensors.
  // A step that runs in full computes the same velocity as without `cache`, bit for bit. Extra
  // errors: INVALID_ARGUMENT for a model without double blocks, and what `decide` returns.
  absl::StatusOr<at::Tensor> Forward(const FluxTransformerInputs& inputs,
                                     const SequenceParallelContext* sp = nullptr,
                                     StepCacheStep* cache = nullptr) const;

  // One forward pass of a batch whose rows are separate requests, each with its own step cache
  // (the batched sampler, batched_sampler.h): `row_caches[b]` is row b's (null: row b runs in
  // full, as Forward without a cache). Each cached row decides on its own signal, exactly as
  // Forward with its cache decides alone: a teacache row that skips reuses its kept residual and
  // runs no block; block 0 runs once for the other rows; an fbcache row that skips takes block 0's
  // output plus its kept residual; the other blocks run once for the rows left (index_select along
  // the batch), and each of those rows refreshes its tensors. When no row runs a block, no block
  // runs. The embeddings, norm_out and proj_out run for the whole batch. A row's velocity differs
  // from its lone Forward only by how the kernels round a batch of another size. With `sp` (a
  // denoiser group's batch) every rank of the branch calls it with the same inputs and caches, as
  // Forward with `sp`: each row's signal covers this rank's real image tokens and its `decide`
  // sums over the group (StepCacheLoop), the rows deciding in order, so every rank runs the same
  // blocks for the same rows. Errors: Forward's, INVALID_ARGUMENT when row_caches.size() is not
  // the batch or a cache has no tensors, and what a row's `decide` returns (the whole pass fails
  // then).
  absl::StatusOr<at::Tensor> ForwardCachedRows(const FluxTransformerInputs& inputs,
                                               const std::vector<StepCacheStep*>& row_caches,
                                               const SequenceParallelContext* sp = nullptr) const;

 private:
  // The blocks of one forward pass: the model's own, or with offload their device copies
  // (flux_transformer.cc).
  class BlockSource;

  // The double blocks from `first_double` on, then every single block; returns the image stream.
  at::Tensor RunBlocks(size_t first_double, at::Tensor hidden, at::Tensor context,
                       const flux::Conditioning& temb, const flux::Rope& rope,
                       int64_t local_text_len, const flux::SequenceParallelAttention* spa,
                       BlockSource& blocks) const;
  // The step-cached forward of the blocks (Forward with `cache`): from the embedded image stream
  // `hidden` to the last block's image output, or its cached estimate.
  absl::StatusOr<at::Tensor> RunCachedBlocks(StepCacheStep& cache, const at::Tensor& hidden,
                                             const at::Tensor& context,
                                             const flux::Conditioning& temb, const flux::Rope& rope,
                                             int64_t local_text_len,
                                             const flux::SequenceParallelAttention* spa,
                                             BlockSource& blocks) const;

  // Every tensor outside the blocks (embedders, norm_out, proj_out), for moving them to the
  // device with offload or sharding, and counting their bytes.
  std::vector<at::Tensor*> OutsideBlockTensors();
  // Forward and ForwardCachedRows (at most one of `cache` and `row_caches` set).
  absl::StatusOr<at::Tensor> ForwardPass(const FluxTransformerInputs& inputs,
                                         const SequenceParallelContext* sp, StepCacheStep* cache,
                                         const std::vector<StepCacheStep*>* row_caches) const;
  // ForwardCachedRows' blocks: from the embedded image stream `hidden` [B, N, D] to the last
  // block's image output, each row computed or estimated by its own cache.
  absl::StatusOr<at::Tensor> RunCachedRows(const std::vector<StepCacheStep*>& row_caches,
                                           const at::Tensor& hidden, const at::Tensor& context,
                                           const flux::Conditioning& temb, const flux::Rope& rope,
                                           int64_t local_text_len,
                                           const flux::SequenceParallelAttention* spa,
                                           BlockSource& blocks) const;

  FluxTransformerConfig config_;
  flux::Linear x_embedder_;
  flux::Linear context_embedder_;
  flux::TimeTextEmbedding time_text_embed_;
  std::vector<flux::DoubleBlockWeights> transformer_blocks_;
  std::vector<flux::SingleBlockWeights> single_transformer_blocks_;
  flux::Linear norm_out_;  // "norm_out.linear"
  // Where norm_out's output sits in modulation rows, and their width.
  int64_t norm_out_column_ = 0;
  int64_t modulation_width_ = 0;
  flux::Linear proj_out_;
  // Every block has concatenated projections, so the CUDA fast path (flux_fused_blocks.h) can run.
  bool fused_blocks_ = false;
  flux::LinearPrecision precision_ = flux::LinearPrecision::kModelDtype;
  // Layerwise offload: the blocks' host copies (the block structs above then view them); null
  // without offload. Shared by copies of the model, like the weights.
  std::shared_ptr<const LayerwiseOffload> offload_;
  std::shared_ptr<LayerwiseOffload::ResidencyObserverForTesting> offload_observer_;
  // Sharded weights: this rank's shards of the blocks (the block structs above then hold no
  // tensors); null without sharding. Shared by copies of the model.
  std::shared_ptr<const ShardedBlocks> sharded_;
  std::shared_ptr<ShardedBlocks::GatherObserverForTesting> shard_observer_;
  // CUDA graphs of whole forward passes; null when off. Shared by copies of the model.
  std::shared_ptr<GraphCache> graphs_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_TRANSFORMER_H_
