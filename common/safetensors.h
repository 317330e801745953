// safetensors checkpoints: header parsing (pure, fuzzable) and loading into LibTorch tensors.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
// bytes of UTF-8 JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {..}}, then the data section; offsets are relative to the data section. The
// header types and ParseSafetensorsHeader live in common/safetensors_header.h (LibTorch-free,
// included here).
//
// Every malformed input (truncated file, header larger than the file or than
// kMaxSafetensorsHeaderBytes, bad JSON, unknown dtype, negative or overflowing shape, byte length
// that disagrees with dtype x shape, offsets out of range or overlapping) gives DATA_LOSS or
// INVALID_ARGUMENT naming the file and, where there is one, the tensor (safetensors_header.h says
// which code for which case). A missing file or shard is NOT_FOUND. Nothing here aborts or throws.
#ifndef DGRID_COMMON_SAFETENSORS_H_
#define DGRID_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/safetensors_header.h"
#include "common/weight_map.h"

namespace dgrid {

// A memory-mapped safetensors file (read-only, private mapping of the whole file). The header is
// validated by Open. Bytes() views point into the mapping and die with this object. Thread-safe
// after Open.
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
  // name -> index into header_.tensors.
  std::map<std::string, size_t, std::less<>> index_;
  const char* map_ = nullptr;
  uint64_t size_ = 0;
};

struct LoadOptions {
  // Target device, as LibTorch spells it: "cpu", "cuda", "cuda:1".
  std::string device = "cpu";
  // When set ("float32", "float16", "bfloat16"), floating-point tensors are converted to it;
  // integer and F8 tensors keep their type.
  std::optional<std::string> floating_dtype;
  // --dit-precision: what a diffusion transformer's linear layers compute in, "bf16" (the weights'
  // dtype; also when empty) or "fp8" (E4M3 weights quantized at load, FLUX only; see
  // services/denoiser/models/flux_layers.h). Other components ignore it.
  std::string dit_precision;
  // --dit-offload / --dit-offload-prefetch (common/dit_offload_flags.h): with `layerwise`, a
  // diffusion transformer keeps its blocks' weights in host memory and copies each to `device`
  // just ahead of its use (FLUX and Wan; services/denoiser/models/layerwise_offload.h). The
  // safetensors loaders themselves ignore it; other components too.
  DitOffload dit_offload;
  // --dit-shard-weights / --dit-shard-prefetch (common/dit_shard_flags.h) and the group's rank and
  // size: with `weights`, a diffusion transformer on a rank of a denoiser group keeps 1/size of its
  // blocks' weights and gathers each block from the group before it runs (FLUX and Wan;
  // services/denoiser/models/sharded_blocks.h). Ignored by the loaders and other components.
  DitShard dit_shard;
};

// Loads every tensor of one file into a WeightMap (copied out of the mapping, then moved to the
// device and dtype of `options`).
absl::StatusOr<WeightMap> LoadSafetensorsFile(const std::string& path, const LoadOptions& options);

// Loads a component folder of a Diffusers layout: either "<folder>/*.safetensors.index.json"
// (sharded: its "weight_map" names each tensor's shard; every shard must exist and hold exactly the
// tensors the index assigns to it) or the folder's single "*.safetensors" file. A folder with
// several unindexed .safetensors files loads the one named `preferred_file` if given, else it is an
// error.
absl::StatusOr<WeightMap> LoadSafetensorsFolder(const std::string& folder,
                                                const LoadOptions& options,
                                                absl::string_view preferred_file = "");

}  // namespace dgrid

#endif  // DGRID_COMMON_SAFETENSORS_H_
