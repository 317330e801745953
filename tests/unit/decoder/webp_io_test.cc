// WebP output: lossless stills and animations come back pixel for pixel with their frame timing,
// lossy ones close (on smooth content; on these synthetic gradients lossless is even smaller), the
// bytes are reproducible, and bad frames or bytes give statuses.
#include "services/decoder/webp_io.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/decoder/image_compare.h"

namespace dgrid::decoder {
namespace {

// A gradient with a square that moves a pixel a frame; odd sizes on purpose (WebP needs no 4:2:0).
// `smooth`: no high-frequency texture (lossy 4:2:0 coding is for photographs, not noise).
std::vector<Image8> Frames(int count, int width, int height, bool smooth = false) {
  std::vector<Image8> out;
  for (int f = 0; f < count; ++f) {
    Image8 image{height, width, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
        const bool square = x >= 4 + f && x < 12 + f && y >= 5 && y < 13;
        p[0] = square ? 230 : static_cast<uint8_t>(smooth ? 40 + 2 * x : 7 * x + f);
        p[1] = square ? 40 : static_cast<uint8_t>(smooth ? 60 + 2 * y : 11 * y);
        p[2] = smooth ? 120 : static_cast<uint8_t>((x * y + 3 * f) & 0xff);
      }
    }
    out.push_back(std::move(image));
  }
  return out;
}

TEST(WebpIo, LosslessAnimationRoundTripsExactly) {
  if (!HaveWebp()) GTEST_SKIP() << "built without libwebp";
  const std::vector<Image8> frames = Frames(9, 33, 21);
  WebpOptions options;
  options.fps = 16;
  absl::StatusOr<std::string> webp = EncodeWebp(frames, options);
  ASSERT_TRUE(webp.ok()) << webp.status();
  EXPECT_EQ(webp->substr(0, 4), "RIFF");
  EXPECT_EQ(webp->substr(8, 4), "WEBP");
  EXPECT_NE(webp->find("ANIM"), std::string::npos);  // an animation, not a still
  absl::StatusOr<DecodedWebp> back = DecodeWebp(*webp);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_EQ(back->frames[i].width, 33);
    ASSERT_EQ(back->frames[i].height, 21);
    EXPECT_EQ(back->frames[i].pixels, frames[i].pixels) << "frame " << i;
    EXPECT_EQ(back->durations_ms[i], 63) << "frame " << i;  // round(1000 / 16)
  }
  // Reproducible: the same frames, the same bytes.
  absl::StatusOr<std::string> again = EncodeWebp(frames, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *webp);
}

TEST(WebpIo, OneFrameIsAStillPicture) {
  if (!HaveWebp()) GTEST_SKIP() << "built without libwebp";
  const std::vector<Image8> frames = Frames(1, 40, 24);
  absl::StatusOr<std::string> webp = EncodeWebp(frames);
  ASSERT_TRUE(webp.ok()) << webp.status();
  absl::StatusOr<DecodedWebp> back = DecodeWebp(*webp);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), 1u);
  EXPECT_EQ(back->frames[0].pixels, frames[0].pixels);
  EXPECT_EQ(back->durations_ms[0], 0);
}

TEST(WebpIo, LossyIsClose) {
  if (!HaveWebp()) GTEST_SKIP() << "built without libwebp";
  const std::vector<Image8> frames = Frames(5, 64, 48, /*smooth=*/true);
  absl::StatusOr<std::string> exact = EncodeWebp(frames);
  ASSERT_TRUE(exact.ok()) << exact.status();
  WebpOptions lossy;
  lossy.lossless = false;
  lossy.quality = 90;
  absl::StatusOr<std::string> small = EncodeWebp(frames, lossy);
  ASSERT_TRUE(small.ok()) << small.status();
  absl::StatusOr<DecodedWebp> back = DecodeWebp(*small);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->frames.size(), frames.size());
  double worst = 99;
  for (size_t i = 0; i < frames.size(); ++i)
    worst = std::min(worst, Psnr(frames[i], back->frames[i]));
  EXPECT_GT(worst, 30.0);
  std::printf("lossy WebP q90: %zu bytes (lossless %zu), worst PSNR %.1f dB\n", small->size(),
              exact->size(), worst);
}

TEST(WebpIo, BadFramesAndBytesGiveStatuses) {
  WebpOptions options;
  EXPECT_EQ(EncodeWebp({}, options).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Image8> mixed = Frames(2, 16, 16);
  mixed[1] = Frames(1, 18, 16)[0];
  EXPECT_EQ(EncodeWebp(mixed, options).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Image8> gray = Frames(1, 16, 16);
  gray[0].channels = 1;
  EXPECT_EQ(EncodeWebp(gray, options).status().code(), absl::StatusCode::kInvalidArgument);
  WebpOptions bad_fps;
  bad_fps.fps = 0;
  EXPECT_EQ(EncodeWebp(Frames(2, 16, 16), bad_fps).status().code(),
            absl::StatusCode::kInvalidArgument);
  WebpOptions bad_quality;
  bad_quality.quality = 101;
  EXPECT_EQ(EncodeWebp(Frames(2, 16, 16), bad_quality).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!HaveWebp()) {
    EXPECT_EQ(EncodeWebp(Frames(1, 16, 16), options).status().code(),
              absl::StatusCode::kUnimplemented);
    return;
  }
  EXPECT_EQ(DecodeWebp("not a webp at all").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeWebp("").status().code(), absl::StatusCode::kDataLoss);
  absl::StatusOr<std::string> webp = EncodeWebp(Frames(3, 16, 16), options);
  ASSERT_TRUE(webp.ok());
  EXPECT_EQ(DecodeWebp(webp->substr(0, webp->size() / 2)).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace dgrid::decoder
