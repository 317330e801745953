// The flags of the decoder's tiled VAE decode (services/decoder/models/vae_tiling.h), declared once
// for the processes that take them: dgrid-decoder (common/stage_main.cc), `dgrid up` (passed on to
// its decoders) and `dgrid generate --local`.
//
// Plain functions; thread-compatible.
#ifndef DGRID_COMMON_VAE_TILING_FLAGS_H_
#define DGRID_COMMON_VAE_TILING_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"

namespace dgrid {

struct VaeTilingFlags {
  std::string mode = "auto";  // --vae-tiling: auto, on or off (checked by the decoder)
  int64_t tile_size = 0;      // --vae-tile-size: pixels; 0: the VAE's default
};

// vae_tiling and vae_tile_size, their help starting with `who` ("decoder", "--local", ...).
std::vector<Setting> VaeTilingSettings(absl::string_view who);
absl::StatusOr<VaeTilingFlags> ReadVaeTilingFlags(const Config& config);

}  // namespace dgrid

#endif  // DGRID_COMMON_VAE_TILING_FLAGS_H_
