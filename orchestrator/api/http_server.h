// OpenAI-compatible HTTP front end (cpp-httplib), running requests through the same Pipeline as
// gRPC, in-process.
//
//   POST /v1/images/generations  {"prompt", "n" (1..10), "size" ("WxH"), "response_format"
//        ("b64_json" only), "output_format" ("png", or "webp": lossless), "model", and dgrid
//        extensions "num_inference_steps", "seed"
//        (0..2^64-1), "guidance_scale", "negative_prompt", "true_cfg_scale", "deadline_ms",
//        "max_sequence_length", "cache" (as in GenerateRequest; also the string form
//        "fbcache:0.08[:warmup_steps[:max_skip]]")}
//        -> {"created": unix seconds, "data": [{"b64_json": PNG base64, "seed": n}, ...]}
//        (with "cache": each image also has "skipped_steps", the steps the cache skipped)
//        n images use seeds seed, seed+1, ... (a random base seed when "seed" is absent).
//        "request_id" (dgrid) names the request (image i of n > 1: "<request_id>-<i>").
//        "stream": true (n 1, image models) with "partial_images" 0..3 answers with OpenAI's
//        server-sent events instead: previews, progress comments, the final image
//        (http_streaming.h, ServeImageStream).
//   POST /v1/images/edits  OpenAI's image edits (multipart/form-data: "image", "prompt", "n",
//        "size", "response_format", dgrid's "strength" and the fields above): image-to-image,
//        answered as /v1/images/generations (http_edits.h).
//   POST /v1/videos  OpenAI's Videos API, as a JSON body or multipart/form-data (the openai
//        package's videos.create): {"prompt", "model", "seconds" (clip length: seconds x fps + 1
//        frames, rounded down to the model's frame step), "size" ("WxH"), and dgrid extensions
//        "num_frames" (wins over seconds), "fps", "num_inference_steps", "seed",
//        "guidance_scale", "guidance_scale_2", "negative_prompt", "deadline_ms",
//        "max_sequence_length"} -> a video
//        object {"id", "object": "video", "status": "queued", "progress", "created_at", ...} at
//        once; the request runs on. Image models and "input_reference" answer 400.
//   GET  /v1/videos/{id} -> the video object: status queued | in_progress | completed | failed,
//        progress 0..100, completed_at, expires_at, error {"code", "message"} when failed.
//   GET  /v1/videos/{id}/content -> the MP4 (video/mp4) once completed; 409 before, 404 unknown.
//        Only variant=video exists.
//   GET  /v1/videos?limit=&after=&order= -> {"object": "list", "data": [...], "has_more", ...}
//   DELETE /v1/videos/{id} -> {"id", "object": "video.deleted", "deleted": true}; cancels a
//        running job. Finished jobs are kept HttpServerOptions::videos.retention (video_jobs.h).
//   GET  /v1/models -> {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
//   ...}]}
//   GET  /metrics -> Prometheus text exposition of the process's metrics (with API keys, it needs
//        one too; Prometheus scrapes the plain --metrics-port instead).
//
// Security (HttpServerOptions): HTTPS when a certificate is given (and client certificates required
// when client_auth is kRequire); with API keys, every path answers 401 without
// `Authorization: Bearer <key>`; bodies over max_request_bytes answer 413; more than
// max_header_count headers or max_header_bytes of them answer 431; a connection idle for
// read_timeout_s mid-request is closed.
//
// Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}} with the HTTP status of
// the gRPC code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 409 FAILED_PRECONDITION, 429
// RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 499 CANCELLED, 500 otherwise).
// Statuses of HTTP itself carry the same shape: 400 (malformed request), 404 (unknown path), 405
// (wrong method, with Allow), 413, 414, 431.
//
// HTTP requests have no deadline unless "deadline_ms" is given. A client that disconnects while
// its images are made (streamed or not) cancels them (http_streaming.h).
//
// Threads: cpp-httplib's worker pool calls the handlers; each blocks until its requests end. The
// Handle* methods are usable without a socket (tests). Start/Stop from one controlling thread.
#ifndef DGRID_ORCHESTRATOR_API_HTTP_SERVER_H_
#define DGRID_ORCHESTRATOR_API_HTTP_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/service_runtime.h"
#include "orchestrator/api/api_keys.h"
#include "orchestrator/api/http_streaming.h"
#include "orchestrator/api/video_jobs.h"
#include "orchestrator/pipeline/pipeline.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace dgrid::orchestrator {

