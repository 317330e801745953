#include "orchestrator/api/http_edits.h"

#include <httplib.h>

#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/http_request_parsing.h"
#include "orchestrator/api/http_server.h"
#include "orchestrator/api/http_streaming.h"
#include "orchestrator/api/request_validation.h"

namespace dgrid::orchestrator {
namespace {

// Form fields whose text is a number (those FormFieldsAsJson leaves as text).
constexpr const char* kNumericEditFields[] = {"n", "strength", "true_cfg_scale"};

HttpReply ErrorReply(const absl::Status& status) {
  return {HttpStatusFor(status.code()), HttpErrorBody(status)};
}

}  // namespace

absl::Status ParseImageEditsForm(const std::vector<FormPart>& parts, std::string* fields_json,
                                 std::string* image) {
  std::vector<std::pair<std::string, std::string>> fields;
  int images = 0;
  for (const FormPart& part : parts) {
    if (part.name == "image" || part.name == "image[]") {
      if (++images > 1) return FieldError("image", "exactly one image is supported");
      *image = part.content;
      continue;
    }
    if (part.name == "mask") {
      return FieldError("mask", "not supported: dgrid edits the whole image (no inpainting)");
    }
    if (!part.filename.empty()) {
      return FieldError(part.name, "a file is not expected here (only \"image\" is a file)");
    }
    fields.emplace_back(part.name, part.content);
  }
  if (images == 0) return FieldError("image", "required: a PNG or JPEG file");
  if (image->empty()) return FieldError("image", "empty file");
  nlohmann::json body = nlohmann::json::parse(FormFieldsAsJson(fields));
  for (const char* name : kNumericEditFields) {
    auto it = body.find(name);
    if (it == body.end() || !it->is_string()) continue;
    const std::string text = it->get<std::string>();
    int64_t i = 0;
    double d = 0;
    if (absl::SimpleAtoi(text, &i)) {
      *it = i;
    } else if (absl::SimpleAtod(text, &d) && std::isfinite(d)) {
      *it = d;
    }
  }
  *fields_json = body.dump();
  double strength = 0;
  return ParseEditStrength(*fields_json, &strength);
}

absl::Status ParseEditStrength(const std::string& fields_json, double* strength) {
  const nlohmann::json body = nlohmann::json::parse(fields_json, nullptr, false);
  *strength = kDefaultStrength;
  if (!body.is_object()) return FieldError("body", "must be a form");
  auto it = body.find("strength");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError("strength", "must be a number from 0 to 1");
  *strength = it->get<double>();
  if (!(*strength >= 0.0 && *strength <= 1.0)) {
    return FieldError("strength", absl::StrCat("must be 0 to 1, got ", *strength));
  }
  return absl::OkStatus();
}

HttpReply HandleImageEdits(HttpServer& server, const httplib::Request& req,
                           httplib::Response& res) {
  if (!req.is_multipart_form_data()) {
    return ErrorReply(FieldError(
        "body", "must be multipart/form-data with an \"image\" file and a \"prompt\" field"));
  }
  std::vector<FormPart> parts;
  for (const auto& [name, part] : req.files) parts.push_back({name, part.filename, part.content});
  std::string json, image;
  if (absl::Status s = ParseImageEditsForm(parts, &json, &image); !s.ok()) return ErrorReply(s);
  dgrid::v1::GenerateRequest request;
  int n = 1;
  if (absl::Status s = HttpServer::ParseGenerations(json, &request, &n); !s.ok()) {
    return ErrorReply(s);
  }
  double strength = kDefaultStrength;
  if (absl::Status s = ParseEditStrength(json, &strength); !s.ok()) return ErrorReply(s);
  bool stream = false;
  int partial_images = 0;
  if (absl::Status s = ParseImageStreamFields(json, &stream, &partial_images); !s.ok()) {
    return ErrorReply(s);
  }
  request.set_image(std::move(image));
  request.set_strength(strength);
  if (!stream) return server.RunImages(request, n, ClientConnection::Of(req));
  if (n != 1) return ErrorReply(FieldError("n", "must be 1 when stream is true"));
  ServeImageStream(server.pipeline(), std::move(request), partial_images, req, res, "image_edit");
  return {0, ""};
}

}  // namespace dgrid::orchestrator
