// How tensors move between stages.
//
// A producer Publish()es a tensor and gets a TensorRef to put in its gRPC reply; the consumer
// Fetch()es the tensor from that reference and then Release()s it. Implementations: inline/ (the
// bytes travel in the TensorRef itself) and ucx/ (the TensorRef describes a registered buffer the
// consumer pulls).
//
// Thread safety: implementations are safe to call from any thread.
#ifndef DGRID_TRANSPORT_TENSOR_CHANNEL_H_
#define DGRID_TRANSPORT_TENSOR_CHANNEL_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dgrid/v1/tensor.pb.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid {

class TensorChannel {
 public:
  virtual ~TensorChannel() = default;

  // Makes `tensor` available to one consumer and describes it. The channel keeps what it needs (a
  // copy or a lease on a registered buffer); the caller may drop `tensor` afterwards.
  virtual absl::StatusOr<v1::TensorRef> Publish(const at::Tensor& tensor) = 0;

  // Produces a CPU tensor with the bytes `ref` describes. `field` names the reference in errors.
  // UNAVAILABLE when the producer is gone; INVALID_ARGUMENT for an inconsistent reference.
  virtual absl::StatusOr<at::Tensor> Fetch(const v1::TensorRef& ref, absl::string_view field) = 0;

  // Tells the producer the consumer is done with `ref`. Idempotent; never fails the request.
  virtual void Release(const v1::TensorRef& ref) = 0;
};

}  // namespace dgrid

#endif  // DGRID_TRANSPORT_TENSOR_CHANNEL_H_
