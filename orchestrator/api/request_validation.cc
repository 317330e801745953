#include "orchestrator/api/request_validation.h"

#include <cmath>
#include <random>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/input_image.h"
#include "common/step_cache.h"
#include "families/registry.h"

namespace dgrid::orchestrator {

namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status ValidateSize(absl::string_view field, int32_t value, int32_t max, int32_t multiple) {
  if (value == 0) return absl::OkStatus();  // model default
  if (value < multiple) {
    return Invalid(field, absl::StrCat("must be >= ", multiple, ", got ", value));
  }
  if (value % multiple != 0) {
    return Invalid(field, absl::StrCat("must be a multiple of ", multiple, ", got ", value));
  }
  if (max > 0 && value > max) {
    return Invalid(field, absl::StrCat("must be <= ", max, " for this model, got ", value));
  }
  return absl::OkStatus();
}

// The family serving `model` (by its pipeline class); the default family when its workers
// registered none, or a class this orchestrator does not know.
const families::ModelFamily& FamilyOfModel(const dgrid::v1::ModelInfo& model) {
  absl::StatusOr<const families::ModelFamily*> family =
      families::FindFamilyForPipeline(model.pipeline());
  return family.ok() ? **family : families::DefaultFamily();
}

const families::GenerationDefaults& DefaultsOf(const dgrid::v1::ModelInfo& model) {
  return FamilyOfModel(model).defaults();
}

// The frame facts of `model`: its ModelInfo's where its workers registered them (> 0), else its
// family's.
struct Frames {
  int max = 1, default_count = 1, step = 1, default_fps = 0;
  bool video() const { return max > 1; }
};
Frames FramesOf(const dgrid::v1::ModelInfo& model) {
  const families::GenerationDefaults& defaults = DefaultsOf(model);
  Frames f;
  f.max = model.max_num_frames() > 0 ? model.max_num_frames() : defaults.max_num_frames;
  f.default_count =
      model.default_num_frames() > 0 ? model.default_num_frames() : defaults.num_frames;
  f.step = model.frame_step() > 0 ? model.frame_step() : defaults.frame_step;
  f.default_fps = model.default_fps() > 0 ? model.default_fps() : defaults.fps;
  return f;
}

// num_frames, fps and a video output_format against what the model makes.
absl::Status ValidateFrames(const dgrid::v1::GenerateRequest& r,
                            const dgrid::v1::ModelInfo& model) {
  const Frames frames = FramesOf(model);
  if (!frames.video()) {
    const std::string what = absl::StrCat("model '", model.name(), "' makes images");
    if (r.num_frames() != 0 && r.num_frames() != 1) {
      return Invalid("num_frames", absl::StrCat(what, "; must be 0 or 1, got ", r.num_frames()));
    }
    if (r.fps() != 0) {
      return Invalid("fps", absl::StrCat(what, "; leave it 0, got ", r.fps()));
    }
    if (r.output_format() == dgrid::v1::OUTPUT_FORMAT_MP4) {
      return Invalid("output_format", absl::StrCat(what, "; MP4 is for video models"));
    }
    if (r.has_guidance_scale_2()) {
      return Invalid("guidance_scale_2", absl::StrCat(what, "; leave it unset"));
    }
    return absl::OkStatus();
  }
  if (r.has_guidance_scale_2()) {
    const float g = r.guidance_scale_2();
    if (!std::isfinite(g) || g < 0.0f || g > kMaxGuidance) {
      return Invalid("guidance_scale_2", absl::StrCat("must be 0 to ", kMaxGuidance, ", got ", g));
    }
  }
  if (r.num_frames() < 0 || r.num_frames() > frames.max) {
    return Invalid("num_frames", absl::StrCat("must be 1 to ", frames.max, " for this model, got ",
                                              r.num_frames()));
  }
  if (r.num_frames() > 0 && (r.num_frames() - 1) % frames.step != 0) {
    return Invalid("num_frames", absl::StrCat("num_frames - 1 must be a multiple of ", frames.step,
                                              " for this model, got ", r.num_frames()));
  }
  if (r.fps() < 0 || r.fps() > kMaxFps) {
    return Invalid("fps", absl::StrCat("must be 0 to ", kMaxFps, ", got ", r.fps()));
  }
  const int count = r.num_frames() > 0 ? r.num_frames() : frames.default_count;
  if (count > 1 && r.output_format() == dgrid::v1::OUTPUT_FORMAT_PNG) {
    return Invalid("output_format", "PNG holds one picture; a video is MP4 or RAW_RGB8");
  }
  return absl::OkStatus();
}

// frames x width x height of a video request (the model's defaults where it leaves them 0) against
// the deployment's bound, or the family's.
absl::Status ValidateVideoPixels(const dgrid::v1::GenerateRequest& r,
                                 const dgrid::v1::ModelInfo& model, int64_t configured) {
  const Frames frames = FramesOf(model);
  if (!frames.video()) return absl::OkStatus();
  const families::GenerationDefaults& defaults = DefaultsOf(model);
  const int64_t limit = configured > 0 ? configured : defaults.max_video_pixels;
  const int64_t count = r.num_frames() > 0 ? r.num_frames() : frames.default_count;
  if (limit <= 0 || count <= 1) return absl::OkStatus();
  const int64_t width = r.width() > 0
                            ? r.width()
                            : (model.default_width() > 0 ? model.default_width() : defaults.width);
  const int64_t height =
      r.height() > 0 ? r.height()
                     : (model.default_height() > 0 ? model.default_height() : defaults.height);
  const int64_t pixels = count * width * height;
  if (pixels > limit) {
    return Invalid("num_frames",
                   absl::StrCat(count, " frames of ", width, "x", height, " are ", pixels,
                                " pixels; this server takes at most ", limit,
                                " frames x width x height per request (--max-video-pixels)"));
  }
  return absl::OkStatus();
}

// Image-to-image: the family takes an input image, the bytes decode (the whole image: a truncated
// or corrupt one is refused here, before any stage works on the request), strength in [0, 1]
// leaving at least one step.
absl::Status ValidateInputImage(const dgrid::v1::GenerateRequest& r,
                                const dgrid::v1::ModelInfo& info) {
  if (r.image().empty()) {
    if (r.has_strength()) return Invalid("strength", "only with an input image (image)");
    return absl::OkStatus();
  }
  if (!DefaultsOf(info).image_input) {
    return Invalid("image", absl::StrCat("model '", info.name(), "' (", FamilyOfModel(info).name(),
                                         " family) takes no input image"));
  }
  if (r.has_strength()) {
    const double strength = r.strength();
    if (!std::isfinite(strength) || strength < 0.0 || strength > 1.0) {
      return Invalid("strength", absl::StrCat("must be 0 to 1, got ", strength));
    }
    // FluxImg2ImgPipeline.get_timesteps runs N - int(N - N * strength) of N steps: none for 0,
    // at least one for any strength > 0.
    if (strength == 0.0) return Invalid("strength", "0 leaves no denoising step; use > 0");
  }
  // DecodeInputImage's messages start with "image: ".
  return DecodeInputImage(r.image()).status();
}

}  // namespace

