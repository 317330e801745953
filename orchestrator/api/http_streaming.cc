#include "orchestrator/api/http_streaming.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/http_request_parsing.h"
#include "orchestrator/api/http_server.h"

namespace dgrid::orchestrator {

namespace {

// The numeric host and port of a socket address, as cpp-httplib writes them into a Request.
bool HostAndPort(const sockaddr_storage& address, socklen_t length, std::string* host, int* port) {
  char name[NI_MAXHOST];
  char service[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, name, sizeof(name), service,
                  sizeof(service), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return false;
  }
  *host = name;
  return absl::SimpleAtoi(service, port);
}

bool SocketMatches(int fd, const httplib::Request& req) {
  sockaddr_storage address;
  socklen_t length = sizeof(address);
  std::string host;
  int port = -1;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
      !HostAndPort(address, length, &host, &port) || port != req.local_port ||
      host != req.local_addr) {
    return false;
  }
  length = sizeof(address);
  return getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0 &&
         HostAndPort(address, length, &host, &port) && port == req.remote_port &&
         host == req.remote_addr;
}

std::string Size(int width, int height) { return absl::StrCat(width, "x", height); }

const char* FormatName(dgrid::v1::OutputFormat format) {
  return format == dgrid::v1::OUTPUT_FORMAT_WEBP ? "webp" : "png";
}

std::string SseEvent(absl::string_view type, const nlohmann::json& data) {
  return absl::StrCat("event: ", type, "\ndata: ", data.dump(), "\n\n");
}

// A comment line: SSE clients skip it (progress that OpenAI's events have no place for).
std::string SseComment(absl::string_view kind, const nlohmann::json& data) {
  return absl::StrCat(": ", kind, " ", data.dump(), "\n\n");
}

// The server-sent event text of one pipeline event ("" for none). `kind` names OpenAI's events:
// "image_generation" (generations) or "image_edit" (edits).
std::string SseFor(const dgrid::v1::GenerateEvent& event, const std::string& kind) {
  const int64_t created = event.time_unix_ms() / 1000;
  switch (event.event_case()) {
    case dgrid::v1::GenerateEvent::kAccepted: {
      const dgrid::v1::Accepted& a = event.accepted();
      return SseComment("accepted", {{"request_id", event.request_id()},
                                     {"model", a.model()},
                                     {"size", Size(a.width(), a.height())},
                                     {"total_steps", a.num_inference_steps()},
                                     {"seed", a.seed()}});
    }
    case dgrid::v1::GenerateEvent::kQueued:
      return SseComment(
          "queued", {{"position", event.queued().position()}, {"stage", event.queued().stage()}});
    case dgrid::v1::GenerateEvent::kEncoded:
      return SseComment("encoded", {{"duration_ms", event.encoded().duration_ms()}});
    case dgrid::v1::GenerateEvent::kStep: {
      const dgrid::v1::DenoiseStep& s = event.step();
      return SseComment("progress", {{"step", s.step()},
                                     {"total_steps", s.total()},
                                     {"step_ms", s.step_ms()},
                                     {"eta_ms", s.eta_ms()}});
    }
    case dgrid::v1::GenerateEvent::kDecoded:
      return SseComment("decoded", {{"duration_ms", event.decoded().duration_ms()}});
    case dgrid::v1::GenerateEvent::kPreview: {
      const dgrid::v1::Preview& p = event.preview();
      return SseEvent(kind + ".partial_image",
                      {{"type", kind + ".partial_image"},
                       {"b64_json", absl::Base64Escape(p.image().data())},
                       {"partial_image_index", p.index()},
                       {"created_at", created},
                       {"size", Size(p.image().width(), p.image().height())},
                       {"output_format", "png"},
                       {"background", "opaque"},
                       {"quality", "auto"},
                       {"step", p.step()},
                       {"total_steps", p.total()}});
    }
    case dgrid::v1::GenerateEvent::kResult: {
      const dgrid::v1::GenerateResult& r = event.result();
      // Token usage is for OpenAI's GPT image models; a diffusion model spends none.
      const nlohmann::json usage = {
          {"input_tokens", 0},
          {"input_tokens_details", {{"image_tokens", 0}, {"text_tokens", 0}}},
          {"output_tokens", 0},
          {"total_tokens", 0}};
      return SseEvent(kind + ".completed", {{"type", kind + ".completed"},
                                            {"b64_json", absl::Base64Escape(r.image().data())},
                                            {"created_at", created},
                                            {"size", Size(r.image().width(), r.image().height())},
                                            {"output_format", FormatName(r.image().format())},
                                            {"background", "opaque"},
                                            {"quality", "auto"},
                                            {"usage", usage},
                                            {"seed", r.seed()}});
    }
    default:
      return "";
  }
}

// One streamed answer, shared by cpp-httplib's content provider and releaser.
struct ImageStream {
  Pipeline* pipeline;
  std::string id;
  std::shared_ptr<QueuedObserver> observer;
  ClientConnection client;
  std::string events;  // "image_generation" or "image_edit"
  bool ended = false;  // the request's end was written
};

}  // namespace

