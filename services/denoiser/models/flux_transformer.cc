#include "services/denoiser/models/flux_transformer.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "kernels/cuda_graph.h"
#include "kernels/fp8_linear.h"
#include "services/denoiser/models/flux_fused_blocks.h"
#include "services/denoiser/models/sequence_attention.h"

namespace dgrid {
namespace {

// Width of the sinusoidal timestep projection (diffusers Timesteps(num_channels=256)).
constexpr int64_t kTimeProjDim = 256;

absl::StatusOr<flux::TimestepMlp> TakeMlp(WeightMap& weights, absl::string_view prefix, int64_t in,
                                          int64_t dim) {
  flux::TimestepMlp mlp;
  ASSIGN_OR_RETURN(mlp.linear_1,
                   flux::TakeLinear(weights, absl::StrCat(prefix, ".linear_1"), in, dim));
  ASSIGN_OR_RETURN(mlp.linear_2,
                   flux::TakeLinear(weights, absl::StrCat(prefix, ".linear_2"), dim, dim));
  return mlp;
}

std::string ShapeString(const at::Tensor& t) {
  return t.defined() ? absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]") : "undefined";
}

// --dit-precision fp8 / fp8-fast need FP8 products on the weights' device and bfloat16
// activations. There is no CPU fallback: the CPU has no FP8 products, and emulating them would
// make a slow path slower.
absl::Status CheckFp8(const at::Tensor& weight, const std::string& source,
                      flux::LinearPrecision precision) {
  const char* name = flux::LinearPrecisionName(precision);
  if (!kernels::Fp8Supported(weight.device())) {
    return FailedPrecondition(
        "--dit-precision ", name, ": ", source, " is on ", weight.device().str(),
        ", which has no FP8 matrix products (they need a CUDA GPU of compute capability 8.9 or "
        "newer, such as Ada or Hopper, and a dgrid build with its CUDA kernels); use "
        "--dit-precision bf16 there");
  }
  if (weight.scalar_type() != at::kBFloat16) {
    return InvalidArgument("--dit-precision ", name, ": ", source, " has ",
                           c10::toString(weight.scalar_type()),
                           " weights; FP8 layers need bfloat16 activations (--dtype bfloat16)");
  }
  return absl::OkStatus();
}

// diffusers still accepts ids with a leading batch dimension (deprecated) and uses the first entry.
at::Tensor DropIdsBatch(const at::Tensor& ids) { return ids.dim() == 3 ? ids[0] : ids; }

// Every tensor of a block, in one fixed order, for layerwise offload: `fn` gets each by reference
// (to read it, move it out or point it at a device copy). A field added to the block structs must
// be added here; the size checks below fail to compile until it is. (The int64_t fields are the
// blocks' modulation columns, no tensors.)
static_assert(sizeof(flux::Linear) == 3 * sizeof(at::Tensor) + 8, "flux::Linear changed");
static_assert(sizeof(flux::AttentionWeights) ==
                  sizeof(int64_t) + 10 * sizeof(flux::Linear) + 4 * sizeof(at::Tensor),
              "flux::AttentionWeights changed: update ForEachTensor");
static_assert(sizeof(flux::DoubleBlockWeights) ==
                  6 * sizeof(flux::Linear) + 2 * sizeof(int64_t) + sizeof(flux::AttentionWeights),
              "flux::DoubleBlockWeights changed: update ForEachTensor");
static_assert(sizeof(flux::SingleBlockWeights) ==
                  4 * sizeof(flux::Linear) + sizeof(int64_t) + sizeof(flux::AttentionWeights),
              "flux::SingleBlockWeights changed: update ForEachTensor");

template <typename Fn>
void ForEachTensor(flux::Linear& l, Fn& fn) {
  fn(l.weight);
  fn(l.bias);
  fn(l.weight_scale);
}

template <typename Fn>
void ForEachTensor(flux::AttentionWeights& a, Fn& fn) {
  for (flux::Linear* l : {&a.to_q, &a.to_k, &a.to_v, &a.to_out, &a.add_q_proj, &a.add_k_proj,
                          &a.add_v_proj, &a.to_add_out, &a.qkv, &a.add_qkv}) {
    ForEachTensor(*l, fn);
  }
  for (at::Tensor* t : {&a.norm_q, &a.norm_k, &a.norm_added_q, &a.norm_added_k}) fn(*t);
}

template <typename Fn>
void ForEachTensor(flux::DoubleBlockWeights& b, Fn& fn) {
  for (flux::Linear* l :
       {&b.norm1, &b.norm1_context, &b.ff_in, &b.ff_out, &b.ff_context_in, &b.ff_context_out}) {
    ForEachTensor(*l, fn);
  }
  ForEachTensor(b.attn, fn);
}

template <typename Fn>
void ForEachTensor(flux::SingleBlockWeights& b, Fn& fn) {
  for (flux::Linear* l : {&b.norm, &b.proj_mlp, &b.proj_out, &b.qkv_mlp}) ForEachTensor(*l, fn);
  ForEachTensor(b.attn, fn);
}

// Moves a block's tensors out into a list (leaving the struct's undefined).
template <typename Block>
std::vector<at::Tensor> TakeTensors(Block& block) {
  std::vector<at::Tensor> out;
  auto take = [&](at::Tensor& t) { out.push_back(std::move(t)); };
  ForEachTensor(block, take);
  return out;
}

// Points a block's tensors at `tensors` (in ForEachTensor's order).
template <typename Block>
void SetTensors(Block& block, const std::vector<at::Tensor>& tensors) {
  size_t i = 0;
  auto set = [&](at::Tensor& t) { t = tensors[i++]; };
  ForEachTensor(block, set);
}

}  // namespace