dgrid::v1::ModelInfo FallbackModelInfo(absl::string_view name) {
  const families::GenerationDefaults& defaults = families::DefaultFamily().defaults();
  dgrid::v1::ModelInfo info;
  info.set_name(std::string(name));
  info.set_default_width(defaults.width);
  info.set_default_height(defaults.height);
  info.set_default_steps(defaults.steps);
  info.set_max_width(defaults.max_width);
  info.set_max_height(defaults.max_height);
  info.set_family(std::string(families::DefaultFamily().name()));
  info.set_max_num_frames(defaults.max_num_frames);
  info.set_default_num_frames(defaults.num_frames);
  info.set_frame_step(defaults.frame_step);
  info.set_default_fps(defaults.fps);
  return info;
}

absl::Status ValidateRequestId(absl::string_view id) {
  if (id.empty()) return Invalid("request_id", "empty");
  if (id.size() > kMaxRequestIdLength) {
    return Invalid("request_id",
                   absl::StrCat("at most ", kMaxRequestIdLength, " characters, got ", id.size()));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return Invalid("request_id", "only [A-Za-z0-9._-] are allowed");
  }
  return absl::OkStatus();
}

absl::StatusOr<dgrid::v1::ModelInfo> ResolveModel(absl::string_view requested,
                                                  const std::vector<dgrid::v1::ModelInfo>& models,
                                                  absl::string_view default_model) {
  std::string name(requested);
  if (name.empty()) {
    if (!default_model.empty()) {
      name = std::string(default_model);
    } else if (!models.empty()) {
      name = models.front().name();
    } else {
      return absl::UnavailableError("model: no model is served by a complete set of stages");
    }
  }
  const dgrid::v1::ModelInfo* model = nullptr;
  for (const auto& m : models) {
    if (m.name() == name) model = &m;
  }
  if (model == nullptr) {
    return absl::NotFoundError(absl::StrCat("model: unknown or unserved model '", name, "'"));
  }
  if (model->unavailable()) {
    return absl::UnavailableError(
        absl::StrCat("model: '", name,
                     "' is served by this cluster but one of its stages has no live replica right "
                     "now (restarting?); try again shortly"));
  }
  dgrid::v1::ModelInfo info = *model;
  if (info.max_width() <= 0 && info.max_height() <= 0 && info.default_width() <= 0) {
    info = FallbackModelInfo(name);
  }
  return info;
}

