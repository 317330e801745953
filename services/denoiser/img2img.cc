#include "services/denoiser/img2img.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

absl::StatusOr<int> Img2ImgFirstStep(int num_inference_steps, double strength) {
  if (!std::isfinite(strength) || strength < 0.0 || strength > 1.0) {
    return InvalidArgument("strength = ", strength, " is outside [0, 1]");
  }
  if (num_inference_steps < 1) {
    return InvalidArgument("num_inference_steps = ", num_inference_steps, " must be >= 1");
  }
  const double n = num_inference_steps;
  const double init = std::min(n * strength, n);
  const int first = static_cast<int>(std::max(n - init, 0.0));
  if (num_inference_steps - first < 1) {
    return InvalidArgument("strength = ", strength, " leaves no denoising step; use > 0");
  }
  return first;
}

absl::StatusOr<at::Tensor> Img2ImgInitialLatents(const at::Tensor& image_latents, float sigma,
                                                 uint64_t seed, at::ScalarType noise_dtype,
                                                 at::Device device) {
  if (!image_latents.defined() || image_latents.dim() != 4 || image_latents.size(0) != 1 ||
      !image_latents.is_floating_point()) {
    return InvalidArgument("image_latents: expected a floating-point [1, C, h, w] tensor");
  }
  return TorchCall("img2img initial latents", [&] {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    const at::TensorOptions cpu = at::TensorOptions().device(at::kCPU);
    // The decoder stage's draw (the latent sample), to leave the generator where diffusers has it.
    (void)at::randn(image_latents.sizes(), generator, cpu.dtype(image_latents.scalar_type()));
    const at::Tensor noise =
        at::randn(image_latents.sizes(), generator, cpu.dtype(noise_dtype)).to(device);
    const at::Tensor sample = image_latents.to(device);
    const at::Tensor s = at::full({1, 1, 1, 1}, sigma, at::TensorOptions().dtype(at::kFloat))
                             .to(device, sample.scalar_type());
    return s * noise + (1.0 - s) * sample;
  });
}

}  // namespace dgrid
