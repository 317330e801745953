// What the OpenAI-compatible image endpoints need beyond one JSON answer: OpenAI's image streaming
// (server-sent events with previews, progress and the final image) and noticing a client that
// hangs up, so that its request is cancelled rather than run to the end for no one.
//
// cpp-httplib 0.11.4 tells a handler nothing about its connection, so ClientConnection finds the
// request's socket itself (the one whose local and peer addresses are the request's; the handler's
// thread holds it open until the handler returns) and polls it for the peer's hang-up (POLLRDHUP:
// the client closed or reset; bytes it sends meanwhile, e.g. a pipelined request, do not count).
// A streamed answer also notices a failed chunk write.
//
// Either way the request is cancelled through Pipeline::Cancel, as a gRPC cancel is: the stage
// call in progress is cancelled and the request ends CANCELLED; the metric
// dgrid_http_client_disconnects_total{streamed} counts them and the log says so.
//
// Threads: an HTTP handler's (cpp-httplib worker) thread waits; the pipeline's request thread
// feeds QueuedObserver.
#ifndef DGRID_ORCHESTRATOR_API_HTTP_STREAMING_H_
#define DGRID_ORCHESTRATOR_API_HTTP_STREAMING_H_

#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "dgrid/v1/generation.pb.h"
#include "orchestrator/pipeline/pipeline.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dgrid::orchestrator {

// The client end of one HTTP request's connection. Copyable; does not own the socket.
class ClientConnection {
 public:
  // Not watched: never hangs up (handlers called without a socket, e.g. in tests).
  ClientConnection() = default;
  // The socket `req` came on; unwatched when it cannot be found.
  static ClientConnection Of(const httplib::Request& req);

  bool watched() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  // Whether the client has closed or reset the connection, without waiting.
  bool HungUp() const;

 private:
  int fd_ = -1;
};

// Queues one request's events for the HTTP thread that answers it.
class QueuedObserver : public RequestObserver {
 public:
  QueuedObserver();
  ~QueuedObserver() override;

  void OnEvent(const dgrid::v1::GenerateEvent& event) override;
  void OnDone(const absl::Status& status) override;

  enum class Next { kEvent, kDone, kHungUp };
  // Blocks until an event is queued (kEvent, *event set), every event was taken and the request
  // ended (kDone, *status set), or `client` hung up first (kHungUp).
  Next Wait(const ClientConnection& client, dgrid::v1::GenerateEvent* event, absl::Status* status);
  // Waits for the end, keeping only the result: the request's status (OK with *result), or
  // kHungUp's CANCELLED "client disconnected" with *hung_up set (the request still runs).
  absl::Status WaitForResult(const ClientConnection& client, dgrid::v1::GenerateResult* result,
                             bool* hung_up);

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return done_ || !events_.empty(); }

  int wakeup_fd_ = -1;  // an eventfd, written on every OnEvent / OnDone
  absl::Mutex mutex_;
  std::deque<dgrid::v1::GenerateEvent> events_ ABSL_GUARDED_BY(mutex_);
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mutex_);
};

// Cancels request `id` whose HTTP client went away, counting and logging it.
void CancelForDisconnect(Pipeline* pipeline, const std::string& id, bool streamed);

// Answers `res` for one image `request` (already parsed, seed set) with OpenAI's image
// streaming: `partial_images` (0..3, GenerateRequest.preview_images) previews as
// "image_generation.partial_image" events {type, b64_json, partial_image_index, size,
// output_format, created_at, background, quality}, then "image_generation.completed" {type,
// b64_json, size, output_format, created_at, background, quality, usage, seed}, or an "error"
// event {type, error} when it fails after the stream began. Progress goes in SSE comment lines,
// which SSE clients (the openai package too) skip:  ": accepted {...}", ": queued {...}",
// ": progress {"step", "total_steps", "step_ms", "eta_ms"}", ": decoded {...}".
// Refused before it starts (INVALID_ARGUMENT, e.g. a video model, which streams nothing;
// RESOURCE_EXHAUSTED ...): the same JSON error and status as the non-streamed call.
// For POST /v1/images/generations and /v1/images/edits: `events` is "image_generation" or
// "image_edit", the prefix of OpenAI's event types for each ("image_edit.partial_image", ...).
void ServeImageStream(Pipeline* pipeline, dgrid::v1::GenerateRequest request, int partial_images,
                      const httplib::Request& req, httplib::Response& res,
                      absl::string_view events = "image_generation");

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_HTTP_STREAMING_H_
