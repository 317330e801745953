#include "services/encoder/flux_text.h"

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "common/logging.h"
#include "common/status.h"
#include "families/flux/flux_family.h"
#include "services/encoder/models/clip_text.h"
#include "services/encoder/models/t5_encoder.h"
#include "services/encoder/tokenizers/clip_tokenizer.h"
#include "services/encoder/tokenizers/t5_tokenizer.h"

namespace dgrid::encoder {
namespace {

at::Tensor IdsTensor(const std::vector<int32_t>& ids, const c10::Device& device) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong)
      .reshape({1, static_cast<int64_t>(ids.size())})
      .to(device);
}

class FluxTextConditioner final : public TextConditioner {
 public:
  absl::StatusOr<NamedTensors> Encode(absl::string_view request_id, absl::string_view field,
                                      const std::string& text, int max_sequence_length,
                                      const CancellationToken& token) const override {
    RETURN_IF_ERROR(token.Check());
    const int clip_length = clip_tokenizer_->model_max_length();
    ASSIGN_OR_RETURN(TokenizedPrompt clip_ids, clip_tokenizer_->Encode(text, clip_length));
    if (clip_ids.truncated) {
      DG_LOG_WARN(request_id,
                  "%s: the part of the input past CLIP's %d tokens was truncated: \"%s\"", field,
                  clip_length, clip_tokenizer_->Decode(clip_ids.removed_ids));
    }
    ASSIGN_OR_RETURN(TokenizedPrompt t5_ids, t5_tokenizer_->Encode(text, max_sequence_length));
    if (t5_ids.truncated) {
      DG_LOG_WARN(request_id,
                  "%s: the part of the input past max_sequence_length %d was truncated: \"%s\"",
                  field, max_sequence_length, t5_tokenizer_->Decode(t5_ids.removed_ids));
    }
    NamedTensors out;
    {
      // Offloaded, CLIP is on the device for this block only, T5 for the next.
      ASSIGN_OR_RETURN(const std::shared_ptr<const ClipTextModel> clip, clip_->Use());
      ASSIGN_OR_RETURN(ClipTextOutput clip_out,
                       clip->Encode(IdsTensor(clip_ids.input_ids, clip->device())));
      out[families::flux::kPooledPromptEmbeds] = clip_out.pooler_output;
    }
    RETURN_IF_ERROR(token.Check());
    ASSIGN_OR_RETURN(const std::shared_ptr<const T5EncoderModel> t5, t5_->Use());
    ASSIGN_OR_RETURN(out[families::flux::kPromptEmbeds],
                     t5->Encode(IdsTensor(t5_ids.input_ids, t5->device())));
    return out;
  }

  std::vector<const ModelResidency*> residencies() const override {
    std::vector<const ModelResidency*> out;
    for (const ModelResidency* r : {clip_->residency(), t5_->residency()}) {
      if (r != nullptr) out.push_back(r);
    }
    return out;
  }

  std::unique_ptr<ClipTokenizer> clip_tokenizer_;
  std::unique_ptr<T5Tokenizer> t5_tokenizer_;
  std::optional<PlacedModel<ClipTextModel>> clip_;
  std::optional<PlacedModel<T5EncoderModel>> t5_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TextConditioner>> LoadFluxTextConditioner(const ModelIndex& index,
                                                                         const LoadOptions& load,
                                                                         bool model_offload) {
  auto c = std::make_unique<FluxTextConditioner>();
  ASSIGN_OR_RETURN(std::string tokenizer_dir, index.ComponentPath("tokenizer"));
  ASSIGN_OR_RETURN(c->clip_tokenizer_, ClipTokenizer::Load(tokenizer_dir));
  ASSIGN_OR_RETURN(std::string tokenizer_2_dir, index.ComponentPath("tokenizer_2"));
  ASSIGN_OR_RETURN(c->t5_tokenizer_, T5Tokenizer::Load(tokenizer_2_dir));
  ASSIGN_OR_RETURN(std::string clip_dir, index.ComponentPath("text_encoder"));
  ASSIGN_OR_RETURN(PlacedModel<ClipTextModel> clip,
                   LoadPlacedModel<ClipTextModel>(
                       "text_encoder", load, model_offload,
                       [&](const LoadOptions& o, WeightMap* taken) {
                         return ClipTextModel::Load(clip_dir, o, taken);
                       },
                       [](const ClipTextModel& like, WeightMap& weights) {
                         return ClipTextModel::FromWeights(like.config(), weights);
                       }));
  c->clip_.emplace(std::move(clip));
  ASSIGN_OR_RETURN(std::string t5_dir, index.ComponentPath("text_encoder_2"));
  ASSIGN_OR_RETURN(PlacedModel<T5EncoderModel> t5,
                   LoadPlacedT5("text_encoder_2", t5_dir, load, model_offload));
  c->t5_.emplace(std::move(t5));
  return std::unique_ptr<TextConditioner>(std::move(c));
}

}  // namespace dgrid::encoder
