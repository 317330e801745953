// Ref: diffusers AutoencoderKL.tiled_decode / blend_v / blend_h and AutoencoderKLWan.tiled_decode
// (diffusers 0.42.1). The blend is written row by row with scalar weights, as diffusers writes it,
// so that the arithmetic (and so the result, bit for bit) is the same.
#include "services/decoder/models/vae_tiling.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid::decoder {
namespace {

// diffusers' blend_v (dim -2) / blend_h (dim -1): the first `extent` rows of `b` become a linear
// ramp from the last `extent` rows of `a` to b's own, in place.
void BlendInto(const at::Tensor& a, at::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double w = static_cast<double>(y) / static_cast<double>(extent);
    b.select(dim, y).copy_(a.select(dim, a.size(dim) - extent + y) * (1.0 - w) +
                           b.select(dim, y) * w);
  }
}

}  // namespace

absl::StatusOr<VaeTilingMode> ParseVaeTilingMode(absl::string_view text, absl::string_view flag) {
  if (text.empty() || text == "auto") return VaeTilingMode::kAuto;
  if (text == "on") return VaeTilingMode::kOn;
  if (text == "off") return VaeTilingMode::kOff;
  return InvalidArgument(flag, ": '", text, "' must be auto, on or off");
}

const char* VaeTilingModeName(VaeTilingMode mode) {
  switch (mode) {
    case VaeTilingMode::kAuto:
      return "auto";
    case VaeTilingMode::kOn:
      return "on";
    case VaeTilingMode::kOff:
      return "off";
  }
  return "?";
}

absl::StatusOr<int64_t> ResolveVaeTileSize(const VaeDecodeOptions& options, int64_t scale,
                                           int64_t default_tile) {
  const int64_t unit = 4 * scale;
  if (options.auto_min_pixels < 0) {
    return InvalidArgument("VAE decode options: auto_min_pixels must not be negative");
  }
  if (options.tile_size == 0) return std::max(unit, default_tile / unit * unit);
  if (options.tile_size < 0 || options.tile_size % unit != 0) {
    return InvalidArgument("--vae-tile-size: ", options.tile_size,
                           " must be a positive multiple of ", unit, " (4 latents of this VAE, ",
                           scale, " pixels per latent)");
  }
  return options.tile_size;
}

bool VaeDecodeIsTiled(const VaeDecodeOptions& options, int64_t tile_pixels, int64_t scale,
                      int64_t latent_height, int64_t latent_width) {
  if (options.tiling == VaeTilingMode::kOff) return false;
  const int64_t latent_tile = tile_pixels / scale;
  if (latent_height <= latent_tile && latent_width <= latent_tile) return false;
  if (options.tiling == VaeTilingMode::kOn) return true;
  return latent_height * scale * latent_width * scale > options.auto_min_pixels;
}

std::string DescribeVaeTiling(const VaeDecodeOptions& options, int64_t tile_pixels) {
  switch (options.tiling) {
    case VaeTilingMode::kOff:
      return "off";
    case VaeTilingMode::kOn:
      return absl::StrCat("on (tiles of ", tile_pixels, " px)");
    case VaeTilingMode::kAuto:
      return absl::StrCat("auto (tiles of ", tile_pixels, " px for frames of more than ",
                          options.auto_min_pixels, " pixels)");
  }
  return "?";
}

at::Tensor DecodeInTiles(const at::Tensor& latents, const VaeTileAxis& rows,
                         const VaeTileAxis& cols,
                         const std::function<at::Tensor(const at::Tensor&)>& decode_tile) {
  TORCH_CHECK(rows.latent_stride > 0 && cols.latent_stride > 0, "VAE tiling: stride must be > 0");
  const int64_t h = latents.size(-2);
  const int64_t w = latents.size(-1);
  std::vector<std::vector<at::Tensor>> tiles;
  for (int64_t i = 0; i < h; i += rows.latent_stride) {
    std::vector<at::Tensor>& row = tiles.emplace_back();
    for (int64_t j = 0; j < w; j += cols.latent_stride) {
      const at::Tensor tile = latents.slice(-2, i, std::min(h, i + rows.latent_tile))
                                  .slice(-1, j, std::min(w, j + cols.latent_tile));
      row.push_back(decode_tile(tile));
    }
  }
  // Each tile is blended after the ones above and to its left, which are blended already: the
  // order of diffusers' in-place loop.
  std::vector<at::Tensor> result_rows;
  for (size_t i = 0; i < tiles.size(); ++i) {
    std::vector<at::Tensor> crops;
    for (size_t j = 0; j < tiles[i].size(); ++j) {
      at::Tensor& tile = tiles[i][j];
      if (i > 0) BlendInto(tiles[i - 1][j], tile, -2, rows.blend);
      if (j > 0) BlendInto(tiles[i][j - 1], tile, -1, cols.blend);
      crops.push_back(tile.slice(-2, 0, rows.keep).slice(-1, 0, cols.keep));
    }
    result_rows.push_back(at::cat(crops, -1));
  }
  return at::cat(result_rows, -2);
}

}  // namespace dgrid::decoder
