// The TensorChannel of a stage process, chosen from its flags (--transport, --ucx-tls,
// --inline-threshold-bytes, --ucx-checksum; see common/stage_main.h).
//
// The stage's gRPC service is built with a pointer to a StageChannel before the flags are parsed;
// RunStageMain then calls Configure() once, before the server starts, which picks UCX or inline.
// If UCX was asked for but cannot start, the channel stays inline and says so in the log: a stage
// without UCX still serves (tensors then travel in the gRPC messages).
//
// Thread safety: Configure() must finish before the first Publish / Fetch / Release (RunStageMain
// guarantees it); afterwards every method may be called from any thread.
#ifndef DGRID_TRANSPORT_STAGE_CHANNEL_H_
#define DGRID_TRANSPORT_STAGE_CHANNEL_H_

#include <memory>

#include "common/stage_main.h"
#include "transport/tensor_channel.h"

namespace dgrid {

class StageChannel final : public TensorChannel {
 public:
  StageChannel();
  ~StageChannel() override;

  // INVALID_ARGUMENT for an unknown --transport or a negative threshold; a UCX start-up failure is
  // not an error (inline fallback, logged).
  absl::Status Configure(const TransportFlags& flags);
  // Configure as a RunStageMain hook.
  TransportSetup Setup() {
    return [this](const TransportFlags& flags) { return Configure(flags); };
  }

  absl::StatusOr<v1::TensorRef> Publish(const at::Tensor& tensor) override {
    return channel_->Publish(tensor);
  }
  absl::StatusOr<at::Tensor> Fetch(const v1::TensorRef& ref, absl::string_view field) override {
    return channel_->Fetch(ref, field);
  }
  void Release(const v1::TensorRef& ref) override { channel_->Release(ref); }

 private:
  std::unique_ptr<TensorChannel> channel_;
};

}  // namespace dgrid

#endif  // DGRID_TRANSPORT_STAGE_CHANNEL_H_
