// Wan's text conditioning: WanPipeline's prompt cleaning, the UMT5 tokenizer and encoder, and the
// per-prompt trimming of the encoder output.
//
// Ref: diffusers WanPipeline._get_t5_prompt_embeds and prompt_clean / basic_clean /
// whitespace_clean (pipelines/wan/pipeline_wan.py, 0.42.1): the prompt is HTML-unescaped twice,
// runs of whitespace become one space and the ends are stripped; it is tokenized to
// max_sequence_length ids (padding, truncation, </s>) with its attention mask; UMT5 encodes it with
// the mask; the output is cut to the prompt's own tokens and zero-padded back to
// max_sequence_length.
//
// Differences from diffusers, both on rare inputs: diffusers also runs ftfy.fix_text when the
// ftfy package is installed (it repairs mojibake; dgrid does not); html.unescape knows all 2 231
// HTML5 named references, dgrid the numeric ones (with Python's replacements) and &amp; &lt;
// &gt; &quot; &apos; &nbsp; (the legacy ones also without the ";"); other named references stay
// as written.
//
// Thread safety: WanTextEncoder is immutable after Load; Encode may run on several threads.
#ifndef DGRID_SERVICES_ENCODER_WAN_TEXT_H_
#define DGRID_SERVICES_ENCODER_WAN_TEXT_H_

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/safetensors.h"
#include "services/encoder/models/t5_encoder.h"
#include "services/encoder/text_conditioner.h"
#include "services/encoder/tokenizers/t5_tokenizer.h"

namespace dgrid::encoder {

// prompt_clean(text): INVALID_ARGUMENT for text that is not valid UTF-8.
absl::StatusOr<std::string> WanPromptClean(absl::string_view text);

class WanTextEncoder {
 public:
  // `model_dir`/tokenizer (spiece.model + tokenizer_config.json) and `model_dir`/text_encoder
  // (UMT5EncoderModel) with `options`.
  // `model_offload`: the encoder's weights rest in host memory and come to options.device for
  // each Encode (common/model_offload.h).
  static absl::StatusOr<std::unique_ptr<WanTextEncoder>> Load(const std::string& model_dir,
                                                              const LoadOptions& options,
                                                              bool model_offload = false);

  // The prompt's embeddings [1, max_sequence_length, d_model] in the encoder's dtype, on its
  // device: UMT5's output for the prompt's tokens, zeros after them.
  absl::StatusOr<at::Tensor> Encode(absl::string_view prompt, int max_sequence_length) const;

  // The model without running it (offloaded: over the host copy of its weights).
  const T5EncoderModel& model() const { return model_->host(); }
  // Null unless offloaded.
  const ModelResidency* residency() const { return model_->residency(); }

 private:
  std::unique_ptr<T5Tokenizer> tokenizer_;
  std::unique_ptr<PlacedModel<T5EncoderModel>> model_;
};

// WanTextEncoder::Load of the pipeline at `index` as the encoder stage's conditioner: Encode gives
// "prompt_embeds" (families/wan/wan_family.h).
absl::StatusOr<std::unique_ptr<TextConditioner>> LoadWanTextConditioner(const ModelIndex& index,
                                                                        const LoadOptions& load,
                                                                        bool model_offload);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_WAN_TEXT_H_
