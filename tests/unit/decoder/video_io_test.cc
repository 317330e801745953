// MP4 output: frames survive an encode / decode round trip (H.264 is lossy: PSNR, not equality),
// the bytes are reproducible (alone, on several threads at once, after other work, whatever the
// heap held), and bad frames or bytes give statuses.
#include "services/decoder/video_io.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "tests/unit/decoder/image_compare.h"

namespace dgrid::decoder {
namespace {

// A smooth gradient with a square that moves two pixels a frame.
std::vector<Image8> MovingSquare(int frames, int width, int height) {
  std::vector<Image8> out;
  for (int f = 0; f < frames; ++f) {
    Image8 image{height, width, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
        const bool square = x >= 8 + 2 * f && x < 24 + 2 * f && y >= 10 && y < 26;
        p[0] = square ? 230 : static_cast<uint8_t>(40 + 2 * x);
        p[1] = square ? 40 : static_cast<uint8_t>(60 + 2 * y);
        p[2] = square ? 50 : 120;
      }
    }
    out.push_back(std::move(image));
  }
  return out;
}

TEST(VideoIo, Mp4RoundTrip) {
  if (!HaveVideoCodecs()) GTEST_SKIP() << "built without FFmpeg";
  const std::vector<Image8> frames = MovingSquare(9, 64, 48);
  Mp4Options options;
  options.fps = 16;
  absl::StatusOr<std::string> mp4 = EncodeMp4(frames, options);
  ASSERT_TRUE(mp4.ok()) << mp4.status();
  ASSERT_GT(mp4->size(), 16u);
  EXPECT_EQ(mp4->substr(4, 4), "ftyp");  // an ISO base media file
  absl::StatusOr<DecodedVideo> back = DecodeVideo(*mp4);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), frames.size());
  EXPECT_DOUBLE_EQ(back->fps, 16.0);
  double worst = 99;
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_EQ(back->frames[i].width, 64);
    ASSERT_EQ(back->frames[i].height, 48);
    worst = std::min(worst, Psnr(frames[i], back->frames[i]));
  }
  std::printf("mp4 round trip: %zu bytes, worst frame PSNR %.1f dB\n", mp4->size(), worst);
  EXPECT_GT(worst, 30.0);  // crf 18: visually lossless
  // The same frames give the same bytes.
  absl::StatusOr<std::string> again = EncodeMp4(frames, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *mp4);
  // A different frame rate is recorded.
  options.fps = 24;
  absl::StatusOr<std::string> fast = EncodeMp4(frames, options);
  ASSERT_TRUE(fast.ok());
  absl::StatusOr<DecodedVideo> fast_back = DecodeVideo(*fast);
  ASSERT_TRUE(fast_back.ok());
  EXPECT_DOUBLE_EQ(fast_back->fps, 24.0);
}

