// The parameters of FluxTransformer2DModel for a config: diffusers' names and shapes, in load
// order. Ref: diffusers FluxTransformer2DModel (models/transformers/transformer_flux.py, 0.42.1).
// Used to build random-weight models of any shape (benchmarks, tests) without a checkpoint.
#ifndef DGRID_SERVICES_DENOISER_MODELS_FLUX_PARAMETERS_H_
#define DGRID_SERVICES_DENOISER_MODELS_FLUX_PARAMETERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "services/denoiser/models/flux_config.h"

namespace dgrid {

struct FluxParameter {
  enum Kind { kLinearWeight, kLinearBias, kNormScale };
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
};

std::vector<FluxParameter> FluxParameters(const FluxTransformerConfig& config);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_MODELS_FLUX_PARAMETERS_H_
