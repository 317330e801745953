// Video files from decoded frames: MP4 with H.264 (what every peer serves and every player plays),
// through FFmpeg's libraries (libavformat, libavcodec with libx264, libswscale), in memory.
//
// The encoding is meant to be reproducible: the same frames giving the same bytes on any machine
// with the same FFmpeg / x264 build (x264's slice threads with a fixed count: its frame threads
// gave different bytes from one encode to the next under load; bit-exact flags; no creation time),
// so that a cluster's video can be compared with the single-process one byte for byte. That does
// not hold (open problem): a decoder stage serving the same request six times returned identical
// raw frames but MP4s of three sizes (2086-2099 bytes), and video_io_test's
// DISABLED_ConcurrentEncodesGiveTheSameBytes shows encodes of the same frames differing on a loaded
// machine (four slice threads), and, with one x264 thread, still after other encodes and decodes
// in the process. Compare frames, not MP4 bytes, where exactness matters (tests/e2e/
// test_batching.py does).
//
// When dgrid is built without FFmpeg (its development packages missing), every function returns
// UNIMPLEMENTED naming the packages. Thread safety: all functions are reentrant.
#ifndef DGRID_SERVICES_DECODER_VIDEO_IO_H_
#define DGRID_SERVICES_DECODER_VIDEO_IO_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/decoder/image_io.h"

namespace dgrid::decoder {

struct Mp4Options {
  int fps = 16;  // frames per second (Wan's default), 1..240
  // x264's constant rate factor: 0 (lossless) .. 51; 18 is visually lossless for most content.
  int crf = 18;
  std::string preset = "medium";  // x264 speed / size trade-off
  int threads = 4;                // fixed, so that the bytes do not depend on the machine
};

// True when this build can write and read MP4.
bool HaveVideoCodecs();

// RGB frames (all the same size; width and height even, as 4:2:0 needs) -> an MP4 file's bytes:
// H.264 High profile, yuv420p, BT.709 limited range, `fps` frames per second, moov after mdat.
// INVALID_ARGUMENT for no frames, mixed sizes, odd sizes, non-RGB frames or options out of range;
// INTERNAL when FFmpeg fails; UNIMPLEMENTED without FFmpeg.
absl::StatusOr<std::string> EncodeMp4(const std::vector<Image8>& frames,
                                      const Mp4Options& options = {});

struct DecodedVideo {
  std::vector<Image8> frames;  // RGB
  double fps = 0;
};

// Any video file libavformat reads -> RGB frames (for checks and tests). DATA_LOSS for bytes that
// are not a readable video; UNIMPLEMENTED without FFmpeg.
absl::StatusOr<DecodedVideo> DecodeVideo(absl::string_view bytes);

}  // namespace dgrid::decoder

#endif  // DGRID_SERVICES_DECODER_VIDEO_IO_H_
