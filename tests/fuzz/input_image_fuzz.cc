// Fuzz target for the input images of image-to-image requests (dgrid::DecodeInputImage: PNG through
// libpng, JPEG through libjpeg, converted to RGB; dgrid::ResizeLanczos of what decodes).
//
// The target aborts when the decoder breaks its contract: an error other than INVALID_ARGUMENT or
// one whose message does not start with "image: "; an accepted image whose pixel count disagrees
// with its sides, or whose sides exceed the limits; a resize of an accepted image that fails or
// returns the wrong size. Memory errors, leaks and undefined behaviour (libpng's and libjpeg's
// longjmp error paths included) are caught by the sanitizers it is built with.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/input_image.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dgrid::fuzz::Check;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<dgrid::RgbImage> image = dgrid::DecodeInputImage(bytes);
  if (!image.ok()) {
    Check(image.status().code() == absl::StatusCode::kInvalidArgument, "unexpected status code");
    Check(absl::StartsWith(image.status().message(), "image: "), "error does not name `image`");
    return 0;
  }
  Check(image->width >= 1 && image->height >= 1, "accepted an empty image");
  Check(image->width <= dgrid::kMaxInputImageSide && image->height <= dgrid::kMaxInputImageSide,
        "accepted an image beyond the side limit");
  Check(static_cast<int64_t>(image->pixels.size()) == image->width * image->height * 3,
        "pixel count disagrees with the sides");
  // A small resize, shrinking or growing with the input (bounded so that a run stays fast).
  const int64_t width = 1 + (image->width * 7 + size) % 23;
  const int64_t height = 1 + (image->height * 5 + size) % 19;
  if (image->width * image->height <= 512 * 512) {
    absl::StatusOr<dgrid::RgbImage> resized = dgrid::ResizeLanczos(*image, width, height);
    Check(resized.ok(), "resize of a decoded image failed");
    Check(resized->width == width && resized->height == height &&
              static_cast<int64_t>(resized->pixels.size()) == width * height * 3,
          "resize returned the wrong size");
  }
  return 0;
}
