#include "services/decoder/server/decoder_service.h"

#include <ATen/ATen.h>

#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/service_runtime.h"
#include "common/status.h"

namespace dgrid::decoder {
namespace {

class DecodeReactor final : public grpc::ServerUnaryReactor {
 public:
  DecodeReactor(DecoderEngine* engine, std::string request_id)
      : engine_(engine), request_id_(std::move(request_id)) {}
  void OnCancel() override { engine_->Cancel(request_id_).IgnoreError(); }
  void OnDone() override { delete this; }

 private:
  DecoderEngine* engine_;
  std::string request_id_;
};

}  // namespace

grpc::ServerUnaryReactor* DecoderService::Decode(grpc::CallbackServerContext* context,
                                                 const v1::DecodeRequest* request,
                                                 v1::DecodeResponse* response) {
  DecoderEngine* engine = engine_.load();
  if (engine == nullptr) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "decoder is loading its model"));
    return reactor;
  }
  const std::string id = RequestIdOrUnique(request->request_id());
  auto* reactor = new DecodeReactor(engine, id);
  if (!request->model().empty() && request->model() != model_name_) {
    reactor->Finish(ToGrpcStatus(
        NotFound("model: '", request->model(), "' is not served here (", model_name_, ")")));
    return reactor;
  }
  DecodeInput input;
  input.request_id = id;
  switch (request->output_format()) {
    case v1::OUTPUT_FORMAT_UNSPECIFIED:
    case v1::OUTPUT_FORMAT_PNG:
      input.format = ImageFormat::kPng;
      break;
    case v1::OUTPUT_FORMAT_RAW_RGB8:
      input.format = ImageFormat::kRawRgb8;
      break;
    default:
      reactor->Finish(ToGrpcStatus(InvalidArgument("output_format: unknown value ",
                                                   static_cast<int>(request->output_format()))));
      return reactor;
  }
  absl::StatusOr<at::Tensor> latents = channel_->Fetch(request->latents(), "latents");
  if (!latents.ok()) {
    reactor->Finish(ToGrpcStatus(latents.status()));
    return reactor;
  }
  input.latents = *std::move(latents);
  input.deadline = CallDeadline(*context);
  const absl::Status queued = engine->Enqueue(
      std::move(input),
      [reactor, request, response, id, channel = channel_](absl::StatusOr<DecodedImage> image) {
        // The lease goes back when the request is over; after UNAVAILABLE it is kept (to expiry)
        // so that the orchestrator's retry on another decoder can still pull the latents.
        if (!absl::IsUnavailable(image.status())) channel->Release(request->latents());
        if (image.ok()) {
          v1::Image* out = response->mutable_image();
          out->set_format(image->format == ImageFormat::kPng ? v1::OUTPUT_FORMAT_PNG
                                                             : v1::OUTPUT_FORMAT_RAW_RGB8);
          out->set_width(image->width);
          out->set_height(image->height);
          out->set_data(std::move(image->data));
        } else {
          DG_LOG_WARN(id, "decode failed: %s", image.status().ToString());
        }
        reactor->Finish(ToGrpcStatus(image.status()));
      });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

}  // namespace dgrid::decoder
