// Where and in what precision the text encoders and the VAE run, apart from the DiT (issue #20
// item 3): --text-encoder-device, --text-encoder-precision, --vae-device and --vae-precision, for
// `dgrid generate --local` (LocalPipeline) and `dgrid up` (passed to the encoder and decoder
// processes as their --device and --dtype). The DiT keeps --device, --dtype and --dit-precision.
//
// A device flag may also say `offload` (model offload, as diffusers' enable_model_cpu_offload):
// the component computes on --device, but its weights rest in host memory (pinned on a GPU) and
// are copied to --device just before each use and dropped right after (common/model_offload.h),
// so that the text encoders, the DiT and the VAE take turns on the GPU. With --device cpu the
// copies are CPU to CPU (the outputs are those of the plain placement, bit for bit). `dgrid up`
// passes it to the encoder and decoder processes as --offload model.
//
// Unset flags follow --device and --dtype; a component on a CPU whose precision nothing names runs
// in float32 (half-precision weights compute several times slower there), as the stages do.
// Tensors cross between components by the receiving side's device and dtype: the denoiser casts the
// text embeddings to the DiT's dtype, the decoder the latents to the VAE's.
//
// No LibTorch here. Plain values and functions; thread-compatible.
#ifndef DGRID_COMMON_COMPONENT_FLAGS_H_
#define DGRID_COMMON_COMPONENT_FLAGS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"

namespace dgrid {

struct ComponentFlags {
  // Empty: as --device / --dtype. A device is "cpu", "cuda", "cuda:N" or "offload".
  std::string text_encoder_device;
  std::string text_encoder_precision;  // float32, bfloat16 or float16
  std::string vae_device;
  std::string vae_precision;
};

// "float32" | "bfloat16" | "float16" for `text` in those spellings or fp32 / bf16 / fp16 (any
// case); INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<std::string> ParsePrecisionName(absl::string_view text, absl::string_view flag);
// "cpu", "cuda" or "cuda:N" (N >= 0) as given; INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<std::string> ParseDeviceName(absl::string_view text, absl::string_view flag);
// A component's device flag: ParseDeviceName's values or "offload" (kOffloadDevice).
inline constexpr absl::string_view kOffloadDevice = "offload";
absl::StatusOr<std::string> ParseComponentDeviceName(absl::string_view text,
                                                     absl::string_view flag);

// text_encoder_device, text_encoder_precision, vae_device, vae_precision, their help starting with
// `who` ("--local", "every encoder").
std::vector<Setting> ComponentSettings(absl::string_view who);
// Reads and checks them (empty values stay empty).
absl::StatusOr<ComponentFlags> ReadComponentFlags(const Config& config);

// A component's device and floating dtype from its own flags and the deployment's --device and
// --dtype (either may be empty): the component's flag where given, else the deployment's; no dtype
// named and a CPU device: float32; none named on a GPU: nullopt (as stored). A component device of
// "offload": the deployment's device, with offload set.
struct ComponentPlacement {
  std::string device;  // Where it computes.
  std::optional<std::string> dtype;
  bool offload = false;  // Weights in host memory, on `device` only around each use.
};
ComponentPlacement PlaceComponent(const std::string& component_device,
                                  const std::string& component_precision, const std::string& device,
                                  const std::string& dtype);

}  // namespace dgrid

#endif  // DGRID_COMMON_COMPONENT_FLAGS_H_
