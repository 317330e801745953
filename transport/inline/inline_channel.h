// TensorChannel whose references carry the bytes themselves (gRPC messages). The fallback where UCX
// is absent and the path for small tensors.
#ifndef DGRID_TRANSPORT_INLINE_INLINE_CHANNEL_H_
#define DGRID_TRANSPORT_INLINE_INLINE_CHANNEL_H_

#include <cstdint>

#include "transport/tensor_channel.h"

namespace dgrid {

class InlineChannel final : public TensorChannel {
 public:
  // Tensors larger than `max_bytes` are refused with RESOURCE_EXHAUSTED: a gRPC message has a size
  // limit, and the caller should use a UCX channel for them.
  explicit InlineChannel(uint64_t max_bytes = kDefaultMaxBytes) : max_bytes_(max_bytes) {}

  static constexpr uint64_t kDefaultMaxBytes = uint64_t{1} << 30;

  absl::StatusOr<v1::TensorRef> Publish(const at::Tensor& tensor) override;
  absl::StatusOr<at::Tensor> Fetch(const v1::TensorRef& ref, absl::string_view field) override;
  void Release(const v1::TensorRef& ref) override {}

 private:
  uint64_t max_bytes_;
};

}  // namespace dgrid

#endif  // DGRID_TRANSPORT_INLINE_INLINE_CHANNEL_H_
