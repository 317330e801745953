// Ref: diffusers WanTransformer3DModel, WanTransformerBlock, WanAttention / WanAttnProcessor,
// WanTimeTextImageEmbedding, WanRotaryPosEmbed, FP32LayerNorm (transformer_wan.py,
// normalization.py, 0.42.1); the attention runs through torch's SDPA as diffusers' native backend
// does ([B, S, H, D] permuted to [B, H, S, D] and back).
#include "services/denoiser/models/wan_transformer.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "kernels/rms_norm.h"
#include "kernels/wan_fused.h"
#include "services/denoiser/models/sequence_attention.h"

namespace dgrid {
namespace {

constexpr double kRopeTheta = 10000.0;

// diffusers' _keep_in_fp32_modules of WanTransformer3DModel, matched as diffusers matches them:
// any dot-separated part of the parameter name.
bool KeepsFloat32(const std::string& name) {
  for (absl::string_view part : absl::StrSplit(name, '.')) {
    if (part == "rope" || part == "time_embedder" || part == "scale_shift_table" ||
        part == "norm1" || part == "norm2" || part == "norm3") {
      return true;
    }
  }
  return false;
}

// FP32LayerNorm: layer_norm in float32, back to the input's dtype.
at::Tensor Fp32LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         double eps) {
  const at::Tensor w = weight.defined() ? weight.to(at::kFloat) : at::Tensor();
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
  return at::layer_norm(x.to(at::kFloat), {x.size(-1)}, w, b, eps).to(x.scalar_type());
}

// F.gelu(F.linear(x, W, b), approximate="tanh") as one GEMM with the GELU in its epilogue
// (cuBLASLt): on the float accumulator rather than the rounded product, so within a rounding step
// of the reference's two ops. Only on CUDA: ATen's CPU _addmm_activation applies the erf GELU.
at::Tensor GeluLinear(const flux::Linear& linear, const at::Tensor& x) {
  if (!linear.bias.defined() || !x.is_cuda()) {
    return at::gelu(flux::ApplyLinear(linear, x), "tanh");
  }
  const at::Tensor flat = x.reshape({-1, x.size(-1)});
  const at::Tensor y =
      at::_addmm_activation(linear.bias, flat, linear.weight.t(), 1, 1, /*use_gelu=*/true);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(linear.weight.size(0));
  return y.view(shape);
}

// Self-attention of q, k, v [B, S, H, D] on one rank: SDPA over their [B, H, S, D] views (the
// attention kernels write the output in the query's layout, so the transpose back is free).
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor out =
      at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
  return out.transpose(1, 2).reshape({q.size(0), q.size(1), q.size(2) * q.size(3)});
}

std::atomic<bool> fused_enabled_for_testing{true};
std::atomic<bool> fused_on_cpu_for_testing{false};

// RoPE tables kept per patch grid and device; a handful (one per video size served) is plenty.
constexpr size_t kRopeCacheEntries = 4;

// Every tensor of a flux::Linear, for layerwise offload (a block's list is ForEachBlockTensor).
template <typename Fn>
void ForEachLinearTensor(flux::Linear& l, Fn& fn) {
  fn(l.weight);
  fn(l.bias);
  fn(l.weight_scale);
}

}  // namespace

