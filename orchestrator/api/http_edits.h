// POST /v1/images/edits: image-to-image over HTTP, as OpenAI's Images API takes an edit.
//
//   multipart/form-data with
//     "image"            one PNG or JPEG file (the openai package names a list "image[]"; dgrid
//                        takes exactly one image), resized to "size" as GenerateRequest.image says
//     "prompt"           required
//     "n", "size", "response_format" ("b64_json"), "output_format", "model" as on
//                        /v1/images/generations, and its dgrid fields (num_inference_steps, seed,
//                        guidance_scale, negative_prompt, true_cfg_scale, deadline_ms,
//                        max_sequence_length, request_id)
//     "strength"         dgrid: 0 to 1 (default 0.6), FluxImg2ImgPipeline's strength
//   -> the reply of /v1/images/generations: {"created", "data": [{"b64_json", "seed"}, ...]}.
//   "mask" (inpainting) and "stream" are refused with 400 naming them; OpenAI-only fields it has
//   no use for ("quality", "background", "input_fidelity", "user", ...) are ignored.
//
// Every bad input is a 400 whose JSON error names the field ("image", "strength", "body", ...):
// the form is checked here, the image decoded (whole, so truncated data is caught) and every
// field validated by the pipeline before anything runs.
//
// Thread-safe: no state of its own; called on cpp-httplib's worker threads.
#ifndef DGRID_ORCHESTRATOR_API_HTTP_EDITS_H_
#define DGRID_ORCHESTRATOR_API_HTTP_EDITS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dgrid/v1/generation.pb.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dgrid::orchestrator {

class HttpServer;
struct HttpReply;

// One part of a multipart/form-data body.
struct FormPart {
  std::string name;
  std::string filename;  // empty for a plain field
  std::string content;
};

// The form of an edit (`parts`) as the JSON object of its text fields (for the generations body
// parser, which then reads prompt, n, size, ...) and the image bytes. INVALID_ARGUMENT naming the
// field: "image" missing, given twice or empty; "mask"; "strength" not a number in [0, 1] (it is
// left in the JSON for the caller). Pure function, fuzzable.
[[nodiscard]] absl::Status ParseImageEditsForm(const std::vector<FormPart>& parts,
                                               std::string* fields_json, std::string* image);

// The strength of an edit from its fields' JSON object: 0.6 when absent, else a number in [0, 1];
// INVALID_ARGUMENT naming "strength" otherwise.
[[nodiscard]] absl::Status ParseEditStrength(const std::string& fields_json, double* strength);

// The route: reads `req` (multipart or not), answers 400 for a bad form, else runs the edit
// through `server` as /v1/images/generations runs its images; with "stream" true (and n 1) it
// answers `res` with OpenAI's edit streaming ("image_edit.partial_image" / "image_edit.completed"
// events, http_streaming.h) and returns status 0.
HttpReply HandleImageEdits(HttpServer& server, const httplib::Request& req, httplib::Response& res);

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_HTTP_EDITS_H_
