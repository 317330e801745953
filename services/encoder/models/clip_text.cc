// Ref: transformers CLIPTextModel / CLIPTextEmbeddings / CLIPEncoderLayer / CLIPAttention / CLIPMLP
// (models/clip/modeling_clip.py, transformers 5.24), run with its default "sdpa" attention
// (integrations/sdpa_attention.py: no padding mask -> SDPA's is_causal; with one -> a boolean
// mask).
#include "services/encoder/models/clip_text.h"

#include <cmath>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/encoder/models/component_files.h"

namespace dgrid::encoder {

absl::StatusOr<ClipTextConfig> ClipTextConfig::FromJson(const JsonConfig& json) {
  // A full CLIPConfig (text + vision) keeps the text model's settings under "text_config", which
  // CLIPTextModel.from_pretrained reads (CLIPTextConfig.base_config_key).
  if (json.json().is_object() && json.json().contains("text_config") &&
      json.json()["text_config"].is_object()) {
    ASSIGN_OR_RETURN(JsonConfig text, JsonConfig::FromText(json.json()["text_config"].dump(),
                                                           json.source() + ":text_config"));
    return FromJson(text);
  }
  ClipTextConfig c;
  ASSIGN_OR_RETURN(c.vocab_size, json.GetInt("vocab_size", c.vocab_size));
  ASSIGN_OR_RETURN(c.hidden_size, json.GetInt("hidden_size", c.hidden_size));
  ASSIGN_OR_RETURN(c.intermediate_size, json.GetInt("intermediate_size", c.intermediate_size));
  ASSIGN_OR_RETURN(c.num_hidden_layers, json.GetInt("num_hidden_layers", c.num_hidden_layers));
  ASSIGN_OR_RETURN(c.num_attention_heads,
                   json.GetInt("num_attention_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings,
                   json.GetInt("max_position_embeddings", c.max_position_embeddings));
  ASSIGN_OR_RETURN(c.layer_norm_eps, json.GetDouble("layer_norm_eps", c.layer_norm_eps));
  ASSIGN_OR_RETURN(c.eos_token_id, json.GetInt("eos_token_id", c.eos_token_id));
  ASSIGN_OR_RETURN(std::string act, json.GetString("hidden_act", "quick_gelu"));
  absl::StatusOr<Activation> parsed = ParseActivation(act);
  if (!parsed.ok()) return Annotate(parsed.status(), json.source());
  c.hidden_act = *parsed;
  RETURN_IF_ERROR(json.CheckPositive("vocab_size", c.vocab_size));
  RETURN_IF_ERROR(json.CheckPositive("hidden_size", c.hidden_size));
  RETURN_IF_ERROR(json.CheckPositive("intermediate_size", c.intermediate_size));
  RETURN_IF_ERROR(json.CheckPositive("num_hidden_layers", c.num_hidden_layers));
  RETURN_IF_ERROR(json.CheckPositive("num_attention_heads", c.num_attention_heads));
  RETURN_IF_ERROR(json.CheckPositive("max_position_embeddings", c.max_position_embeddings));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return InvalidArgument(json.source(), ": hidden_size ", c.hidden_size,
                           " is not a multiple of num_attention_heads ", c.num_attention_heads);
  }
  return c;
}

absl::StatusOr<ClipTextModel> ClipTextModel::Load(const std::string& component_folder,
                                                  const LoadOptions& options, WeightMap* taken) {
  ASSIGN_OR_RETURN(ComponentFiles files, ReadComponentFiles(component_folder, options));
  ASSIGN_OR_RETURN(ClipTextConfig config, ClipTextConfig::FromJson(files.config));
  const WeightMap all = taken != nullptr ? files.weights : WeightMap();
  absl::StatusOr<ClipTextModel> model = FromWeights(config, files.weights);
  if (taken != nullptr) *taken = TakenWeights(all, files.weights);
  if (!model.ok()) {
    return Annotate(model.status(),
                    absl::StrCat("loading CLIP text model from ", component_folder));
  }
  WarnUnusedWeights(files.weights, "CLIPTextModel");
  return model;
}

absl::StatusOr<ClipTextModel> ClipTextModel::FromWeights(const ClipTextConfig& config,
                                                         WeightMap& weights) {
  // Hub checkpoints name everything under "text_model."; transformers 5 strips that prefix when it
  // loads (PrefixChange in conversion_mapping.py) and saves without it.
  const std::string root =
      weights.Contains("text_model.final_layer_norm.weight") ? "text_model." : "";
  const int64_t d = config.hidden_size;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) -> absl::StatusOr<Linear> {
    Linear l;
    ASSIGN_OR_RETURN(l.weight, weights.Take(name + ".weight", {out, in}));
    ASSIGN_OR_RETURN(l.bias, weights.Take(name + ".bias", {out}));
    return l;
  };
  auto layer_norm = [&](const std::string& name) -> absl::StatusOr<LayerNorm> {
    LayerNorm n;
    ASSIGN_OR_RETURN(n.weight, weights.Take(name + ".weight", {d}));
    ASSIGN_OR_RETURN(n.bias, weights.Take(name + ".bias", {d}));
    return n;
  };