absl::StatusOr<dgrid::v1::ModelInfo> ValidateGenerateRequest(
    const dgrid::v1::GenerateRequest& r, const std::vector<dgrid::v1::ModelInfo>& models,
    absl::string_view default_model, int64_t max_video_pixels) {
  if (!r.request_id().empty()) {
    absl::Status id_status = ValidateRequestId(r.request_id());
    if (!id_status.ok()) return id_status;
  }
  // Model first: the size limits depend on it.
  absl::StatusOr<dgrid::v1::ModelInfo> resolved = ResolveModel(r.model(), models, default_model);
  if (!resolved.ok()) return resolved.status();
  const dgrid::v1::ModelInfo& info = *resolved;

  if (r.prompt().empty()) return Invalid("prompt", "empty");
  if (r.prompt().size() > kMaxPromptBytes) {
    return Invalid("prompt",
                   absl::StrCat("at most ", kMaxPromptBytes, " bytes, got ", r.prompt().size()));
  }
  if (r.negative_prompt().size() > kMaxPromptBytes) {
    return Invalid("negative_prompt", absl::StrCat("at most ", kMaxPromptBytes, " bytes, got ",
                                                   r.negative_prompt().size()));
  }
  const families::GenerationDefaults& defaults = DefaultsOf(info);
  absl::Status s = ValidateSize("width", r.width(), info.max_width(), defaults.size_multiple());
  if (!s.ok()) return s;
  s = ValidateSize("height", r.height(), info.max_height(), defaults.size_multiple());
  if (!s.ok()) return s;
  if (r.num_inference_steps() < 0 || r.num_inference_steps() > kMaxSteps) {
    return Invalid("num_inference_steps",
                   absl::StrCat("must be 1 to ", kMaxSteps, ", got ", r.num_inference_steps()));
  }
  if (r.has_guidance_scale()) {
    const float g = r.guidance_scale();
    if (!std::isfinite(g)) return Invalid("guidance_scale", "must be finite");
    if (g < 0.0f || g > kMaxGuidance) {
      return Invalid("guidance_scale", absl::StrCat("must be 0 to ", kMaxGuidance, ", got ", g));
    }
  }
  if (r.has_true_cfg_scale()) {
    const float t = r.true_cfg_scale();
    if (!std::isfinite(t)) return Invalid("true_cfg_scale", "must be finite");
    if (t < 1.0f || t > kMaxGuidance) {
      return Invalid("true_cfg_scale", absl::StrCat("must be 1 to ", kMaxGuidance, ", got ", t));
    }
  }
  if (!dgrid::v1::OutputFormat_IsValid(r.output_format())) {
    return Invalid("output_format", absl::StrCat("unknown value ", r.output_format()));
  }
  s = ValidateFrames(r, info);
  if (!s.ok()) return s;
  if (r.preview_images() < 0 || r.preview_images() > kMaxPreviewImages) {
    return Invalid("preview_images",
                   absl::StrCat("must be 0 to ", kMaxPreviewImages, ", got ", r.preview_images()));
  }
  if (r.preview_images() > 0 && FramesOf(info).video()) {
    return Invalid("preview_images", absl::StrCat("model '", info.name(),
                                                  "' makes videos; previews are for image models"));
  }
  s = ValidateVideoPixels(r, info, max_video_pixels);
  if (!s.ok()) return s;
  s = ValidateInputImage(r, info);
  if (!s.ok()) return s;
  if (!dgrid::v1::Priority_IsValid(r.priority())) {
    return Invalid("priority", absl::StrCat("unknown value ", r.priority()));
  }
  if (r.deadline_ms() < 0) {
    return Invalid("deadline_ms", absl::StrCat("must be >= 0, got ", r.deadline_ms()));
  }
  if (r.max_sequence_length() < 0 || r.max_sequence_length() > defaults.max_text_tokens) {
    return Invalid("max_sequence_length", absl::StrCat("must be 0 to ", defaults.max_text_tokens,
                                                       ", got ", r.max_sequence_length()));
  }
  if (r.has_cache()) {
    // StepCacheFromProto's messages start with the field ("cache.threshold: ...").
    absl::StatusOr<StepCacheConfig> cache = StepCacheFromProto(r.cache());
    if (!cache.ok()) return cache.status();
    if (cache->enabled() && !defaults.step_cache) {
      return Invalid("cache.method",
                     absl::StrCat("model '", info.name(), "' (", FamilyOfModel(info).name(),
                                  " family) has no step caching"));
    }
  }
  return info;
}

