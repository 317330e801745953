// Parsing of the HTTP request bodies of the OpenAI-compatible endpoints (http_server.h lists the
// fields) into GenerateRequests. Pure functions of the client's bytes (and, for videos, the model's
// facts), free of sockets and of the pipeline, so that they can be tested and fuzzed alone
// (tests/fuzz/http_request_fuzz.cc).
//
// Errors: INVALID_ARGUMENT whose message starts with the field it is about ("size: must be ..."),
// which HttpErrorBody turns into OpenAI's "param"; for videos, also the model resolver's error.
// Thread-safe: no state.
#ifndef DGRID_ORCHESTRATOR_API_HTTP_REQUEST_PARSING_H_
#define DGRID_ORCHESTRATOR_API_HTTP_REQUEST_PARSING_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dgrid/v1/generation.pb.h"

namespace dgrid::orchestrator {

// INVALID_ARGUMENT "<field>: <what>".
absl::Status FieldError(absl::string_view field, absl::string_view what);

// The body of POST /v1/images/generations: the GenerateRequest (seed left unset when absent) and
// the image count `*n` (1 when absent). The dgrid extension "request_id" (as GenerateRequest's)
// names the request; with n > 1, image i is "<request_id>-<i>".
[[nodiscard]] absl::Status ParseImageGenerationsBody(absl::string_view body,
                                                     dgrid::v1::GenerateRequest* request, int* n);

// OpenAI's streaming fields of an image request body (a JSON object): "stream" (a boolean; false
// when absent) and "partial_images" (0 to 3, 0 when absent; meaningful only with stream).
// INVALID_ARGUMENT naming the field. The body's other fields are not looked at.
[[nodiscard]] absl::Status ParseImageStreamFields(absl::string_view body, bool* stream,
                                                  int* partial_images);

// The served model a request names ("" for the default) -> its facts (Pipeline::ResolveModel).
using ModelResolver =
    absl::FunctionRef<absl::StatusOr<dgrid::v1::ModelInfo>(absl::string_view model)>;

// The body of POST /v1/videos (a JSON object) as a GenerateRequest. "seconds" (OpenAI's clip
// length, a string or a number) becomes seconds x fps + 1 frames, rounded down to the model's frame
// step; "num_frames" wins when both are given. Unknown fields are ignored, as on the images
// endpoint. Image models and "input_reference" are INVALID_ARGUMENT.
[[nodiscard]] absl::Status ParseVideoCreateBody(absl::string_view body, ModelResolver resolve,
                                                dgrid::v1::GenerateRequest* request);

// A multipart/form-data body's fields (name, content; the openai package sends POST /v1/videos
// so) as the JSON text the JSON form of the body would carry: numeric fields are parsed from their
// text, "stream" as "true" / "false" becomes a boolean, everything else stays text. A name given
// twice keeps its last value.
std::string FormFieldsAsJson(const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_HTTP_REQUEST_PARSING_H_
