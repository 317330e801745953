// The T5 (v1.1) text encoder, as FLUX uses it for `text_encoder_2`, and UMT5, Wan's text encoder.
//
// Ref: transformers T5EncoderModel (models/t5/modeling_t5.py, transformers 5.24): token embedding
// `shared`, a stack of blocks [RMS layer norm -> self-attention with relative position bias
// (computed by block 0's `relative_attention_bias`, shared by every block, no 1/sqrt(d) scaling) ->
// residual, RMS layer norm -> (gated) feed-forward -> residual], then `final_layer_norm`. Parameter
// names are those of transformers' checkpoints (`shared.weight`,
// `encoder.block.0.layer.0.SelfAttention.q.weight`,
// ...); config.json keys those of T5Config.
//
// UMT5 (transformers UMT5EncoderModel, models/umt5/modeling_umt5.py; config.json model_type "umt5")
// is the same stack except that every block has its own `relative_attention_bias` (the parameter
// exists in every block and each block adds its own bias); the attention mask works as in T5.
//
// Threads: after Load, Encode is const and may be called from several threads at once.
// Errors: every public method returns a status; no exception leaves this class.
#ifndef DGRID_SERVICES_ENCODER_MODELS_T5_ENCODER_H_
#define DGRID_SERVICES_ENCODER_MODELS_T5_ENCODER_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/diffusers_layout.h"
#include "common/model_offload.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/encoder/models/activations.h"

namespace dgrid::encoder {

// The T5Config fields the encoder uses, with T5Config's defaults.
struct T5EncoderConfig {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  // "relu", "gated-gelu", "gated-silu", ... Derived as T5Config.__post_init__ does:
  // is_gated_act = the part before '-' is "gated"; dense_act_fn = the last part, except that
  // "gated-gelu" means gelu_new (the tanh approximation). The config's own `dense_act_fn` and
  // `is_gated_act` keys are ignored, as transformers recomputes them.
  std::string feed_forward_proj = "relu";
  bool is_gated_act = false;
  Activation dense_act_fn = Activation::kRelu;
  // UMT5 (model_type "umt5"): a relative position bias in every block, not only block 0's.
  bool bias_per_block = false;

  static absl::StatusOr<T5EncoderConfig> FromJson(const JsonConfig& json);
};

class T5EncoderModel {
 public:
  // Reads `<component_folder>/config.json` and its safetensors weights onto options.device.
  // Weights keep their checkpoint dtype unless options.floating_dtype is set. As transformers does
  // (`_keep_in_fp32_modules = ["wo"]`), the feed-forward output projections `wo` stay float32 when
  // the model runs in float16 (not in bfloat16). Missing or mis-shaped parameters are NOT_FOUND /
  // INVALID_ARGUMENT naming the parameter; unused ones (e.g. a decoder's) are logged and ignored.
  // `taken`, when given, receives the weights the model took (for model offload,
  // common/model_offload.h).
  static absl::StatusOr<T5EncoderModel> Load(const std::string& component_folder,
                                             const LoadOptions& options,
                                             WeightMap* taken = nullptr);
  // Builds the model from an already loaded map (parameters are taken out of it).
  static absl::StatusOr<T5EncoderModel> FromWeights(const T5EncoderConfig& config,
                                                    WeightMap& weights);

  // input_ids: integer [B, L] token ids (any device; moved to the model's). attention_mask:
  // undefined (FluxPipeline's default: padding tokens are attended to like any other), or [B, L]
  // with nonzero for tokens to attend to. Returns last_hidden_state [B, L, d_model] on the model's
  // device, in the model's dtype. INVALID_ARGUMENT for a wrong rank/dtype or ids outside [0,
  // vocab_size).
  absl::StatusOr<at::Tensor> Encode(const at::Tensor& input_ids,
                                    const at::Tensor& attention_mask = at::Tensor()) const;

  const T5EncoderConfig& config() const { return config_; }
  // Device and floating dtype of the embedding table.
  c10::Device device() const { return shared_.device(); }
  c10::ScalarType dtype() const { return shared_.scalar_type(); }

 private:
  struct Block {
    at::Tensor attn_norm, q, k, v, o;
    at::Tensor relative_attention_bias;  // [num_buckets, num_heads]; block 0's, or every block's
    at::Tensor ff_norm, wi_0, wi_1,
        wo;  // wi_1 undefined for the non-gated feed-forward (wi_0 = wi)
  };

  T5EncoderModel() = default;
  at::Tensor RelativePositionBias(const at::Tensor& table, int64_t length) const;
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

  T5EncoderConfig config_;
  at::Tensor shared_;  // [vocab, d_model]
  std::vector<Block> blocks_;
  at::Tensor final_norm_;
};

// T5EncoderModel::Load of `component_folder` on options.device, or with `offload` offloaded to it
// (common/model_offload.h); `name` names the component ("text_encoder_2").
absl::StatusOr<PlacedModel<T5EncoderModel>> LoadPlacedT5(std::string name,
                                                         const std::string& component_folder,
                                                         const LoadOptions& options, bool offload);

// T5's bucketing of relative positions (memory - query), bidirectional as in an encoder: half of
// the buckets for each sign, the first half of those exact, the rest log-spaced up to max_distance.
// Returns int64 buckets of the same shape. Exposed for tests. Throws c10::Error like ATen.
at::Tensor T5RelativePositionBucket(const at::Tensor& relative_position, int64_t num_buckets,
                                    int64_t max_distance);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_MODELS_T5_ENCODER_H_