// With offload, one forward pass's window of device copies (LayerwiseOffload::Pass), with sharding
// its gathered blocks (ShardedBlocks::Pass), and the block structs pointing at the tensors in use;
// without either, the model's own blocks. The struct of the previous block is dropped before the
// next is acquired, so that the pass's bookkeeping of what it holds is the whole truth.
class FluxTransformer2DModel::BlockSource {
 public:
  // With sharding, `group` is the communicator the model was checked against (Forward).
  BlockSource(const FluxTransformer2DModel& model, Communicator* group) : model_(model) {
    if (model.offload_ != nullptr) pass_.emplace(*model.offload_, model.offload_observer_.get());
    if (model.sharded_ != nullptr) {
      shard_pass_.emplace(*model.sharded_, *group, model.shard_observer_.get());
    }
  }

  // Valid until the next call.
  const flux::DoubleBlockWeights& Double(size_t i) {
    if (!pass_.has_value() && !shard_pass_.has_value()) return model_.transformer_blocks_[i];
    const int64_t layer = static_cast<int64_t>(i);
    if (layer != current_) {
      Drop();
      double_ = model_.transformer_blocks_[i];
      SetTensors(*double_, Acquire(layer));
      current_ = layer;
    }
    return *double_;
  }
  const flux::SingleBlockWeights& Single(size_t i) {
    if (!pass_.has_value() && !shard_pass_.has_value()) {
      return model_.single_transformer_blocks_[i];
    }
    const int64_t layer = static_cast<int64_t>(model_.transformer_blocks_.size() + i);
    if (layer != current_) {
      Drop();
      single_ = model_.single_transformer_blocks_[i];
      SetTensors(*single_, Acquire(layer));
      current_ = layer;
    }
    return *single_;
  }
  // A failed gather's own status (sharding); OK otherwise.
  absl::Status status() const {
    return shard_pass_.has_value() ? shard_pass_->status() : absl::OkStatus();
  }

 private:
  const std::vector<at::Tensor>& Acquire(int64_t layer) {
    return pass_.has_value() ? pass_->Acquire(layer) : shard_pass_->Acquire(layer);
  }
  void Drop() {
    double_.reset();
    single_.reset();
    current_ = -1;
  }

  const FluxTransformer2DModel& model_;
  std::optional<LayerwiseOffload::Pass> pass_;
  std::optional<ShardedBlocks::Pass> shard_pass_;
  std::optional<flux::DoubleBlockWeights> double_;
  std::optional<flux::SingleBlockWeights> single_;
  int64_t current_ = -1;
};

absl::StatusOr<FluxTransformer2DModel> FluxTransformer2DModel::Load(
    const std::string& component_folder, const LoadOptions& options, WeightMap* taken) {
  ASSIGN_OR_RETURN(FluxTransformerConfig config,
                   FluxTransformerConfig::FromFile(component_folder + "/config.json"));
  ASSIGN_OR_RETURN(const flux::LinearPrecision precision,
                   flux::ParseLinearPrecision(options.dit_precision));
  LoadOptions read = options;
  if (options.dit_offload.layerwise) {
    // Refused before reading gigabytes (OffloadBlocks says the same).
    if (flux::IsFp8(precision)) {
      return InvalidArgument("--dit-offload layerwise: not combined with --dit-precision ",
                             flux::LinearPrecisionName(precision),
                             " yet; use --dit-precision bf16 with offload");
    }
    read.device = "cpu";  // OffloadBlocks moves what is not a block to options.device.
  }
  if (options.dit_shard.weights) {
    // Refused before reading gigabytes (ShardBlocks says the same).
    RETURN_IF_ERROR(CheckDitShardGroup(options.dit_shard, options.dit_shard.size));
    if (flux::IsFp8(precision)) {
      return InvalidArgument("--dit-shard-weights: not combined with --dit-precision ",
                             flux::LinearPrecisionName(precision),
                             " yet; use --dit-precision bf16 with sharded weights");
    }
    // Only this rank's shards and the weights outside the blocks reach the device.
    read.device = "cpu";
  }
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(component_folder, read));
  const WeightMap all = taken != nullptr ? weights : WeightMap();
  ASSIGN_OR_RETURN(FluxTransformer2DModel model, FromWeights(config, weights, precision));
  if (taken != nullptr) *taken = TakenWeights(all, weights);
  RETURN_IF_ERROR(model.OffloadBlocks(options.device, options.dit_offload));
  RETURN_IF_ERROR(model.ShardBlocks(options.device, options.dit_shard));
  if (const char* graphs = std::getenv("DGRID_CUDA_GRAPHS"); graphs != nullptr && *graphs) {
    model.EnableCudaGraphs(std::atoi(graphs));
  }
  const std::vector<std::string> unused = weights.RemainingNames();
  if (!unused.empty()) {
    // diffusers only warns about unexpected keys; so do we, naming a few.
    DG_LOG_WARN("", "%s: %d unused parameters in checkpoint (first: %s)", component_folder,
                static_cast<int>(unused.size()), unused.front());
  }
  DG_LOG_INFO("", "loaded FluxTransformer2DModel from %s: %d double + %d single blocks, dim %d%s",
              component_folder, static_cast<int>(config.num_layers),
              static_cast<int>(config.num_single_layers), static_cast<int>(config.inner_dim()),
              precision == flux::LinearPrecision::kFp8 ? ", FP8 block linears"
              : precision == flux::LinearPrecision::kFp8Fast
                  ? ", FP8 block linears (fast accumulation)"
                  : "");
  if (const LayerwiseOffload* offload = model.offload()) {
    DG_LOG_INFO("",
                "layerwise offload: %d blocks (%.2f GiB) in %s host memory, prefetch depth %d "
                "(--dit-offload-prefetch %s), at most %d blocks on %s at once",
                static_cast<int>(offload->num_layers()),
                static_cast<double>(offload->host_bytes()) / (1 << 30),
                offload->device().is_cuda() ? "pinned" : "plain",
                static_cast<int>(offload->prefetch()), options.dit_offload.prefetch_text,
                static_cast<int>(std::min(offload->num_layers(), offload->prefetch() + 1)),
                options.device);
  }
  if (const ShardedBlocks* sharded = model.sharded()) {
    int64_t outside = 0;
    for (at::Tensor* t : model.OutsideBlockTensors()) {
      if (t->defined()) outside += static_cast<int64_t>(t->nbytes());
    }
    LogShardedWeights(*sharded, outside, options.device);
  }
  return model;
}

