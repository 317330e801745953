// gRPC adapter of the decoder engine (dgrid.v1.Decoder): pulls the latents through a TensorChannel,
// decodes, returns the encoded image. Answers UNAVAILABLE until an engine is set.
#ifndef DGRID_SERVICES_DECODER_SERVER_DECODER_SERVICE_H_
#define DGRID_SERVICES_DECODER_SERVER_DECODER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "dgrid/v1/stages.grpc.pb.h"
#include "services/decoder/decoder_engine.h"
#include "transport/tensor_channel.h"

namespace dgrid::decoder {

class DecoderService final : public v1::Decoder::CallbackService {
 public:
  explicit DecoderService(TensorChannel* channel) : channel_(channel) {}
  void SetEngine(DecoderEngine* engine, std::string model_name) {
    model_name_ = std::move(model_name);
    engine_.store(engine);
  }
  grpc::ServerUnaryReactor* Decode(grpc::CallbackServerContext* context,
                                   const v1::DecodeRequest* request,
                                   v1::DecodeResponse* response) override;
  // Image-to-image: decodes and VAE-encodes the input image, publishes the image latents on the
  // channel.
  grpc::ServerUnaryReactor* EncodeImage(grpc::CallbackServerContext* context,
                                        const v1::EncodeImageRequest* request,
                                        v1::EncodeImageResponse* response) override;

 private:
  // A finished reactor (UNAVAILABLE while no engine is set, NOT_FOUND for a model not served
  // here), or null when the call may go on.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                   const DecoderEngine* engine, const std::string& model);

  std::atomic<DecoderEngine*> engine_{nullptr};
  TensorChannel* channel_;
  std::string model_name_;
};

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_SERVER_DECODER_SERVICE_H_
