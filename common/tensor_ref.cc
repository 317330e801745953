#include "common/tensor_ref.h"

#include <cstring>
#include <limits>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid {

absl::StatusOr<size_t> DTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT64:
    case v1::DTYPE_INT64:
      return 8;
    case v1::DTYPE_FLOAT32:
    case v1::DTYPE_INT32:
      return 4;
    case v1::DTYPE_FLOAT16:
    case v1::DTYPE_BFLOAT16:
      return 2;
    case v1::DTYPE_UINT8:
    case v1::DTYPE_BOOL:
    case v1::DTYPE_FLOAT8_E4M3FN:
      return 1;
    default:
      return InvalidArgument("dtype ", DTypeName(dtype), " is not a tensor element type");
  }
}

absl::string_view DTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
      return "unspecified";
    case v1::DTYPE_FLOAT32:
      return "float32";
    case v1::DTYPE_FLOAT16:
      return "float16";
    case v1::DTYPE_BFLOAT16:
      return "bfloat16";
    case v1::DTYPE_FLOAT64:
      return "float64";
    case v1::DTYPE_INT64:
      return "int64";
    case v1::DTYPE_INT32:
      return "int32";
    case v1::DTYPE_UINT8:
      return "uint8";
    case v1::DTYPE_BOOL:
      return "bool";
    case v1::DTYPE_FLOAT8_E4M3FN:
      return "float8_e4m3fn";
    default:
      break;
  }
  static thread_local std::string unknown;
  unknown = absl::StrCat("unknown(", static_cast<int>(dtype), ")");
  return unknown;
}

absl::Status ValidateTensorRef(const v1::TensorRef& ref, absl::string_view field) {
  absl::StatusOr<size_t> element = DTypeSize(ref.dtype());
  if (!element.ok()) return Annotate(element.status(), absl::StrCat(field, ".dtype"));
  if (ref.shape_size() > kMaxTensorDims) {
    return InvalidArgument(field, ".shape: ", ref.shape_size(), " dimensions, at most ",
                           kMaxTensorDims);
  }
  uint64_t bytes = *element;
  constexpr uint64_t kLimit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  for (int i = 0; i < ref.shape_size(); ++i) {
    const int64_t dim = ref.shape(i);
    if (dim < 0) return InvalidArgument(field, ".shape[", i, "] = ", dim, " is negative");
    if (dim != 0 && bytes > kLimit / static_cast<uint64_t>(dim)) {
      return InvalidArgument(field, ".shape: byte count overflows");
    }
    bytes *= static_cast<uint64_t>(dim);
  }
  if (bytes != ref.byte_size()) {
    return InvalidArgument(field, ".byte_size = ", ref.byte_size(), " but shape and dtype give ",
                           bytes);
  }
  switch (ref.payload_case()) {
    case v1::TensorRef::kInlineData:
      if (ref.inline_data().size() != bytes) {
        return InvalidArgument(field, ".inline_data has ", ref.inline_data().size(),
                               " bytes, expected ", bytes);
      }
      return absl::OkStatus();
    case v1::TensorRef::kUcx:
      if (ref.ucx().lease_id() == 0) return InvalidArgument(field, ".ucx.lease_id is 0");
      if (ref.ucx().worker_address().empty()) {
        return InvalidArgument(field, ".ucx.worker_address is empty");
      }
      return absl::OkStatus();
    case v1::TensorRef::PAYLOAD_NOT_SET:
      break;
  }
  return InvalidArgument(field, " has no payload (neither inline_data nor ucx)");
}

absl::StatusOr<c10::ScalarType> ScalarTypeFromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return at::kFloat;
    case v1::DTYPE_FLOAT16:
      return at::kHalf;
    case v1::DTYPE_BFLOAT16:
      return at::kBFloat16;
    case v1::DTYPE_FLOAT64:
      return at::kDouble;
    case v1::DTYPE_INT64:
      return at::kLong;
    case v1::DTYPE_INT32:
      return at::kInt;
    case v1::DTYPE_UINT8:
      return at::kByte;
    case v1::DTYPE_BOOL:
      return at::kBool;
    case v1::DTYPE_FLOAT8_E4M3FN:
      return at::kFloat8_e4m3fn;
    default:
      return InvalidArgument("dtype ", DTypeName(dtype), " has no LibTorch equivalent");
  }
}

absl::StatusOr<v1::DType> ProtoFromScalarType(c10::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return v1::DTYPE_FLOAT32;
    case at::kHalf:
      return v1::DTYPE_FLOAT16;
    case at::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case at::kDouble:
      return v1::DTYPE_FLOAT64;
    case at::kLong:
      return v1::DTYPE_INT64;
    case at::kInt:
      return v1::DTYPE_INT32;
    case at::kByte:
      return v1::DTYPE_UINT8;
    case at::kBool:
      return v1::DTYPE_BOOL;
    case at::kFloat8_e4m3fn:
      return v1::DTYPE_FLOAT8_E4M3FN;
    default:
      return InvalidArgument("LibTorch dtype ", c10::toString(type),
                             " cannot travel in a TensorRef");
  }
}

absl::StatusOr<v1::TensorRef> TensorToInlineRef(const at::Tensor& tensor) {
  if (!tensor.defined()) return InvalidArgument("tensor is undefined");
  ASSIGN_OR_RETURN(v1::DType dtype, ProtoFromScalarType(tensor.scalar_type()));
  if (tensor.dim() > kMaxTensorDims) {
    return InvalidArgument("tensor has ", tensor.dim(), " dimensions, at most ", kMaxTensorDims);
  }
  return TorchCall("copy tensor to message", [&]() -> v1::TensorRef {
    const at::Tensor host = tensor.to(at::kCPU).contiguous();
    v1::TensorRef ref;
    ref.set_dtype(dtype);
    for (int64_t d : host.sizes()) ref.add_shape(d);
    const size_t bytes = host.nbytes();
    ref.set_byte_size(bytes);
    ref.set_inline_data(static_cast<const char*>(host.data_ptr()), bytes);
    metrics::CountTransferBytes("inline", "sent", static_cast<double>(bytes));
    return ref;
  });
}

absl::StatusOr<at::Tensor> TensorFromInlineRef(const v1::TensorRef& ref, absl::string_view field) {
  RETURN_IF_ERROR(ValidateTensorRef(ref, field));
  if (ref.payload_case() != v1::TensorRef::kInlineData) {
    return InvalidArgument(field, " is not inline; pull it through a TensorChannel");
  }
  ASSIGN_OR_RETURN(c10::ScalarType type, ScalarTypeFromProto(ref.dtype()));
  return TorchCall(absl::StrCat("decode ", field), [&]() -> at::Tensor {
    std::vector<int64_t> shape(ref.shape().begin(), ref.shape().end());
    at::Tensor out = at::empty(shape, at::TensorOptions().dtype(type));
    if (!ref.inline_data().empty()) {
      std::memcpy(out.data_ptr(), ref.inline_data().data(), ref.inline_data().size());
    }
    metrics::CountTransferBytes("inline", "received",
                                static_cast<double>(ref.inline_data().size()));
    return out;
  });
}

}  // namespace dgrid
