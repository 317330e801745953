// Video files from decoded frames: MP4 with H.264 (what every peer serves and every player plays),
// through FFmpeg's libraries (libavformat, libavcodec with libx264, libswscale), in memory.
//
// The encoding is reproducible: the same frames and options give the same bytes, whatever the
// load, the number of encodes running at once and what the process did before (video_io_test
// checks all three, and that the bytes do not depend on what the heap held). That takes a fixed
// x264 thread count, bit-exact flags, no creation time, and x264's AVX-512 code switched off: it
// read memory it never wrote, so the bytes depended on earlier encodes and decodes
// (video_io.cc, X264Params). So a cluster's MP4 equals the single-process one byte for byte
// where both run the same FFmpeg / x264 build on CPUs of the same x264 SIMD level (x264's plain C
// and its SIMD levels round some of its rate control's arithmetic differently, giving other bytes
// of the same size); the frames are the same either way.
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
  int threads = 4;                // x264 frame threads; fixed, as the bytes depend on the count
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
