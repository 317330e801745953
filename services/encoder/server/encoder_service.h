// gRPC adapter of the encoder engine (dgrid.v1.Encoder). Only adapts: validation of the model name,
// the call's deadline and cancellation go to the engine; the embeddings leave through a
// TensorChannel.
#ifndef DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_
#define DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "common/stage_main.h"
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

// The encoder as a dgrid-encoder process runs it (common/stage_main.h).
class EncoderStage final : public Stage {
 public:
  explicit EncoderStage(TensorChannel* channel) : service_(channel) {}
  grpc::Service* service() override { return &service_; }
  absl::Status Load(const StageOptions& options) override;
  RegistrationClient::Load CurrentLoad() const override;
  void Shutdown(absl::Duration drain) override;

 private:
  EncoderService service_;
  std::unique_ptr<EncoderEngine> engine_;
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_SERVER_ENCODER_SERVICE_H_
