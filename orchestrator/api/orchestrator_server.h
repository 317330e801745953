// OrchestratorServer: the whole orchestrator process minus flag parsing — registry, placement
// policy, pipeline, the gRPC server (dgrid.v1.Generation, dgrid.v1.Registry, grpc.health.v1,
// reflection) and the OpenAI-compatible HTTP server. main.cc and tests (unit, integration, e2e)
// build it the same way.
//
// Health (grpc.health.v1, on the gRPC port and the plain-text probe port): "dgrid.v1.Registry" is
// SERVING while the process runs and is not draining (the liveness / readiness signal: stages must
// be able to register). "" and "dgrid.v1.Generation" are SERVING only while every model this
// orchestrator has served has a live replica of each stage: a model missing a stage (listed as
// unavailable) turns them NOT_SERVING until a replica is back. Draining turns all three
// NOT_SERVING.
//
// Lifecycle: construct, Start(), ... , Drain() and/or Shutdown() (the destructor shuts down).
// Start, Drain and Shutdown are called from one controlling thread.
#ifndef DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_
#define DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
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
  // Room for an edit's input image (common/input_image.h).
  size_t max_request_bytes = 40 << 20;
  // Plain-HTTP /metrics port (-1: off; /metrics is also on the HTTP port).
  int metrics_port = -1;
  // Plain-text grpc.health.v1 port for Kubernetes probes when gRPC is TLS (-1: off).
  int health_port = -1;
  // Models this orchestrator serves besides pipeline.default_model (which always counts): until
  // their stages register they are listed as unavailable and answered UNAVAILABLE, and health is
  // NOT_SERVING (WorkerRegistry::ExpectModel).
  std::vector<std::string> models;
  // How often the models' availability is checked for the health statuses.
  absl::Duration health_interval = absl::Milliseconds(250);
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

  // Names of the health services besides "".
  static constexpr const char* kGenerationService = "dgrid.v1.Generation";
  static constexpr const char* kRegistryService = "dgrid.v1.Registry";

 private:
  // Sets the health statuses from the models' availability (see the header comment).
  void UpdateHealth();
  void SetHealth(const char* service, bool serving) ABSL_EXCLUSIVE_LOCKS_REQUIRED(health_mutex_);

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
  absl::Mutex health_mutex_;
  bool drained_ ABSL_GUARDED_BY(health_mutex_) = false;
  bool models_serving_ ABSL_GUARDED_BY(health_mutex_) = true;
  absl::Notification stop_health_;
  std::thread health_thread_;
  bool shut_down_ = false;
};

}  // namespace dgrid::orchestrator

#endif  // DGRID_ORCHESTRATOR_API_ORCHESTRATOR_SERVER_H_