bool TakesStepCache(const dgrid::v1::ModelInfo& model) { return DefaultsOf(model).step_cache; }

bool RunsCfg(const dgrid::v1::ModelInfo& model, const dgrid::v1::GenerateRequest& request) {
  return FamilyOfModel(model).RunsCfg(request.guidance_scale(), request.true_cfg_scale());
}

dgrid::v1::Accepted FillDefaults(const dgrid::v1::ModelInfo& model, dgrid::v1::GenerateRequest* r) {
  const families::GenerationDefaults& defaults = DefaultsOf(model);
  r->set_model(model.name());
  if (r->width() == 0) {
    r->set_width(model.default_width() > 0 ? model.default_width() : defaults.width);
  }
  if (r->height() == 0) {
    r->set_height(model.default_height() > 0 ? model.default_height() : defaults.height);
  }
  if (r->num_inference_steps() == 0) {
    r->set_num_inference_steps(model.default_steps() > 0 ? model.default_steps() : defaults.steps);
  }
  if (r->max_sequence_length() == 0) {
    r->set_max_sequence_length(model.max_sequence_length() > 0 ? model.max_sequence_length()
                                                               : defaults.max_sequence_length);
  }
  // The model's default distilled guidance (its family's, FLUX.1-dev's 3.5, when it names none);
  // ignored by models without a guidance embedding.
  if (!r->has_guidance_scale()) {
    r->set_guidance_scale(model.default_guidance() > 0
                              ? model.default_guidance()
                              : static_cast<float>(defaults.guidance_scale));
  }
  if (!r->image().empty() && !r->has_strength()) r->set_strength(kDefaultStrength);
  if (!r->has_true_cfg_scale()) {
    r->set_true_cfg_scale(static_cast<float>(defaults.true_cfg_scale));
  }
  if (!r->has_seed()) {
    // Seeds that fit in 53 bits survive a round trip through JSON numbers (HTTP clients).
    static absl::Mutex mutex(absl::kConstInit);
    static absl::BitGen* gen = new absl::BitGen();
    absl::MutexLock lock(&mutex);
    r->set_seed(absl::Uniform<uint64_t>(*gen, 0, uint64_t{1} << 53));
  }
  const Frames frames = FramesOf(model);
  if (r->num_frames() == 0) r->set_num_frames(frames.default_count);
  if (r->fps() == 0 && frames.video()) r->set_fps(frames.default_fps);
  if (r->output_format() == dgrid::v1::OUTPUT_FORMAT_UNSPECIFIED) {
    r->set_output_format(r->num_frames() > 1 ? dgrid::v1::OUTPUT_FORMAT_MP4
                                             : dgrid::v1::OUTPUT_FORMAT_PNG);
  }
  if (r->priority() == dgrid::v1::PRIORITY_UNSPECIFIED) r->set_priority(dgrid::v1::PRIORITY_NORMAL);
  dgrid::v1::Accepted accepted;
  accepted.set_model(r->model());
  accepted.set_width(r->width());
  accepted.set_height(r->height());
  accepted.set_num_inference_steps(r->num_inference_steps());
  accepted.set_seed(r->seed());
  accepted.set_num_frames(r->num_frames());
  accepted.set_fps(r->fps());
  return accepted;
}

}  // namespace dgrid::orchestrator