struct HttpReply {
  int status = 200;
  std::string body;  // JSON
};

// HTTP status for a gRPC/absl code, as listed above.
int HttpStatusFor(absl::StatusCode code);
// OpenAI-shaped error body for `status`; "param" is the field named at the start of the message.
std::string HttpErrorBody(const absl::Status& status);

struct HttpServerOptions {
  TlsOptions tls;                     // HTTPS when tls.cert_file is set.
  const ApiKeys* api_keys = nullptr;  // Not owned; nullptr: no keys.
  // Room for an edit's input image (common/input_image.h).
  size_t max_request_bytes = 40 << 20;
  // Connections served at once. Each holds a thread while it is read and while its generation runs
  // (the pipeline's admission bounds those), so a few slow or idle clients must not take them all.
  int threads = 128;
  // A connection whose next bytes take longer than this is closed (slow or stalled clients).
  int read_timeout_s = 5;
  // Requests with more headers, or more header bytes (names + values), answer 431.
  int max_header_count = 100;
  size_t max_header_bytes = 32 << 10;
  // Jobs of POST /v1/videos kept at once, and how long a finished one stays downloadable.
  VideoJobsOptions videos;
};

class HttpServer {
 public:
  // `pipeline` is not owned and must outlive the server.
  explicit HttpServer(Pipeline* pipeline, HttpServerOptions options = {});
  ~HttpServer();

  // Binds host:port (port 0 picks a free one) and serves on a background thread. Returns the port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  // Stops listening and waits for the serving thread. Idempotent.
  void Stop();

  // POST /v1/images/generations without "stream": waits for the images; a `client` that hangs up
  // meanwhile cancels them (answer 499, which no one reads).
  HttpReply HandleGenerations(absl::string_view body,
                              const ClientConnection& client = ClientConnection());
  // Runs `n` images of `request` (seeds seed, seed + 1, ...; ids "<request_id>-<i>") and answers
  // as POST /v1/images/generations does; shared by POST /v1/images/edits (http_edits.h).
  HttpReply RunImages(const dgrid::v1::GenerateRequest& request, int n,
                      const ClientConnection& client);
  // The body of POST /v1/images/generations as a request with its seed set (a random one when
  // absent) and its image count.
  static absl::Status ParseGenerations(absl::string_view body, dgrid::v1::GenerateRequest* request,
                                       int* n);
  HttpReply HandleModels();
  // POST /v1/videos with `body` the JSON object (a form's fields arrive as one, http_server.cc).
  HttpReply HandleVideoCreate(absl::string_view body);
  HttpReply HandleVideoGet(absl::string_view id);
  // GET /v1/videos: the query's order ("asc" | "desc"), after (a video id) and limit (1..100).
  HttpReply HandleVideoList(absl::string_view order, absl::string_view after,
                            absl::string_view limit);
  HttpReply HandleVideoDelete(absl::string_view id);
  Pipeline* pipeline() const { return pipeline_; }

 private:
  // The route: streamed (http_streaming.h; returns status 0, `res` answered) or not.
  HttpReply HandleGenerationsRoute(const httplib::Request& req, httplib::Response& res);

  Pipeline* const pipeline_;
  const HttpServerOptions options_;
  std::unique_ptr<VideoJobs> videos_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_HTTP_SERVER_H_
