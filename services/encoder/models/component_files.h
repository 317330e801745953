// Reading one component folder of a Diffusers layout (text_encoder/, text_encoder_2/): its
// config.json and its safetensors weights.
#ifndef DGRID_SERVICES_ENCODER_MODELS_COMPONENT_FILES_H_
#define DGRID_SERVICES_ENCODER_MODELS_COMPONENT_FILES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/diffusers_layout.h"
#include "common/safetensors.h"
#include "common/weight_map.h"

namespace dgrid::encoder {

struct ComponentFiles {
  JsonConfig config;
  WeightMap weights;
};

// "<folder>/config.json" + LoadSafetensorsFolder(folder, options). Errors of either are returned
// as they come (NOT_FOUND for a missing file, INVALID_ARGUMENT / DATA_LOSS for bad content).
absl::StatusOr<ComponentFiles> ReadComponentFiles(const std::string& folder,
                                                  const LoadOptions& options);

// Logs (at warn level) the parameters a model left untaken, as transformers reports unexpected
// keys.
void WarnUnusedWeights(const WeightMap& weights, absl::string_view model_name);

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_MODELS_COMPONENT_FILES_H_
