// safetensors checkpoints: header parsing (pure, fuzzable) and loading into LibTorch tensors.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
// UTF-8 JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__":
// {..}}, then the data section; offsets are relative to the data section.
//
// Every malformed input (truncated file, header larger than the file or than kMaxHeaderBytes, bad JSON,
// unknown dtype, negative or overflowing shape, byte length that disagrees with dtype x shape, offsets
// out of range or overlapping) gives DATA_LOSS or INVALID_ARGUMENT naming the file and, where there is
// one, the tensor. Nothing here aborts or throws.
#ifndef DGRID_COMMON_SAFETENSORS_H_
#define DGRID_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/weight_map.h"

namespace dgrid {

// Element types a safetensors file may declare that dgrid reads.
enum class SafetensorsDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3 };

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  // Byte range inside the data section, [begin, end).
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  // Sorted by `begin`.
  std::vector<SafetensorsTensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  // Offset of the data section from the start of the file (8 + header length).
  uint64_t data_offset = 0;
};

// Headers larger than this are refused (the format's reference implementation uses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Parses and validates a header. `prefix` holds at least the first min(file_size, 8 + N) bytes of the
// file (the whole file is fine); `file_size` is the size of the whole file; `file_name` is used in
// errors only. Pure function: no I/O, safe for fuzzing.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix, uint64_t file_size,
                                                         absl::string_view file_name);

// A memory-mapped safetensors file. Thread-safe after Open.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // Pointer to the named tensor's bytes inside the mapping, or NOT_FOUND.
  absl::StatusOr<absl::string_view> Bytes(absl::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  const char* map_ = nullptr;
  uint64_t size_ = 0;
};

struct LoadOptions {
  // Target device, as LibTorch spells it: "cpu", "cuda", "cuda:1".
  std::string device = "cpu";
  // When set ("float32", "float16", "bfloat16"), floating-point tensors are converted to it; integer
  // and F8 tensors keep their type.
  std::optional<std::string> floating_dtype;
};

// Loads every tensor of one file into a WeightMap (copied out of the mapping, then moved to the device
// and dtype of `options`).
absl::StatusOr<WeightMap> LoadSafetensorsFile(const std::string& path, const LoadOptions& options);

// Loads a component folder of a Diffusers layout: either "<folder>/*.safetensors.index.json" (sharded:
// its "weight_map" names each tensor's shard; every shard must exist and hold exactly the tensors the
// index assigns to it) or the folder's single "*.safetensors" file. A folder with several unindexed
// .safetensors files loads the one named `preferred_file` if given, else it is an error.
absl::StatusOr<WeightMap> LoadSafetensorsFolder(const std::string& folder, const LoadOptions& options,
                                                absl::string_view preferred_file = "");

}  // namespace dgrid

#endif  // DGRID_COMMON_SAFETENSORS_H_