  ClipTextModel m;
  m.config_ = config;
  ASSIGN_OR_RETURN(m.token_embedding_, weights.Take(root + "embeddings.token_embedding.weight",
                                                    {config.vocab_size, d}));
  ASSIGN_OR_RETURN(m.position_embedding_,
                   weights.Take(root + "embeddings.position_embedding.weight",
                                {config.max_position_embeddings, d}));
  if (!m.token_embedding_.is_floating_point()) {
    return InvalidArgument(weights.source(), ": token embedding is not a floating-point tensor");
  }
  // Older checkpoints stored the position_ids buffer; it is arange(max_positions) by construction.
  ASSIGN_OR_RETURN(at::Tensor unused, weights.TakeOptional(root + "embeddings.position_ids"));
  (void)unused;
  m.layers_.resize(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat(root, "encoder.layers.", i, ".");
    Layer& l = m.layers_[i];
    ASSIGN_OR_RETURN(l.norm1, layer_norm(p + "layer_norm1"));
    ASSIGN_OR_RETURN(l.q, linear(p + "self_attn.q_proj", d, d));
    ASSIGN_OR_RETURN(l.k, linear(p + "self_attn.k_proj", d, d));
    ASSIGN_OR_RETURN(l.v, linear(p + "self_attn.v_proj", d, d));
    ASSIGN_OR_RETURN(l.out, linear(p + "self_attn.out_proj", d, d));
    ASSIGN_OR_RETURN(l.norm2, layer_norm(p + "layer_norm2"));
    ASSIGN_OR_RETURN(l.fc1, linear(p + "mlp.fc1", config.intermediate_size, d));
    ASSIGN_OR_RETURN(l.fc2, linear(p + "mlp.fc2", d, config.intermediate_size));
  }
  ASSIGN_OR_RETURN(m.final_norm_, layer_norm(root + "final_layer_norm"));
  return m;
}

