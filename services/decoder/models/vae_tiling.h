// VAE decode in overlapping spatial tiles, and the decoder's settings for it (--vae-tiling,
// --vae-tile-size): for outputs whose whole-picture decode would not fit in memory.
//
// Ref: diffusers AutoencoderKL.tiled_decode / blend_v / blend_h
// (models/autoencoders/autoencoder_kl.py) and AutoencoderKLWan.tiled_decode
// (autoencoder_kl_wan.py), diffusers 0.42.1. The latents are cut into tiles that overlap; each
// tile is decoded on its own; each decoded tile is blended, in place and in row-major order, with
// the (already blended) tile above it and the one to its left by a linear ramp over the overlap,
// then cropped to its stride and the crops concatenated. Tiles do not see each other (the VAE's
// mid-block attention and its group norms run per tile), so a tiled picture differs slightly from
// an untiled one, exactly as diffusers' own tiled decode does.
//
// Thread-compatible plain values and a stateless function.
#ifndef DGRID_SERVICES_DECODER_MODELS_VAE_TILING_H_
#define DGRID_SERVICES_DECODER_MODELS_VAE_TILING_H_

#include <cstdint>
#include <functional>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::decoder {

// --vae-tiling: kOff decodes the whole picture at once (as before); kOn tiles every output larger
// than one tile (diffusers' vae.enable_tiling()); kAuto tiles only outputs of more than
// VaeDecodeOptions::auto_min_pixels pixels per frame, so that every size that decodes whole today
// still does.
enum class VaeTilingMode { kAuto, kOn, kOff };

// "auto", "on" or "off" (also "" = auto); INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<VaeTilingMode> ParseVaeTilingMode(absl::string_view text, absl::string_view flag);
const char* VaeTilingModeName(VaeTilingMode mode);

// Above FLUX.1's largest size (2048 x 2048), so kAuto changes nothing a FLUX request can ask for
// with the default limits.
inline constexpr int64_t kVaeAutoTilingMinPixels = int64_t{2048} * 2048;

struct VaeDecodeOptions {
  VaeTilingMode tiling = VaeTilingMode::kOff;
  // Output pixels per tile side (diffusers' tile_sample_min_size); 0: the VAE's default (the
  // config's sample_size for AutoencoderKL, 256 for AutoencoderKLWan).
  int64_t tile_size = 0;
  // kAuto tiles an output with more pixels per frame than this.
  int64_t auto_min_pixels = kVaeAutoTilingMinPixels;
  // diffusers' use_slicing: a batch of more than one is decoded one sample at a time (the same
  // numbers, less memory). The stage's batches are of one, so it only matters to callers of
  // AutoencoderKL::Decode with larger batches.
  bool slicing = false;
};

// The side of a decode tile in output pixels: options.tile_size, or `default_tile` when it is 0.
// It must be a positive multiple of 4 x `scale` (pixels per latent), so that a tile is a whole
// number of latents and its 3/4 stride too (otherwise diffusers' crops do not add up to the
// picture): INVALID_ARGUMENT naming --vae-tile-size for a given size that is not; a default that
// is not is rounded down to one (at least 4 x scale).
absl::StatusOr<int64_t> ResolveVaeTileSize(const VaeDecodeOptions& options, int64_t scale,
                                           int64_t default_tile);

// Whether a decode of latents h x w (`scale` pixels per latent) is tiled with tiles of
// `tile_pixels`: tiling on and the latents larger than one tile on a side (diffusers' test), and
// with kAuto the frame larger than options.auto_min_pixels.
bool VaeDecodeIsTiled(const VaeDecodeOptions& options, int64_t tile_pixels, int64_t scale,
                      int64_t latent_height, int64_t latent_width);

// "off", "on (tiles of 32 px)", "auto (tiles of 1024 px for frames of more than 4194304
// pixels)": for logs.
std::string DescribeVaeTiling(const VaeDecodeOptions& options, int64_t tile_pixels);

// One axis of a tile grid, in diffusers' terms.
struct VaeTileAxis {
  int64_t latent_tile = 0;    // latent rows (or columns) per tile (tile_latent_min_size)
  int64_t latent_stride = 0;  // latent rows between the starts of two tiles (> 0)
  int64_t blend = 0;          // decoded rows blended with the previous tile (blend_extent)
  int64_t keep = 0;           // decoded rows kept of each tile (row_limit)
};

// Decodes `latents` [..., h, w] tile by tile along its last two dimensions: `decode_tile` gets
// latents[..., i : i + rows.latent_tile, j : j + cols.latent_tile] for i = 0, rows.latent_stride,
// ... < h (likewise j) and returns the decoded tile [..., H_tile, W_tile] (the same leading
// dimensions for every tile). The result is the blended crops concatenated, not cropped further.
// Call it inside TorchCall: it throws c10::Error as ATen does.
at::Tensor DecodeInTiles(const at::Tensor& latents, const VaeTileAxis& rows,
                         const VaeTileAxis& cols,
                         const std::function<at::Tensor(const at::Tensor&)>& decode_tile);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_MODELS_VAE_TILING_H_
