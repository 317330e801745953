// Validation of GenerateRequest and filling of defaults, shared by the gRPC and HTTP front ends.
//
// Every rejection is INVALID_ARGUMENT (NOT_FOUND for an unknown model) whose message starts with
// the name of the offending field ("width: must be a multiple of 16, got 100"). Pure functions;
// thread-safe.
#ifndef DGRID_ORCHESTRATOR_API_REQUEST_VALIDATION_H_
#define DGRID_ORCHESTRATOR_API_REQUEST_VALIDATION_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid::orchestrator {

inline constexpr int kMaxPromptBytes = 16384;
inline constexpr int kMaxRequestIdLength = 64;
inline constexpr int kMaxSteps = 1000;
inline constexpr float kMaxGuidance = 100.0f;
// GenerateRequest.preview_images (OpenAI's partial_images) at most.
inline constexpr int kMaxPreviewImages = 3;
inline constexpr int kMaxFps = 240;
// Image-to-image's strength when a request with an image names none (FluxImg2ImgPipeline's).
inline constexpr double kDefaultStrength = 0.6;

// Limits used for a model whose workers registered no ModelInfo (only its name): the default
// family's (families/registry.h; FLUX.1's).
dgrid::v1::ModelInfo FallbackModelInfo(absl::string_view name);

// Checks that `id` is a valid client request id ([A-Za-z0-9._-], 1..64 characters).
absl::Status ValidateRequestId(absl::string_view id);

// The model a request naming `requested` runs on: `requested`, or when empty `default_model` when
// set, else the first listed model. NOT_FOUND ("model: ...") when it is not listed, UNAVAILABLE
// when nothing is listed or the model is listed as unavailable (a stage of it is down). A listed
// model without limits gets FallbackModelInfo's.
absl::StatusOr<dgrid::v1::ModelInfo> ResolveModel(absl::string_view requested,
                                                  const std::vector<dgrid::v1::ModelInfo>& models,
                                                  absl::string_view default_model);

// Resolves request.model against `models` (empty: `default_model` when set, else the first listed
// model) and validates every field against that model's limits and its family's (the family of
// ModelInfo.pipeline, else the default family: size multiple, most text tokens, frames: an image
// model refuses num_frames > 1, fps and MP4; a video model checks num_frames against its
// max_num_frames and frame_step, takes guidance_scale_2, and refuses PNG for more than one frame).
// On success returns the resolved model's ModelInfo.
// A video's num_frames x width x height (defaults filled in) is bounded by `max_video_pixels` when
// > 0, else by the family's GenerationDefaults::max_video_pixels (INVALID_ARGUMENT naming
// num_frames).
absl::StatusOr<dgrid::v1::ModelInfo> ValidateGenerateRequest(
    const dgrid::v1::GenerateRequest& request, const std::vector<dgrid::v1::ModelInfo>& models,
    absl::string_view default_model, int64_t max_video_pixels = 0);

// Fills model, width, height, num_inference_steps, max_sequence_length, guidance_scale, seed
// (random when unset), true_cfg_scale, num_frames, fps (video models), output_format (MP4 for
// more than one frame, else PNG) and priority in `request` from `model` (its family's defaults
// where the ModelInfo leaves a value 0), and returns the Accepted event describing the effective
// parameters. `request` must have passed validation.
dgrid::v1::Accepted FillDefaults(const dgrid::v1::ModelInfo& model,
                                 dgrid::v1::GenerateRequest* request);

// Whether `model`'s family has step caching (GenerateRequest.cache; FLUX).
bool TakesStepCache(const dgrid::v1::ModelInfo& model);

// Whether `request` (defaults filled in) runs classifier-free guidance on `model`: its family's
// policy (families::ModelFamily::RunsCfg; FLUX: true_cfg_scale > 1, Wan: guidance_scale > 1).
bool RunsCfg(const dgrid::v1::ModelInfo& model, const dgrid::v1::GenerateRequest& request);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_REQUEST_VALIDATION_H_
