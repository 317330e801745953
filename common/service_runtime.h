// What every dgrid gRPC process shares: building the server (max message size, grpc.health.v1,
// reflection), waiting for SIGTERM / SIGINT, draining, and registering with the orchestrator.
//
// Readiness is honest: the health service says NOT_SERVING from start until MarkServing(), which a
// stage calls once its weights are loaded.
#ifndef DGRID_COMMON_SERVICE_RUNTIME_H_
#define DGRID_COMMON_SERVICE_RUNTIME_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "dgrid/v1/registry.grpc.pb.h"

namespace dgrid {

// Starts a gRPC server on `address` ("host:port"; port 0 picks a free one) with `services`.
// Health checking and reflection are on; the overall health status starts NOT_SERVING.
class GrpcServer {
 public:
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const std::string& address,
                                                           std::vector<grpc::Service*> services);
  ~GrpcServer();

  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  void MarkServing(bool serving);
  // Stops accepting calls; calls in flight get until `deadline` to finish, then are cancelled.
  void Shutdown(absl::Time deadline);
  grpc::Server* server() { return server_.get(); }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
};

// Blocks until SIGTERM or SIGINT arrives (installs the handlers on first use). Returns the signal.
int WaitForTerminationSignal();

// Registers a worker with the orchestrator at `orchestrator_address` and heartbeats in the
// background with the load that `load()` reports. Re-registers when the orchestrator forgets the
// worker (it restarted); keeps trying while the orchestrator is unreachable. Deregisters on Stop().
class RegistrationClient {
 public:
  struct Load {
    int inflight = 0;
    int queued = 0;
    bool serving = true;
  };
  RegistrationClient(std::string orchestrator_address, v1::WorkerInfo worker,
                     std::function<Load()> load);
  ~RegistrationClient();
  void Start();
  void Stop();
  bool registered() const { return registered_.load(); }

 private:
  void Loop();
  std::string orchestrator_address_;
  v1::WorkerInfo worker_;
  std::function<Load()> load_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  std::atomic<bool> registered_{false};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace dgrid

#endif  // DGRID_COMMON_SERVICE_RUNTIME_H_

namespace dgrid {

// `request_id`, or a process-unique "anon-N" when it is empty: engines key queued work and
// cancellation by id, so two calls without ids must not share one.
std::string RequestIdOrUnique(const std::string& request_id);

// The absl deadline of a server call (InfiniteFuture when the client set none).
absl::Time CallDeadline(const grpc::ServerContextBase& context);

}  // namespace dgrid