absl::StatusOr<FluxTransformer2DModel> FluxTransformer2DModel::FromWeights(
    const FluxTransformerConfig& config, WeightMap& weights, flux::LinearPrecision precision) {
  RETURN_IF_ERROR(config.Validate(weights.source()));
  FluxTransformer2DModel m;
  m.config_ = config;
  m.precision_ = precision;
  const bool fp8 = flux::IsFp8(precision);
  const bool fast = precision == flux::LinearPrecision::kFp8Fast;
  const int64_t dim = config.inner_dim();
  const int64_t head_dim = config.attention_head_dim;
  ASSIGN_OR_RETURN(m.x_embedder_, flux::TakeLinear(weights, "x_embedder", config.in_channels, dim));
  if (fp8) RETURN_IF_ERROR(CheckFp8(m.x_embedder_.weight, weights.source(), precision));
  ASSIGN_OR_RETURN(m.context_embedder_,
                   flux::TakeLinear(weights, "context_embedder", config.joint_attention_dim, dim));
  ASSIGN_OR_RETURN(m.time_text_embed_.timestep_embedder,
                   TakeMlp(weights, "time_text_embed.timestep_embedder", kTimeProjDim, dim));
  if (config.guidance_embeds) {
    ASSIGN_OR_RETURN(m.time_text_embed_.guidance_embedder,
                     TakeMlp(weights, "time_text_embed.guidance_embedder", kTimeProjDim, dim));
  }
  ASSIGN_OR_RETURN(
      m.time_text_embed_.text_embedder,
      TakeMlp(weights, "time_text_embed.text_embedder", config.pooled_projection_dim, dim));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    ASSIGN_OR_RETURN(
        flux::DoubleBlockWeights block,
        flux::TakeDoubleBlock(weights, absl::StrCat("transformer_blocks.", i), dim, head_dim));
    if (fp8) {
      RETURN_IF_ERROR(TorchCall("FP8 quantization", [&] { flux::QuantizeBlockFp8(block, fast); }));
    }
    m.transformer_blocks_.push_back(std::move(block));
  }
  for (int64_t i = 0; i < config.num_single_layers; ++i) {
    ASSIGN_OR_RETURN(flux::SingleBlockWeights block,
                     flux::TakeSingleBlock(weights, absl::StrCat("single_transformer_blocks.", i),
                                           dim, head_dim));
    if (fp8) {
      RETURN_IF_ERROR(TorchCall("FP8 quantization", [&] { flux::QuantizeBlockFp8(block, fast); }));
    }
    m.single_transformer_blocks_.push_back(std::move(block));
  }
  m.fused_blocks_ = true;
  for (const flux::DoubleBlockWeights& b : m.transformer_blocks_) {
    m.fused_blocks_ = m.fused_blocks_ && flux::HasFusedWeights(b);
  }
  for (const flux::SingleBlockWeights& b : m.single_transformer_blocks_) {
    m.fused_blocks_ = m.fused_blocks_ && flux::HasFusedWeights(b);
  }
  ASSIGN_OR_RETURN(m.norm_out_, flux::TakeLinear(weights, "norm_out.linear", dim, 2 * dim));
  ASSIGN_OR_RETURN(m.proj_out_,
                   flux::TakeLinear(weights, "proj_out", dim,
                                    config.patch_size * config.patch_size * config.out_channels));
  // Precomputed modulation rows: the blocks' linears in order, then norm_out's.
  int64_t column = 0;
  for (flux::DoubleBlockWeights& b : m.transformer_blocks_) {
    b.norm1_column = column;
    column += 6 * dim;
    b.norm1_context_column = column;
    column += 6 * dim;
  }
  for (flux::SingleBlockWeights& b : m.single_transformer_blocks_) {
    b.norm_column = column;
    column += 3 * dim;
  }
  m.norm_out_column_ = column;
  m.modulation_width_ = column + 2 * dim;
  return m;
}

bool FluxTransformer2DModel::CanComputeModulation() const {
  return offload_ == nullptr && sharded_ == nullptr;
}

