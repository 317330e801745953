// Layerwise DiT offload (issue #20 item 1): --dit-offload and --dit-offload-prefetch, declared once
// for the processes that take them: dgrid-denoiser (common/stage_main.cc), `dgrid up` (passed on
// to its denoisers) and `dgrid generate --local`. The mechanism is in
// services/denoiser/models/layerwise_offload.h; FLUX and Wan have it (another family refuses it).
//
// No LibTorch here: LoadOptions (common/safetensors.h) carries a DitOffload. Plain values and
// functions; thread-compatible.
#ifndef DGRID_COMMON_DIT_OFFLOAD_FLAGS_H_
#define DGRID_COMMON_DIT_OFFLOAD_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"

namespace dgrid {

// What --dit-offload / --dit-offload-prefetch ask for. The default is no offload.
struct DitOffload {
  // --dit-offload layerwise: the transformer blocks' weights stay in (pinned) host memory and each
  // block is copied to the device just ahead of its use; "none" (false): every weight on the
  // device.
  bool layerwise = false;
  // --dit-offload-prefetch: how many blocks after the running one are being copied. Either a
  // count (>= 1, prefetch_fraction 0) or a fraction of the blocks (in (0, 1], prefetch_count 0).
  int64_t prefetch_count = 1;
  double prefetch_fraction = 0;
  // The flag's value as given ("2", "0.25"), to pass it on unchanged.
  std::string prefetch_text = "1";

  // The prefetch depth for a model of `num_blocks` blocks (> 0): the count, at most num_blocks,
  // or ceil(fraction * num_blocks), at least 1. So at most depth + 1 blocks are on the device.
  int64_t PrefetchDepth(int64_t num_blocks) const;
};

// Parses the two flags' values; INVALID_ARGUMENT naming the flag for a mode other than "none" or
// "layerwise", a prefetch that is not a number, a count below 1 or a fraction outside (0, 1]. A
// value with a '.' (or an exponent) is a fraction ("1.0": all blocks), otherwise a count.
absl::StatusOr<DitOffload> ParseDitOffload(absl::string_view mode, absl::string_view prefetch);

// dit_offload and dit_offload_prefetch, their help starting with `who` ("denoiser", "--local").
std::vector<Setting> DitOffloadSettings(absl::string_view who);
// Reads and checks them (ParseDitOffload).
absl::StatusOr<DitOffload> ReadDitOffloadFlags(const Config& config);
// The flags that give `offload` to a dgrid-denoiser; empty without offload.
std::vector<std::string> DitOffloadArgs(const DitOffload& offload);

}  // namespace dgrid

#endif  // DGRID_COMMON_DIT_OFFLOAD_FLAGS_H_
