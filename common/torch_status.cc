#include "common/torch_status.h"

#include <new>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace dgrid {
namespace {

// LibTorch messages end with a multi-line C++ backtrace; a status wants the first line.
absl::string_view FirstLine(absl::string_view message) {
  const size_t end = message.find('\n');
  return end == absl::string_view::npos ? message : message.substr(0, end);
}

}  // namespace

absl::Status StatusFromTorchError(const c10::Error& error, absl::string_view context) {
  const absl::string_view message = FirstLine(error.msg());
  const std::string text = absl::StrCat(context, ": ", message);
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) {
    return absl::ResourceExhaustedError(text);
  }
  if (dynamic_cast<const c10::ValueError*>(&error) != nullptr ||
      dynamic_cast<const c10::IndexError*>(&error) != nullptr ||
      dynamic_cast<const c10::TypeError*>(&error) != nullptr) {
    return absl::InvalidArgumentError(text);
  }
  return absl::InternalError(text);
}

absl::Status StatusFromException(const std::exception& error, absl::string_view context) {
  if (dynamic_cast<const std::bad_alloc*>(&error) != nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of host memory"));
  }
  return absl::InternalError(absl::StrCat(context, ": ", FirstLine(error.what())));
}

namespace internal {

absl::Status StatusFromCurrentException(absl::string_view context) {
  try {
    throw;
  } catch (const c10::Error& error) {
    return StatusFromTorchError(error, context);
  } catch (const std::exception& error) {
    return StatusFromException(error, context);
  } catch (...) {
    return absl::InternalError(absl::StrCat(context, ": unknown exception"));
  }
}

}  // namespace internal
}  // namespace dgrid
