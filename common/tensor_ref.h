// Mapping between dgrid.v1.TensorRef and LibTorch tensors.
//
// Only declarations of LibTorch types appear here (forward-declared) so that users that just
// validate TensorRefs don't pay for ATen's headers.
#ifndef DGRID_COMMON_TENSOR_REF_H_
#define DGRID_COMMON_TENSOR_REF_H_

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dgrid/v1/tensor.pb.h"

namespace c10 {
enum class ScalarType : int8_t;
}  // namespace c10
namespace at {
class Tensor;
}  // namespace at

namespace dgrid {

inline constexpr int kMaxTensorDims = 8;

// Bytes per element; INVALID_ARGUMENT for DTYPE_UNSPECIFIED or an unknown enum value.
absl::StatusOr<size_t> DTypeSize(v1::DType dtype);
// "float32", "bfloat16", ... ; "unknown(N)" for other values.
absl::string_view DTypeName(v1::DType dtype);

// Checks that `ref` is self-consistent: known dtype, at most kMaxTensorDims dimensions, every
// dimension
// >= 0, the byte count of shape x dtype fits in 63 bits and equals byte_size, a payload is present
// and, when inline, has exactly byte_size bytes. `field` names the message in errors
// ("prompt_embeds").
absl::Status ValidateTensorRef(const v1::TensorRef& ref, absl::string_view field);

absl::StatusOr<c10::ScalarType> ScalarTypeFromProto(v1::DType dtype);
absl::StatusOr<v1::DType> ProtoFromScalarType(c10::ScalarType type);

// Copies `tensor` (any device, any layout) into an inline TensorRef. INVALID_ARGUMENT for an
// unsupported dtype or an undefined tensor.
absl::StatusOr<v1::TensorRef> TensorToInlineRef(const at::Tensor& tensor);

// Builds a new contiguous CPU tensor from an inline TensorRef after ValidateTensorRef(ref, field).
absl::StatusOr<at::Tensor> TensorFromInlineRef(const v1::TensorRef& ref, absl::string_view field);

}  // namespace dgrid

#endif  // DGRID_COMMON_TENSOR_REF_H_
