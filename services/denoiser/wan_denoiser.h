// Wan2.1 / Wan2.2's denoiser for the stage: WanTransformer3DModel (and transformer_2 for Wan2.2
// A14B), the pipeline's UniPC or flow-match Euler scheduler and RunWanSampler (wan_sampler.h), on
// one process or as one rank of a denoiser group. With --dit-offload model each transformer comes
// to the device around each request's loop and each step batch's life (dit_placement.h); Wan2.2
// A14B's two experts come in together for the whole request (both are held while it denoises,
// not only the expert of the current step).
#ifndef DGRID_SERVICES_DENOISER_WAN_DENOISER_H_
#define DGRID_SERVICES_DENOISER_WAN_DENOISER_H_

#include <memory>

#include "services/denoiser/family_denoiser.h"

namespace dgrid {

// transformer/ (and transformer_2/ when model_index.json has boundary_ratio), scheduler/, and the
// VAE's scale factors from vae/config.json, of the WanPipeline at `index`.
absl::StatusOr<std::unique_ptr<FamilyDenoiser>> LoadWanDenoiser(const ModelIndex& index,
                                                                const LoadOptions& load);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_WAN_DENOISER_H_
