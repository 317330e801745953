// Image-to-image's start of the FLUX sampling loop: how far the schedule is cut by strength, and
// the initial latents made from the encoded input image and seeded noise.
//
// Ref: diffusers FluxImg2ImgPipeline (pipelines/flux/pipeline_flux_img2img.py, 0.42.1):
// get_timesteps, prepare_latents, FlowMatchEulerDiscreteScheduler.scale_noise.
//
// Thread-safe (no shared state); errors as statuses.
#ifndef DGRID_SERVICES_DENOISER_IMG2IMG_H_
#define DGRID_SERVICES_DENOISER_IMG2IMG_H_

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace dgrid {

// get_timesteps: the index of the first of `num_inference_steps` steps that runs, t_start =
// int(max(N - min(N * strength, N), 0)) with the pipeline's float64 arithmetic. INVALID_ARGUMENT
// naming `strength` when it is outside [0, 1] (or not finite) or leaves no step to run (0: any
// strength > 0 runs at least one step).
absl::StatusOr<int> Img2ImgFirstStep(int num_inference_steps, double strength);

// prepare_latents: the request's CPU generator (seeded with `seed`) first draws the VAE's latent
// sample (a standard normal of image_latents' shape and dtype, drawn by the decoder stage and
// skipped here), then the noise, in `noise_dtype`; the result is scale_noise's
// sigma * noise + (1 - sigma) * image_latents with sigma (float32) cast to image_latents' dtype,
// on `device`, unpacked [1, C, h, w].
absl::StatusOr<at::Tensor> Img2ImgInitialLatents(const at::Tensor& image_latents, float sigma,
                                                 uint64_t seed, at::ScalarType noise_dtype,
                                                 at::Device device);

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_IMG2IMG_H_
