#include "services/encoder/text_conditioner.h"

#include "absl/strings/str_cat.h"
#include "services/encoder/flux_text.h"
#include "services/encoder/wan_text.h"

namespace dgrid::encoder {

absl::StatusOr<std::unique_ptr<TextConditioner>> LoadTextConditioner(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load,
    bool model_offload) {
  // One line per family the encoder stage serves.
  if (family.name() == "flux") return LoadFluxTextConditioner(index, load, model_offload);
  if (family.name() == "wan") return LoadWanTextConditioner(index, load, model_offload);
  return absl::UnimplementedError(absl::StrCat(
      index.root, ": the encoder has no text encoders for the ", family.name(), " family"));
}

}  // namespace dgrid::encoder
