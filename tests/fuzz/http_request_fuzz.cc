// Fuzz target for what the orchestrator's HTTP front end does with a client's bytes: cpp-httplib
// reads the request (request line, headers, Content-Length or chunked body, multipart/form-data
// parts) as HttpServer configures it, and the handlers' parsers (orchestrator/api/
// http_request_parsing.h) turn the body of POST /v1/images/generations and of POST /v1/videos (JSON
// or a form) into a GenerateRequest. No pipeline runs: the video model is resolved by a fixed
// table.
//
// The input is one HTTP request. When its head has neither Content-Length nor Transfer-Encoding,
// the target adds a Content-Length of the bytes after the head, so that edits to a body reach the
// body parsers instead of being cut off. The target aborts when a parser breaks its contract: an
// error that is not INVALID_ARGUMENT naming a field (or the resolver's NOT_FOUND), or an accepted
// request outside the documented ranges. Memory errors, leaks and undefined behaviour are caught
// by the sanitizers it is built with. (cpp-httplib is Debian's shared library, not instrumented:
// its bugs show only where the sanitizers intercept them, e.g. in memcpy.)
#include <httplib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "orchestrator/api/http_request_parsing.h"
#include "orchestrator/api/request_validation.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using dgrid::fuzz::Check;

constexpr int kMaxFrames = 81;

absl::StatusOr<dgrid::v1::ModelInfo> Resolve(absl::string_view model) {
  dgrid::v1::ModelInfo info;
  if (model.empty() || model == "wan") {
    info.set_name("wan");
    info.set_max_num_frames(kMaxFrames);
    info.set_frame_step(4);
    info.set_default_fps(16);
    return info;
  }
  if (model == "flux") {
    info.set_name("flux");
    info.set_max_num_frames(1);
    return info;
  }
  return absl::NotFoundError("model: no such model");
}

// INVALID_ARGUMENT "<field>: ..." (a field name has no space), or NOT_FOUND from Resolve.
void CheckError(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kNotFound) return;
  Check(status.code() == absl::StatusCode::kInvalidArgument, "unexpected status code");
  const absl::string_view message = status.message();
  const size_t colon = message.find(':');
  Check(colon != absl::string_view::npos && colon > 0 &&
            message.substr(0, colon).find(' ') == absl::string_view::npos,
        "error does not start with the field");
}

void CheckCommon(const dgrid::v1::GenerateRequest& request) {
  Check(request.width() >= 0 && request.height() >= 0, "negative size accepted");
  Check(request.num_inference_steps() >= 0 && request.num_inference_steps() <= 1000,
        "num_inference_steps out of range");
  Check(request.max_sequence_length() >= 0 && request.max_sequence_length() <= 4096,
        "max_sequence_length out of range");
}

void Images(const httplib::Request& req, httplib::Response& res) {
  dgrid::v1::GenerateRequest request;
  int n = 0;
  const absl::Status parsed =
      dgrid::orchestrator::ParseImageGenerationsBody(req.body, &request, &n);
  if (!parsed.ok()) {
    CheckError(parsed);
    res.status = 400;
    return;
  }
  CheckCommon(request);
  Check(n >= 1 && n <= 10, "n out of range");
}

void Videos(const httplib::Request& req, httplib::Response& res) {
  std::string body = req.body;
  if (req.is_multipart_form_data()) {
    std::vector<std::pair<std::string, std::string>> fields;
    for (const auto& [name, part] : req.files) fields.emplace_back(name, part.content);
    body = dgrid::orchestrator::FormFieldsAsJson(fields);
  }
  dgrid::v1::GenerateRequest request;
  const absl::Status parsed = dgrid::orchestrator::ParseVideoCreateBody(body, Resolve, &request);
  if (!parsed.ok()) {
    CheckError(parsed);
    res.status = 400;
    return;
  }
  CheckCommon(request);
  Check(request.num_frames() >= 0 && request.num_frames() <= kMaxFrames, "num_frames out of range");
  Check(request.fps() >= 0 && request.fps() <= dgrid::orchestrator::kMaxFps, "fps out of range");
}

// A request read from memory; what the server writes back is dropped.
class MemoryStream : public httplib::Stream {
 public:
  explicit MemoryStream(absl::string_view bytes) : bytes_(bytes) {}
  bool is_readable() const override { return true; }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, bytes_.size() - offset_);
    std::copy_n(bytes_.data() + offset_, n, ptr);
    offset_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char*, size_t size) override { return static_cast<ssize_t>(size); }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 40000;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 8080;
  }
  socket_t socket() const override { return 0; }

 private:
  absl::string_view bytes_;
  size_t offset_ = 0;
};

class FuzzServer : public httplib::Server {
 public:
  FuzzServer() {
    set_payload_max_length(64 << 10);
    Post("/v1/images/generations", Images);
    Post("/v1/videos", Videos);
  }
  void Serve(absl::string_view bytes) {
    MemoryStream stream(bytes);
    bool closed = false;
    process_request(stream, /*close_connection=*/true, closed, nullptr);
  }
};

// The input with a Content-Length added when its head sets no body length.
std::string WithBodyLength(absl::string_view input) {
  const size_t head_end = input.find("\r\n\r\n");
  const size_t line_end = input.find("\r\n");
  if (head_end == absl::string_view::npos || line_end == absl::string_view::npos) {
    return std::string(input);
  }
  const std::string head = absl::AsciiStrToLower(input.substr(0, head_end));
  if (absl::StrContains(head, "\r\ncontent-length:") ||
      absl::StrContains(head, "\r\ntransfer-encoding:")) {
    return std::string(input);
  }
  const size_t body = input.size() - head_end - 4;
  return absl::StrCat(input.substr(0, line_end), "\r\nContent-Length: ", body,
                      input.substr(line_end));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static FuzzServer* server = new FuzzServer();
  server->Serve(WithBodyLength(absl::string_view(reinterpret_cast<const char*>(data), size)));
  return 0;
}