absl::StatusOr<at::Tensor> FluxTransformer2DModel::ComputeModulation(
    const at::Tensor& timestep, const at::Tensor& guidance, const at::Tensor& pooled) const {
  if (!CanComputeModulation()) {
    return FailedPrecondition(
        "FluxTransformer2DModel.ComputeModulation: the blocks are offloaded or sharded");
  }
  const int64_t rows = timestep.defined() ? timestep.size(0) : 0;
  if (!timestep.defined() || timestep.dim() != 1 || rows == 0 || !pooled.defined() ||
      pooled.dim() != 2 || pooled.size(0) != rows ||
      pooled.size(1) != config_.pooled_projection_dim ||
      config_.guidance_embeds != guidance.defined() ||
      (guidance.defined() && (guidance.dim() != 1 || guidance.size(0) != rows))) {
    return InvalidArgument("FluxTransformer2DModel.ComputeModulation: expected timestep [T], ",
                           config_.guidance_embeds ? "guidance [T]" : "no guidance",
                           " and pooled [T, ", config_.pooled_projection_dim, "], got ",
                           ShapeString(timestep), ", ", ShapeString(guidance), ", ",
                           ShapeString(pooled));
  }
  return TorchCall("FluxTransformer2DModel.ComputeModulation", [&] {
    const at::TensorOptions opts = options();
    // As ForwardPass computes temb, then every modulation linear on all T rows at once: each
    // weight is read once for the T rows instead of once per forward pass.
    const at::Tensor temb = flux::ApplyTimeTextEmbedding(
        time_text_embed_, timestep.to(opts) * 1000,
        guidance.defined() ? guidance.to(opts) * 1000 : at::Tensor(), pooled.to(opts));
    const at::Tensor act = at::silu(temb);
    std::vector<at::Tensor> parts;
    parts.reserve(2 * transformer_blocks_.size() + single_transformer_blocks_.size() + 1);
    for (const flux::DoubleBlockWeights& b : transformer_blocks_) {
      parts.push_back(flux::ApplyLinear(b.norm1, act));
      parts.push_back(flux::ApplyLinear(b.norm1_context, act));
    }
    for (const flux::SingleBlockWeights& b : single_transformer_blocks_) {
      parts.push_back(flux::ApplyLinear(b.norm, act));
    }
    parts.push_back(flux::ApplyLinear(norm_out_, act.to(opts.dtype())));
    return at::cat(parts, 1);
  });
}

at::TensorOptions FluxTransformer2DModel::options() const { return x_embedder_.weight.options(); }

absl::Status FluxTransformer2DModel::OffloadBlocks(const std::string& device,
                                                   const DitOffload& offload) {
  if (!offload.layerwise) return absl::OkStatus();
  if (flux::IsFp8(precision_)) {
    return InvalidArgument("--dit-offload layerwise: not combined with --dit-precision ",
                           flux::LinearPrecisionName(precision_),
                           " yet; use --dit-precision bf16 with offload");
  }
  if (offload_ != nullptr) {
    return InvalidArgument("--dit-offload layerwise: the model's blocks are offloaded already");
  }
  if (sharded_ != nullptr) {
    return InvalidArgument("--dit-offload layerwise: not combined with --dit-shard-weights");
  }
  if (!x_embedder_.weight.device().is_cpu()) {
    return InvalidArgument("--dit-offload layerwise: the model's weights are on ",
                           x_embedder_.weight.device().str(),
                           "; offload starts from weights on the CPU");
  }
  return TorchCall("--dit-offload layerwise", [&]() -> absl::Status {
    const c10::Device target(device);
    const int64_t blocks =
        static_cast<int64_t>(transformer_blocks_.size() + single_transformer_blocks_.size());
    std::vector<std::vector<at::Tensor>> layers;
    for (flux::DoubleBlockWeights& b : transformer_blocks_) layers.push_back(TakeTensors(b));
    for (flux::SingleBlockWeights& b : single_transformer_blocks_) {
      layers.push_back(TakeTensors(b));
    }
    ASSIGN_OR_RETURN(offload_, LayerwiseOffload::Create(std::move(layers), target,
                                                        offload.PrefetchDepth(blocks)));
    // The structs now view the host copies; a pass swaps in device copies (BlockSource).
    for (size_t i = 0; i < transformer_blocks_.size(); ++i) {
      SetTensors(transformer_blocks_[i], offload_->host_layer(static_cast<int64_t>(i)));
    }
    for (size_t i = 0; i < single_transformer_blocks_.size(); ++i) {
      SetTensors(single_transformer_blocks_[i],
                 offload_->host_layer(static_cast<int64_t>(transformer_blocks_.size() + i)));
    }
    for (at::Tensor* t : OutsideBlockTensors()) {
      if (t->defined()) *t = t->to(target);
    }
    return absl::OkStatus();
  });
}

std::vector<at::Tensor*> FluxTransformer2DModel::OutsideBlockTensors() {
  std::vector<at::Tensor*> out;
  auto add = [&](at::Tensor& t) { out.push_back(&t); };
  for (flux::Linear* l : {&x_embedder_, &context_embedder_, &norm_out_, &proj_out_}) {
    ForEachTensor(*l, add);
  }
  for (flux::TimestepMlp* mlp :
       {&time_text_embed_.timestep_embedder, &time_text_embed_.guidance_embedder,
        &time_text_embed_.text_embedder}) {
    ForEachTensor(mlp->linear_1, add);
    ForEachTensor(mlp->linear_2, add);
  }
  return out;
}

