// Ref: transformers T5EncoderModel / T5Stack / T5Block / T5Attention / T5LayerNorm /
// T5DenseGatedActDense (models/t5/modeling_t5.py, transformers 5.24), run with its default "sdpa"
// attention (integrations/sdpa_attention.py: the position bias becomes SDPA's additive mask).
#include "services/encoder/models/t5_encoder.h"

#include <cmath>
#include <limits>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "kernels/rms_norm.h"
#include "services/encoder/models/component_files.h"

namespace dgrid::encoder {
namespace {

// torch.finfo(dtype).min, the "minus infinity" transformers writes into masked scores.
double LowestFinite(at::ScalarType type) {
  switch (type) {
    case at::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case at::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

// T5Block clamps float16 activations so that an overflow does not turn into inf/nan downstream.
at::Tensor ClampFloat16(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf) return x;
  const double max = static_cast<double>(std::numeric_limits<c10::Half>::max());
  const double bound = at::isinf(x).any().item<bool>() ? max - 1000 : max;
  return at::clamp(x, -bound, bound);
}

}  // namespace

absl::StatusOr<T5EncoderConfig> T5EncoderConfig::FromJson(const JsonConfig& json) {
  T5EncoderConfig c;
  ASSIGN_OR_RETURN(c.vocab_size, json.GetInt("vocab_size", c.vocab_size));
  ASSIGN_OR_RETURN(c.d_model, json.GetInt("d_model", c.d_model));
  ASSIGN_OR_RETURN(c.d_kv, json.GetInt("d_kv", c.d_kv));
  ASSIGN_OR_RETURN(c.d_ff, json.GetInt("d_ff", c.d_ff));
  ASSIGN_OR_RETURN(c.num_layers, json.GetInt("num_layers", c.num_layers));
  ASSIGN_OR_RETURN(c.num_heads, json.GetInt("num_heads", c.num_heads));
  ASSIGN_OR_RETURN(c.relative_attention_num_buckets,
                   json.GetInt("relative_attention_num_buckets", c.relative_attention_num_buckets));
  ASSIGN_OR_RETURN(
      c.relative_attention_max_distance,
      json.GetInt("relative_attention_max_distance", c.relative_attention_max_distance));
  ASSIGN_OR_RETURN(c.layer_norm_epsilon,
                   json.GetDouble("layer_norm_epsilon", c.layer_norm_epsilon));
  ASSIGN_OR_RETURN(c.feed_forward_proj, json.GetString("feed_forward_proj", c.feed_forward_proj));
  ASSIGN_OR_RETURN(std::string model_type, json.GetString("model_type", "t5"));
  c.bias_per_block = model_type == "umt5";
  RETURN_IF_ERROR(json.CheckPositive("vocab_size", c.vocab_size));
  RETURN_IF_ERROR(json.CheckPositive("d_model", c.d_model));
  RETURN_IF_ERROR(json.CheckPositive("d_kv", c.d_kv));
  RETURN_IF_ERROR(json.CheckPositive("d_ff", c.d_ff));
  RETURN_IF_ERROR(json.CheckPositive("num_layers", c.num_layers));
  RETURN_IF_ERROR(json.CheckPositive("num_heads", c.num_heads));
  // Bidirectional bucketing halves the buckets, then halves again for the exact range.
  if (c.relative_attention_num_buckets < 4) {
    return InvalidArgument(json.source(), ": relative_attention_num_buckets must be >= 4, got ",
                           c.relative_attention_num_buckets);
  }
  if (c.relative_attention_max_distance <= c.relative_attention_num_buckets / 4) {
    return InvalidArgument(json.source(), ": relative_attention_max_distance must exceed ",
                           c.relative_attention_num_buckets / 4);
  }
  // T5Config.validate_architecture + __post_init__.
  const std::vector<std::string> parts = absl::StrSplit(c.feed_forward_proj, '-');
  if ((parts.size() > 1 && parts[0] != "gated") || parts.size() > 2) {
    return InvalidArgument(json.source(), ": feed_forward_proj '", c.feed_forward_proj,
                           "' is not of the form 'gated-{ACT_FN}' or '{ACT_FN}'");
  }
  c.is_gated_act = parts[0] == "gated";
  const std::string act = c.feed_forward_proj == "gated-gelu" ? "gelu_new" : parts.back();
  absl::StatusOr<Activation> parsed = ParseActivation(act);
  if (!parsed.ok()) return Annotate(parsed.status(), json.source());
  c.dense_act_fn = *parsed;
  return c;
}

at::Tensor T5RelativePositionBucket(const at::Tensor& relative_position, int64_t num_buckets,
                                    int64_t max_distance) {
  // Encoder attention is bidirectional: the upper half of the buckets is for keys after the query.
  const int64_t half = num_buckets / 2;
  at::Tensor buckets = at::mul(at::gt(relative_position, 0).to(at::kLong), half);
  const at::Tensor distance = at::abs(relative_position);
  const int64_t max_exact = half / 2;
  const at::Tensor is_small = at::lt(distance, max_exact);
  // Same op order and float32 precision as the reference, so bucket edges fall identically.
  at::Tensor large = at::div(distance.to(at::kFloat), max_exact);
  large = at::mul(at::div(at::log(large), std::log(static_cast<double>(max_distance) /
                                                   static_cast<double>(max_exact))),
                  half - max_exact);
  large = at::add(large.to(at::kLong), max_exact);
  large = at::minimum(large, at::full_like(large, half - 1));
  return at::add(buckets, at::where(is_small, distance, large));
}

at::Tensor T5EncoderModel::RelativePositionBias(const at::Tensor& table, int64_t length) const {
  const auto options = at::TensorOptions().dtype(at::kLong).device(shared_.device());
  const at::Tensor query = at::arange(length, options).unsqueeze(1);
  const at::Tensor memory = at::arange(length, options).unsqueeze(0);
  const at::Tensor buckets =
      T5RelativePositionBucket(memory - query, config_.relative_attention_num_buckets,
                               config_.relative_attention_max_distance);
  // [L, L, heads] -> [1, heads, L, L]
  return at::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);
}

absl::StatusOr<T5EncoderModel> T5EncoderModel::Load(const std::string& component_folder,
                                                    const LoadOptions& options, WeightMap* taken) {
  // For float16, the loader must not convert: `wo` goes to float32 straight from the checkpoint's
  // dtype, as transformers' dtype plan does.
  const bool to_half = options.floating_dtype.has_value() && *options.floating_dtype == "float16";
  LoadOptions read_options = options;
  if (to_half) read_options.floating_dtype.reset();
  ASSIGN_OR_RETURN(ComponentFiles files, ReadComponentFiles(component_folder, read_options));
  ASSIGN_OR_RETURN(T5EncoderConfig config, T5EncoderConfig::FromJson(files.config));
  if (to_half) {
    RETURN_IF_ERROR(TorchCall("T5 float16 conversion", [&] {
      std::vector<std::pair<std::string, at::Tensor>> converted;
      for (const auto& [name, tensor] : files.weights.tensors()) {
        if (!tensor.is_floating_point()) continue;
        const bool keep_fp32 = absl::EndsWith(name, ".wo.weight");
        converted.emplace_back(name, tensor.to(keep_fp32 ? at::kFloat : at::kHalf));
      }
      for (auto& [name, tensor] : converted) files.weights.Insert(name, std::move(tensor));
    }));
  }
  const WeightMap all = taken != nullptr ? files.weights : WeightMap();
  absl::StatusOr<T5EncoderModel> model = FromWeights(config, files.weights);
  if (taken != nullptr) *taken = TakenWeights(all, files.weights);
  if (!model.ok())
    return Annotate(model.status(), absl::StrCat("loading T5 encoder from ", component_folder));
  WarnUnusedWeights(files.weights, "T5EncoderModel");
  return model;
}

absl::StatusOr<PlacedModel<T5EncoderModel>> LoadPlacedT5(std::string name,
                                                         const std::string& component_folder,
                                                         const LoadOptions& options, bool offload) {
  return LoadPlacedModel<T5EncoderModel>(
      std::move(name), options, offload,
      [&](const LoadOptions& o, WeightMap* taken) {
        return T5EncoderModel::Load(component_folder, o, taken);
      },
      [](const T5EncoderModel& like, WeightMap& weights) {
        return T5EncoderModel::FromWeights(like.config(), weights);
      });
}

absl::StatusOr<T5EncoderModel> T5EncoderModel::FromWeights(const T5EncoderConfig& config,
                                                           WeightMap& weights) {
  T5EncoderModel m;
  m.config_ = config;
  const int64_t d = config.d_model;
  const int64_t inner = config.num_heads * config.d_kv;
  // The encoder's embed_tokens is tied to `shared`; checkpoints hold either or both.
  ASSIGN_OR_RETURN(at::Tensor shared,
                   weights.TakeOptional("shared.weight", {config.vocab_size, d}));
  ASSIGN_OR_RETURN(at::Tensor embed,
                   weights.TakeOptional("encoder.embed_tokens.weight", {config.vocab_size, d}));
  if (!shared.defined()) shared = embed;
  if (!shared.defined()) {
    return NotFound(weights.source(), ": missing parameter 'shared.weight'");
  }
  if (!shared.is_floating_point()) {
    return InvalidArgument(weights.source(), ": 'shared.weight' is not a floating-point tensor");
  }
  m.shared_ = shared;
  m.blocks_.resize(config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("encoder.block.", i, ".layer.");
    Block& b = m.blocks_[i];
    ASSIGN_OR_RETURN(b.attn_norm, weights.Take(p + "0.layer_norm.weight", {d}));
    ASSIGN_OR_RETURN(b.q, weights.Take(p + "0.SelfAttention.q.weight", {inner, d}));
    ASSIGN_OR_RETURN(b.k, weights.Take(p + "0.SelfAttention.k.weight", {inner, d}));
    ASSIGN_OR_RETURN(b.v, weights.Take(p + "0.SelfAttention.v.weight", {inner, d}));
    ASSIGN_OR_RETURN(b.o, weights.Take(p + "0.SelfAttention.o.weight", {d, inner}));
    if (i == 0 || config.bias_per_block) {
      ASSIGN_OR_RETURN(b.relative_attention_bias,
                       weights.Take(p + "0.SelfAttention.relative_attention_bias.weight",
                                    {config.relative_attention_num_buckets, config.num_heads}));
    }
    ASSIGN_OR_RETURN(b.ff_norm, weights.Take(p + "1.layer_norm.weight", {d}));
    const std::string ff = p + "1.DenseReluDense.";
    if (config.is_gated_act) {
      ASSIGN_OR_RETURN(b.wi_0, weights.Take(ff + "wi_0.weight", {config.d_ff, d}));
      ASSIGN_OR_RETURN(b.wi_1, weights.Take(ff + "wi_1.weight", {config.d_ff, d}));
    } else {
      ASSIGN_OR_RETURN(b.wi_0, weights.Take(ff + "wi.weight", {config.d_ff, d}));
    }
    ASSIGN_OR_RETURN(b.wo, weights.Take(ff + "wo.weight", {d, config.d_ff}));
  }
  ASSIGN_OR_RETURN(m.final_norm_, weights.Take("encoder.final_layer_norm.weight", {d}));
  // A float16 model keeps `wo` in float32 (T5PreTrainedModel._keep_in_fp32_modules).
  if (m.shared_.scalar_type() == at::kHalf) {
    RETURN_IF_ERROR(TorchCall("T5 wo to float32", [&] {
      for (Block& b : m.blocks_) b.wo = b.wo.to(at::kFloat);
    }));
  }
  return m;
}

at::Tensor T5EncoderModel::Forward(const at::Tensor& input_ids,
                                   const at::Tensor& attention_mask) const {
  const int64_t batch = input_ids.size(0);
  const int64_t length = input_ids.size(1);
  const int64_t heads = config_.num_heads;
  const double eps = config_.layer_norm_epsilon;

  at::Tensor hidden = at::embedding(shared_, input_ids);
  // T5: the bias of block 0 serves every block; UMT5: each block has its own. Neither scales the
  // scores by 1/sqrt(d_kv) (folded into the weights).
  at::Tensor keep;
  if (attention_mask.defined()) keep = attention_mask.ne(0).view({batch, 1, 1, length});
  auto block_bias = [&](const Block& b) {
    at::Tensor bias = RelativePositionBias(b.relative_attention_bias, length);
    if (keep.defined()) bias = at::where(keep, bias, LowestFinite(b.q.scalar_type()));
    return bias.contiguous();
  };
  at::Tensor bias;

  for (const Block& b : blocks_) {
    if (b.relative_attention_bias.defined()) bias = block_bias(b);
    const at::Tensor normed = kernels::RmsNorm(hidden, b.attn_norm, eps);
    auto heads_first = [&](const at::Tensor& w) {
      return at::linear(normed, w).view({batch, length, heads, config_.d_kv}).transpose(1, 2);
    };
    at::Tensor attn = at::scaled_dot_product_attention(heads_first(b.q), heads_first(b.k),
                                                       heads_first(b.v), bias, /*dropout_p=*/0.0,
                                                       /*is_causal=*/false, /*scale=*/1.0);
    attn = attn.transpose(1, 2).reshape({batch, length, heads * config_.d_kv});
    hidden = ClampFloat16(hidden + at::linear(attn, b.o));

    const at::Tensor ff_in = kernels::RmsNorm(hidden, b.ff_norm, eps);
    at::Tensor ff = ApplyActivation(config_.dense_act_fn, at::linear(ff_in, b.wi_0));
    if (b.wi_1.defined()) ff = ff * at::linear(ff_in, b.wi_1);
    if (ff.scalar_type() != b.wo.scalar_type()) ff = ff.to(b.wo.scalar_type());
    hidden = ClampFloat16(hidden + at::linear(ff, b.wo));
  }
  return kernels::RmsNorm(hidden, final_norm_, eps);
}

absl::StatusOr<at::Tensor> T5EncoderModel::Encode(const at::Tensor& input_ids,
                                                  const at::Tensor& attention_mask) const {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(0) < 1 ||
      input_ids.size(1) < 1) {
    return InvalidArgument("T5 encoder: input_ids must be a non-empty [batch, length] tensor");
  }
  if (at::isFloatingType(input_ids.scalar_type()) || at::isComplexType(input_ids.scalar_type())) {
    return InvalidArgument("T5 encoder: input_ids must be an integer tensor");
  }
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes()) {
    return InvalidArgument("T5 encoder: attention_mask must have the shape of input_ids");
  }
  return TorchCall("T5 encoder forward", [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode inference;
    const at::Tensor ids = input_ids.to(shared_.device(), at::kLong);
    // Checked here: an out-of-range index on CUDA would be a device-side assert, not an exception.
    const int64_t lo = ids.min().item<int64_t>();
    const int64_t hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      return InvalidArgument("T5 encoder: token id out of range [0, ", config_.vocab_size,
                             "): min ", lo, ", max ", hi);
    }
    at::Tensor mask;
    if (attention_mask.defined()) mask = attention_mask.to(shared_.device());
    return Forward(ids, mask);
  });
}

}  // namespace dgrid::encoder
