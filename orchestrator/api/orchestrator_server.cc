#include "orchestrator/api/orchestrator_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace dgrid::orchestrator {

OrchestratorServer::OrchestratorServer(OrchestratorOptions options)
    : options_(std::move(options)) {}

OrchestratorServer::~OrchestratorServer() { Shutdown(); }

std::string OrchestratorServer::grpc_address() const {
  return absl::StrCat(options_.host, ":", grpc_port_);
}

absl::Status OrchestratorServer::Start() {
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> policy = MakePlacementPolicy(options_.policy);
  if (!policy.ok()) return policy.status();
  policy_ = std::move(*policy);
  const Clock* clock = options_.clock != nullptr ? options_.clock : RealClock::Get();
  registry_ = std::make_unique<WorkerRegistry>(clock, policy_.get(), options_.heartbeat_interval);
  pipeline_ = std::make_unique<Pipeline>(registry_.get(), &channels_, clock, options_.pipeline);
  generation_ = std::make_unique<GenerationService>(pipeline_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(options_.host, ":", options_.port),
                           grpc::InsecureServerCredentials(), &grpc_port_);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  builder.RegisterService(generation_.get());
  builder.RegisterService(registry_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve gRPC on ", options_.host, ":", options_.port));
  }
  DG_LOG_INFO("", "gRPC listening on %s (policy %s, max_inflight %d, max_queued %d)",
              grpc_address(), options_.policy, options_.pipeline.max_inflight,
              options_.pipeline.max_queued);
  if (options_.http_port >= 0) {
    http_ = std::make_unique<HttpServer>(pipeline_.get());
    absl::StatusOr<int> port = http_->Start(options_.host, options_.http_port);
    if (!port.ok()) return port.status();
    http_port_ = *port;
  }
  return absl::OkStatus();
}

bool OrchestratorServer::Drain(absl::Duration timeout) {
  if (pipeline_ == nullptr) return true;
  drained_ = true;
  pipeline_->StopAccepting();
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(false);
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
  if (!drained_) Drain(absl::ZeroDuration());
  if (http_ != nullptr) http_->Stop();
  // Streams have ended (every request finished); give in-flight RPCs a moment to complete.
  if (server_ != nullptr)
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  pipeline_.reset();
}

}  // namespace dgrid::orchestrator
