// The main() of every stage server (dgrid-encoder, dgrid-denoiser, dgrid-decoder): flags, logging,
// the gRPC server with honest readiness, weight loading, registration with the orchestrator,
// SIGTERM / SIGINT drain.
//
// Order: read the model's limits (cheap) -> start the gRPC server, health NOT_SERVING -> Load the
// weights -> health SERVING and register -> wait for a signal -> deregister, health NOT_SERVING,
// drain the engine for --drain-seconds, stop the server.
#ifndef DGRID_COMMON_STAGE_MAIN_H_
#define DGRID_COMMON_STAGE_MAIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/model_limits.h"
#include "common/safetensors.h"
#include "common/service_runtime.h"
#include "common/vae_tiling_flags.h"
#include "dgrid/v1/registry.pb.h"

namespace dgrid {

struct StageOptions {
  std::string model_path;
  ModelLimits limits;
  LoadOptions load;
  int workers = 1;
  int max_queued = 16;
  // --vae-tiling / --vae-tile-size: the decoder's tiled VAE decode (DecoderEngineOptions);
  // other stages ignore them.
  VaeTilingFlags vae;
  // --offload model (encoder, decoder): the stage's models keep their weights in host memory and
  // copy them to --device around each request (common/model_offload.h); the denoiser refuses it
  // (its DiT has --dit-offload).
  bool model_offload = false;
  // --warmup-resolutions: (width, height) pairs the engine runs once before the stage serves
  // (engines with Warmup(); the others log that they ignore it).
  std::vector<std::pair<int, int>> warmup_resolutions;
  // --scheduling fifo|edf: the order of the engine's queue (edf: earliest deadline first; the
  // denoiser also preempts between steps). Reported to the orchestrator (WorkerInfo.scheduling).
  bool earliest_deadline_first = false;
  // --max-batch / --batch-wait-ms: the denoiser's continuous batching at step boundaries
  // (services/denoiser/step_batcher.h); engines without it ignore them (1: unbatched).
  int max_batch = 1;
  absl::Duration batch_wait = absl::ZeroDuration();
  // --vram-budget ("24GiB"; empty: none): the denoiser checks before it loads that its model fits
  // (services/denoiser/server/vram_budget.h); other stages ignore it.
  std::string vram_budget;
};

// Engines whose options take step batching (DenoiserEngineOptions::max_batch, batch_wait).
template <typename O, typename = void>
struct HasStepBatching : std::false_type {};
template <typename O>
struct HasStepBatching<O, std::void_t<decltype(std::declval<O&>().max_batch)>> : std::true_type {};
// Engines whose options take the VAE's tiling (DecoderEngineOptions::vae_tiling, vae_tile_size).
template <typename O, typename = void>
struct HasVaeTiling : std::false_type {};
template <typename O>
struct HasVaeTiling<O, std::void_t<decltype(std::declval<O&>().vae_tiling)>> : std::true_type {};
// Engines whose options take model offload (EncoderEngineOptions / DecoderEngineOptions).
template <typename O, typename = void>
struct HasModelOffload : std::false_type {};
template <typename O>
struct HasModelOffload<O, std::void_t<decltype(std::declval<O&>().model_offload)>>
    : std::true_type {};
// The options type of Engine::Create(const Options&).
template <typename F>
struct CreateOptionsOf;
template <typename R, typename O>
struct CreateOptionsOf<R (*)(const O&)> {
  using type = O;
};

// Engines that can warm up (compile kernels, fill allocator pools, pick cuBLAS/cuDNN algorithms)
// for given resolutions before serving: `absl::Status Warmup(const std::vector<std::pair<int,
// int>>&)`.
template <typename E, typename = void>
struct HasWarmup : std::false_type {};
template <typename E>
struct HasWarmup<E, std::void_t<decltype(std::declval<E&>().Warmup(
                        std::declval<const std::vector<std::pair<int, int>>&>()))>>
    : std::true_type {};

// Logs that a stage without warm-up ignores --warmup-resolutions.
void LogWarmupIgnored(const char* why);

// One stage's server side. service() exists before Load() and answers UNAVAILABLE until Load() is
// done; the others are called only after a successful Load().
class Stage {
 public:
  virtual ~Stage() = default;
  virtual grpc::Service* service() = 0;
  virtual absl::Status Load(const StageOptions& options) = 0;
  virtual RegistrationClient::Load CurrentLoad() const = 0;
  // Adds what only this stage knows to its registration (a denoiser group: its layout).
  virtual void DescribeWorker(v1::WorkerInfo& /*worker*/) const {}
  // Stops accepting work, lets running work finish for up to `drain`, then cancels the rest.
  virtual void Shutdown(absl::Duration drain) = 0;
};

// The Stage of an engine (Create(Options{model_path, load, workers, max_queued,
// earliest_deadline_first}), running(),
// queued(), Shutdown(drain)) served by a gRPC adapter with SetEngine(Engine*, model_name).
template <typename Engine, typename Service>
class EngineStage final : public Stage {
 public:
  // The arguments construct the service (e.g. its TensorChannel).
  template <typename... Args>
  explicit EngineStage(Args&&... args) : service_(std::forward<Args>(args)...) {}

