// Fuzz target for dgrid::ParseSafetensorsHeader (common/safetensors_header.cc).
//
// The input is a whole safetensors file. The target aborts (a crash for libFuzzer and for the
// deterministic driver alike) when the parser breaks its contract:
//  * an error other than DATA_LOSS / INVALID_ARGUMENT, or one that does not name the file;
//  * an accepted header whose tensors are out of range, overlap, are not sorted, or whose byte
//    lengths disagree with dtype x shape;
//  * a different answer when given only the prefix the header needs (the documented contract).
// Memory errors and undefined behaviour are caught by the sanitizers the target is built with.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/safetensors_header.h"

namespace {

constexpr absl::string_view kFileName = "fuzz.safetensors";

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "safetensors_header_fuzz: contract violated: %s\n", what);
  std::abort();
}

void Check(bool ok, const char* what) {
  if (!ok) Fail(what);
}

void CheckAccepted(const dgrid::SafetensorsHeader& header, uint64_t file_size) {
  Check(header.data_offset >= 8 && header.data_offset <= file_size, "data_offset out of range");
  const uint64_t data_size = file_size - header.data_offset;
  const dgrid::SafetensorsTensorInfo* previous = nullptr;
  uint64_t max_end = 0;
  for (const dgrid::SafetensorsTensorInfo& info : header.tensors) {
    Check(info.begin <= info.end, "begin > end");
    Check(info.end <= data_size, "tensor past the end of the data section");
    Check(previous == nullptr || previous->begin <= info.begin, "tensors not sorted by begin");
    uint64_t bytes = dgrid::SafetensorsDtypeSize(info.dtype);
    for (int64_t dim : info.shape) {
      Check(dim >= 0, "negative dimension accepted");
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
        Fail("overflowing shape accepted");
      }
    }
    Check(bytes == info.end - info.begin, "byte length disagrees with dtype x shape");
    if (info.begin != info.end) {
      Check(info.begin >= max_end, "overlapping tensors accepted");
      max_end = info.end;
    }
    previous = &info;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view file(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<dgrid::SafetensorsHeader> header =
      dgrid::ParseSafetensorsHeader(file, size, kFileName);
  if (!header.ok()) {
    const absl::StatusCode code = header.status().code();
    Check(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument,
          "unexpected status code");
    Check(absl::StartsWith(header.status().message(), kFileName), "error does not name the file");
    return 0;
  }
  CheckAccepted(*header, size);
  // The parser needs only the first data_offset bytes.
  absl::StatusOr<dgrid::SafetensorsHeader> again =
      dgrid::ParseSafetensorsHeader(file.substr(0, header->data_offset), size, kFileName);
  Check(again.ok() && again->tensors.size() == header->tensors.size() &&
            again->metadata == header->metadata,
        "prefix-only parse differs");
  return 0;
}
