#include "orchestrator/api/orchestrator_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/metrics_grpc.h"

namespace dgrid::orchestrator {
namespace {

// The registry for servers that request client certificates: stages must present a verified one
// before they may register, heartbeat or deregister (a worker that could register unauthenticated
// would receive requests and their prompts).
class AuthenticatedRegistry final : public WorkerRegistry {
 public:
  using WorkerRegistry::WorkerRegistry;
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const dgrid::v1::RegisterRequest* request,
                                     dgrid::v1::RegisterResponse* response) override {
    if (!AuthenticatedPeer(*context)) return Refuse(context);
    return WorkerRegistry::Register(context, request, response);
  }
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const dgrid::v1::HeartbeatRequest* request,
                                      dgrid::v1::HeartbeatResponse* response) override {
    if (!AuthenticatedPeer(*context)) return Refuse(context);
    return WorkerRegistry::Heartbeat(context, request, response);
  }
  grpc::ServerUnaryReactor* Deregister(grpc::CallbackServerContext* context,
                                       const dgrid::v1::DeregisterRequest* request,
                                       dgrid::v1::DeregisterResponse* response) override {
    if (!AuthenticatedPeer(*context)) return Refuse(context);
    return WorkerRegistry::Deregister(context, request, response);
  }

 private:
  static grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(
        grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                     "the registry needs a client certificate signed by the cluster CA"));
    return reactor;
  }
};

}  // namespace

OrchestratorServer::OrchestratorServer(OrchestratorOptions options)
    : options_(std::move(options)) {}

OrchestratorServer::~OrchestratorServer() { Shutdown(); }

std::string OrchestratorServer::grpc_address() const {
  return absl::StrCat(options_.host, ":", grpc_port_);
}

absl::Status OrchestratorServer::Start() {
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> policy =
      MakePlacementPolicy(options_.policy, options_.placement);
  if (!policy.ok()) return policy.status();
  policy_ = std::move(*policy);
  const Clock* clock = options_.clock != nullptr ? options_.clock : RealClock::Get();
  const TlsOptions& tls = options_.tls;
  if (tls.client_auth != TlsOptions::ClientAuth::kNone) {
    registry_ =
        std::make_unique<AuthenticatedRegistry>(clock, policy_.get(), options_.heartbeat_interval);
  } else {
    registry_ = std::make_unique<WorkerRegistry>(clock, policy_.get(), options_.heartbeat_interval);
  }
  if (!options_.pipeline.default_model.empty()) {
    registry_->ExpectModel(options_.pipeline.default_model);
  }
  for (const std::string& model : options_.models) registry_->ExpectModel(model);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> stage_credentials =
      MakeChannelCredentials(tls);
  if (!stage_credentials.ok()) return stage_credentials.status();
  channels_.SetCredentials(*stage_credentials);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(tls);
  if (!credentials.ok()) return credentials.status();
  pipeline_ = std::make_unique<Pipeline>(registry_.get(), &channels_, clock, options_.pipeline);
  generation_ = std::make_unique<GenerationService>(pipeline_.get(), &options_.api_keys);
  inflight_gauge_ = std::make_unique<metrics::ScopedCallbackGauge>(
      metrics::Registry::Global(), "dgrid_inflight_requests", "Requests running now",
      metrics::Labels{{"stage", "orchestrator"}},
      [pipeline = pipeline_.get()] { return pipeline->ActiveCount(); });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(options_.host, ":", options_.port), *credentials,
                           &grpc_port_);
  // Only the public API and the registry are served here, and neither takes large messages.
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_request_bytes));
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  builder.experimental().SetInterceptorCreators(
      metrics::RequestMetricsInterceptors("orchestrator"));
  builder.RegisterService(generation_.get());
  builder.RegisterService(registry_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve gRPC on ", options_.host, ":", options_.port));
  }
  DG_LOG_INFO("", "gRPC listening on %s%s%s (policy %s, max_inflight %d, max_queued %d)",
              grpc_address(), tls.server_tls() ? " with TLS" : "",
              options_.api_keys.enabled() ? " and API keys" : "", options_.policy,
              options_.pipeline.max_inflight, options_.pipeline.max_queued);
  if (options_.health_port >= 0) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> health =
        StartHealthServer(options_.host, options_.health_port);
    if (!health.ok()) return health.status();
    health_server_ = *std::move(health);
    health_server_->GetHealthCheckService()->SetServingStatus(true);
  }
  {
    absl::MutexLock lock(&health_mutex_);
    for (const char* service : {"", kGenerationService, kRegistryService}) SetHealth(service, true);
  }
  UpdateHealth();  // an expected model with no stages yet: NOT_SERVING from the start
  health_thread_ = std::thread([this] {
    while (!stop_health_.WaitForNotificationWithTimeout(options_.health_interval)) UpdateHealth();
  });
  if (options_.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
        metrics::MetricsServer::Start(options_.host, options_.metrics_port,
                                      &metrics::Registry::Global());
    if (!metrics_server.ok()) return metrics_server.status();
    metrics_server_ = *std::move(metrics_server);
  }
  if (options_.http_port >= 0) {
    http_ = std::make_unique<HttpServer>(
        pipeline_.get(),
        HttpServerOptions{tls, options_.api_keys.enabled() ? &options_.api_keys : nullptr,
                          options_.max_request_bytes});
    absl::StatusOr<int> port = http_->Start(options_.host, options_.http_port);
    if (!port.ok()) return port.status();
    http_port_ = *port;
  }
  return absl::OkStatus();
}

