// OrchestratorServer: the whole orchestrator process minus flag parsing — registry, placement
// policy, pipeline, the gRPC server (dgrid.v1.Generation, dgrid.v1.Registry, grpc.health.v1,
// reflection) and the OpenAI-compatible HTTP server. main.cc and tests (unit, integration, e2e)
// build it the same way.
//
// Lifecycle: construct, Start(), ... , Drain() and/or Shutdown() (the destructor shuts down).
// Start, Drain and Shutdown are called from one controlling thread.
#ifndef DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_
#define DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_

#include <memory>
#include <string>

#include <grpcpp/server.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/service_runtime.h"
#include "orchestrator/api/api_keys.h"
#include "orchestrator/api/generation_service.h"
#include "orchestrator/api/http_server.h"
#include "orchestrator/pipeline/pipeline.h"
#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/registry/clock.h"
#include "orchestrator/registry/worker_registry.h"

namespace dgrid::orchestrator {

struct OrchestratorOptions {
  std::string host = "127.0.0.1";
  // gRPC port; 0 picks a free one.
  int port = 50050;
  // HTTP port; 0 picks a free one, < 0 disables HTTP.
  int http_port = 8080;
  std::string policy = "least-loaded";
  // What cost-model policies (predicted-completion) predict with: the served model's shape and the
  // card's calibration (MakePlacementContext; --placement-model, --placement-calibration).
  PlacementContext placement;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  PipelineOptions pipeline;
  // Clock for the registry (heartbeat expiry); nullptr: the real clock. Not owned.
  const Clock* clock = nullptr;
  // TLS of the gRPC and HTTP servers and of the channels to the stages (default: plain text). With
  // client_auth optional or require, only callers with a verified certificate may use the
  // dgrid.v1.Registry service (stages register with the process certificate).
  TlsOptions tls;
  // Keys of the public API (Generation service and /v1/*); none: open.
  ApiKeys api_keys;
  // Largest public request accepted: gRPC answers RESOURCE_EXHAUSTED, HTTP 413.
  size_t max_request_bytes = 1 << 20;
  // Plain-HTTP /metrics port (-1: off; /metrics is also on the HTTP port).
  int metrics_port = -1;
  // Plain-text grpc.health.v1 port for Kubernetes probes when gRPC is TLS (-1: off).
  int health_port = -1;
};

class OrchestratorServer {
 public:
  explicit OrchestratorServer(OrchestratorOptions options);
  ~OrchestratorServer();

  // Creates the policy (INVALID_ARGUMENT for an unknown name), binds and starts serving.
  absl::Status Start();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  // The plain /metrics port, -1 when off.
  int metrics_port() const { return metrics_server_ != nullptr ? metrics_server_->port() : -1; }
  std::string grpc_address() const;

  // Stops accepting new requests (UNAVAILABLE; health turns NOT_SERVING), waits up to `timeout` for
  // accepted ones to finish, then cancels the rest (they end CANCELLED). Returns whether all
  // finished in time.
  bool Drain(absl::Duration timeout);
  // Drain(0) if not drained, then stops both servers. Idempotent.
  void Shutdown();

  WorkerRegistry* registry() { return registry_.get(); }
  Pipeline* pipeline() { return pipeline_.get(); }

 private:
  OrchestratorOptions options_;
  std::unique_ptr<PlacementPolicy> policy_;
  std::unique_ptr<WorkerRegistry> registry_;
  StageChannels channels_;
  std::unique_ptr<Pipeline> pipeline_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  std::unique_ptr<metrics::ScopedCallbackGauge> inflight_gauge_;
  int grpc_port_ = 0;
  int http_port_ = -1;
  bool drained_ = false;
  bool shut_down_ = false;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_
