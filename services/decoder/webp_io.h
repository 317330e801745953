// WebP output through libwebp (Debian's libwebp-dev): a still picture, or an animated WebP for
// short videos (a tiny clip a browser plays inline, where an MP4 needs a player), lossless by
// default so that its frames are exactly the decoded ones.
//
// The bytes are reproducible (single-threaded encoding, fixed options). When dgrid is built without
// libwebp every function returns UNIMPLEMENTED naming the package. Thread safety: reentrant.
#ifndef DGRID_SERVICES_DECODER_WEBP_IO_H_
#define DGRID_SERVICES_DECODER_WEBP_IO_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/decoder/image_io.h"

namespace dgrid::decoder {

struct WebpOptions {
  int fps = 16;           // animation frame rate, 1..240 (each frame lasts round(1000 / fps) ms)
  bool lossless = true;   // false: lossy at `quality`
  float quality = 90.0f;  // 0..100: lossy quality, or lossless effort
};

// True when this build can write and read WebP.
bool HaveWebp();

// RGB frames (all the same size) -> one WebP file: a still image for one frame, an animation
// (looping forever) for several. INVALID_ARGUMENT for no frames, mixed sizes, non-RGB frames or
// options out of range; INTERNAL when libwebp fails; UNIMPLEMENTED without libwebp.
absl::StatusOr<std::string> EncodeWebp(const std::vector<Image8>& frames,
                                       const WebpOptions& options = {});

struct DecodedWebp {
  std::vector<Image8> frames;     // RGB
  std::vector<int> durations_ms;  // per frame (0 for a still image)
};

// A still or animated WebP -> RGB frames (for checks and tests). DATA_LOSS for bytes that are not
// a readable WebP; UNIMPLEMENTED without libwebp.
absl::StatusOr<DecodedWebp> DecodeWebp(absl::string_view bytes);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_WEBP_IO_H_
