// DiT offload (issue #20 items 1 and 3): --dit-offload and --dit-offload-prefetch, declared once
// for the processes that take them: dgrid-denoiser (common/stage_main.cc), `dgrid up` (passed on
// to its denoisers) and `dgrid generate --local`. Layerwise offload's mechanism is in
// services/denoiser/models/layerwise_offload.h, model offload's in services/denoiser/
// dit_placement.h (over common/model_offload.h's ModelResidency); FLUX and Wan have both (another
// family refuses them).
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

// What --dit-offload / --dit-offload-prefetch ask for. The default is no offload ("none": every
// weight on the device for good). At most one of layerwise and model is set.
struct DitOffload {
  // --dit-offload layerwise: the transformer blocks' weights stay in (pinned) host memory and each
  // block is copied to the device just ahead of its use, in every forward pass.
  bool layerwise = false;
  // --dit-offload model: the whole DiT's weights rest in (pinned) host memory; they are copied to
  // the device when a request (or a step batch) starts denoising and dropped when no request uses
  // them any more (diffusers' enable_model_cpu_offload for the transformer). Requests that overlap
  // share one device copy. Between requests the DiT holds nothing on the device, so on a GPU
  // shared with the text encoders and the VAE (--local) the components take turns.
  bool model = false;
  // --dit-offload-prefetch (layerwise only): how many blocks after the running one are being
  // copied. Either a count (>= 1, prefetch_fraction 0) or a fraction of the blocks (in (0, 1],
  // prefetch_count 0).
  int64_t prefetch_count = 1;
  double prefetch_fraction = 0;
  // The flag's value as given ("2", "0.25"), to pass it on unchanged.
  std::string prefetch_text = "1";

  // The prefetch depth for a model of `num_blocks` blocks (> 0): the count, at most num_blocks,
  // or ceil(fraction * num_blocks), at least 1. So at most depth + 1 blocks are on the device.
  int64_t PrefetchDepth(int64_t num_blocks) const;
};

// Parses the two flags' values; INVALID_ARGUMENT naming the flag for a mode other than "none",
// "layerwise" or "model", a prefetch that is not a number, a count below 1 or a fraction outside
// (0, 1], and a prefetch other than the default "1" with "model" (which copies no blocks ahead). A
// value with a '.' (or an exponent) is a fraction ("1.0": all blocks), otherwise a count.
absl::StatusOr<DitOffload> ParseDitOffload(absl::string_view mode, absl::string_view prefetch);

// dit_offload and dit_offload_prefetch, their help starting with `who` ("denoiser", "--local").
std::vector<Setting> DitOffloadSettings(absl::string_view who);
// Reads and checks them (ParseDitOffload); also INVALID_ARGUMENT naming --dit-offload-prefetch
// when it is given at all with --dit-offload model.
absl::StatusOr<DitOffload> ReadDitOffloadFlags(const Config& config);
// The flags that give `offload` to a dgrid-denoiser; empty without offload.
std::vector<std::string> DitOffloadArgs(const DitOffload& offload);

}  // namespace dgrid

#endif  // DGRID_COMMON_DIT_OFFLOAD_FLAGS_H_
