// Input images of image-to-image requests (GenerateRequest.image, /v1/images/edits): PNG or JPEG
// bytes -> 8-bit RGB pixels, and the resize diffusers' VaeImageProcessor applies to them.
//
// Modes are turned into RGB as PIL's Image.convert("RGB") does: gray is replicated, alpha is
// dropped (not blended), a palette is looked up (its transparency ignored). 16-bit PNG samples
// keep their high byte (PIL does so for 16-bit colour; its 16-bit gray differs). CMYK JPEGs are
// refused. libpng's and libjpeg's errors (longjmp) become statuses; a JPEG that ends early is an
// error, as PIL's default (LOAD_TRUNCATED_IMAGES off) makes it.
//
// The orchestrator decodes a request's image to validate it before anything else happens; the
// decoder stage decodes it again to encode it. Every function is thread-safe (no shared state).
#ifndef DGRID_COMMON_INPUT_IMAGE_H_
#define DGRID_COMMON_INPUT_IMAGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid {

// Limits on an input image: its encoded size and its decoded sides and area.
inline constexpr int64_t kMaxInputImageBytes = int64_t{32} << 20;
inline constexpr int64_t kMaxInputImageSide = 8192;
inline constexpr int64_t kMaxInputImagePixels = int64_t{64} << 20;

// Row-major interleaved RGB, 3 bytes a pixel: pixels.size() == height * width * 3.
struct RgbImage {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> pixels;
};

enum class InputImageFormat { kPng, kJpeg };

// The format `bytes` start with (PNG's or JPEG's signature); INVALID_ARGUMENT "image: ..." for
// anything else (and for empty or oversized bytes).
absl::StatusOr<InputImageFormat> SniffInputImage(absl::string_view bytes);

// Decodes PNG or JPEG bytes to RGB. INVALID_ARGUMENT whose message starts with "image: " for
// bytes that are neither, truncated or corrupt data, sides or area beyond the limits above, and
// modes it does not convert (CMYK JPEG).
absl::StatusOr<RgbImage> DecodeInputImage(absl::string_view bytes);

// PIL's Image.resize((width, height), Image.LANCZOS) of an RGB image: two passes of a Lanczos-3
// filter widened by the scale when shrinking, with 22-bit fixed-point coefficients and 8-bit
// rounding between the passes (Pillow's libImaging/Resample.c). Pillow 13 orders the passes by
// a rule of its own: horizontal first, except vertical first when the width grows and the height
// shrinks (reproduced), and for some images shrunk on both sides (not reproduced: those may
// differ by a few levels; every other case was bit for bit equal in a randomised comparison).
// The same size returns a copy. INVALID_ARGUMENT for a target side < 1 or an inconsistent image.
absl::StatusOr<RgbImage> ResizeLanczos(const RgbImage& image, int64_t width, int64_t height);

}  // namespace dgrid

#endif  // DGRID_COMMON_INPUT_IMAGE_H_