absl::Status FluxTransformer2DModel::ShardBlocks(const std::string& device, const DitShard& shard) {
  if (!shard.weights) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDitShardGroup(shard, shard.size));
  if (flux::IsFp8(precision_)) {
    return InvalidArgument("--dit-shard-weights: not combined with --dit-precision ",
                           flux::LinearPrecisionName(precision_),
                           " yet; use --dit-precision bf16 with sharded weights");
  }
  if (offload_ != nullptr) {
    return InvalidArgument("--dit-shard-weights: not combined with --dit-offload layerwise");
  }
  if (sharded_ != nullptr) {
    return InvalidArgument("--dit-shard-weights: the model's blocks are sharded already");
  }
  if (!x_embedder_.weight.device().is_cpu()) {
    return InvalidArgument("--dit-shard-weights: the model's weights are on ",
                           x_embedder_.weight.device().str(),
                           "; sharding starts from weights on the CPU");
  }
  return TorchCall("--dit-shard-weights", [&]() -> absl::Status {
    const c10::Device target(device);
    std::vector<std::vector<at::Tensor>> blocks;
    // The structs keep no tensors: a pass points a copy of a struct at the gathered block.
    for (flux::DoubleBlockWeights& b : transformer_blocks_) blocks.push_back(TakeTensors(b));
    for (flux::SingleBlockWeights& b : single_transformer_blocks_) {
      blocks.push_back(TakeTensors(b));
    }
    ASSIGN_OR_RETURN(sharded_, ShardedBlocks::Create(std::move(blocks), shard.rank, shard.size,
                                                     shard.prefetch, target));
    for (at::Tensor* t : OutsideBlockTensors()) {
      if (t->defined()) *t = t->to(target);
    }
    return absl::OkStatus();
  });
}

void FluxTransformer2DModel::SetShardObserverForTesting(
    ShardedBlocks::GatherObserverForTesting observer) {
  shard_observer_ = std::make_shared<ShardedBlocks::GatherObserverForTesting>(std::move(observer));
}

void FluxTransformer2DModel::SetOffloadObserverForTesting(
    LayerwiseOffload::ResidencyObserverForTesting observer) {
  offload_observer_ =
      std::make_shared<LayerwiseOffload::ResidencyObserverForTesting>(std::move(observer));
}

absl::StatusOr<flux::Rope> FluxTransformer2DModel::ComputeRope(const at::Tensor& txt_ids,
                                                               const at::Tensor& img_ids) const {
  return TorchCall("FluxTransformer2DModel rope", [&]() -> absl::StatusOr<flux::Rope> {
    const at::Tensor txt = DropIdsBatch(txt_ids);
    const at::Tensor img = DropIdsBatch(img_ids);
    if (txt.dim() != 2 || img.dim() != 2 || txt.size(1) != 3 || img.size(1) != 3) {
      return InvalidArgument("FluxTransformer2DModel: txt_ids ", ShapeString(txt_ids),
                             " and img_ids ", ShapeString(img_ids), " must be [S, 3] and [N, 3]");
    }
    const at::Tensor ids = at::cat({txt, img.to(txt.scalar_type())}, 0).to(options().device());
    return flux::ComputeRope(ids, config_.axes_dims_rope);
  });
}

void FluxTransformer2DModel::EnableCudaGraphs(int max_graphs) {
  if (max_graphs <= 0) {
    graphs_.reset();
    return;
  }
  graphs_ = std::make_shared<GraphCache>(max_graphs, [](const std::string& why) {
    DG_LOG_WARN("", "CUDA graphs: %s; that shape runs without a graph", why);
  });
}

absl::StatusOr<at::Tensor> FluxTransformer2DModel::Forward(const FluxTransformerInputs& in,
                                                           const SequenceParallelContext* sp,
                                                           StepCacheStep* cache) const {
  if (graphs_ == nullptr || sp != nullptr || cache != nullptr || in.rope == nullptr ||
      offload_ != nullptr || sharded_ != nullptr || !in.hidden_states.defined() ||
      !in.hidden_states.is_cuda()) {
    return ForwardPass(in, sp, cache, /*row_caches=*/nullptr);
  }
  // The graph's inputs, in this order; the pass is rebuilt from them (static copies when
  // captured or replayed).
  const std::vector<at::Tensor> inputs = {in.hidden_states,
                                          in.encoder_hidden_states,
                                          in.pooled_projections,
                                          in.timestep,
                                          in.img_ids,
                                          in.txt_ids,
                                          in.guidance,
                                          in.rope->cos,
                                          in.rope->sin,
                                          in.modulation};
  return graphs_->Run(GraphCache::KeyOf("flux forward", inputs), inputs,
                      [this](const std::vector<at::Tensor>& t) -> absl::StatusOr<at::Tensor> {
                        const flux::Rope rope{t[7], t[8]};
                        FluxTransformerInputs pass;
                        pass.hidden_states = t[0];
                        pass.encoder_hidden_states = t[1];
                        pass.pooled_projections = t[2];
                        pass.timestep = t[3];
                        pass.img_ids = t[4];
                        pass.txt_ids = t[5];
                        pass.guidance = t[6];
                        pass.rope = &rope;
                        pass.modulation = t[9];
                        return ForwardPass(pass, /*sp=*/nullptr, /*cache=*/nullptr,
                                           /*row_caches=*/nullptr);
                      });
}

absl::StatusOr<at::Tensor> FluxTransformer2DModel::ForwardCachedRows(
    const FluxTransformerInputs& in, const std::vector<StepCacheStep*>& row_caches,
    const SequenceParallelContext* sp) const {
  return ForwardPass(in, sp, /*cache=*/nullptr, &row_caches);
}

