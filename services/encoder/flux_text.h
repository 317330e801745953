// FLUX.1's text conditioning: CLIP's pooled output and T5's hidden states.
//
// Ref: diffusers FluxPipeline.encode_prompt (pipelines/flux/pipeline_flux.py, 0.42.1): CLIP
// (tokenizer / text_encoder) gives the pooled embedding from a prompt padded to the tokenizer's
// model_max_length (77); T5 (tokenizer_2 / text_encoder_2) gives the sequence embedding from a
// prompt padded to max_sequence_length; both are cast to their encoder's dtype. Over-long prompts
// are truncated with a warning naming the removed text, as the pipeline does.
#ifndef DGRID_SERVICES_ENCODER_FLUX_TEXT_H_
#define DGRID_SERVICES_ENCODER_FLUX_TEXT_H_

#include <memory>

#include "services/encoder/text_conditioner.h"

namespace dgrid::encoder {

// Loads tokenizer/, text_encoder/, tokenizer_2/ and text_encoder_2/. Encode gives
// "prompt_embeds" [1, max_sequence_length, T5's d_model] and "pooled_prompt_embeds" [1, CLIP's
// hidden size]. `model_offload`: LoadTextConditioner's (CLIP and T5 each offloaded on its own).
absl::StatusOr<std::unique_ptr<TextConditioner>> LoadFluxTextConditioner(const ModelIndex& index,
                                                                         const LoadOptions& load,
                                                                         bool model_offload);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_FLUX_TEXT_H_