void OrchestratorServer::SetHealth(const char* service, bool serving) {
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server != nullptr) server->GetHealthCheckService()->SetServingStatus(service, serving);
  }
}

void OrchestratorServer::UpdateHealth() {
  std::vector<std::string> missing;
  for (const dgrid::v1::ModelInfo& m : registry_->ListedModels()) {
    if (m.unavailable()) missing.push_back(m.name());
  }
  absl::MutexLock lock(&health_mutex_);
  const bool serving = missing.empty();
  if (drained_ || serving == models_serving_) return;
  models_serving_ = serving;
  SetHealth("", serving);
  SetHealth(kGenerationService, serving);
  if (serving) {
    DG_LOG_INFO("", "health: SERVING (every model has all its stages again)");
  } else {
    DG_LOG_WARN("", "health: NOT_SERVING (a stage has no live replica for model%s %s)",
                missing.size() > 1 ? "s" : "", absl::StrJoin(missing, ", "));
  }
}

bool OrchestratorServer::Drain(absl::Duration timeout) {
  if (pipeline_ == nullptr) return true;
  {
    absl::MutexLock lock(&health_mutex_);
    drained_ = true;
    for (const char* service : {"", kGenerationService, kRegistryService})
      SetHealth(service, false);
  }
  pipeline_->StopAccepting();
  DG_LOG_INFO("", "draining: %d requests in flight", pipeline_->ActiveCount());
  const bool idle = pipeline_->WaitIdle(timeout);
  if (!idle) {
    DG_LOG_WARN("", "drain timeout: cancelling %d requests", pipeline_->ActiveCount());
    pipeline_->CancelAll();
    pipeline_->WaitIdle(absl::Seconds(10));
  }
  return idle;
}

void OrchestratorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (health_thread_.joinable()) {
    stop_health_.Notify();
    health_thread_.join();
  }
  bool drained;
  {
    absl::MutexLock lock(&health_mutex_);
    drained = drained_;
  }
  if (!drained) Drain(absl::ZeroDuration());
  if (http_ != nullptr) http_->Stop();
  if (metrics_server_ != nullptr) metrics_server_->Stop();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_.reset();
  }
  // Streams have ended (every request finished); give in-flight RPCs a moment to complete.
  if (server_ != nullptr)
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  inflight_gauge_.reset();  // Reads the pipeline.
  pipeline_.reset();
}

}  // namespace dgrid::orchestrator