ClipTextOutput ClipTextModel::Forward(const at::Tensor& input_ids,
                                      const at::Tensor& attention_mask) const {
  const int64_t batch = input_ids.size(0);
  const int64_t length = input_ids.size(1);
  const int64_t d = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads;
  const int64_t head_dim = d / heads;
  const double scale = std::pow(static_cast<double>(head_dim), -0.5);
  const double eps = config_.layer_norm_eps;
  auto linear = [](const at::Tensor& x, const Linear& l) {
    return at::linear(x, l.weight, l.bias);
  };
  auto layer_norm = [&](const at::Tensor& x, const LayerNorm& n) {
    return at::layer_norm(x, {d}, n.weight, n.bias, eps);
  };

  const at::Tensor positions =
      at::arange(length, at::TensorOptions().dtype(at::kLong).device(input_ids.device()))
          .unsqueeze(0);
  at::Tensor hidden =
      at::embedding(token_embedding_, input_ids) + at::embedding(position_embedding_, positions);

  // Without a padding mask SDPA applies the causal mask itself; with one, causal and padding are
  // combined into one boolean mask [B, 1, L, L].
  std::optional<at::Tensor> mask;
  if (attention_mask.defined()) {
    const at::Tensor causal =
        at::ones({length, length}, input_ids.options().dtype(at::kBool)).tril();
    mask = at::logical_and(causal.view({1, 1, length, length}),
                           attention_mask.ne(0).view({batch, 1, 1, length}));
  }
  const bool is_causal = !mask.has_value() && length > 1;

  for (const Layer& l : layers_) {
    at::Tensor residual = hidden;
    const at::Tensor normed = layer_norm(hidden, l.norm1);
    auto heads_first = [&](const Linear& proj) {
      return linear(normed, proj).view({batch, length, heads, head_dim}).transpose(1, 2);
    };
    at::Tensor attn =
        at::scaled_dot_product_attention(heads_first(l.q), heads_first(l.k), heads_first(l.v), mask,
                                         /*dropout_p=*/0.0, is_causal, scale);
    attn = attn.transpose(1, 2).reshape({batch, length, d});
    hidden = residual + linear(attn, l.out);

    residual = hidden;
    at::Tensor mlp = linear(layer_norm(hidden, l.norm2), l.fc1);
    mlp = linear(ApplyActivation(config_.hidden_act, mlp), l.fc2);
    hidden = residual + mlp;
  }
  hidden = layer_norm(hidden, final_norm_);

  // argmax returns the first maximal position, which both of transformers' rules rely on.
  const at::Tensor ids32 = input_ids.to(at::kInt);
  const at::Tensor eos_position = config_.eos_token_id == 2
                                      ? ids32.argmax(-1)
                                      : ids32.eq(config_.eos_token_id).to(at::kInt).argmax(-1);
  at::Tensor pooled =
      hidden.gather(1, eos_position.view({batch, 1, 1}).expand({batch, 1, d})).squeeze(1);
  return ClipTextOutput{hidden, pooled};
}

absl::StatusOr<ClipTextOutput> ClipTextModel::Encode(const at::Tensor& input_ids,
                                                     const at::Tensor& attention_mask) const {
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.size(0) < 1 ||
      input_ids.size(1) < 1) {
    return InvalidArgument("CLIP text model: input_ids must be a non-empty [batch, length] tensor");
  }
  if (at::isFloatingType(input_ids.scalar_type()) || at::isComplexType(input_ids.scalar_type())) {
    return InvalidArgument("CLIP text model: input_ids must be an integer tensor");
  }
  if (input_ids.size(1) > config_.max_position_embeddings) {
    return InvalidArgument("CLIP text model: sequence length ", input_ids.size(1),
                           " exceeds max_position_embeddings ", config_.max_position_embeddings);
  }
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes()) {
    return InvalidArgument("CLIP text model: attention_mask must have the shape of input_ids");
  }
  return TorchCall("CLIP text forward", [&]() -> absl::StatusOr<ClipTextOutput> {
    c10::InferenceMode inference;
    const at::Tensor ids = input_ids.to(token_embedding_.device(), at::kLong);
    const int64_t lo = ids.min().item<int64_t>();
    const int64_t hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      return InvalidArgument("CLIP text model: token id out of range [0, ", config_.vocab_size,
                             "): min ", lo, ", max ", hi);
    }
    at::Tensor mask;
    if (attention_mask.defined()) mask = attention_mask.to(token_embedding_.device());
    return Forward(ids, mask);
  });
}

}  // namespace dgrid::encoder
