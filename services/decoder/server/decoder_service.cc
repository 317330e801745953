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
  // The latents' lease goes back only once the answer has left: a decoder killed after the decode
  // but before its answer reached the orchestrator leaves the lease live, and the retry on another
  // decoder can still pull them.
  void OnDone() override {
    if (release_channel_ != nullptr) release_channel_->Release(release_ref_);
    delete this;
  }
  // Called (once, before Finish) when the lease on `ref` is to be released at the end.
  void ReleaseWhenDone(TensorChannel* channel, const v1::TensorRef& ref) {
    release_channel_ = channel;
    release_ref_ = ref;
  }

 private:
  DecoderEngine* engine_;
  std::string request_id_;
  TensorChannel* release_channel_ = nullptr;
  v1::TensorRef release_ref_;
};

}  // namespace

grpc::ServerUnaryReactor* DecoderService::Refuse(grpc::CallbackServerContext* context,
                                                 const DecoderEngine* engine,
                                                 const std::string& model) {
  if (engine == nullptr) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "decoder is loading its model"));
    return reactor;
  }
  if (!model.empty() && model != model_name_) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(
        ToGrpcStatus(NotFound("model: '", model, "' is not served here (", model_name_, ")")));
    return reactor;
  }
  return nullptr;
}

grpc::ServerUnaryReactor* DecoderService::Decode(grpc::CallbackServerContext* context,
                                                 const v1::DecodeRequest* request,
                                                 v1::DecodeResponse* response) {
  DecoderEngine* engine = engine_.load();
  if (grpc::ServerUnaryReactor* refused = Refuse(context, engine, request->model())) {
    return refused;
  }
  const std::string id = RequestIdOrUnique(request->request_id());
  auto* reactor = new DecodeReactor(engine, id);
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
    case v1::OUTPUT_FORMAT_MP4:
      input.format = ImageFormat::kMp4;
      break;
    case v1::OUTPUT_FORMAT_WEBP:
      input.format = ImageFormat::kWebp;
      break;
    default:
      reactor->Finish(ToGrpcStatus(InvalidArgument("output_format: unknown value ",
                                                   static_cast<int>(request->output_format()))));
      return reactor;
  }
  absl::StatusOr<at::Tensor> latents = channel_->Fetch(request->latents(), "latents");
  if (!latents.ok()) {
    // Latents that cannot be pulled any more (producer gone, lease over, bytes corrupt) are lost,
    // not a fault of this decoder: the orchestrator denoises the request again. A malformed
    // reference stays INVALID_ARGUMENT.
    const absl::Status& fetch = latents.status();
    reactor->Finish(
        ToGrpcStatus(absl::IsInvalidArgument(fetch) ? fetch : InputLost(fetch.message())));
    return reactor;
  }
  input.latents = *std::move(latents);
  input.fps = request->fps();
  input.deadline = CallDeadline(*context);
  input.preview = request->preview() == v1::PREVIEW_MODE_LATENT_RGB ? PreviewMode::kLatentRgb
                  : request->preview() == v1::PREVIEW_MODE_VAE      ? PreviewMode::kVae
                                                                    : PreviewMode::kNone;
  const absl::Status queued = engine->Enqueue(
      std::move(input),
      [reactor, request, response, id, channel = channel_](absl::StatusOr<DecodedImage> image) {
        // The lease goes back when the answer has left (DecodeReactor::OnDone); after UNAVAILABLE
        // it is kept (to expiry) so that the orchestrator's retry on another decoder can still
        // pull the latents.
        if (!absl::IsUnavailable(image.status()))
          reactor->ReleaseWhenDone(channel, request->latents());
        if (image.ok()) {
          const v1::OutputFormat format =
              image->format == ImageFormat::kPng    ? v1::OUTPUT_FORMAT_PNG
              : image->format == ImageFormat::kMp4  ? v1::OUTPUT_FORMAT_MP4
              : image->format == ImageFormat::kWebp ? v1::OUTPUT_FORMAT_WEBP
                                                    : v1::OUTPUT_FORMAT_RAW_RGB8;
          if (image->video) {
            v1::Video* out = response->mutable_video();
            out->set_format(format);
            out->set_width(image->width);
            out->set_height(image->height);
            out->set_num_frames(image->num_frames);
            out->set_fps(image->fps);
            out->set_data(std::move(image->data));
          } else {
            v1::Image* out = response->mutable_image();
            out->set_format(format);
            out->set_width(image->width);
            out->set_height(image->height);
            out->set_data(std::move(image->data));
          }
        } else {
          DG_LOG_WARN(id, "decode failed: %s", image.status().ToString());
        }
        reactor->Finish(ToGrpcStatus(image.status()));
      });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

grpc::ServerUnaryReactor* DecoderService::EncodeImage(grpc::CallbackServerContext* context,
                                                      const v1::EncodeImageRequest* request,
                                                      v1::EncodeImageResponse* response) {
  DecoderEngine* engine = engine_.load();
  if (grpc::ServerUnaryReactor* refused = Refuse(context, engine, request->model())) {
    return refused;
  }
  EncodeImageInput input;
  input.request_id = RequestIdOrUnique(request->request_id());
  input.image = request->image();
  input.width = request->width();
  input.height = request->height();
  input.seed = request->seed();
  input.deadline = CallDeadline(*context);
  const std::string id = input.request_id;
  auto* reactor = new DecodeReactor(engine, id);
  const absl::Status queued = engine->EnqueueEncodeImage(
      std::move(input),
      [reactor, response, id, channel = channel_](absl::StatusOr<at::Tensor> latents) {
        absl::Status status = latents.status();
        if (status.ok()) {
          absl::StatusOr<v1::TensorRef> ref = channel->Publish(*latents);
          status = ref.status();
          if (ref.ok()) *response->mutable_image_latents() = *std::move(ref);
        }
        if (!status.ok()) DG_LOG_WARN(id, "image encode failed: %s", status.ToString());
        reactor->Finish(ToGrpcStatus(status));
      });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

}  // namespace dgrid::decoder