ClientConnection ClientConnection::Of(const httplib::Request& req) {
  ClientConnection connection;
  if (req.local_port <= 0 || req.remote_port <= 0) return connection;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return connection;
  const int own = dirfd(dir);
  while (const dirent* entry = readdir(dir)) {
    int fd = -1;
    struct stat st;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == own || fstat(fd, &st) != 0 ||
        !S_ISSOCK(st.st_mode)) {
      continue;
    }
    if (SocketMatches(fd, req)) {
      connection.fd_ = fd;
      break;
    }
  }
  closedir(dir);
  return connection;
}

bool ClientConnection::HungUp() const {
  if (fd_ < 0) return false;
  pollfd p = {fd_, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

QueuedObserver::QueuedObserver() : wakeup_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

QueuedObserver::~QueuedObserver() {
  if (wakeup_fd_ >= 0) close(wakeup_fd_);
}

void QueuedObserver::OnEvent(const dgrid::v1::GenerateEvent& event) {
  {
    absl::MutexLock lock(&mutex_);
    events_.push_back(event);
  }
  const uint64_t one = 1;
  if (wakeup_fd_ >= 0) (void)!write(wakeup_fd_, &one, sizeof(one));
}

void QueuedObserver::OnDone(const absl::Status& status) {
  {
    absl::MutexLock lock(&mutex_);
    status_ = status;
    done_ = true;
  }
  const uint64_t one = 1;
  if (wakeup_fd_ >= 0) (void)!write(wakeup_fd_, &one, sizeof(one));
}

QueuedObserver::Next QueuedObserver::Wait(const ClientConnection& client,
                                          dgrid::v1::GenerateEvent* event, absl::Status* status) {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      if (!events_.empty()) {
        *event = std::move(events_.front());
        events_.pop_front();
        return Next::kEvent;
      }
      if (done_) {
        *status = status_;
        return Next::kDone;
      }
      if (wakeup_fd_ < 0) {
        // No eventfd (out of descriptors): wait on the lock alone, unwatched.
        mutex_.Await(absl::Condition(this, &QueuedObserver::Ready));
        continue;
      }
    }
    // Every OnEvent / OnDone after the check above leaves the eventfd readable.
    pollfd fds[2] = {{wakeup_fd_, POLLIN, 0}, {client.fd(), POLLRDHUP, 0}};
    const int ready = poll(fds, client.watched() ? 2 : 1, -1);
    if (ready < 0) continue;  // EINTR
    if (client.watched() && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      return Next::kHungUp;
    }
    uint64_t count = 0;
    if (fds[0].revents & POLLIN) (void)!read(wakeup_fd_, &count, sizeof(count));
  }
}

