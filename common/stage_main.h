// The main() of every stage server (dgrid-encoder, dgrid-denoiser, dgrid-decoder): flags, logging,
// the gRPC server with honest readiness, weight loading, registration with the orchestrator,
// SIGTERM / SIGINT drain.
//
// Order: read the model's limits (cheap) -> start the gRPC server, health NOT_SERVING -> Load the
// weights -> health SERVING and register -> wait for a signal -> deregister, health NOT_SERVING,
// drain the engine for --drain-seconds, stop the server.
#ifndef DGRID_COMMON_STAGE_MAIN_H_
#define DGRID_COMMON_STAGE_MAIN_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/model_limits.h"
#include "common/safetensors.h"
#include "common/service_runtime.h"
#include "dgrid/v1/registry.pb.h"

namespace dgrid {

struct StageOptions {
  std::string model_path;
  ModelLimits limits;
  LoadOptions load;
  int workers = 1;
  int max_queued = 16;
};

// One stage's server side. service() exists before Load() and answers UNAVAILABLE until Load() is
// done; the others are called only after a successful Load().
class Stage {
 public:
  virtual ~Stage() = default;
  virtual grpc::Service* service() = 0;
  virtual absl::Status Load(const StageOptions& options) = 0;
  virtual RegistrationClient::Load CurrentLoad() const = 0;
  // Stops accepting work, lets running work finish for up to `drain`, then cancels the rest.
  virtual void Shutdown(absl::Duration drain) = 0;
};

// Runs the stage's process until SIGTERM / SIGINT; returns the exit code. `default_port` is used
// when --port is not given.
int RunStageMain(int argc, char** argv, v1::StageKind kind, int default_port, Stage& stage);

}  // namespace dgrid

#endif  // DGRID_COMMON_STAGE_MAIN_H_