absl::StatusOr<at::Tensor> FluxTransformer2DModel::ForwardPass(
    const FluxTransformerInputs& in, const SequenceParallelContext* sp, StepCacheStep* cache,
    const std::vector<StepCacheStep*>* row_caches) const {
  const FluxTransformerConfig& c = config_;
  const auto bad = [&](absl::string_view what) {
    return InvalidArgument("FluxTransformer2DModel.Forward: ", what, " (hidden_states ",
                           ShapeString(in.hidden_states), ", encoder_hidden_states ",
                           ShapeString(in.encoder_hidden_states), ", pooled_projections ",
                           ShapeString(in.pooled_projections), ", timestep ",
                           ShapeString(in.timestep), ", guidance ", ShapeString(in.guidance), ")");
  };
  if (!in.hidden_states.defined() || in.hidden_states.dim() != 3 ||
      in.hidden_states.size(2) != c.in_channels) {
    return bad(absl::StrCat("hidden_states must be [B, N, ", c.in_channels, "]"));
  }
  const int64_t batch = in.hidden_states.size(0);
  if (!in.encoder_hidden_states.defined() || in.encoder_hidden_states.dim() != 3 ||
      in.encoder_hidden_states.size(0) != batch ||
      in.encoder_hidden_states.size(2) != c.joint_attention_dim) {
    return bad(absl::StrCat("encoder_hidden_states must be [B, S, ", c.joint_attention_dim, "]"));
  }
  if (!in.pooled_projections.defined() || in.pooled_projections.dim() != 2 ||
      in.pooled_projections.size(0) != batch ||
      in.pooled_projections.size(1) != c.pooled_projection_dim) {
    return bad(absl::StrCat("pooled_projections must be [B, ", c.pooled_projection_dim, "]"));
  }
  if (!in.timestep.defined() || in.timestep.dim() != 1 || in.timestep.size(0) != batch) {
    return bad("timestep must be [B]");
  }
  if (c.guidance_embeds != in.guidance.defined()) {
    return bad(c.guidance_embeds ? "this model has guidance_embeds and needs a guidance tensor"
                                 : "this model has no guidance embedding; guidance must be unset");
  }
  if (in.guidance.defined() && (in.guidance.dim() != 1 || in.guidance.size(0) != batch)) {
    return bad("guidance must be [B]");
  }
  if (in.modulation.defined() &&
      (in.modulation.dim() != 2 || in.modulation.size(0) != batch ||
       in.modulation.size(1) != modulation_width_ || !CanComputeModulation() ||
       in.modulation.device() != options().device() ||
       in.modulation.scalar_type() != options().dtype().toScalarType())) {
    return bad(absl::StrCat("modulation must be [B, ", modulation_width_,
                            "] on the model's device and dtype, from ComputeModulation, got ",
                            ShapeString(in.modulation)));
  }
  if (cache != nullptr && (cache->tensors == nullptr || transformer_blocks_.empty())) {
    return bad("step caching needs the cache's tensors and a model with at least one double block");
  }
  if (row_caches != nullptr) {
    if (static_cast<int64_t>(row_caches->size()) != batch) {
      return bad(absl::StrCat(row_caches->size(), " row caches for a batch of ", batch));
    }
    for (const StepCacheStep* row : *row_caches) {
      if (row != nullptr && (row->tensors == nullptr || transformer_blocks_.empty())) {
        return bad(
            "step caching needs the cache's tensors and a model with at least one double block");
      }
    }
  }
  const int64_t text_len = in.encoder_hidden_states.size(1);
  const int64_t image_len = in.hidden_states.size(1);
  std::optional<flux::SequenceParallelAttention> parallel;
  if (sp != nullptr) {
    RETURN_IF_ERROR(sp->Validate(c.num_attention_heads));
    parallel.emplace(*sp, text_len, image_len);
  }
  const flux::SequenceParallelAttention* spa = parallel ? &*parallel : nullptr;
  Communicator* group = sp != nullptr ? sp->group : nullptr;
  if (sharded_ != nullptr) RETURN_IF_ERROR(sharded_->CheckCommunicator(group));
  std::optional<BlockSource> source;

  const auto run = [&]() -> absl::StatusOr<at::Tensor> {
    const at::TensorOptions opts = options();
    flux::Rope computed;
    const flux::Rope* rope = in.rope;
    if (rope == nullptr) {
      ASSIGN_OR_RETURN(computed, ComputeRope(in.txt_ids, in.img_ids));
      rope = &computed;
    }
    if (rope->cos.dim() != 2 || rope->cos.size(0) != text_len + image_len) {
      return bad(absl::StrCat("RoPE tables cover ", rope->cos.size(0), " tokens, expected ",
                              text_len + image_len));
    }

    at::Tensor hidden_states = in.hidden_states.to(opts);
    flux::Rope shard_rope;
    at::Tensor encoder_hidden_states = in.encoder_hidden_states.to(opts);
    // Rows of text at the front of this rank's joint sequence.
    int64_t local_text_len = text_len;
    if (spa != nullptr) {
      // This rank's text and image tokens only, with their global RoPE rows
      // (sequence_attention.h).
      hidden_states = spa->ShardImage(hidden_states);
      encoder_hidden_states = spa->ShardText(encoder_hidden_states);
      shard_rope = spa->ShardRope(*rope);
      rope = &shard_rope;
      local_text_len = spa->local_text_length();
    }
    at::Tensor hidden = flux::ApplyLinear(x_embedder_, hidden_states);
    // diffusers casts the sigma to the activation dtype before scaling it to [0, 1000].
    flux::Conditioning temb = flux::Conditioning::Precomputed(in.modulation);
    if (!in.modulation.defined()) {
      const at::Tensor timestep = in.timestep.to(opts) * 1000;
      const at::Tensor guidance =
          in.guidance.defined() ? in.guidance.to(opts) * 1000 : at::Tensor();
      temb = flux::Conditioning(flux::ApplyTimeTextEmbedding(time_text_embed_, timestep, guidance,
                                                             in.pooled_projections.to(opts)));
    }
    const at::Tensor context = flux::ApplyLinear(context_embedder_, encoder_hidden_states);

    BlockSource& blocks = source.emplace(*this, group);
    if (row_caches != nullptr) {
      ASSIGN_OR_RETURN(hidden, RunCachedRows(*row_caches, hidden, context, temb, *rope,
                                             local_text_len, spa, blocks));
    } else if (cache != nullptr) {
      ASSIGN_OR_RETURN(hidden, RunCachedBlocks(*cache, hidden, context, temb, *rope, local_text_len,
                                               spa, blocks));
    } else {
      hidden = RunBlocks(0, hidden, context, temb, *rope, local_text_len, spa, blocks);
    }
    hidden = flux::ApplyAdaLayerNormContinuous(norm_out_, hidden, temb, norm_out_column_);
    at::Tensor velocity = flux::ApplyLinear(proj_out_, hidden);
    if (spa != nullptr) velocity = spa->GatherImage(velocity);
    return velocity;
  };
  absl::StatusOr<at::Tensor> out = TorchCall("FluxTransformer2DModel.Forward", run);
  // A failed collective keeps its own code rather than the INTERNAL of the exception it threw.
  if (spa != nullptr && !spa->status().ok()) return spa->status();
  if (source.has_value() && !source->status().ok()) return source->status();
  return out;
}

