#include "services/denoiser/family_denoiser.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/flux_denoiser.h"
#include "services/denoiser/wan_denoiser.h"

namespace dgrid {

absl::StatusOr<std::unique_ptr<FamilyDenoiser>> LoadFamilyDenoiser(
    const families::ModelFamily& family, const ModelIndex& index, const LoadOptions& load) {
  if (!load.dit_precision.empty() && load.dit_precision != "bf16" && family.name() != "flux") {
    return InvalidArgument("--dit-precision ", load.dit_precision, ": ", index.root, " is a ",
                           family.name(), " model; only flux models have FP8 linear layers");
  }
  if ((load.dit_offload.layerwise || load.dit_offload.model) && family.name() != "flux" &&
      family.name() != "wan") {
    // Refused rather than ignored: a user who asked for offload expects the weights off the GPU.
    const char* mode = load.dit_offload.layerwise ? "layerwise" : "model";
    return InvalidArgument("--dit-offload ", mode, ": ", index.root, " is a ", family.name(),
                           " model; ", mode,
                           " offload is implemented for flux and wan models only (use "
                           "--dit-offload none)");
  }
  if (load.dit_shard.weights && family.name() != "flux" && family.name() != "wan") {
    // Refused rather than ignored: the user sharded because the model does not fit one GPU.
    return InvalidArgument("--dit-shard-weights: ", index.root, " is a ", family.name(),
                           " model; sharded weights are implemented for flux and wan models only "
                           "(leave the flag off)");
  }
  // One line per family the denoiser stage serves.
  if (family.name() == "flux") {
    ASSIGN_OR_RETURN(std::unique_ptr<FluxDenoiser> flux, FluxDenoiser::Load(index, load));
    return std::unique_ptr<FamilyDenoiser>(std::move(flux));
  }
  if (family.name() == "wan") return LoadWanDenoiser(index, load);
  return absl::UnimplementedError(
      absl::StrCat(index.root, ": the denoiser has no sampler for the ", family.name(), " family"));
}

std::optional<std::string> FamilyDenoiser::BatchKey(const DenoiseInput& /*input*/) const {
  return std::nullopt;
}

std::vector<const ModelResidency*> FamilyDenoiser::residencies() const { return {}; }

std::unique_ptr<BatchedSampler> FamilyDenoiser::NewBatch(
    const SequenceParallelContext* /*sp*/) const {
  return nullptr;
}

absl::StatusOr<at::Tensor> NamedInput(const DenoiseInput& input, bool negative,
                                      const std::string& name) {
  const NamedTensors& tensors = negative ? input.negative : input.positive;
  auto it = tensors.find(name);
  if (it == tensors.end() || !it->second.defined()) {
    return InvalidArgument(
        negative ? "negative" : "positive", ".tensors[", name, "]: missing",
        negative ? " (classifier-free guidance needs the negative prompt's)" : "");
  }
  return it->second;
}

}  // namespace dgrid
