#include "transport/inline/inline_channel.h"

#include <ATen/ATen.h>

#include "common/status.h"
#include "common/tensor_ref.h"

namespace dgrid {

absl::StatusOr<v1::TensorRef> InlineChannel::Publish(const at::Tensor& tensor) {
  if (tensor.defined() && tensor.nbytes() > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("tensor of ", tensor.nbytes(),
                                                     " bytes exceeds the inline limit of ",
                                                     max_bytes_, " bytes"));
  }
  return TensorToInlineRef(tensor);
}

absl::StatusOr<at::Tensor> InlineChannel::Fetch(const v1::TensorRef& ref, absl::string_view field) {
  return TensorFromInlineRef(ref, field);
}

}  // namespace dgrid
