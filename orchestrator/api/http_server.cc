#include "orchestrator/api/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "nlohmann/json.hpp"
#include "orchestrator/api/http_edits.h"
#include "orchestrator/api/http_request_parsing.h"
#include "orchestrator/api/playground.h"
#include "orchestrator/api/request_validation.h"

namespace dgrid::orchestrator {

namespace {

HttpReply Error(const absl::Status& status) {
  return {HttpStatusFor(status.code()), HttpErrorBody(status)};
}

// OpenAI's video object for GET /v1/videos/{id}, with dgrid's effective parameters beside it.
nlohmann::json VideoJson(const VideoJobView& v) {
  nlohmann::json error = nullptr;
  if (!v.error_code.empty()) error = {{"code", v.error_code}, {"message", v.error_message}};
  auto time_or_null = [](int64_t t) { return t > 0 ? nlohmann::json(t) : nlohmann::json(nullptr); };
  return {{"id", v.id},
          {"object", "video"},
          {"model", v.model},
          {"status", v.status},
          {"progress", v.progress},
          {"created_at", v.created_at},
          {"completed_at", time_or_null(v.completed_at)},
          {"expires_at", time_or_null(v.expires_at)},
          {"prompt", v.prompt},
          {"seconds", v.seconds},
          {"size", v.size},
          {"remixed_from_video_id", nullptr},
          {"error", error},
          {"num_frames", v.num_frames},
          {"fps", v.fps},
          {"seed", v.seed}};
}

// An OpenAI-shaped error body for an HTTP status the server answers by itself (no handler ran, or
// the handler set no body).
std::string ProtocolErrorBody(int http, absl::string_view message) {
  std::string code;
  switch (http) {
    case 400:
      code = "bad_request";
      break;
    case 404:
      code = "not_found";
      break;
    case 405:
      code = "method_not_allowed";
      break;
    case 408:
      code = "request_timeout";
      break;
    case 413:
      code = "payload_too_large";
      break;
    case 414:
      code = "uri_too_long";
      break;
    case 431:
      code = "request_header_fields_too_large";
      break;
    default:
      code = absl::StrCat("http_", http);
  }
  const char* type = http >= 500 ? "server_error" : "invalid_request_error";
  nlohmann::json body = {
      {"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code}}}};
  return body.dump();
}

std::string ProtocolErrorMessage(const httplib::Request& req, int http) {
  // The path is echoed at most 200 bytes long; JSON escaping keeps it harmless.
  const std::string path = req.path.size() > 200 ? req.path.substr(0, 200) + "..." : req.path;
  switch (http) {
    case 400:
      return "the request is not valid HTTP (request line, headers or Content-Length)";
    case 404:
      return absl::StrCat("no endpoint at '", path,
                          "' (POST /v1/images/generations, POST /v1/videos, GET /v1/videos/{id}, "
                          "GET /v1/models, GET /metrics)");
    case 413:
      return "the request body is larger than this server accepts";
    case 414:
      return "the request URI is too long";
    default:
      return absl::StrCat("HTTP ", http);
  }
}

}  // namespace

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
      return 409;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kCancelled:
      return 499;  // nginx's "client closed request"
    default:
      return 500;
  }
}

std::string HttpErrorBody(const absl::Status& status) {
  const std::string message(status.message());
  nlohmann::json param = nullptr;
  if (status.code() == absl::StatusCode::kInvalidArgument ||
      status.code() == absl::StatusCode::kNotFound) {
    // Validation messages start with the field name ("width: ...").
    const size_t colon = message.find(':');
    if (colon != std::string::npos && colon > 0 && message.find(' ') > colon) {
      param = message.substr(0, colon);
    }
  }
  const int http = HttpStatusFor(status.code());
  const char* type = http == 400 || http == 404 || http == 409 ? "invalid_request_error"
                     : http == 401                             ? "authentication_error"
                     : http == 429                             ? "rate_limit_error"
                                                               : "server_error";
  std::string code = absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
  nlohmann::json body = {
      {"error", {{"message", message}, {"type", type}, {"param", param}, {"code", code}}}};
  return body.dump();
}

namespace {

// The metrics label of a request's path: known routes only (arbitrary paths would make unbounded
// label values).
std::string KnownRoute(const std::string& path) {
  if (path == "/v1/images/generations" || path == "/v1/images/edits" || path == "/v1/models") {
    return path;
  }
  return absl::StartsWith(path, "/v1/videos") ? "/v1/videos" : "other";
}

}  // namespace

HttpServer::HttpServer(Pipeline* pipeline, HttpServerOptions options)
    : pipeline_(pipeline),
      options_(std::move(options)),
      videos_(std::make_unique<VideoJobs>(pipeline, options_.videos)) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::ParseGenerations(absl::string_view body,
                                          dgrid::v1::GenerateRequest* request, int* n) {
  absl::Status parsed = ParseImageGenerationsBody(body, request, n);
  if (!parsed.ok()) return parsed;
  // An images endpoint: one picture each, also from a video model (its first and only frame).
  request->set_num_frames(1);
  if (!request->has_seed()) {
    static absl::Mutex mutex(absl::kConstInit);
    static absl::BitGen* gen = new absl::BitGen();
    absl::MutexLock lock(&mutex);
    request->set_seed(absl::Uniform<uint64_t>(*gen, 0, uint64_t{1} << 53));
  }
  return absl::OkStatus();
}

HttpReply HttpServer::HandleGenerations(absl::string_view body, const ClientConnection& client) {
  dgrid::v1::GenerateRequest request;
  int n = 1;
  if (absl::Status s = ParseGenerations(body, &request, &n); !s.ok()) return Error(s);
  return RunImages(request, n, client);
}

HttpReply HttpServer::RunImages(const dgrid::v1::GenerateRequest& request, int n,
                                const ClientConnection& client) {
  // The n images run at once as far as admission allows. One that admission refuses
  // (RESOURCE_EXHAUSTED) while others of this call run is submitted again when one of them ends:
  // the call queues its own images rather than failing them. An image that fails for good leaves
  // the others alone: the reply has every image that finished, and names each failure in "errors".
  std::deque<int> pending;
  for (int i = 0; i < n; ++i) pending.push_back(i);
  struct Running {
    int index;
    std::string id;
    std::shared_ptr<QueuedObserver> observer;
  };
  std::deque<Running> running;
  std::vector<std::optional<dgrid::v1::GenerateResult>> results(n);
  std::vector<absl::Status> failures(n);
  while (!pending.empty() || !running.empty()) {
    while (!pending.empty()) {
      const int i = pending.front();
      dgrid::v1::GenerateRequest one = request;
      one.set_seed(request.seed() + static_cast<uint64_t>(i));
      if (n > 1 && !request.request_id().empty()) {
        one.set_request_id(absl::StrCat(request.request_id(), "-", i));
      }
      auto observer = std::make_shared<QueuedObserver>();
      absl::StatusOr<std::string> id = pipeline_->Submit(one, absl::InfiniteFuture(), observer);
      if (!id.ok() && absl::IsResourceExhausted(id.status()) && !running.empty()) break;
      pending.pop_front();
      if (id.ok()) {
        running.push_back({i, *id, observer});
      } else {
        failures[i] = id.status();
      }
    }
    if (running.empty()) continue;
    Running next = running.front();
    running.pop_front();
    dgrid::v1::GenerateResult result;
    bool hung_up = false;
    failures[next.index] = next.observer->WaitForResult(client, &result, &hung_up);
    if (hung_up) {
      // No one is left to answer: cancel what runs and wait for it to end, submit nothing more.
      running.push_front(next);
      for (const Running& r : running) CancelForDisconnect(pipeline_, r.id, /*streamed=*/false);
      for (const Running& r : running) {
        r.observer->WaitForResult(ClientConnection(), &result, &hung_up).IgnoreError();
      }
      return Error(absl::CancelledError("client disconnected"));
    }
    if (failures[next.index].ok()) results[next.index] = std::move(result);
  }
  nlohmann::json data = nlohmann::json::array();
  nlohmann::json errors = nlohmann::json::array();
  absl::Status first_failure;
  for (int i = 0; i < n; ++i) {
    if (results[i].has_value()) {
      data.push_back({{"b64_json", absl::Base64Escape(results[i]->image().data())},
                      {"seed", results[i]->seed()}});
      // With a cache: the client's, or the deployment's --step-cache default.
      if (request.has_cache() || results[i]->skipped_steps() > 0) {
        data.back()["skipped_steps"] = results[i]->skipped_steps();
      }
      continue;
    }
    if (first_failure.ok()) first_failure = failures[i];
    nlohmann::json error = nlohmann::json::parse(HttpErrorBody(failures[i]))["error"];
    error["index"] = i;
    error["seed"] = request.seed() + static_cast<uint64_t>(i);
    errors.push_back(std::move(error));
  }
  if (data.empty()) return Error(first_failure);
  nlohmann::json reply = {{"created", absl::ToUnixSeconds(absl::Now())}, {"data", data}};
  if (!errors.empty()) reply["errors"] = errors;
  return {200, reply.dump()};
}

HttpReply HttpServer::HandleGenerationsRoute(const httplib::Request& req, httplib::Response& res) {
  bool stream = false;
  int partial_images = 0;
  if (absl::Status s = ParseImageStreamFields(req.body, &stream, &partial_images); !s.ok()) {
    return Error(s);
  }
  if (!stream) return HandleGenerations(req.body, ClientConnection::Of(req));
  dgrid::v1::GenerateRequest request;
  int n = 1;
  if (absl::Status s = ParseGenerations(req.body, &request, &n); !s.ok()) return Error(s);
  if (n != 1) return Error(FieldError("n", "must be 1 when stream is true"));
  ServeImageStream(pipeline_, std::move(request), partial_images, req, res);
  return {0, ""};
}

HttpReply HttpServer::HandleModels() {
  nlohmann::json data = nlohmann::json::array();
  for (const dgrid::v1::ModelInfo& m : pipeline_->ListModels()) {
    data.push_back({{"id", m.name()},
                    {"object", "model"},
                    {"created", 0},
                    {"owned_by", "dgrid"},
                    {"pipeline", m.pipeline()},
                    {"family", m.family()},
                    {"default_size", absl::StrCat(m.default_width(), "x", m.default_height())},
                    {"max_size", absl::StrCat(m.max_width(), "x", m.max_height())},
                    {"default_steps", m.default_steps()},
                    {"max_num_frames", m.max_num_frames()},
                    {"supports_image_input", m.supports_image_input()},
                    {"available", !m.unavailable()}});
  }
  nlohmann::json reply = {{"object", "list"}, {"data", data}};
  return {200, reply.dump()};
}

HttpReply HttpServer::HandleVideoCreate(absl::string_view text) {
  dgrid::v1::GenerateRequest request;
  const auto resolve = [this](absl::string_view model) { return pipeline_->ResolveModel(model); };
  if (absl::Status s = ParseVideoCreateBody(text, resolve, &request); !s.ok()) return Error(s);
  absl::StatusOr<VideoJobView> job = videos_->Create(std::move(request));
  if (!job.ok()) return Error(job.status());
  return {200, VideoJson(*job).dump()};
}

HttpReply HttpServer::HandleVideoGet(absl::string_view id) {
  absl::StatusOr<VideoJobView> job = videos_->Get(id);
  if (!job.ok()) return Error(job.status());
  return {200, VideoJson(*job).dump()};
}

HttpReply HttpServer::HandleVideoList(absl::string_view order, absl::string_view after,
                                      absl::string_view limit) {
  if (!order.empty() && order != "asc" && order != "desc") {
    return Error(FieldError("order", "must be \"asc\" or \"desc\""));
  }
  size_t count = 20;
  if (!limit.empty() && (!absl::SimpleAtoi(limit, &count) || count < 1 || count > 100)) {
    return Error(FieldError("limit", "must be 1 to 100"));
  }
  bool has_more = false;
  absl::StatusOr<std::vector<VideoJobView>> jobs =
      videos_->List(order == "asc", after, count, &has_more);
  if (!jobs.ok()) return Error(jobs.status());
  nlohmann::json data = nlohmann::json::array();
  for (const VideoJobView& v : *jobs) data.push_back(VideoJson(v));
  nlohmann::json reply = {
      {"object", "list"},
      {"data", data},
      {"has_more", has_more},
      {"first_id", jobs->empty() ? nlohmann::json(nullptr) : nlohmann::json(jobs->front().id)},
      {"last_id", jobs->empty() ? nlohmann::json(nullptr) : nlohmann::json(jobs->back().id)}};
  return {200, reply.dump()};
}

HttpReply HttpServer::HandleVideoDelete(absl::string_view id) {
  if (absl::Status s = videos_->Delete(id); !s.ok()) return Error(s);
  nlohmann::json reply = {{"id", id}, {"object", "video.deleted"}, {"deleted", true}};
  return {200, reply.dump()};
}

absl::StatusOr<int> HttpServer::Start(const std::string& host, int port) {
  if (server_ != nullptr) return absl::FailedPreconditionError("HTTP server already started");
  const TlsOptions& tls = options_.tls;
  if (tls.server_tls()) {
    // cpp-httplib requires a client certificate whenever it is given a client CA.
    const bool mutual = tls.client_auth == TlsOptions::ClientAuth::kRequire;
    auto ssl = std::make_unique<httplib::SSLServer>(tls.cert_file.c_str(), tls.key_file.c_str(),
                                                    mutual ? tls.ca_file.c_str() : nullptr);
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTPS: cannot use certificate ", tls.cert_file, " / key ", tls.key_file));
    }
    server_ = std::move(ssl);
  } else {
    server_ = std::make_unique<httplib::Server>();
  }
  server_->set_payload_max_length(options_.max_request_bytes);
  server_->set_read_timeout(options_.read_timeout_s, 0);
  // Every 4xx/5xx has a JSON body: statuses httplib answers by itself (unknown path, malformed
  // request, body too large) get one here; handlers that wrote their own keep it.
  server_->set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        res.set_content(ProtocolErrorBody(res.status, ProtocolErrorMessage(req, res.status)),
                        "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  // httplib's default pool has max(8, cores - 1) threads: eight clients that trickle their headers
  // held every one of them.
  server_->new_task_queue = [threads = options_.threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  server_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // Header limits (httplib bounds each line, not their number or sum).
    size_t header_bytes = 0;
    for (const auto& [name, value] : req.headers) header_bytes += name.size() + value.size() + 4;
    if (req.headers.size() > static_cast<size_t>(options_.max_header_count) ||
        header_bytes > options_.max_header_bytes) {
      res.status = 431;
      res.set_content(ProtocolErrorBody(
                          431, absl::StrCat("at most ", options_.max_header_count, " headers and ",
                                            options_.max_header_bytes, " header bytes; got ",
                                            req.headers.size(), " and ", header_bytes)),
                      "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }
    // With API keys, /metrics here needs one too (request counts by path and status are no one
    // else's business); Prometheus scrapes the plain --metrics-port instead.
    // The playground page holds nothing private; the API calls it makes carry the key.
    if (options_.api_keys == nullptr ||
        (req.path == "/" && (req.method == "GET" || req.method == "HEAD"))) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const absl::Status auth = options_.api_keys->Check(req.get_header_value("Authorization"));
    if (auth.ok()) return httplib::Server::HandlerResponse::Unhandled;
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer");
    res.set_content(HttpErrorBody(auth), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  server_->set_logger([](const httplib::Request& req, const httplib::Response& res) {
    if (req.path == "/metrics") return;
    metrics::Registry::Global()
        .GetCounter("dgrid_http_requests_total", "HTTP requests answered, by path and status",
                    {{"stage", "orchestrator"},
                     {"path", KnownRoute(req.path)},
                     {"code", absl::StrCat(res.status)}})
        ->Increment();
  });
  server_->Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics::Registry::Global().Exposition(),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Post("/v1/images/generations",
                [this](const httplib::Request& req, httplib::Response& res) {
                  HttpReply reply = HandleGenerationsRoute(req, res);
                  if (reply.status == 0) return;  // answered by a stream
                  res.status = reply.status;
                  res.set_content(reply.body, "application/json");
                });
  const auto reply_with = [](httplib::Response& res, const HttpReply& reply) {
    res.status = reply.status;
    res.set_content(reply.body, "application/json");
  };
  server_->Post("/v1/images/edits",
                [this, reply_with](const httplib::Request& req, httplib::Response& res) {
                  HttpReply reply = HandleImageEdits(*this, req, res);
                  if (reply.status == 0) return;  // answered by a stream
                  reply_with(res, reply);
                });
  server_->Post("/v1/videos",
                [this, reply_with](const httplib::Request& req, httplib::Response& res) {
                  if (!req.is_multipart_form_data()) {
                    reply_with(res, HandleVideoCreate(req.body));
                    return;
                  }
                  std::vector<std::pair<std::string, std::string>> fields;
                  for (const auto& [name, part] : req.files)
                    fields.emplace_back(name, part.content);
                  reply_with(res, HandleVideoCreate(FormFieldsAsJson(fields)));
                });
  server_->Get(
      "/v1/videos", [this, reply_with](const httplib::Request& req, httplib::Response& res) {
        reply_with(res, HandleVideoList(req.get_param_value("order"), req.get_param_value("after"),
                                        req.get_param_value("limit")));
      });
  server_->Get(R"(/v1/videos/([A-Za-z0-9._-]+))",
               [this, reply_with](const httplib::Request& req, httplib::Response& res) {
                 reply_with(res, HandleVideoGet(req.matches[1].str()));
               });
  server_->Delete(R"(/v1/videos/([A-Za-z0-9._-]+))",
                  [this, reply_with](const httplib::Request& req, httplib::Response& res) {
                    reply_with(res, HandleVideoDelete(req.matches[1].str()));
                  });
  server_->Get(R"(/v1/videos/([A-Za-z0-9._-]+)/content)",
               [this, reply_with](const httplib::Request& req, httplib::Response& res) {
                 const std::string variant = req.get_param_value("variant");
                 if (!variant.empty() && variant != "video") {
                   reply_with(
                       res, Error(FieldError("variant", "only \"video\" (the MP4) is available")));
                   return;
                 }
                 absl::StatusOr<std::string> mp4 = videos_->Content(req.matches[1].str());
                 if (!mp4.ok()) {
                   reply_with(res, Error(mp4.status()));
                   return;
                 }
                 res.set_content(*mp4, "video/mp4");
               });
  server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Security-Policy", std::string(kPlaygroundContentSecurityPolicy));
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(std::string(PlaygroundHtml()), "text/html; charset=utf-8");
  });
  server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    HttpReply reply = HandleModels();
    res.status = reply.status;
    res.set_content(reply.body, "application/json");
  });
  // Known paths with the wrong method: 405 naming the allowed one (HEAD follows GET).
  for (const auto& [path, allowed] :
       {std::pair<std::string, std::string>{"/v1/images/generations", "POST"},
        {"/v1/images/edits", "POST"},
        {"/v1/videos", "GET, POST"},
        {R"(/v1/videos/([A-Za-z0-9._-]+))", "GET, DELETE"},
        {R"(/v1/videos/([A-Za-z0-9._-]+)/content)", "GET"},
        {"/v1/models", "GET"},
        {"/", "GET"},
        {"/metrics", "GET"}}) {
    const httplib::Server::Handler not_allowed = [allowed](const httplib::Request& req,
                                                           httplib::Response& res) {
      res.status = 405;
      res.set_header("Allow", allowed);
      res.set_content(ProtocolErrorBody(405, absl::StrCat(req.method, " is not allowed on ",
                                                          req.path, "; use ", allowed)),
                      "application/json");
    };
    if (!absl::StrContains(allowed, "GET")) server_->Get(path, not_allowed);
    if (!absl::StrContains(allowed, "POST")) server_->Post(path, not_allowed);
    server_->Put(path, not_allowed);
    server_->Patch(path, not_allowed);
    if (!absl::StrContains(allowed, "DELETE")) server_->Delete(path, not_allowed);
  }
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
  } else if (!server_->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot bind HTTP server to ", host, ":", port));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  DG_LOG_INFO("", "%s (OpenAI-compatible) listening on %s:%d", tls.server_tls() ? "HTTPS" : "HTTP",
              host, bound);
  return bound;
}

void HttpServer::Stop() {
  if (server_ == nullptr) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

}  // namespace dgrid::orchestrator
