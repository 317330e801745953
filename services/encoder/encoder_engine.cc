#include "services/encoder/encoder_engine.h"

#include <ATen/ATen.h>

#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "services/encoder/models/clip_text.h"
#include "services/encoder/models/t5_encoder.h"
#include "services/encoder/tokenizers/clip_tokenizer.h"
#include "services/encoder/tokenizers/t5_tokenizer.h"

namespace dgrid::encoder {

struct EncoderEngine::Models {
  std::unique_ptr<ClipTokenizer> clip_tokenizer;
  std::unique_ptr<T5Tokenizer> t5_tokenizer;
  std::optional<ClipTextModel> clip;
  std::optional<T5EncoderModel> t5;
};

namespace {

absl::Status CheckUtf8(absl::string_view text, absl::string_view field) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > text.size()) {
      return InvalidArgument(field, " is not valid UTF-8 (byte ", i, ")");
    }
    for (int k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) {
        return InvalidArgument(field, " is not valid UTF-8 (byte ", i + k, ")");
      }
    }
    i += len;
  }
  return absl::OkStatus();
}

at::Tensor IdsTensor(const std::vector<int32_t>& ids, const c10::Device& device) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong)
      .reshape({1, static_cast<int64_t>(ids.size())})
      .to(device);
}

}  // namespace

EncoderEngine::~EncoderEngine() {
  if (queue_) queue_->Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<EncoderEngine>> EncoderEngine::Create(
    const EncoderEngineOptions& options) {
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(options.model_path));
  auto models = std::make_unique<Models>();
  ASSIGN_OR_RETURN(std::string tokenizer_dir, index.ComponentPath("tokenizer"));
  ASSIGN_OR_RETURN(models->clip_tokenizer, ClipTokenizer::Load(tokenizer_dir));
  ASSIGN_OR_RETURN(std::string tokenizer_2_dir, index.ComponentPath("tokenizer_2"));
  ASSIGN_OR_RETURN(models->t5_tokenizer, T5Tokenizer::Load(tokenizer_2_dir));
  ASSIGN_OR_RETURN(std::string clip_dir, index.ComponentPath("text_encoder"));
  ASSIGN_OR_RETURN(ClipTextModel clip, ClipTextModel::Load(clip_dir, options.load));
  models->clip.emplace(std::move(clip));
  ASSIGN_OR_RETURN(std::string t5_dir, index.ComponentPath("text_encoder_2"));
  ASSIGN_OR_RETURN(T5EncoderModel t5, T5EncoderModel::Load(t5_dir, options.load));
  models->t5.emplace(std::move(t5));

  std::unique_ptr<EncoderEngine> engine(new EncoderEngine());
  engine->models_ = std::move(models);
  engine->queue_ = std::make_unique<WorkQueue>(WorkQueue::Options{
      "encoder", options.workers, options.max_queued, options.earliest_deadline_first});
  DG_LOG_INFO("", "encoder loaded from %s on %s", index.root, options.load.device);
  return engine;
}

absl::StatusOr<EncodeOutput> EncoderEngine::Encode(const EncodeInput& input,
                                                   const CancellationToken& token) const {
  if (input.prompt.empty()) return InvalidArgument("prompt is empty");
  RETURN_IF_ERROR(CheckUtf8(input.prompt, "prompt"));
  RETURN_IF_ERROR(CheckUtf8(input.negative_prompt, "negative_prompt"));
  const int max_tokens = families::flux::kFluxDefaults.max_text_tokens;
  if (input.max_sequence_length < 1 || input.max_sequence_length > max_tokens) {
    return InvalidArgument("max_sequence_length = ", input.max_sequence_length, " is outside [1, ",
                           max_tokens, "]");
  }
  auto encode_one = [&](const std::string& text,
                        absl::string_view which) -> absl::StatusOr<TextEmbeddings> {
    RETURN_IF_ERROR(token.Check());
    const int clip_length = models_->clip_tokenizer->model_max_length();
    ASSIGN_OR_RETURN(TokenizedPrompt clip_ids, models_->clip_tokenizer->Encode(text, clip_length));
    if (clip_ids.truncated) {
      DG_LOG_WARN(input.request_id,
                  "%s: the part of the input past CLIP's %d tokens was truncated: \"%s\"", which,
                  clip_length, models_->clip_tokenizer->Decode(clip_ids.removed_ids));
    }
    ASSIGN_OR_RETURN(TokenizedPrompt t5_ids,
                     models_->t5_tokenizer->Encode(text, input.max_sequence_length));
    if (t5_ids.truncated) {
      DG_LOG_WARN(input.request_id,
                  "%s: the part of the input past max_sequence_length %d was truncated: \"%s\"",
                  which, input.max_sequence_length,
                  models_->t5_tokenizer->Decode(t5_ids.removed_ids));
    }
    TextEmbeddings out;
    ASSIGN_OR_RETURN(ClipTextOutput clip_out,
                     models_->clip->Encode(IdsTensor(clip_ids.input_ids, models_->clip->device())));
    out.pooled_prompt_embeds = clip_out.pooler_output;
    RETURN_IF_ERROR(token.Check());
    ASSIGN_OR_RETURN(out.prompt_embeds,
                     models_->t5->Encode(IdsTensor(t5_ids.input_ids, models_->t5->device())));
    return out;
  };
  EncodeOutput output;
  ASSIGN_OR_RETURN(output.positive, encode_one(input.prompt, "prompt"));
  if (input.encode_negative) {
    ASSIGN_OR_RETURN(output.negative, encode_one(input.negative_prompt, "negative_prompt"));
  }
  return output;
}

absl::Status EncoderEngine::Enqueue(EncodeInput input, Done done) {
  std::string id = input.request_id;
  const absl::Time deadline = input.deadline;
  return EnqueueForResult<EncodeOutput>(
      *queue_, std::move(id), deadline, std::move(input),
      [this](const EncodeInput& in, const CancellationToken& token) { return Encode(in, token); },
      std::move(done));
}

}  // namespace dgrid::encoder
