#include "common/vae_tiling_flags.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {

std::vector<Setting> VaeTilingSettings(absl::string_view who) {
  return {
      {"vae_tiling", Setting::kString, "auto",
       absl::StrCat(who,
                    ": the VAE decode in overlapping tiles: auto (only frames of more than "
                    "2048x2048 pixels), on (every frame larger than one tile) or off")},
      {"vae_tile_size", Setting::kInt, "0",
       absl::StrCat(who,
                    ": a VAE tile's side in output pixels, a multiple of 4 latents (0: the VAE's "
                    "default, its config's sample_size; 256 for Wan)"),
       0, 1 << 20},
  };
}

absl::StatusOr<VaeTilingFlags> ReadVaeTilingFlags(const Config& config) {
  VaeTilingFlags flags;
  ASSIGN_OR_RETURN(flags.mode, config.GetString("vae_tiling"));
  ASSIGN_OR_RETURN(flags.tile_size, config.GetInt("vae_tile_size"));
  return flags;
}

}  // namespace dgrid
