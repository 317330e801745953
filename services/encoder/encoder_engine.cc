#include "services/encoder/encoder_engine.h"

#include "common/diffusers_layout.h"
#include "common/logging.h"
#include "common/status.h"
#include "families/registry.h"
#include "services/encoder/text_conditioner.h"

namespace dgrid::encoder {

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

}  // namespace

EncoderEngine::~EncoderEngine() {
  if (queue_) queue_->Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<EncoderEngine>> EncoderEngine::Create(
    const EncoderEngineOptions& options) {
  ASSIGN_OR_RETURN(ModelIndex index, ReadModelIndex(options.model_path));
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(index.pipeline_class);
  if (!family.ok()) {
    return InvalidArgument(index.root,
                           "/model_index.json: _class_name: ", family.status().message());
  }
  std::unique_ptr<EncoderEngine> engine(new EncoderEngine());
  engine->family_ = *family;
  ASSIGN_OR_RETURN(engine->conditioner_,
                   LoadTextConditioner(**family, index, options.load, options.model_offload));
  engine->queue_ = std::make_unique<WorkQueue>(WorkQueue::Options{
      "encoder", options.workers, options.max_queued, options.earliest_deadline_first});
  DG_LOG_INFO("", "encoder (%s) loaded from %s on %s", std::string((*family)->name()), index.root,
              options.load.device);
  for (const ModelResidency* residency : engine->conditioner_->residencies()) {
    DG_LOG_INFO("", "model offload: %s", DescribeOffload(*residency));
  }
  return engine;
}

std::vector<const ModelResidency*> EncoderEngine::residencies() const {
  return conditioner_->residencies();
}

absl::StatusOr<EncodeOutput> EncoderEngine::Encode(const EncodeInput& input,
                                                   const CancellationToken& token) const {
  if (input.prompt.empty()) return InvalidArgument("prompt is empty");
  RETURN_IF_ERROR(CheckUtf8(input.prompt, "prompt"));
  RETURN_IF_ERROR(CheckUtf8(input.negative_prompt, "negative_prompt"));
  const families::GenerationDefaults& defaults = family_->defaults();
  const int max_sequence_length =
      input.max_sequence_length == 0 ? defaults.max_sequence_length : input.max_sequence_length;
  if (max_sequence_length < 1 || max_sequence_length > defaults.max_text_tokens) {
    return InvalidArgument("max_sequence_length = ", input.max_sequence_length, " is outside [1, ",
                           defaults.max_text_tokens, "]");
  }
  EncodeOutput output;
  ASSIGN_OR_RETURN(output.positive, conditioner_->Encode(input.request_id, "prompt", input.prompt,
                                                         max_sequence_length, token));
  if (input.encode_negative) {
    ASSIGN_OR_RETURN(output.negative,
                     conditioner_->Encode(input.request_id, "negative_prompt",
                                          input.negative_prompt, max_sequence_length, token));
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
