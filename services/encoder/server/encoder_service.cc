#include "services/encoder/server/encoder_service.h"

#include <ATen/ATen.h>

#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/service_runtime.h"
#include "common/status.h"

namespace dgrid::encoder {
namespace {

// A unary reactor whose cancellation reaches the engine. It finishes exactly once: from the
// engine's callback, or at once when the engine refuses the work.
class EncodeReactor final : public grpc::ServerUnaryReactor {
 public:
  EncodeReactor(EncoderEngine* engine, std::string request_id)
      : engine_(engine), request_id_(std::move(request_id)) {}
  void OnCancel() override { engine_->Cancel(request_id_).IgnoreError(); }
  void OnDone() override { delete this; }

 private:
  EncoderEngine* engine_;
  std::string request_id_;
};

absl::Status PublishEmbeddings(TensorChannel& channel, const NamedTensors& in,
                               v1::TextEmbeddings* out) {
  auto& tensors = *out->mutable_tensors();
  for (const auto& [name, tensor] : in) {
    ASSIGN_OR_RETURN(tensors[name], channel.Publish(tensor));
  }
  return absl::OkStatus();
}

}  // namespace

grpc::ServerUnaryReactor* EncoderService::Encode(grpc::CallbackServerContext* context,
                                                 const v1::EncodeRequest* request,
                                                 v1::EncodeResponse* response) {
  EncoderEngine* engine = engine_.load();
  if (engine == nullptr) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "encoder is loading its model"));
    return reactor;
  }
  const std::string id = RequestIdOrUnique(request->request_id());
  auto* reactor = new EncodeReactor(engine, id);
  if (!request->model().empty() && request->model() != model_name_) {
    reactor->Finish(ToGrpcStatus(
        NotFound("model: '", request->model(), "' is not served here (", model_name_, ")")));
    return reactor;
  }
  EncodeInput input;
  input.request_id = id;
  input.prompt = request->prompt();
  input.negative_prompt = request->negative_prompt();
  input.encode_negative = request->encode_negative();
  input.max_sequence_length = request->max_sequence_length();
  input.deadline = CallDeadline(*context);
  const absl::Status queued = engine->Enqueue(
      std::move(input), [this, reactor, response, id](absl::StatusOr<EncodeOutput> output) {
        absl::Status status = output.status();
        if (status.ok())
          status = PublishEmbeddings(*channel_, output->positive, response->mutable_positive());
        if (status.ok() && !output->negative.empty()) {
          status = PublishEmbeddings(*channel_, output->negative, response->mutable_negative());
        }
        if (!status.ok()) DG_LOG_WARN(id, "encode failed: %s", status.ToString());
        reactor->Finish(ToGrpcStatus(status));
      });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

}  // namespace dgrid::encoder
