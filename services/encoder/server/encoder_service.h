// gRPC adapter of the encoder engine (dgrid.v1.Encoder). Only adapts: validation of the model name,
// the call's deadline and cancellation go to the engine; the embeddings leave through a
// TensorChannel.
#ifndef DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_
#define DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "dgrid/v1/stages.grpc.pb.h"
#include "services/encoder/encoder_engine.h"
#include "transport/tensor_channel.h"

namespace dgrid::encoder {

// Answers UNAVAILABLE until an engine is set.
class EncoderService final : public v1::Encoder::CallbackService {
 public:
  // `channel` must outlive the service.
  explicit EncoderService(TensorChannel* channel) : channel_(channel) {}
  // `engine` must outlive the service; set once.
  void SetEngine(EncoderEngine* engine, std::string model_name) {
    model_name_ = std::move(model_name);
    engine_.store(engine);
  }

  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* context,
                                   const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;

 private:
  std::atomic<EncoderEngine*> engine_{nullptr};
  TensorChannel* channel_;
  std::string model_name_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_