// Other contents: noise from a fixed seed, so that no two frames are alike.
std::vector<Image8> Noise(int frames, int width, int height, uint32_t seed) {
  std::vector<Image8> out;
  for (int f = 0; f < frames; ++f) {
    Image8 image{height, width, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    for (uint8_t& value : image.pixels) {
      seed = seed * 1664525u + 1013904223u;
      value = static_cast<uint8_t>(seed >> 24);
    }
    out.push_back(std::move(image));
  }
  return out;
}

// Sizes whose width in macroblocks (13, 2) is not a multiple of 8: x264's AVX-512 macroblock-tree
// code read past such rows (video_io.cc, X264Params).
constexpr std::tuple<int, int, int> kOddRowSizes[] = {{208, 120, 9}, {32, 32, 5}};

// Encodes made at the same time on several threads (as a decoder stage serving several requests
// makes them) give the bytes of an encode made alone.
TEST(VideoIo, ConcurrentEncodesGiveTheSameBytes) {
  if (!HaveVideoCodecs()) GTEST_SKIP() << "built without FFmpeg";
  for (const auto& [width, height, count] : kOddRowSizes) {
    const std::vector<Image8> frames = MovingSquare(count, width, height);
    absl::StatusOr<std::string> first = EncodeMp4(frames);
    ASSERT_TRUE(first.ok()) << first.status();
    std::vector<std::string> got(24);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (size_t i = t; i < got.size(); i += 4) {
          absl::StatusOr<std::string> mp4 = EncodeMp4(frames);
          if (mp4.ok()) got[i] = *std::move(mp4);
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    int differ = 0;
    for (const std::string& mp4 : got) differ += mp4 != *first ? 1 : 0;
    EXPECT_EQ(differ, 0) << width << "x" << height << ": " << differ << " of " << got.size()
                         << " encodes differ from the first (" << first->size() << " bytes)";
  }
}

// What the process did before (encodes and decodes of other sizes and contents) does not change
// the bytes of an encode.
TEST(VideoIo, ProcessHistoryDoesNotChangeTheBytes) {
  if (!HaveVideoCodecs()) GTEST_SKIP() << "built without FFmpeg";
  for (const auto& [width, height, count] : kOddRowSizes) {
    const std::vector<Image8> frames = MovingSquare(count, width, height);
    absl::StatusOr<std::string> before = EncodeMp4(frames);
    ASSERT_TRUE(before.ok()) << before.status();
    uint32_t seed = 1;
    for (const auto& [w, h, n] : {std::tuple{64, 48, 7}, std::tuple{144, 80, 5},
                                  std::tuple{16, 16, 3}, std::tuple{256, 32, 4}}) {
      absl::StatusOr<std::string> other = EncodeMp4(Noise(n, w, h, seed++));
      ASSERT_TRUE(other.ok()) << other.status();
      ASSERT_TRUE(DecodeVideo(*other).ok());
      ASSERT_TRUE(EncodeMp4(MovingSquare(n, w, h)).ok());
    }
    ASSERT_TRUE(DecodeVideo(*before).ok());
    absl::StatusOr<std::string> after = EncodeMp4(frames);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(*after, *before) << width << "x" << height << ": " << after->size() << " bytes after "
                               << "other encodes and decodes, " << before->size() << " before";
  }
}

#if defined(__GLIBC__)
// Sets glibc's M_PERTURB for a scope: memory malloc returns (outside its per-thread cache) is
// filled with ~byte, memory freed with byte, so that a read of memory nobody wrote sees that byte.
class HeapPerturbation {
 public:
  explicit HeapPerturbation(int byte) { mallopt(M_PERTURB, byte); }
  // Back to what the process started with (glibc reads MALLOC_PERTURB_ at start; 0 when unset).
  ~HeapPerturbation() {
    const char* at_start = std::getenv("MALLOC_PERTURB_");
    mallopt(M_PERTURB, at_start != nullptr ? std::atoi(at_start) : 0);
  }
};
#endif

// The bytes do not depend on what the heap held: encodes with the heap's new and freed memory
// filled with different bytes give the same MP4. (This is how x264's AVX-512 read past a row's end
// showed: video_io.cc, X264Params.)
TEST(VideoIo, BytesDoNotDependOnTheHeapsContents) {
  if (!HaveVideoCodecs()) GTEST_SKIP() << "built without FFmpeg";
#if !defined(__GLIBC__)
  GTEST_SKIP() << "needs glibc's M_PERTURB";
#else
  for (const auto& [width, height, count] : kOddRowSizes) {
    const std::vector<Image8> frames = MovingSquare(count, width, height);
    absl::StatusOr<std::string> plain = EncodeMp4(frames);
    ASSERT_TRUE(plain.ok()) << plain.status();
    for (const int byte : {0x01, 0x5a, 0xa5, 0xff}) {
      absl::StatusOr<std::string> mp4;
      {
        HeapPerturbation perturbation(byte);
        mp4 = EncodeMp4(frames);
      }
      ASSERT_TRUE(mp4.ok()) << mp4.status();
      EXPECT_EQ(*mp4, *plain) << width << "x" << height << ", heap filled with " << byte << ": "
                              << mp4->size() << " bytes, " << plain->size() << " without";
    }
  }
#endif
}

TEST(VideoIo, BadFramesAndBytes) {
  if (!HaveVideoCodecs()) {
    EXPECT_EQ(EncodeMp4(MovingSquare(1, 8, 8)).status().code(), absl::StatusCode::kUnimplemented);
    return;
  }
  EXPECT_EQ(EncodeMp4({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeMp4(MovingSquare(2, 63, 48)).status().code(),
            absl::StatusCode::kInvalidArgument);  // odd width
  std::vector<Image8> mixed = MovingSquare(2, 64, 48);
  mixed.push_back(MovingSquare(1, 32, 48)[0]);
  EXPECT_EQ(EncodeMp4(mixed).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Image8> gray = MovingSquare(1, 64, 48);
  gray[0].channels = 1;
  EXPECT_EQ(EncodeMp4(gray).status().code(), absl::StatusCode::kInvalidArgument);
  Mp4Options slow;
  slow.fps = 0;
  EXPECT_EQ(EncodeMp4(MovingSquare(1, 64, 48), slow).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeVideo("").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeVideo("definitely not a video file").status().code(),
            absl::StatusCode::kDataLoss);
  absl::StatusOr<std::string> mp4 = EncodeMp4(MovingSquare(3, 64, 48));
  ASSERT_TRUE(mp4.ok());
  // A truncated file gives a status, not a crash.
  const absl::Status truncated = DecodeVideo(mp4->substr(0, mp4->size() / 3)).status();
  EXPECT_FALSE(truncated.ok());
}

}  // namespace
}  // namespace dgrid::decoder
