// Conversion of LibTorch exceptions into statuses.
//
// LibTorch reports errors by throwing c10::Error (shape mismatches, bad dtypes, out of memory).
// dgrid code that calls into LibTorch wraps the call with TorchCall so the exception stops there.
#ifndef DGRID_COMMON_TORCH_STATUS_H_
#define DGRID_COMMON_TORCH_STATUS_H_

#include <exception>
#include <type_traits>
#include <utility>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace c10 {
class Error;
}  // namespace c10

namespace dgrid {

// Status for a c10::Error thrown while doing `context`. Out-of-memory errors map to
// RESOURCE_EXHAUSTED; c10::ValueError / IndexError / TypeError to INVALID_ARGUMENT; the rest to
// INTERNAL. The message keeps LibTorch's first line only (without the C++ backtrace).
[[nodiscard]] absl::Status StatusFromTorchError(const c10::Error& error, absl::string_view context);
// Status for any other std::exception (INTERNAL), e.g. std::bad_alloc (RESOURCE_EXHAUSTED).
[[nodiscard]] absl::Status StatusFromException(const std::exception& error,
                                               absl::string_view context);

namespace internal {
[[nodiscard]] absl::Status StatusFromCurrentException(absl::string_view context);
}  // namespace internal

// Runs `fn()` and converts any exception into a status. `fn` returns void, absl::Status, T or
// absl::StatusOr<T>; TorchCall returns absl::Status for the first two and absl::StatusOr<T>
// otherwise.
template <typename Fn>
auto TorchCall(absl::string_view context, Fn&& fn) {
  using R = std::invoke_result_t<Fn>;
  if constexpr (std::is_void_v<R>) {
    try {
      std::forward<Fn>(fn)();
      return absl::OkStatus();
    } catch (...) {
      return internal::StatusFromCurrentException(context);
    }
  } else if constexpr (std::is_same_v<R, absl::Status>) {
    try {
      return std::forward<Fn>(fn)();
    } catch (...) {
      return internal::StatusFromCurrentException(context);
    }
  } else {
    using Out = std::conditional_t<std::is_convertible_v<absl::Status, R>, R, absl::StatusOr<R>>;
    try {
      return Out(std::forward<Fn>(fn)());
    } catch (...) {
      return Out(internal::StatusFromCurrentException(context));
    }
  }
}

}  // namespace dgrid

#endif  // DGRID_COMMON_TORCH_STATUS_H_
