// Image output of the decoder stage: VAE output tensors to 8-bit pixels, and PNG encoding/decoding.
//
// PostprocessImages reproduces diffusers' VaeImageProcessor.postprocess(output_type="pil") bit for
// bit (image_processor.py, diffusers 0.42.1): (x * 0.5 + 0.5).clamp(0, 1) in the tensor's dtype and
// on its device, then on the CPU in float32 numpy's (images * 255).round().astype("uint8"), where
// round is half-to-even.
//
// PNG goes through libpng; its errors (longjmp) become statuses, nothing aborts. All functions are
// thread-safe (no shared state).
#ifndef DGRID_SERVICES_DECODER_IMAGE_IO_H_
#define DGRID_SERVICES_DECODER_IMAGE_IO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace at {
class Tensor;
}  // namespace at

namespace dgrid::decoder {

// 8-bit pixels, row-major, channels interleaved (HWC): 1 = gray, 2 = gray + alpha, 3 = RGB,
// 4 = RGBA. `pixels.size() == height * width * channels`.
struct Image8 {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<uint8_t> pixels;
};

// VAE output [B, C, H, W] (C = 1, 3 or 4; any floating dtype and device) -> B images.
// INVALID_ARGUMENT for another rank, channel count or a non-floating dtype.
absl::StatusOr<std::vector<Image8>> PostprocessImages(const at::Tensor& vae_output);

struct PngOptions {
  // zlib level 0 (none) .. 9 (smallest); 6 is libpng's default.
  int compression_level = 6;
};

// Encodes one image as PNG (8 bits per channel, no interlace). INVALID_ARGUMENT for an inconsistent
// Image8 (sizes, channel count, more than kMaxPngSide pixels a side); INTERNAL if libpng fails.
absl::StatusOr<std::string> EncodePng(const Image8& image, const PngOptions& options = {});

// Decodes a PNG held in memory to 8 bits per channel (palette and low bit depths expanded, 16-bit
// samples reduced, transparency chunks turned into alpha). DATA_LOSS for anything that is not a
// valid PNG (bad signature, truncated, CRC or zlib errors, more than kMaxPngSide pixels a side).
absl::StatusOr<Image8> DecodePng(absl::string_view png_bytes);

inline constexpr int64_t kMaxPngSide = 1 << 15;

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_IMAGE_IO_H_
