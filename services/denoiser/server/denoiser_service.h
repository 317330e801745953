// gRPC adapter of the denoiser engine (dgrid.v1.Denoiser): a server stream of one DenoiseStep per
// step, ending with the latents. Cancellation and the call's deadline reach the engine, which stops
// at the next step. Answers UNAVAILABLE until an engine is set.
#ifndef DGRID_SERVICES_DENOISER_SERVER_DENOISER_SERVICE_H_
#define DGRID_SERVICES_DENOISER_SERVER_DENOISER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "dgrid/v1/stages.grpc.pb.h"
#include "services/denoiser/denoiser_engine.h"
#include "transport/tensor_channel.h"

namespace dgrid {

class DenoiserService final : public v1::Denoiser::CallbackService {
 public:
  explicit DenoiserService(TensorChannel* channel) : channel_(channel) {}
  // The model name comes from the engine's limits; the argument keeps the adapters uniform.
  void SetEngine(DenoiserEngine* engine, const std::string& /*model_name*/) {
    engine_.store(engine);
  }
  grpc::ServerWriteReactor<v1::DenoiseEvent>* Denoise(grpc::CallbackServerContext* context,
                                                      const v1::DenoiseRequest* request) override;

 private:
  std::atomic<DenoiserEngine*> engine_{nullptr};
  TensorChannel* channel_;
};

}  // namespace dgrid

#endif  // DGRID_SERVICES_DENOISER_SERVER_DENOISER_SERVICE_H_
