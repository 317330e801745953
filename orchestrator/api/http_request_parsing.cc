#include "orchestrator/api/http_request_parsing.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/step_cache.h"
#include "dgrid/v1/generation.pb.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/request_validation.h"

namespace dgrid::orchestrator {

namespace {

constexpr int kMaxImagesPerCall = 10;

// Reads an optional integer field into *out: INVALID_ARGUMENT naming it when present but not an
// integer; absent or null leaves *out as it is.
absl::Status GetInt(const nlohmann::json& body, const char* field, std::optional<int64_t>* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return FieldError(field, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}
absl::Status GetNumber(const nlohmann::json& body, const char* field, std::optional<double>* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(field, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}
absl::Status GetString(const nlohmann::json& body, const char* field,
                       std::optional<std::string>* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return FieldError(field, "must be a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// Reads an optional seed: an integer 0 to 2^64 - 1, as GenerateRequest.seed takes.
absl::Status GetSeed(const nlohmann::json& body, std::optional<uint64_t>* out) {
  auto it = body.find("seed");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_unsigned()) {
    *out = it->get<uint64_t>();
    return absl::OkStatus();
  }
  if (it->is_number_integer()) return FieldError("seed", "must be 0 to 18446744073709551615");
  return FieldError("seed", "must be an integer");
}

// Reads "size" ("WxH") into the request.
absl::Status ParseSize(const std::optional<std::string>& size,
                       dgrid::v1::GenerateRequest* request) {
  if (!size.has_value()) return absl::OkStatus();
  std::vector<std::string> parts = absl::StrSplit(*size, 'x');
  int w = 0, h = 0;
  const auto digits = [](absl::string_view part) {
    return !part.empty() && std::all_of(part.begin(), part.end(), absl::ascii_isdigit);
  };
  if (parts.size() != 2 || !digits(parts[0]) || !digits(parts[1]) ||
      !absl::SimpleAtoi(parts[0], &w) || !absl::SimpleAtoi(parts[1], &h) || w <= 0 || h <= 0) {
    return FieldError("size", "must be \"WIDTHxHEIGHT\", e.g. \"1024x1024\"");
  }
  request->set_width(w);
  request->set_height(h);
  return absl::OkStatus();
}

// "cache" (step caching, GenerateRequest.cache) into the request: an object {"method": "fbcache",
// "threshold": 0.08, "warmup_steps": 1, "max_skip": 3} (all but method optional), or the CLI's
// string form "fbcache:0.08:1:3" (a form field of /v1/images/edits). Types are checked here, values
// by the pipeline's validation (both name the field, "cache.threshold: ...").
absl::Status GetCache(const nlohmann::json& body, dgrid::v1::GenerateRequest* request) {
  auto it = body.find("cache");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {
    absl::StatusOr<StepCacheConfig> spec = ParseStepCacheSpec(it->get<std::string>(), "cache");
    if (!spec.ok()) return spec.status();
    StepCacheToProto(*spec, request->mutable_cache());
    return absl::OkStatus();
  }
  if (!it->is_object()) {
    return FieldError("cache",
                      "must be an object ({\"method\": \"fbcache\", \"threshold\": 0.08}) "
                      "or a string (\"fbcache:0.08\")");
  }
  dgrid::v1::StepCache* cache = request->mutable_cache();
  for (const auto& [key, value] : it->items()) {
    const std::string field = absl::StrCat("cache.", key);
    if (key == "method") {
      if (!value.is_string()) return FieldError(field, "must be a string");
      cache->set_method(value.get<std::string>());
    } else if (key == "threshold") {
      if (!value.is_number()) return FieldError(field, "must be a number");
      cache->set_threshold(value.get<float>());
    } else if (key == "warmup_steps" || key == "max_skip") {
      if (!value.is_number_integer()) return FieldError(field, "must be an integer");
      const int64_t n = value.get<int64_t>();
      if (n < -1000000 || n > 1000000) return FieldError(field, "out of range");
      if (key == "warmup_steps") {
        cache->set_warmup_steps(static_cast<int32_t>(n));
      } else {
        cache->set_max_skip(static_cast<int32_t>(n));
      }
    } else {
      return FieldError(field, "unknown field (method, threshold, warmup_steps, max_skip)");
    }
  }
  if (!it->contains("method")) return FieldError("cache.method", "required");
  return absl::OkStatus();
}

// "max_sequence_length" (the text encoder's token budget) into the request; the pipeline checks it
// against the model's limit.
absl::Status SetMaxTokens(std::optional<int64_t> max_tokens, dgrid::v1::GenerateRequest* request) {
  if (!max_tokens.has_value()) return absl::OkStatus();
  if (*max_tokens < 1 || *max_tokens > 4096)
    return FieldError("max_sequence_length", "must be 1 to 4096");
  request->set_max_sequence_length(static_cast<int32_t>(*max_tokens));
  return absl::OkStatus();
}

// The fields both endpoints read, into `request`: "prompt" (required), "model", "size",
// "negative_prompt", "num_inference_steps", "seed", "deadline_ms", "guidance_scale" and
// "max_sequence_length", and "cache". INVALID_ARGUMENT naming the field.
absl::Status ParseCommonFields(const nlohmann::json& body, dgrid::v1::GenerateRequest* request) {
  std::optional<std::string> prompt, size, model, negative;
  std::optional<int64_t> steps, deadline_ms, max_tokens;
  std::optional<uint64_t> seed;
  std::optional<double> guidance;
  for (absl::Status s :
       {GetString(body, "prompt", &prompt), GetString(body, "size", &size),
        GetString(body, "model", &model), GetString(body, "negative_prompt", &negative),
        GetInt(body, "num_inference_steps", &steps), GetSeed(body, &seed),
        GetInt(body, "deadline_ms", &deadline_ms), GetNumber(body, "guidance_scale", &guidance),
        GetInt(body, "max_sequence_length", &max_tokens)}) {
    if (!s.ok()) return s;
  }
  if (!prompt.has_value()) return FieldError("prompt", "required");
  request->set_prompt(*prompt);
  if (absl::Status s = SetMaxTokens(max_tokens, request); !s.ok()) return s;
  if (absl::Status s = ParseSize(size, request); !s.ok()) return s;
  if (model.has_value()) request->set_model(*model);
  if (negative.has_value()) request->set_negative_prompt(*negative);
  if (steps.has_value()) {
    if (*steps < 1 || *steps > 1000) return FieldError("num_inference_steps", "must be 1 to 1000");
    request->set_num_inference_steps(static_cast<int32_t>(*steps));
  }
  if (seed.has_value()) request->set_seed(*seed);
  if (deadline_ms.has_value()) request->set_deadline_ms(*deadline_ms);  // validated by the pipeline
  if (guidance.has_value()) request->set_guidance_scale(static_cast<float>(*guidance));
  return GetCache(body, request);
}

}  // namespace

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status ParseImageGenerationsBody(absl::string_view text, dgrid::v1::GenerateRequest* request,
                                       int* n) {
  nlohmann::json body = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (body.is_discarded() || !body.is_object()) return FieldError("body", "must be a JSON object");
  std::optional<std::string> format, output_format, request_id;
  std::optional<int64_t> count;
  std::optional<double> true_cfg;
  for (absl::Status s :
       {ParseCommonFields(body, request), GetString(body, "request_id", &request_id),
        GetString(body, "response_format", &format),
        GetString(body, "output_format", &output_format), GetInt(body, "n", &count),
        GetNumber(body, "true_cfg_scale", &true_cfg)}) {
    if (!s.ok()) return s;
  }
  *n = static_cast<int>(count.value_or(1));
  if (count.has_value() && (*count < 1 || *count > kMaxImagesPerCall)) {
    return FieldError("n", absl::StrCat("must be 1 to ", kMaxImagesPerCall));
  }
  if (format.has_value() && *format != "b64_json") {
    return FieldError("response_format", "only \"b64_json\" is supported");
  }
  if (true_cfg.has_value()) request->set_true_cfg_scale(static_cast<float>(*true_cfg));
  if (request_id.has_value()) request->set_request_id(*request_id);  // checked by the pipeline
  request->set_output_format(dgrid::v1::OUTPUT_FORMAT_PNG);
  if (output_format.has_value() && *output_format != "png") {
    if (*output_format != "webp") return FieldError("output_format", "must be \"png\" or \"webp\"");
    request->set_output_format(dgrid::v1::OUTPUT_FORMAT_WEBP);
  }
  return absl::OkStatus();
}

absl::Status ParseImageStreamFields(absl::string_view text, bool* stream, int* partial_images) {
  const nlohmann::json body = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (!body.is_object()) return FieldError("body", "must be a JSON object");
  *stream = false;
  if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return FieldError("stream", "must be true or false");
    *stream = it->get<bool>();
  }
  std::optional<int64_t> partial;
  if (absl::Status s = GetInt(body, "partial_images", &partial); !s.ok()) return s;
  if (partial.has_value() && (*partial < 0 || *partial > kMaxPreviewImages)) {
    return FieldError("partial_images", absl::StrCat("must be 0 to ", kMaxPreviewImages));
  }
  *partial_images = static_cast<int>(partial.value_or(0));
  return absl::OkStatus();
}

absl::Status ParseVideoCreateBody(absl::string_view text, ModelResolver resolve,
                                  dgrid::v1::GenerateRequest* request) {
  const nlohmann::json body = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (!body.is_object()) return FieldError("body", "must be a JSON object");
  if (body.contains("input_reference")) {
    return FieldError("input_reference",
                      "image-to-video is not supported; send a text prompt only");
  }
  std::optional<int64_t> frames, fps;
  std::optional<double> guidance_2;
  for (absl::Status s :
       {ParseCommonFields(body, request), GetInt(body, "num_frames", &frames),
        GetInt(body, "fps", &fps), GetNumber(body, "guidance_scale_2", &guidance_2)}) {
    if (!s.ok()) return s;
  }
  std::optional<double> seconds;
  if (auto it = body.find("seconds"); it != body.end() && !it->is_null()) {
    double value = 0;
    if (it->is_number()) {
      value = it->get<double>();
    } else if (!it->is_string() || !absl::SimpleAtod(it->get<std::string>(), &value)) {
      return FieldError("seconds", "must be a number of seconds, e.g. \"4\"");
    }
    if (!(value > 0) || value > 3600)
      return FieldError("seconds", "must be more than 0 and at most 3600");
    seconds = value;
  }
  absl::StatusOr<dgrid::v1::ModelInfo> info = resolve(request->model());
  if (!info.ok()) return info.status();
  if (info->max_num_frames() <= 1) {
    return FieldError("model",
                      absl::StrCat("'", info->name(),
                                   "' makes images, not videos; use POST /v1/images/generations"));
  }
  if (fps.has_value()) {
    if (*fps < 1 || *fps > kMaxFps)
      return FieldError("fps", absl::StrCat("must be 1 to ", kMaxFps));
    request->set_fps(static_cast<int32_t>(*fps));
  }
  if (frames.has_value()) {
    if (*frames < 1 || *frames > info->max_num_frames()) {
      return FieldError("num_frames", absl::StrCat("must be 1 to ", info->max_num_frames()));
    }
    request->set_num_frames(static_cast<int32_t>(*frames));
  } else if (seconds.has_value()) {
    const int rate = request->fps() > 0 ? request->fps() : std::max(info->default_fps(), 1);
    const int step = std::max(info->frame_step(), 1);
    const double intervals = std::floor(*seconds * rate / step) * step;
    if (intervals + 1 > info->max_num_frames()) {
      return FieldError(
          "seconds", absl::StrCat(*seconds, " s at ", rate, " fps is ", intervals + 1, " frames; '",
                                  info->name(), "' makes at most ", info->max_num_frames()));
    }
    request->set_num_frames(static_cast<int32_t>(intervals) + 1);
  }
  if (guidance_2.has_value()) request->set_guidance_scale_2(static_cast<float>(*guidance_2));
  return absl::OkStatus();
}

std::string FormFieldsAsJson(const std::vector<std::pair<std::string, std::string>>& fields) {
  static const char* const kNumeric[] = {"num_frames",          "fps",
                                         "num_inference_steps", "seed",
                                         "deadline_ms",         "guidance_scale",
                                         "guidance_scale_2",    "max_sequence_length",
                                         "partial_images",      "n"};
  nlohmann::json body = nlohmann::json::object();
  for (const auto& [name, content] : fields) {
    const bool numeric =
        std::find(std::begin(kNumeric), std::end(kNumeric), name) != std::end(kNumeric);
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    if (name == "stream" && (content == "true" || content == "false")) {
      body[name] = content == "true";  // a form's boolean (the openai package's edits)
    } else if (numeric && absl::SimpleAtoi(content, &i)) {
      body[name] = i;
    } else if (numeric && absl::SimpleAtoi(content, &u)) {
      body[name] = u;
    } else if (numeric && absl::SimpleAtod(content, &d)) {
      body[name] = d;
    } else {
      body[name] = content;
    }
  }
  return body.dump();
}

}  // namespace dgrid::orchestrator
