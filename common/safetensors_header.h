// safetensors header parsing: a pure, LibTorch-free function so that fuzz targets link it alone.
// common/safetensors.h includes this header; most code should include that one.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
// bytes of UTF-8 JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {..}}, then the data section; offsets are relative to the data section.
//
// Error codes:
//  * DATA_LOSS when the file is shorter than what it declares: fewer than 8 bytes, a header length
//    that runs past the end of the file, or a tensor whose data_offsets end past the end of the
//    file.
//  * INVALID_ARGUMENT for malformed content: a header longer than kMaxSafetensorsHeaderBytes, bad
//  or
//    too deeply nested JSON, a missing or mistyped field, an unknown dtype, a negative or
//    overflowing shape, a byte length that disagrees with dtype x shape, overlapping tensors, bad
//    __metadata__.
// Every message starts with the file name and names the tensor where there is one.
#ifndef DGRID_COMMON_SAFETENSORS_HEADER_H_
#define DGRID_COMMON_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {

// Element types a safetensors file may declare that dgrid reads.
enum class SafetensorsDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3 };

// Bytes per element (8, 4, 2 or 1).
uint64_t SafetensorsDtypeSize(SafetensorsDtype dtype);
// The name used in the file format: "F32", "BF16", "F8_E4M3", ...
absl::string_view SafetensorsDtypeName(SafetensorsDtype dtype);
// Inverse of SafetensorsDtypeName; INVALID_ARGUMENT for names dgrid does not read.
absl::StatusOr<SafetensorsDtype> ParseSafetensorsDtype(absl::string_view name);
// True for F64, F32, F16 and BF16 (the types LoadOptions::floating_dtype converts; F8 is kept raw).
bool IsConvertibleFloat(SafetensorsDtype dtype);

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  // Byte range inside the data section, [begin, end).
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  // Sorted by `begin` (then by name, so that the order is deterministic).
  std::vector<SafetensorsTensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  // Offset of the data section from the start of the file (8 + header length).
  uint64_t data_offset = 0;
};

// Headers larger than this are refused (the format's reference implementation uses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
// JSON nesting deeper than this is refused before parsing (a valid header needs 3 levels).
inline constexpr int kMaxSafetensorsHeaderDepth = 16;

// Parses and validates a header. `prefix` holds at least the first min(file_size, 8 + N) bytes of
// the file (the whole file is fine); `file_size` is the size of the whole file; `file_name` is used
// in errors only. Pure function: no I/O, safe for fuzzing, never throws.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name);

}  // namespace dgrid

#endif  // DGRID_COMMON_SAFETENSORS_HEADER_H_