at::Tensor FluxTransformer2DModel::RunBlocks(size_t first_double, at::Tensor hidden,
                                             at::Tensor context, const flux::Conditioning& temb,
                                             const flux::Rope& rope, int64_t local_text_len,
                                             const flux::SequenceParallelAttention* spa,
                                             BlockSource& blocks) const {
  if (fused_blocks_ && flux::UseFusedBlocks(hidden)) {
    for (size_t i = first_double; i < transformer_blocks_.size(); ++i) {
      std::tie(context, hidden) =
          flux::DoubleBlockForwardFused(blocks.Double(i), hidden, context, temb, rope, spa);
    }
    // The single blocks work on the joint sequence; it stays joined between them.
    at::Tensor joint = at::cat({context, hidden}, 1);
    for (size_t i = 0; i < single_transformer_blocks_.size(); ++i) {
      joint =
          flux::SingleBlockForwardFused(blocks.Single(i), joint, local_text_len, temb, rope, spa);
    }
    return joint.narrow(1, local_text_len, joint.size(1) - local_text_len);
  }
  for (size_t i = first_double; i < transformer_blocks_.size(); ++i) {
    std::tie(context, hidden) =
        flux::DoubleBlockForward(blocks.Double(i), hidden, context, temb, rope, spa);
  }
  for (size_t i = 0; i < single_transformer_blocks_.size(); ++i) {
    std::tie(context, hidden) =
        flux::SingleBlockForward(blocks.Single(i), hidden, context, temb, rope, spa);
  }
  return hidden;
}

// Both methods keep only the image stream: norm_out and proj_out read nothing else. The change
// metric covers this rank's real image tokens; the padding of a group's last shards (at the end
// of a shard) is left out so that the group's sums equal one rank's over the same tokens.
absl::StatusOr<at::Tensor> FluxTransformer2DModel::RunCachedBlocks(
    StepCacheStep& cache, const at::Tensor& hidden, const at::Tensor& context,
    const flux::Conditioning& temb, const flux::Rope& rope, int64_t local_text_len,
    const flux::SequenceParallelAttention* spa, BlockSource& blocks) const {
  cache.skipped = false;
  const int64_t real_tokens =
      spa == nullptr ? hidden.size(1)
                     : spa->image_plan().ValidIn(spa->image_plan().start(), hidden.size(1));
  if (cache.method == StepCacheMethod::kTeaCache) {
    // TeaCache4FLUX's signal: transformer_blocks[0].norm1(hidden, temb)'s modulated output,
    // AdaLayerNormZero's shift_msa / scale_msa (the first two of its six chunks).
    const flux::DoubleBlockWeights& first = blocks.Double(0);
    const std::vector<at::Tensor> m =
        flux::Modulation(first.norm1, temb, first.norm1_column).chunk(6, 1);
    return TeaCacheStep(
        cache, hidden, flux::LayerNormModulate(hidden, m[0], m[1]), real_tokens,
        [&] { return RunBlocks(0, hidden, context, temb, rope, local_text_len, spa, blocks); });
  }
  // fbcache: block 0 always runs, on the same path (fused or not) as RunBlocks would run it.
  at::Tensor first_context, first_hidden;
  const flux::DoubleBlockWeights& first = blocks.Double(0);
  if (fused_blocks_ && flux::UseFusedBlocks(hidden)) {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForwardFused(first, hidden, context, temb, rope, spa);
  } else {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForward(first, hidden, context, temb, rope, spa);
  }
  return FirstBlockCacheStep(cache, hidden, first_hidden, real_tokens, [&] {
    return RunBlocks(1, first_hidden, first_context, temb, rope, local_text_len, spa, blocks);
  });
}