bool UseWanFusedBlocks(const at::Tensor& x) {
  static const bool disabled = [] {
    const char* v = std::getenv("DGRID_WAN_FUSED");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  if (disabled || !fused_enabled_for_testing.load(std::memory_order_relaxed)) return false;
  if (x.is_cpu() && fused_on_cpu_for_testing.load(std::memory_order_relaxed)) return true;
  return x.is_cuda() && kernels::HaveCudaKernels();
}

void SetWanFusedBlocksEnabledForTesting(bool enabled) { fused_enabled_for_testing.store(enabled); }

void SetWanFusedBlocksOnCpuForTesting(bool enabled) { fused_on_cpu_for_testing.store(enabled); }

struct WanTransformer3DModel::RopeCache {
  struct Entry {
    std::array<int64_t, 3> grid;
    at::Device device;
    flux::Rope rope;
  };
  absl::Mutex mu;
  std::deque<Entry> entries ABSL_GUARDED_BY(mu);  // newest last
};

flux::Rope WanTransformer3DModel::RopeFor(int64_t frames, int64_t rows, int64_t columns,
                                          const at::Device& device) const {
  const std::array<int64_t, 3> grid = {frames, rows, columns};
  absl::MutexLock lock(&rope_cache_->mu);
  for (const RopeCache::Entry& e : rope_cache_->entries) {
    if (e.grid == grid && e.device == device) return e.rope;
  }
  // RoPE over (frame, row, column) of each token, frame-major as flatten(2) orders them.
  const auto index = at::TensorOptions().dtype(at::kLong);
  const std::vector<at::Tensor> mesh = at::meshgrid(
      {at::arange(frames, index), at::arange(rows, index), at::arange(columns, index)}, "ij");
  const at::Tensor ids = at::stack({mesh[0].flatten(), mesh[1].flatten(), mesh[2].flatten()}, 1);
  const std::array<int64_t, 3> dims = config_.rope_dims();
  flux::Rope rope = flux::ComputeRope(ids, {dims[0], dims[1], dims[2]}, kRopeTheta);
  rope.cos = rope.cos.to(device);
  rope.sin = rope.sin.to(device);
  if (rope_cache_->entries.size() >= kRopeCacheEntries) rope_cache_->entries.pop_front();
  rope_cache_->entries.push_back({grid, device, rope});
  return rope;
}

std::array<int64_t, 3> WanTransformerConfig::rope_dims() const {
  const int64_t hw = 2 * (attention_head_dim / 6);
  return {attention_head_dim - 2 * hw, hw, hw};
}

absl::StatusOr<WanTransformerConfig> WanTransformerConfig::FromJson(const JsonConfig& json) {
  WanTransformerConfig c;
  ASSIGN_OR_RETURN(std::vector<int64_t> patch,
                   json.GetIntList("patch_size", {c.patch_size.begin(), c.patch_size.end()}));
  if (patch.size() != 3 || patch[0] < 1 || patch[1] < 1 || patch[2] < 1) {
    return InvalidArgument(json.source(), ": patch_size must be 3 positive integers, got [",
                           absl::StrJoin(patch, ", "), "]");
  }
  c.patch_size = {patch[0], patch[1], patch[2]};
  ASSIGN_OR_RETURN(c.num_attention_heads,
                   json.GetInt("num_attention_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(c.attention_head_dim, json.GetInt("attention_head_dim", c.attention_head_dim));
  ASSIGN_OR_RETURN(c.in_channels, json.GetInt("in_channels", c.in_channels));
  ASSIGN_OR_RETURN(c.out_channels, json.GetInt("out_channels", c.out_channels));
  ASSIGN_OR_RETURN(c.text_dim, json.GetInt("text_dim", c.text_dim));
  ASSIGN_OR_RETURN(c.freq_dim, json.GetInt("freq_dim", c.freq_dim));
  ASSIGN_OR_RETURN(c.ffn_dim, json.GetInt("ffn_dim", c.ffn_dim));
  ASSIGN_OR_RETURN(c.num_layers, json.GetInt("num_layers", c.num_layers));
  ASSIGN_OR_RETURN(c.cross_attn_norm, json.GetBool("cross_attn_norm", c.cross_attn_norm));
  ASSIGN_OR_RETURN(c.eps, json.GetDouble("eps", c.eps));
  ASSIGN_OR_RETURN(c.rope_max_seq_len, json.GetInt("rope_max_seq_len", c.rope_max_seq_len));
  if (c.out_channels == 0) c.out_channels = c.in_channels;  // `out_channels or in_channels`
  for (const auto& [key, value] :
       {std::pair<const char*, int64_t>{"num_attention_heads", c.num_attention_heads},
        {"attention_head_dim", c.attention_head_dim},
        {"in_channels", c.in_channels},
        {"out_channels", c.out_channels},
        {"text_dim", c.text_dim},
        {"freq_dim", c.freq_dim},
        {"ffn_dim", c.ffn_dim},
        {"num_layers", c.num_layers},
        {"rope_max_seq_len", c.rope_max_seq_len}}) {
    RETURN_IF_ERROR(json.CheckPositive(key, value));
  }
  const std::array<int64_t, 3> rope = c.rope_dims();
  if (c.attention_head_dim % 2 != 0 || rope[0] < 2 || rope[1] < 2 || rope[0] % 2 != 0) {
    return InvalidArgument(json.source(), ": attention_head_dim ", c.attention_head_dim,
                           " cannot be split into the three even RoPE axes");
  }
  if (!(c.eps > 0)) return InvalidArgument(json.source(), ": eps must be > 0, got ", c.eps);
  for (const char* key : {"image_dim", "added_kv_proj_dim", "pos_embed_seq_len"}) {
    if (json.Has(key)) {
      return absl::UnimplementedError(absl::StrCat(
          json.source(), ": ", key, " (image conditioning, the I2V models) is not supported"));
    }
  }
  return c;
}

absl::StatusOr<WanTransformer3DModel> WanTransformer3DModel::Load(
    const std::string& component_folder, const LoadOptions& options, WeightMap* taken) {
  ASSIGN_OR_RETURN(JsonConfig json, JsonConfig::FromFile(component_folder + "/config.json"));
  ASSIGN_OR_RETURN(WanTransformerConfig config, WanTransformerConfig::FromJson(json));
  LoadOptions read_options = options;
  read_options.floating_dtype.reset();
  // With offload the checkpoint is read into host memory; OffloadBlocks moves what is not a block.
  if (options.dit_offload.layerwise) read_options.device = "cpu";
  if (options.dit_shard.weights) {
    // Refused before reading gigabytes (ShardBlocks says the same). Only this rank's shards and
    // the weights outside the blocks reach the device.
    RETURN_IF_ERROR(CheckDitShardGroup(options.dit_shard, options.dit_shard.size));
    read_options.device = "cpu";
  }
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(component_folder, read_options));
  if (options.floating_dtype.has_value()) {
    const std::string& name = *options.floating_dtype;
    const at::ScalarType target = name == "bfloat16"  ? at::kBFloat16
                                  : name == "float16" ? at::kHalf
                                                      : at::kFloat;
    RETURN_IF_ERROR(TorchCall("Wan transformer dtype conversion", [&] {
      std::vector<std::pair<std::string, at::Tensor>> converted;
      for (const auto& [param, tensor] : weights.tensors()) {
        if (!tensor.is_floating_point()) continue;
        converted.emplace_back(param, tensor.to(KeepsFloat32(param) ? at::kFloat : target));
      }
      for (auto& [param, tensor] : converted) weights.Insert(param, std::move(tensor));
    }));
  }
  const WeightMap all = taken != nullptr ? weights : WeightMap();
  absl::StatusOr<WanTransformer3DModel> model = FromWeights(config, weights);
  if (!model.ok()) {
    return Annotate(model.status(),
                    absl::StrCat("loading WanTransformer3DModel from ", component_folder));
  }
  if (taken != nullptr) *taken = TakenWeights(all, weights);
  const std::vector<std::string> unused = weights.RemainingNames();
  if (!unused.empty()) {
    DG_LOG_WARN("", "%s: %d unused parameters in checkpoint (first: %s)", component_folder,
                static_cast<int>(unused.size()), unused.front());
  }
  DG_LOG_INFO("", "loaded WanTransformer3DModel from %s: %d blocks, dim %d", component_folder,
              static_cast<int>(config.num_layers), static_cast<int>(config.inner_dim()));
  RETURN_IF_ERROR(model->OffloadBlocks(options.device, options.dit_offload));
  if (const LayerwiseOffload* offload = model->offload()) {
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
  RETURN_IF_ERROR(model->ShardBlocks(options.device, options.dit_shard));
  if (const ShardedBlocks* sharded = model->sharded()) {
    int64_t outside = 0;
    for (at::Tensor* t : model->OutsideBlockTensors()) {
      if (t->defined()) outside += static_cast<int64_t>(t->nbytes());
    }
    LogShardedWeights(*sharded, outside, options.device);
  }
  return model;
}

absl::StatusOr<WanTransformer3DModel> WanTransformer3DModel::FromWeights(
    const WanTransformerConfig& config, WeightMap& weights) {
  WanTransformer3DModel m;
  m.config_ = config;
  m.rope_cache_ = std::make_shared<RopeCache>();
  const int64_t dim = config.inner_dim();
  const auto& p = config.patch_size;
  ASSIGN_OR_RETURN(m.patch_weight_, weights.Take("patch_embedding.weight",
                                                 {dim, config.in_channels, p[0], p[1], p[2]}));
  ASSIGN_OR_RETURN(m.patch_bias_, weights.Take("patch_embedding.bias", {dim}));
  ASSIGN_OR_RETURN(
      m.time_embedder_.linear_1,
      flux::TakeLinear(weights, "condition_embedder.time_embedder.linear_1", config.freq_dim, dim));
  ASSIGN_OR_RETURN(
      m.time_embedder_.linear_2,
      flux::TakeLinear(weights, "condition_embedder.time_embedder.linear_2", dim, dim));
  ASSIGN_OR_RETURN(m.time_proj_,
                   flux::TakeLinear(weights, "condition_embedder.time_proj", dim, 6 * dim));
  ASSIGN_OR_RETURN(
      m.text_in_,
      flux::TakeLinear(weights, "condition_embedder.text_embedder.linear_1", config.text_dim, dim));
  ASSIGN_OR_RETURN(
      m.text_out_,
      flux::TakeLinear(weights, "condition_embedder.text_embedder.linear_2", dim, dim));
  auto take_attention = [&](const std::string& prefix) -> absl::StatusOr<Attention> {
    Attention a;
    ASSIGN_OR_RETURN(a.to_q, flux::TakeLinear(weights, prefix + ".to_q", dim, dim));
    ASSIGN_OR_RETURN(a.to_k, flux::TakeLinear(weights, prefix + ".to_k", dim, dim));
    ASSIGN_OR_RETURN(a.to_v, flux::TakeLinear(weights, prefix + ".to_v", dim, dim));
    ASSIGN_OR_RETURN(a.to_out, flux::TakeLinear(weights, prefix + ".to_out.0", dim, dim));
    ASSIGN_OR_RETURN(a.norm_q, weights.Take(prefix + ".norm_q.weight", {dim}));
    ASSIGN_OR_RETURN(a.norm_k, weights.Take(prefix + ".norm_k.weight", {dim}));
    return a;
  };
  m.blocks_.resize(config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string prefix = absl::StrCat("blocks.", i);
    Block& b = m.blocks_[i];
    ASSIGN_OR_RETURN(b.attn1, take_attention(prefix + ".attn1"));
    ASSIGN_OR_RETURN(b.attn2, take_attention(prefix + ".attn2"));
    if (config.cross_attn_norm) {
      ASSIGN_OR_RETURN(b.norm2_weight, weights.Take(prefix + ".norm2.weight", {dim}));
      ASSIGN_OR_RETURN(b.norm2_bias, weights.Take(prefix + ".norm2.bias", {dim}));
    }
    ASSIGN_OR_RETURN(b.ffn_in,
                     flux::TakeLinear(weights, prefix + ".ffn.net.0.proj", dim, config.ffn_dim));
    ASSIGN_OR_RETURN(b.ffn_out,
                     flux::TakeLinear(weights, prefix + ".ffn.net.2", config.ffn_dim, dim));
    ASSIGN_OR_RETURN(b.scale_shift_table, weights.Take(prefix + ".scale_shift_table", {1, 6, dim}));
  }
  ASSIGN_OR_RETURN(m.proj_out_, flux::TakeLinear(weights, "proj_out", dim,
                                                 config.out_channels * p[0] * p[1] * p[2]));
  ASSIGN_OR_RETURN(m.scale_shift_table_, weights.Take("scale_shift_table", {1, 2, dim}));
  return m;
}

at::TensorOptions WanTransformer3DModel::options() const {
  if (sharded_ != nullptr && !blocks_.empty()) {
    // attn1.to_q.weight, the first tensor of a block (ForEachBlockTensor), as gathered.
    return sharded_->tensor_options(0, 0);
  }
  if (offload_ != nullptr && !blocks_.empty()) {
    // The blocks' dtype on the device they are copied to (their host copies are pinned).
    return blocks_[0].attn1.to_q.weight.options().device(offload_->device()).pinned_memory(false);
  }
  return blocks_.empty() ? patch_weight_.options() : blocks_[0].attn1.to_q.weight.options();
}

namespace {

// Every tensor of a Wan block in one fixed order. A field added to Block or Attention must be
// added here; the size checks fail to compile until it is.
template <typename Attention, typename Fn>
void ForEachAttentionTensor(Attention& a, Fn& fn) {
  for (flux::Linear* l : {&a.to_q, &a.to_k, &a.to_v, &a.to_out}) ForEachLinearTensor(*l, fn);
  fn(a.norm_q);
  fn(a.norm_k);
}

template <typename Block, typename Fn>
void ForEachBlockTensor(Block& b, Fn& fn) {
  static_assert(sizeof(b.attn1) == 4 * sizeof(flux::Linear) + 2 * sizeof(at::Tensor),
                "WanTransformer3DModel::Attention changed: update ForEachAttentionTensor");
  static_assert(
      sizeof(Block) == 2 * sizeof(b.attn1) + 2 * sizeof(flux::Linear) + 3 * sizeof(at::Tensor),
      "WanTransformer3DModel::Block changed: update ForEachBlockTensor");
  ForEachAttentionTensor(b.attn1, fn);
  ForEachAttentionTensor(b.attn2, fn);
  fn(b.norm2_weight);
  fn(b.norm2_bias);
  ForEachLinearTensor(b.ffn_in, fn);
  ForEachLinearTensor(b.ffn_out, fn);
  fn(b.scale_shift_table);
}

template <typename Block>
std::vector<at::Tensor> TakeBlockTensors(Block& block) {
  std::vector<at::Tensor> out;
  auto take = [&](at::Tensor& t) { out.push_back(std::move(t)); };
  ForEachBlockTensor(block, take);
  return out;
}

template <typename Block>
void SetBlockTensors(Block& block, const std::vector<at::Tensor>& tensors) {
  size_t i = 0;
  auto set = [&](at::Tensor& t) { t = tensors[i++]; };
  ForEachBlockTensor(block, set);
}

}  // namespace

// As FluxTransformer2DModel::BlockSource: the model's blocks, with offload the device copies of
// one forward pass, with sharding its gathered blocks; the previous block's struct is dropped
// before the next is acquired.
class WanTransformer3DModel::BlockSource {
 public:
  // With sharding, `group` is the communicator the model was checked against (Forward).
  BlockSource(const WanTransformer3DModel& model, Communicator* group) : model_(model) {
    if (model.offload_ != nullptr) pass_.emplace(*model.offload_, model.offload_observer_.get());
    if (model.sharded_ != nullptr) {
      shard_pass_.emplace(*model.sharded_, *group, model.shard_observer_.get());
    }
  }
  // Valid until the next call.
  const Block& operator[](size_t i) {
    if (!pass_.has_value() && !shard_pass_.has_value()) return model_.blocks_[i];
    const int64_t layer = static_cast<int64_t>(i);
    if (layer != current_) {
      block_.reset();
      current_ = -1;
      block_ = model_.blocks_[i];
      SetBlockTensors(*block_,
                      pass_.has_value() ? pass_->Acquire(layer) : shard_pass_->Acquire(layer));
      current_ = layer;
    }
    return *block_;
  }
  // A failed gather's own status (sharding); OK otherwise.
  absl::Status status() const {
    return shard_pass_.has_value() ? shard_pass_->status() : absl::OkStatus();
  }

 private:
  const WanTransformer3DModel& model_;
  std::optional<LayerwiseOffload::Pass> pass_;
  std::optional<ShardedBlocks::Pass> shard_pass_;
  std::optional<Block> block_;
  int64_t current_ = -1;
};

absl::Status WanTransformer3DModel::OffloadBlocks(const std::string& device,
                                                  const DitOffload& offload) {
  if (!offload.layerwise) return absl::OkStatus();
  if (offload_ != nullptr) {
    return InvalidArgument("--dit-offload layerwise: the model's blocks are offloaded already");
  }
  if (sharded_ != nullptr) {
    return InvalidArgument("--dit-offload layerwise: not combined with --dit-shard-weights");
  }
  if (!patch_weight_.device().is_cpu()) {
    return InvalidArgument("--dit-offload layerwise: the model's weights are on ",
                           patch_weight_.device().str(),
                           "; offload starts from weights on the CPU");
  }
  return TorchCall("--dit-offload layerwise", [&]() -> absl::Status {
    const c10::Device target(device);
    std::vector<std::vector<at::Tensor>> layers;
    for (Block& b : blocks_) layers.push_back(TakeBlockTensors(b));
    ASSIGN_OR_RETURN(offload_, LayerwiseOffload::Create(
                                   std::move(layers), target,
                                   offload.PrefetchDepth(static_cast<int64_t>(blocks_.size()))));
    for (size_t i = 0; i < blocks_.size(); ++i) {
      SetBlockTensors(blocks_[i], offload_->host_layer(static_cast<int64_t>(i)));
    }
    for (at::Tensor* t : OutsideBlockTensors()) {
      if (t->defined()) *t = t->to(target);
    }
    return absl::OkStatus();
  });
}

std::vector<at::Tensor*> WanTransformer3DModel::OutsideBlockTensors() {
  std::vector<at::Tensor*> out = {&patch_weight_, &patch_bias_, &scale_shift_table_};
  auto add = [&](at::Tensor& t) { out.push_back(&t); };
  for (flux::Linear* l : {&time_embedder_.linear_1, &time_embedder_.linear_2, &time_proj_,
                          &text_in_, &text_out_, &proj_out_}) {
    ForEachLinearTensor(*l, add);
  }
  return out;
}

absl::Status WanTransformer3DModel::ShardBlocks(const std::string& device, const DitShard& shard) {
  if (!shard.weights) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDitShardGroup(shard, shard.size));
  if (offload_ != nullptr) {
    return InvalidArgument("--dit-shard-weights: not combined with --dit-offload layerwise");
  }
  if (sharded_ != nullptr) {
    return InvalidArgument("--dit-shard-weights: the model's blocks are sharded already");
  }
  if (!patch_weight_.device().is_cpu()) {
    return InvalidArgument("--dit-shard-weights: the model's weights are on ",
                           patch_weight_.device().str(),
                           "; sharding starts from weights on the CPU");
  }
  return TorchCall("--dit-shard-weights", [&]() -> absl::Status {
    const c10::Device target(device);
    std::vector<std::vector<at::Tensor>> blocks;
    // blocks_ keep no tensors: a pass points a copy of a block at the gathered tensors.
    for (Block& b : blocks_) blocks.push_back(TakeBlockTensors(b));
    ASSIGN_OR_RETURN(sharded_, ShardedBlocks::Create(std::move(blocks), shard.rank, shard.size,
                                                     shard.prefetch, target));
    for (at::Tensor* t : OutsideBlockTensors()) {
      if (t->defined()) *t = t->to(target);
    }
    return absl::OkStatus();
  });
}

void WanTransformer3DModel::SetShardObserverForTesting(
    ShardedBlocks::GatherObserverForTesting observer) {
  shard_observer_ = std::make_shared<ShardedBlocks::GatherObserverForTesting>(std::move(observer));
}

void WanTransformer3DModel::SetOffloadObserverForTesting(
    LayerwiseOffload::ResidencyObserverForTesting observer) {
  offload_observer_ =
      std::make_shared<LayerwiseOffload::ResidencyObserverForTesting>(std::move(observer));
}

at::Tensor WanTransformer3DModel::AttentionForward(
    const Attention& attn, const at::Tensor& x, const at::Tensor& context, const flux::Rope* rope,
    const flux::SequenceParallelAttention* sp) const {
  const int64_t heads = config_.num_attention_heads;
  const int64_t inner = config_.inner_dim();
  const at::Tensor& kv_source = context.defined() ? context : x;
  at::Tensor q = at::rms_norm(flux::ApplyLinear(attn.to_q, x), {inner}, attn.norm_q, config_.eps);
  at::Tensor k =
      at::rms_norm(flux::ApplyLinear(attn.to_k, kv_source), {inner}, attn.norm_k, config_.eps);
  at::Tensor v = flux::ApplyLinear(attn.to_v, kv_source);
  q = q.unflatten(2, {heads, -1});  // [B, S, H, D]
  k = k.unflatten(2, {heads, -1});
  v = v.unflatten(2, {heads, -1});
  if (rope != nullptr) {
    q = flux::ApplyRope(q, *rope);
    k = flux::ApplyRope(k, *rope);
  }
  at::Tensor out;
  if (sp != nullptr && !context.defined()) {
    out = sp->Attend(q, k, v);  // [B, S, H * D] in q's dtype, over the group's tokens
  } else {
    out = at::scaled_dot_product_attention(q.permute({0, 2, 1, 3}), k.permute({0, 2, 1, 3}),
                                           v.permute({0, 2, 1, 3}));
    out = out.permute({0, 2, 1, 3}).flatten(2, 3).to(q.scalar_type());
  }
  return flux::ApplyLinear(attn.to_out, out);
}

std::vector<at::Tensor> WanTransformer3DModel::BlockModulation(const Block& b,
                                                               const at::Tensor& timestep_proj) {
  // timestep_proj: [B, 6, D] (one timestep per sample) or [B, N, 6, D] (one per token).
  std::vector<at::Tensor> mod;
  if (timestep_proj.dim() == 4) {
    mod = (b.scale_shift_table.unsqueeze(0) + timestep_proj.to(at::kFloat)).chunk(6, 2);
    for (at::Tensor& t : mod) t = t.squeeze(2);
  } else {
    mod = (b.scale_shift_table + timestep_proj.to(at::kFloat)).chunk(6, 1);
  }
  return mod;
}

at::Tensor WanTransformer3DModel::RunBlocks(size_t first, at::Tensor h, const at::Tensor& context,
                                            const at::Tensor& timestep_proj, const flux::Rope& rope,
                                            const flux::SequenceParallelAttention* sp, bool fused,
                                            BlockSource& blocks) const {
  for (size_t i = first; i < blocks_.size(); ++i) {
    h = fused ? BlockForwardFused(blocks[i], h, context, timestep_proj, rope, sp)
              : BlockForward(blocks[i], h, context, timestep_proj, rope, sp);
  }
  return h;
}

// As FluxTransformer2DModel::RunCachedRows: the video tokens' stream only (the output norm and
// projection read nothing else), the change measured over this rank's real tokens. Member k's
// decisions and kept tensors are those of its lone pass on its own rows ([r, N, D] slices; the
// kept tensors are fresh results, never views of the batch): the per-row operations are the same,
// only the blocks run on several members' rows at once. Members keep their order: `run` (members
// entering block 0) and `rest` (positions in `run` going on after it) are ascending.
absl::StatusOr<at::Tensor> WanTransformer3DModel::RunCachedRows(
    const std::vector<StepCacheStep*>& member_caches, const at::Tensor& h,
    const at::Tensor& context, const at::Tensor& timestep_proj, const flux::Rope& rope,
    const flux::SequenceParallelAttention* sp, bool fused, BlockSource& blocks) const {
  const auto members = static_cast<int64_t>(member_caches.size());
  const int64_t rows = h.size(0) / members;  // per member
  const int64_t real_tokens =
      sp == nullptr ? h.size(1) : sp->image_plan().ValidIn(sp->image_plan().start(), h.size(1));
  const auto method_of = [&](int64_t k) {
    const StepCacheStep* c = member_caches[static_cast<size_t>(k)];
    return c == nullptr ? StepCacheMethod::kNone : c->method;
  };
  const auto rows_of = [rows](const at::Tensor& t, int64_t k) {
    return t.narrow(0, k * rows, rows);
  };
  // The rows of members `index` (ascending) of `t`; `t` itself when that is every member.
  const auto select = [&](const at::Tensor& t, const std::vector<int64_t>& index) {
    if (static_cast<int64_t>(index.size()) == t.size(0) / rows) return t;
    std::vector<int64_t> picked;
    for (const int64_t k : index) {
      for (int64_t j = 0; j < rows; ++j) picked.push_back(k * rows + j);
    }
    return t.index_select(0, at::tensor(picked, at::kLong).to(t.device()));
  };
  std::vector<at::Tensor> out(static_cast<size_t>(members));
  std::vector<at::Tensor> modulation;  // teacache: block 0's modulation, every row
  std::vector<int64_t> run;
  for (int64_t k = 0; k < members; ++k) {
    StepCacheStep* cache = member_caches[static_cast<size_t>(k)];
    if (cache != nullptr) cache->skipped = false;
    if (method_of(k) == StepCacheMethod::kTeaCache) {
      if (modulation.empty()) modulation = BlockModulation(blocks[0], timestep_proj);
      // Block 0's modulated input (its norm1 output, LayerNorm * (1 + scale_msa) + shift_msa), in
      // float32 as BlockForward computes it before the cast to the model dtype.
      const at::Tensor in = rows_of(h, k);
      const at::Tensor signal =
          Fp32LayerNorm(in.to(at::kFloat), {}, {}, config_.eps) * (1 + rows_of(modulation[1], k)) +
          rows_of(modulation[0], k);
      ASSIGN_OR_RETURN(const bool skip, TeaCacheDecide(*cache, signal, real_tokens));
      if (skip) {
        out[static_cast<size_t>(k)] = in + cache->tensors->residual;
        continue;
      }
    }
    run.push_back(k);
  }
  if (run.empty()) return at::cat(out, 0);
  // Block 0 (fbcache's signal) on the path RunBlocks would take.
  const at::Tensor first_in = select(h, run);
  const at::Tensor run_context = select(context, run);
  const at::Tensor run_steps = select(timestep_proj, run);
  const Block& first = blocks[0];
  const at::Tensor first_out =
      fused ? BlockForwardFused(first, first_in, run_context, run_steps, rope, sp)
            : BlockForward(first, first_in, run_context, run_steps, rope, sp);
  std::vector<at::Tensor> first_residual(run.size());
  std::vector<int64_t> rest;
  for (size_t i = 0; i < run.size(); ++i) {
    const int64_t k = run[i];
    const auto r = static_cast<int64_t>(i);
    if (method_of(k) == StepCacheMethod::kFirstBlock) {
      StepCacheStep& cache = *member_caches[static_cast<size_t>(k)];
      first_residual[i] = rows_of(first_out, r) - rows_of(first_in, r);
      ASSIGN_OR_RETURN(const bool skip,
                       FirstBlockCacheDecide(cache, first_residual[i], real_tokens));
      if (skip) {
        out[static_cast<size_t>(k)] = rows_of(first_out, r) + cache.tensors->residual;
        continue;
      }
    }
    rest.push_back(r);
  }
  if (rest.empty()) return at::cat(out, 0);
  const at::Tensor last = RunBlocks(1, select(first_out, rest), select(run_context, rest),
                                    select(run_steps, rest), rope, sp, fused, blocks);
  for (size_t j = 0; j < rest.size(); ++j) {
    const int64_t r = rest[j];
    const int64_t k = run[static_cast<size_t>(r)];
    const at::Tensor member_out = rows_of(last, static_cast<int64_t>(j));
    StepCacheStep* cache = member_caches[static_cast<size_t>(k)];
    if (method_of(k) == StepCacheMethod::kTeaCache) {
      TeaCacheKeep(*cache, rows_of(first_in, r), member_out);
    } else if (method_of(k) == StepCacheMethod::kFirstBlock) {
      FirstBlockCacheKeep(*cache, first_residual[static_cast<size_t>(r)], rows_of(first_out, r),
                          member_out);
    }
    out[static_cast<size_t>(k)] = member_out;
  }
  // Every member ran in full (and kept its tensors above): the stack's output as it is.
  return static_cast<int64_t>(rest.size()) == members ? last : at::cat(out, 0);
}

at::Tensor WanTransformer3DModel::BlockForward(const Block& b, const at::Tensor& x,
                                               const at::Tensor& context,
                                               const at::Tensor& timestep_proj,
                                               const flux::Rope& rope,
                                               const flux::SequenceParallelAttention* sp) const {
  const std::vector<at::Tensor> mod = BlockModulation(b, timestep_proj);
  const at::Tensor &shift_msa = mod[0], &scale_msa = mod[1], &gate_msa = mod[2];
  const at::Tensor &c_shift = mod[3], &c_scale = mod[4], &c_gate = mod[5];
  const at::ScalarType dtype = x.scalar_type();
  const double eps = config_.eps;

  at::Tensor h = x;
  at::Tensor normed =
      (Fp32LayerNorm(h.to(at::kFloat), {}, {}, eps) * (1 + scale_msa) + shift_msa).to(dtype);
  at::Tensor attn = AttentionForward(b.attn1, normed, at::Tensor(), &rope, sp);
  h = (h.to(at::kFloat) + attn * gate_msa).to(dtype);

  normed = b.norm2_weight.defined()
               ? Fp32LayerNorm(h.to(at::kFloat), b.norm2_weight, b.norm2_bias, eps).to(dtype)
               : h.to(at::kFloat).to(dtype);
  h = h + AttentionForward(b.attn2, normed, context, nullptr, nullptr);

  normed = (Fp32LayerNorm(h.to(at::kFloat), {}, {}, eps) * (1 + c_scale) + c_shift).to(dtype);
  const at::Tensor ff = flux::ApplyLinear(
      b.ffn_out, at::gelu(flux::ApplyLinear(b.ffn_in, normed), /*approximate=*/"tanh"));
  return (h.to(at::kFloat) + ff.to(at::kFloat) * c_gate).to(dtype);
}

at::Tensor WanTransformer3DModel::AttentionForwardFused(
    const Attention& attn, const at::Tensor& x, const at::Tensor& context, const flux::Rope* rope,
    const flux::SequenceParallelAttention* sp) const {
  const int64_t heads = config_.num_attention_heads;
  const at::Tensor& kv_source = context.defined() ? context : x;
  const at::Tensor no_table;
  // RMSNorm (+ RoPE for self-attention) in place on each fresh projection: [B, S, H * D] is the
  // [B, S, H, D] layout the attention reads.
  const at::Tensor q = kernels::WanRmsNormRope(flux::ApplyLinear(attn.to_q, x), attn.norm_q,
                                               config_.eps, rope != nullptr ? rope->cos : no_table,
                                               rope != nullptr ? rope->sin : no_table)
                           .unflatten(2, {heads, -1});
  const at::Tensor k = kernels::WanRmsNormRope(flux::ApplyLinear(attn.to_k, kv_source), attn.norm_k,
                                               config_.eps, rope != nullptr ? rope->cos : no_table,
                                               rope != nullptr ? rope->sin : no_table)
                           .unflatten(2, {heads, -1});
  const at::Tensor v = flux::ApplyLinear(attn.to_v, kv_source).unflatten(2, {heads, -1});
  const at::Tensor out =
      (sp != nullptr && !context.defined()) ? sp->Attend(q, k, v) : Attend(q, k, v);
  return flux::ApplyLinear(attn.to_out, out);
}

at::Tensor WanTransformer3DModel::BlockForwardFused(
    const Block& b, const at::Tensor& x, const at::Tensor& context, const at::Tensor& timestep_proj,
    const flux::Rope& rope, const flux::SequenceParallelAttention* sp) const {
  // The six modulation vectors as row vectors [B, 1 or N, D] (float32) of one [B, (N,) 6, D]
  // tensor: (shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate).
  const bool per_token = timestep_proj.dim() == 4;
  const at::Tensor mod = per_token ? b.scale_shift_table.unsqueeze(0) + timestep_proj.to(at::kFloat)
                                   : b.scale_shift_table + timestep_proj.to(at::kFloat);
  const auto part = [&](int64_t i) { return per_token ? mod.select(2, i) : mod.narrow(1, i, 1); };
  const double eps = config_.eps;

  at::Tensor normed = kernels::WanNormModulate(x, part(1), part(0), /*one_plus_scale=*/true, eps);
  const at::Tensor attn = AttentionForwardFused(b.attn1, normed, at::Tensor(), &rope, sp);
  at::Tensor h;
  if (b.norm2_weight.defined()) {
    std::tie(h, normed) = kernels::WanResidualNorm(
        x, attn, part(2), b.norm2_weight.to(at::kFloat).view({1, 1, -1}),
        b.norm2_bias.to(at::kFloat).view({1, 1, -1}), /*one_plus_scale=*/false, eps);
  } else {
    h = kernels::WanGatedResidual(x, attn, part(2));
    normed = h;
  }
  const at::Tensor cross = AttentionForwardFused(b.attn2, normed, context, nullptr, nullptr);
  std::tie(h, normed) = kernels::WanResidualNorm(h, cross, at::Tensor(), part(4), part(3),
                                                 /*one_plus_scale=*/true, eps);
  const at::Tensor ff = flux::ApplyLinear(b.ffn_out, GeluLinear(b.ffn_in, normed));
  return kernels::WanGatedResidual(h, ff, part(5));
}

absl::StatusOr<at::Tensor> WanTransformer3DModel::Forward(const WanTransformerInputs& in,
                                                          const SequenceParallelContext* sp,
                                                          StepCacheStep* cache) const {
  if (cache == nullptr) return ForwardPass(in, sp, /*member_caches=*/nullptr);
  const std::vector<StepCacheStep*> whole_batch = {cache};
  return ForwardPass(in, sp, &whole_batch);
}

absl::StatusOr<at::Tensor> WanTransformer3DModel::ForwardCachedRows(
    const WanTransformerInputs& in, const std::vector<StepCacheStep*>& member_caches,
    const SequenceParallelContext* sp) const {
  return ForwardPass(in, sp, &member_caches);
}

absl::StatusOr<at::Tensor> WanTransformer3DModel::ForwardPass(
    const WanTransformerInputs& in, const SequenceParallelContext* sp,
    const std::vector<StepCacheStep*>* member_caches) const {
  const at::Tensor& x = in.hidden_states;
  if (!x.defined() || x.dim() != 5 || x.size(1) != config_.in_channels) {
    return InvalidArgument("Wan transformer: hidden_states must be [batch, ", config_.in_channels,
                           ", frames, height, width]");
  }
  const auto& p = config_.patch_size;
  const int64_t batch = x.size(0);
  const int64_t frames = x.size(2), height = x.size(3), width = x.size(4);
  if (frames % p[0] != 0 || height % p[1] != 0 || width % p[2] != 0) {
    return InvalidArgument("Wan transformer: latent frames x height x width ", frames, " x ",
                           height, " x ", width, " are not multiples of the patch ", p[0], " x ",
                           p[1], " x ", p[2]);
  }
  const int64_t ppf = frames / p[0], pph = height / p[1], ppw = width / p[2];
  if (std::max({ppf, pph, ppw}) > config_.rope_max_seq_len) {
    return InvalidArgument("Wan transformer: a patch grid of ", ppf, " x ", pph, " x ", ppw,
                           " exceeds rope_max_seq_len ", config_.rope_max_seq_len);
  }
  const int64_t tokens = ppf * pph * ppw;
  const at::Tensor& text = in.encoder_hidden_states;
  if (!text.defined() || text.dim() != 3 || text.size(0) != batch ||
      text.size(2) != config_.text_dim) {
    return InvalidArgument("Wan transformer: encoder_hidden_states must be [", batch,
                           ", sequence, ", config_.text_dim, "]");
  }
  const at::Tensor& t = in.timestep;
  const bool per_token = t.defined() && t.dim() == 2;
  if (!t.defined() || !((t.dim() == 1 && t.size(0) == batch) ||
                        (per_token && t.size(0) == batch && t.size(1) == tokens))) {
    return InvalidArgument("Wan transformer: timestep must be [", batch, "] or [", batch, ", ",
                           tokens, "]");
  }
  if (member_caches != nullptr) {
    const auto members = static_cast<int64_t>(member_caches->size());
    if (members == 0 || batch % members != 0) {
      return InvalidArgument("Wan transformer: ", members, " step caches for a batch of ", batch,
                             " (it must be a multiple of them)");
    }
    for (const StepCacheStep* c : *member_caches) {
      if (c != nullptr && (c->tensors == nullptr || blocks_.empty())) {
        return InvalidArgument(
            "Wan transformer: step caching needs the cache's tensors and a block");
      }
    }
  }
  std::optional<flux::SequenceParallelAttention> parallel;
  if (sp != nullptr) {
    RETURN_IF_ERROR(sp->Validate(config_.num_attention_heads));
    parallel.emplace(*sp, /*text_length=*/0, tokens);  // self-attention: video tokens only
  }
  const flux::SequenceParallelAttention* spa = parallel ? &*parallel : nullptr;
  Communicator* group = sp != nullptr ? sp->group : nullptr;
  if (sharded_ != nullptr) RETURN_IF_ERROR(sharded_->CheckCommunicator(group));
  std::optional<BlockSource> source;
  const auto run = [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    const at::TensorOptions opts = options();
    const at::Tensor latents = x.to(opts);
    const at::Tensor context_in = text.to(opts);
    flux::Rope rope = RopeFor(ppf, pph, ppw, opts.device());

    at::Tensor h = at::conv3d(latents, patch_weight_, patch_bias_, {p[0], p[1], p[2]});
    h = h.flatten(2).transpose(1, 2).contiguous();  // [B, N, D]
    // One timestep per token [B, N] (expand_timesteps), else undefined.
    at::Tensor token_steps = per_token ? t : at::Tensor();
    int64_t local_tokens = tokens;
    if (spa != nullptr) {
      // This rank's tokens, with their RoPE rows and timesteps (padded rows: unrotated, t = 0).
      h = spa->ShardImage(h);
      rope = spa->ShardRope(rope);
      if (per_token) token_steps = spa->ShardImage(token_steps);
      local_tokens = h.size(1);
    }

    // Condition embedder: sinusoids -> time_embedder (in its own dtype) -> the text's dtype.
    const at::Tensor steps = (per_token ? token_steps.flatten() : t).to(opts.device());
    at::Tensor sinusoids = flux::TimestepSinusoids(steps, config_.freq_dim);
    if (per_token) sinusoids = sinusoids.unflatten(0, {-1, local_tokens});
    sinusoids = sinusoids.to(time_embedder_.linear_1.weight.scalar_type());
    const at::Tensor temb =
        flux::ApplyTimestepMlp(time_embedder_, sinusoids).to(context_in.scalar_type());
    at::Tensor timestep_proj = flux::ApplyLinear(time_proj_, at::silu(temb));
    timestep_proj = timestep_proj.unflatten(per_token ? 2 : 1, {6, -1});
    const at::Tensor context = flux::ApplyLinear(
        text_out_, at::gelu(flux::ApplyLinear(text_in_, context_in), /*approximate=*/"tanh"));

    const bool fused = UseWanFusedBlocks(h);
    BlockSource& blocks = source.emplace(*this, group);
    if (member_caches != nullptr) {
      ASSIGN_OR_RETURN(
          h, RunCachedRows(*member_caches, h, context, timestep_proj, rope, spa, fused, blocks));
    } else {
      h = RunBlocks(0, h, context, timestep_proj, rope, spa, fused, blocks);
    }

    std::vector<at::Tensor> shift_scale;
    if (temb.dim() == 3) {
      shift_scale = (scale_shift_table_.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, 2);
      for (at::Tensor& s : shift_scale) s = s.squeeze(2);
    } else {
      shift_scale = (scale_shift_table_ + temb.unsqueeze(1)).chunk(2, 1);
    }
    if (fused) {
      // shift_scale: [B, 1, D] or [B, N, D] float32 row vectors.
      h = kernels::WanNormModulate(h, shift_scale[1], shift_scale[0], /*one_plus_scale=*/true,
                                   config_.eps);
    } else {
      h = (Fp32LayerNorm(h.to(at::kFloat), {}, {}, config_.eps) * (1 + shift_scale[1]) +
           shift_scale[0])
              .to(h.scalar_type());
    }
    h = flux::ApplyLinear(proj_out_, h);
    if (spa != nullptr) h = spa->GatherImage(h);  // [B, N, ...] on every rank
    h = h.reshape({batch, ppf, pph, ppw, p[0], p[1], p[2], -1})
            .permute({0, 7, 1, 4, 2, 5, 3, 6})
            .flatten(6, 7)
            .flatten(4, 5)
            .flatten(2, 3);
    return h;
  };
  absl::StatusOr<at::Tensor> out = TorchCall("WanTransformer3DModel.Forward", run);
  // A failed collective keeps its own code rather than the INTERNAL of the exception it threw.
  if (spa != nullptr && !spa->status().ok()) return spa->status();
  if (source.has_value() && !source->status().ok()) return source->status();
  return out;
}

}  // namespace dgrid