absl::Status QueuedObserver::WaitForResult(const ClientConnection& client,
                                           dgrid::v1::GenerateResult* result, bool* hung_up) {
  *hung_up = false;
  dgrid::v1::GenerateEvent event;
  absl::Status status;
  while (true) {
    switch (Wait(client, &event, &status)) {
      case Next::kEvent:
        if (event.has_result()) *result = std::move(*event.mutable_result());
        break;
      case Next::kDone:
        return status;
      case Next::kHungUp:
        *hung_up = true;
        return absl::CancelledError("client disconnected");
    }
  }
}

void CancelForDisconnect(Pipeline* pipeline, const std::string& id, bool streamed) {
  static metrics::Counter* const streamed_count = metrics::Registry::Global().GetCounter(
      "dgrid_http_client_disconnects_total",
      "HTTP requests cancelled because their client went away",
      {{"stage", "orchestrator"}, {"streamed", "true"}});
  static metrics::Counter* const plain_count = metrics::Registry::Global().GetCounter(
      "dgrid_http_client_disconnects_total",
      "HTTP requests cancelled because their client went away",
      {{"stage", "orchestrator"}, {"streamed", "false"}});
  // NOT_FOUND: it has just ended on its own.
  const absl::Status cancelled = pipeline->Cancel(id);
  DG_LOG_INFO(id, "HTTP client disconnected (%s); %s", streamed ? "streamed" : "waiting",
              cancelled.ok() ? "cancelling the request" : "the request had ended");
  if (cancelled.ok()) (streamed ? streamed_count : plain_count)->Increment();
}

void ServeImageStream(Pipeline* pipeline, dgrid::v1::GenerateRequest request, int partial_images,
                      const httplib::Request& req, httplib::Response& res,
                      absl::string_view events) {
  const auto refuse = [&res](const absl::Status& status) {
    res.status = HttpStatusFor(status.code());
    res.set_content(HttpErrorBody(status), "application/json");
  };
  // Previews and the one-picture answer are an image model's.
  absl::StatusOr<dgrid::v1::ModelInfo> model = pipeline->ResolveModel(request.model());
  if (model.ok() && model->max_num_frames() > 1) {
    refuse(FieldError("stream", absl::StrCat("model '", model->name(),
                                             "' makes videos; streaming is for image models")));
    return;
  }
  request.set_preview_images(partial_images);
  auto stream = std::make_shared<ImageStream>();
  stream->pipeline = pipeline;
  stream->observer = std::make_shared<QueuedObserver>();
  stream->client = ClientConnection::Of(req);
  stream->events = std::string(events);
  absl::StatusOr<std::string> id =
      pipeline->Submit(std::move(request), absl::InfiniteFuture(), stream->observer);
  if (!id.ok()) {
    refuse(id.status());
    return;
  }
  stream->id = *id;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Request-Id", *id);
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream](size_t /*offset*/, httplib::DataSink& sink) {
        if (stream->ended) {
          sink.done();
          return true;
        }
        dgrid::v1::GenerateEvent event;
        absl::Status status;
        std::string text;
        switch (stream->observer->Wait(stream->client, &event, &status)) {
          case QueuedObserver::Next::kHungUp:
            return false;  // the releaser cancels
          case QueuedObserver::Next::kEvent:
            text = SseFor(event, stream->events);
            break;
          case QueuedObserver::Next::kDone:
            stream->ended = true;
            if (!status.ok()) {
              nlohmann::json error = nlohmann::json::parse(HttpErrorBody(status))["error"];
              error["http_status"] = HttpStatusFor(status.code());
              text = SseEvent("error", {{"type", "error"}, {"error", error}});
            }
            break;
        }
        if (!text.empty() && !sink.write(text.data(), text.size())) return false;
        if (stream->ended) sink.done();
        return true;
      },
      [stream](bool success) {
        if (!success && !stream->ended) CancelForDisconnect(stream->pipeline, stream->id, true);
      });
}

}  // namespace dgrid::orchestrator