// Row b's decisions and tensors are those of its lone RunCachedBlocks on the same inputs: the
// same operations on its own slices ([1, N, D], fresh tensors, so a row's kept tensors never hold
// the batch's storage), only the block stack runs on several rows at once. Rows keep their order:
// `run` (rows entering block 0) and `rest` (positions in `run` going on after it) are ascending.
absl::StatusOr<at::Tensor> FluxTransformer2DModel::RunCachedRows(
    const std::vector<StepCacheStep*>& row_caches, const at::Tensor& hidden,
    const at::Tensor& context, const flux::Conditioning& temb, const flux::Rope& rope,
    int64_t local_text_len, const flux::SequenceParallelAttention* spa, BlockSource& blocks) const {
  const int64_t batch = hidden.size(0);
  // This rank's real image tokens, as RunCachedBlocks counts them.
  const int64_t tokens = spa == nullptr
                             ? hidden.size(1)
                             : spa->image_plan().ValidIn(spa->image_plan().start(), hidden.size(1));
  const auto method_of = [&](int64_t b) {
    const StepCacheStep* row = row_caches[static_cast<size_t>(b)];
    return row == nullptr ? StepCacheMethod::kNone : row->method;
  };
  const auto row_of = [](const at::Tensor& t, int64_t b) { return t.narrow(0, b, 1); };
  // The rows `index` (ascending) of `t`; `t` itself when that is every row.
  const auto select = [](const at::Tensor& t, const std::vector<int64_t>& index) {
    if (static_cast<int64_t>(index.size()) == t.size(0)) return t;
    return t.index_select(0, at::tensor(index, at::kLong).to(t.device()));
  };
  std::vector<at::Tensor> out(static_cast<size_t>(batch));
  std::vector<at::Tensor> modulation;  // teacache: block 0's shift_msa / scale_msa, every row
  std::vector<int64_t> run;
  for (int64_t b = 0; b < batch; ++b) {
    StepCacheStep* row = row_caches[static_cast<size_t>(b)];
    if (row != nullptr) row->skipped = false;
    if (method_of(b) == StepCacheMethod::kTeaCache) {
      if (modulation.empty()) {
        const flux::DoubleBlockWeights& first = blocks.Double(0);
        modulation = flux::Modulation(first.norm1, temb, first.norm1_column).chunk(6, 1);
      }
      const at::Tensor in = row_of(hidden, b);
      const at::Tensor signal =
          flux::LayerNormModulate(in, row_of(modulation[0], b), row_of(modulation[1], b));
      ASSIGN_OR_RETURN(const bool skip, TeaCacheDecide(*row, signal, tokens));
      if (skip) {
        out[static_cast<size_t>(b)] = in + row->tensors->residual;
        continue;
      }
    }
    run.push_back(b);
  }
  if (run.empty()) return at::cat(out, 0);
  const at::Tensor first_in = select(hidden, run);
  // The conditioning's rows `index` of those in `of` (every row: `of` itself).
  const auto select_rows = [](const flux::Conditioning& of, const std::vector<int64_t>& index,
                              int64_t rows) {
    if (static_cast<int64_t>(index.size()) == rows) return of;
    const at::Tensor& any = of.rows.defined() ? of.rows : of.temb;
    return of.Select(at::tensor(index, at::kLong).to(any.device()));
  };
  const flux::Conditioning run_temb = select_rows(temb, run, batch);
  at::Tensor first_context, first_hidden;
  const flux::DoubleBlockWeights& first = blocks.Double(0);
  if (fused_blocks_ && flux::UseFusedBlocks(first_in)) {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForwardFused(first, first_in, select(context, run), run_temb, rope, spa);
  } else {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForward(first, first_in, select(context, run), run_temb, rope, spa);
  }
  std::vector<at::Tensor> first_residual(run.size());
  std::vector<int64_t> rest;
  for (size_t i = 0; i < run.size(); ++i) {
    const int64_t b = run[i];
    const int64_t r = static_cast<int64_t>(i);
    if (method_of(b) == StepCacheMethod::kFirstBlock) {
      StepCacheStep& row = *row_caches[static_cast<size_t>(b)];
      first_residual[i] = row_of(first_hidden, r) - row_of(first_in, r);
      ASSIGN_OR_RETURN(const bool skip, FirstBlockCacheDecide(row, first_residual[i], tokens));
      if (skip) {
        out[static_cast<size_t>(b)] = row_of(first_hidden, r) + row.tensors->residual;
        continue;
      }
    }
    rest.push_back(r);
  }
  if (rest.empty()) return at::cat(out, 0);
  const at::Tensor last = RunBlocks(1, select(first_hidden, rest), select(first_context, rest),
                                    select_rows(run_temb, rest, static_cast<int64_t>(run.size())),
                                    rope, local_text_len, spa, blocks);
  // Every row ran in full and kept its tensors below: the stack's output as it is.
  const bool all_ran = static_cast<int64_t>(rest.size()) == batch;
  for (size_t j = 0; j < rest.size(); ++j) {
    const int64_t r = rest[j];
    const int64_t b = run[static_cast<size_t>(r)];
    const at::Tensor row_out = row_of(last, static_cast<int64_t>(j));
    StepCacheStep* row = row_caches[static_cast<size_t>(b)];
    if (method_of(b) == StepCacheMethod::kTeaCache) {
      TeaCacheKeep(*row, row_of(first_in, r), row_out);
    } else if (method_of(b) == StepCacheMethod::kFirstBlock) {
      FirstBlockCacheKeep(*row, first_residual[static_cast<size_t>(r)], row_of(first_hidden, r),
                          row_out);
    }
    out[static_cast<size_t>(b)] = row_out;
  }
  return all_ran ? last : at::cat(out, 0);
}

}  // namespace dgrid