  grpc::Service* service() override { return &service_; }
  absl::Status Load(const StageOptions& options) override {
    using EngineOptions = typename CreateOptionsOf<decltype(&Engine::Create)>::type;
    EngineOptions engine_options{options.model_path, options.load, options.workers,
                                 options.max_queued, options.earliest_deadline_first};
    if constexpr (HasStepBatching<EngineOptions>::value) {
      engine_options.max_batch = options.max_batch;
      engine_options.batch_wait = options.batch_wait;
    }  // other stages have no step loop to batch; the flags' help says "denoiser"
    if constexpr (HasVaeTiling<EngineOptions>::value) {
      engine_options.vae_tiling = options.vae.mode;
      engine_options.vae_tile_size = options.vae.tile_size;
    }  // only the decoder has a VAE; the flags' help says "decoder"
    if constexpr (HasModelOffload<EngineOptions>::value) {
      engine_options.model_offload = options.model_offload;
    }  // the denoiser refuses --offload model before it gets here
    auto engine = Engine::Create(engine_options);
    if (!engine.ok()) return engine.status();
    engine_ = *std::move(engine);
    if (!options.warmup_resolutions.empty()) {
      if constexpr (HasWarmup<Engine>::value) {
        if (absl::Status s = engine_->Warmup(options.warmup_resolutions); !s.ok()) return s;
      } else {
        LogWarmupIgnored("this stage has no warm-up");
      }
    }
    service_.SetEngine(engine_.get(), options.limits.name);
    return absl::OkStatus();
  }
  RegistrationClient::Load CurrentLoad() const override {
    return {engine_->running(), engine_->queued(), true};
  }
  void Shutdown(absl::Duration drain) override { engine_->Shutdown(drain); }

 private:
  Service service_;
  std::unique_ptr<Engine> engine_;
};

// The stage's tensor transport flags (--transport ucx|inline, --ucx-tls, --inline-threshold-bytes).
struct TransportFlags {
  std::string transport;
  std::string ucx_tls;
  int64_t inline_threshold_bytes = 0;
  bool ucx_checksum = true;
};
// Sets up the process's TensorChannel from its flags (transport/stage_channel.h); called once,
// after logging starts and before the gRPC server does.
using TransportSetup = std::function<absl::Status(const TransportFlags&)>;

// Called with the stage's options once its flags are read, before the gRPC server starts and the
// model loads; an error ends the process with its message (the denoiser's --vram-budget check).
using StageCheck = std::function<absl::Status(const StageOptions&)>;

// Runs the stage's process until SIGTERM / SIGINT; returns the exit code. `default_port` is used
// when --port is not given. Without `setup_transport` the transport flags are accepted and ignored.
int RunStageMain(int argc, char** argv, v1::StageKind kind, int default_port, Stage& stage,
                 const TransportSetup& setup_transport = nullptr,
                 const StageCheck& check = nullptr);

}  // namespace dgrid

#endif  // DGRID_COMMON_STAGE_MAIN_H_
