// The CLIP text transformer, as FLUX (and Stable Diffusion) use it for `text_encoder`.
//
// Ref: transformers CLIPTextModel (models/clip/modeling_clip.py, transformers 5.24): token +
// learned position embeddings, pre-LayerNorm encoder layers with causal self-attention and an fc1
// -> act -> fc2 MLP (`hidden_act`: quick_gelu or gelu), `final_layer_norm`, and the pooled output
// taken at the end-of-text token. Parameter names are transformers'
// (`text_model.embeddings.token_embedding.weight` as in the Hub checkpoints, or the same without
// the `text_model.` prefix, as transformers 5 saves them); config.json keys those of CLIPTextConfig
// (or a CLIPConfig's `text_config`).
//
// Threads: after Load, Encode is const and may be called from several threads at once.
// Errors: every public method returns a status; no exception leaves this class.
#ifndef DGRID_SERVICES_ENCODER_MODELS_CLIP_TEXT_H_
#define DGRID_SERVICES_ENCODER_MODELS_CLIP_TEXT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"
#include "services/encoder/models/activations.h"

namespace dgrid::encoder {

// The CLIPTextConfig fields the model uses, with CLIPTextConfig's defaults.
struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  double layer_norm_eps = 1e-5;
  Activation hidden_act = Activation::kQuickGelu;
  int64_t eos_token_id = 49407;

  static absl::StatusOr<ClipTextConfig> FromJson(const JsonConfig& json);
};

struct ClipTextOutput {
  at::Tensor last_hidden_state;  // [B, L, hidden_size], after final_layer_norm
  at::Tensor pooler_output;      // [B, hidden_size]
};

class ClipTextModel {
 public:
  // Reads `<component_folder>/config.json` and its safetensors weights (device and dtype from
  // `options`; without floating_dtype the checkpoint's dtype). Missing or mis-shaped parameters are
  // NOT_FOUND / INVALID_ARGUMENT naming the parameter; unused ones are logged and ignored.
  // `taken`, when given, receives the weights the model took (for model offload,
  // common/model_offload.h).
  static absl::StatusOr<ClipTextModel> Load(const std::string& component_folder,
                                            const LoadOptions& options, WeightMap* taken = nullptr);
  // Builds the model from an already loaded map (parameters are taken out of it).
  static absl::StatusOr<ClipTextModel> FromWeights(const ClipTextConfig& config,
                                                   WeightMap& weights);

  // input_ids: integer [B, L] with 1 <= L <= max_position_embeddings (any device; moved to the
  // model's). attention_mask: undefined (FluxPipeline's call: causal mask only) or [B, L], nonzero
  // for tokens to attend to (combined with the causal mask).
  //
  // Pooling follows transformers exactly: with eos_token_id == 2 (configs older than transformers
  // PR #24773) the position of the largest id in each row, otherwise the first position whose id
  // equals eos_token_id (position 0 when a row has none). INVALID_ARGUMENT for a wrong
  // rank/dtype/length or ids outside [0, vocab_size).
  absl::StatusOr<ClipTextOutput> Encode(const at::Tensor& input_ids,
                                        const at::Tensor& attention_mask = at::Tensor()) const;

  const ClipTextConfig& config() const { return config_; }
  c10::Device device() const { return token_embedding_.device(); }
  c10::ScalarType dtype() const { return token_embedding_.scalar_type(); }

 private:
  struct Linear {
    at::Tensor weight, bias;
  };
  struct LayerNorm {
    at::Tensor weight, bias;
  };
  struct Layer {
    LayerNorm norm1, norm2;
    Linear q, k, v, out, fc1, fc2;
  };

  ClipTextModel() = default;
  ClipTextOutput Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

  ClipTextConfig config_;
  at::Tensor token_embedding_;     // [vocab, hidden]
  at::Tensor position_embedding_;  // [max_positions, hidden]
  std::vector<Layer> layers_;
  LayerNorm final_norm_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_MODELS_CLIP_TEXT_H_
