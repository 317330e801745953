#include "services/denoiser/models/flux_transformer.h"

#include <optional>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
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

}  // namespace

absl::StatusOr<FluxTransformer2DModel> FluxTransformer2DModel::Load(
    const std::string& component_folder, const LoadOptions& options) {
  ASSIGN_OR_RETURN(FluxTransformerConfig config,
                   FluxTransformerConfig::FromFile(component_folder + "/config.json"));
  ASSIGN_OR_RETURN(const flux::LinearPrecision precision,
                   flux::ParseLinearPrecision(options.dit_precision));
  ASSIGN_OR_RETURN(WeightMap weights, LoadSafetensorsFolder(component_folder, options));
  ASSIGN_OR_RETURN(FluxTransformer2DModel model, FromWeights(config, weights, precision));
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
  return m;
}

at::TensorOptions FluxTransformer2DModel::options() const { return x_embedder_.weight.options(); }

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

absl::StatusOr<at::Tensor> FluxTransformer2DModel::Forward(const FluxTransformerInputs& in,
                                                           const SequenceParallelContext* sp,
                                                           StepCacheStep* cache) const {
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
  if (cache != nullptr && (cache->tensors == nullptr || transformer_blocks_.empty())) {
    return bad("step caching needs the cache's tensors and a model with at least one double block");
  }
  const int64_t text_len = in.encoder_hidden_states.size(1);
  const int64_t image_len = in.hidden_states.size(1);
  std::optional<flux::SequenceParallelAttention> parallel;
  if (sp != nullptr) {
    RETURN_IF_ERROR(sp->Validate(c.num_attention_heads));
    parallel.emplace(*sp, text_len, image_len);
  }
  const flux::SequenceParallelAttention* spa = parallel ? &*parallel : nullptr;

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
    const at::Tensor timestep = in.timestep.to(opts) * 1000;
    const at::Tensor guidance = in.guidance.defined() ? in.guidance.to(opts) * 1000 : at::Tensor();
    const at::Tensor temb = flux::ApplyTimeTextEmbedding(time_text_embed_, timestep, guidance,
                                                         in.pooled_projections.to(opts));
    const at::Tensor context = flux::ApplyLinear(context_embedder_, encoder_hidden_states);

    if (cache != nullptr) {
      ASSIGN_OR_RETURN(hidden,
                       RunCachedBlocks(*cache, hidden, context, temb, *rope, local_text_len, spa));
    } else {
      hidden = RunBlocks(0, hidden, context, temb, *rope, local_text_len, spa);
    }
    hidden = flux::ApplyAdaLayerNormContinuous(norm_out_, hidden, temb);
    at::Tensor velocity = flux::ApplyLinear(proj_out_, hidden);
    if (spa != nullptr) velocity = spa->GatherImage(velocity);
    return velocity;
  };
  absl::StatusOr<at::Tensor> out = TorchCall("FluxTransformer2DModel.Forward", run);
  // A failed collective keeps its own code rather than the INTERNAL of the exception it threw.
  if (spa != nullptr && !spa->status().ok()) return spa->status();
  return out;
}

at::Tensor FluxTransformer2DModel::RunBlocks(size_t first_double, at::Tensor hidden,
                                             at::Tensor context, const at::Tensor& temb,
                                             const flux::Rope& rope, int64_t local_text_len,
                                             const flux::SequenceParallelAttention* spa) const {
  if (fused_blocks_ && flux::UseFusedBlocks(hidden)) {
    for (size_t i = first_double; i < transformer_blocks_.size(); ++i) {
      std::tie(context, hidden) =
          flux::DoubleBlockForwardFused(transformer_blocks_[i], hidden, context, temb, rope, spa);
    }
    // The single blocks work on the joint sequence; it stays joined between them.
    at::Tensor joint = at::cat({context, hidden}, 1);
    for (const flux::SingleBlockWeights& block : single_transformer_blocks_) {
      joint = flux::SingleBlockForwardFused(block, joint, local_text_len, temb, rope, spa);
    }
    return joint.narrow(1, local_text_len, joint.size(1) - local_text_len);
  }
  for (size_t i = first_double; i < transformer_blocks_.size(); ++i) {
    std::tie(context, hidden) =
        flux::DoubleBlockForward(transformer_blocks_[i], hidden, context, temb, rope, spa);
  }
  for (const flux::SingleBlockWeights& block : single_transformer_blocks_) {
    std::tie(context, hidden) = flux::SingleBlockForward(block, hidden, context, temb, rope, spa);
  }
  return hidden;
}

// Both methods keep only the image stream: norm_out and proj_out read nothing else. The change
// metric covers this rank's real image tokens; the padding of a group's last shards (at the end
// of a shard) is left out so that the group's sums equal one rank's over the same tokens.
absl::StatusOr<at::Tensor> FluxTransformer2DModel::RunCachedBlocks(
    StepCacheStep& cache, const at::Tensor& hidden, const at::Tensor& context,
    const at::Tensor& temb, const flux::Rope& rope, int64_t local_text_len,
    const flux::SequenceParallelAttention* spa) const {
  cache.skipped = false;
  const int64_t real_tokens =
      spa == nullptr ? hidden.size(1)
                     : spa->image_plan().ValidIn(spa->image_plan().start(), hidden.size(1));
  const flux::DoubleBlockWeights& first = transformer_blocks_.front();
  if (cache.method == StepCacheMethod::kTeaCache) {
    // TeaCache4FLUX's signal: transformer_blocks[0].norm1(hidden, temb)'s modulated output,
    // AdaLayerNormZero's shift_msa / scale_msa (the first two of its six chunks).
    const std::vector<at::Tensor> m = flux::ApplyLinear(first.norm1, at::silu(temb)).chunk(6, 1);
    return TeaCacheStep(
        cache, hidden, flux::LayerNormModulate(hidden, m[0], m[1]), real_tokens,
        [&] { return RunBlocks(0, hidden, context, temb, rope, local_text_len, spa); });
  }
  // fbcache: block 0 always runs, on the same path (fused or not) as RunBlocks would run it.
  at::Tensor first_context, first_hidden;
  if (fused_blocks_ && flux::UseFusedBlocks(hidden)) {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForwardFused(first, hidden, context, temb, rope, spa);
  } else {
    std::tie(first_context, first_hidden) =
        flux::DoubleBlockForward(first, hidden, context, temb, rope, spa);
  }
  return FirstBlockCacheStep(cache, hidden, first_hidden, real_tokens, [&] {
    return RunBlocks(1, first_hidden, first_context, temb, rope, local_text_len, spa);
  });
}

}  // namespace dgrid
