#include "services/decoder/webp_io.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status.h"

#ifdef DGRID_HAVE_WEBP
#include <webp/decode.h>
#include <webp/demux.h>
#include <webp/encode.h>
#include <webp/mux.h>
#endif

namespace dgrid::decoder {

namespace {

absl::Status CheckFrames(const std::vector<Image8>& frames, const WebpOptions& options) {
  if (frames.empty()) return InvalidArgument("WebP: no frames");
  const Image8& first = frames[0];
  if (first.width < 1 || first.height < 1 || first.width > 16383 || first.height > 16383) {
    return InvalidArgument("WebP: frames must be 1 to 16383 pixels a side, got ", first.width, "x",
                           first.height);
  }
  for (const Image8& f : frames) {
    if (f.channels != 3 || f.width != first.width || f.height != first.height ||
        f.pixels.size() != static_cast<size_t>(f.width * f.height * 3)) {
      return InvalidArgument("WebP: every frame must be RGB ", first.width, "x", first.height);
    }
  }
  if (options.fps < 1 || options.fps > 240) {
    return InvalidArgument("WebP: fps must be 1 to 240, got ", options.fps);
  }
  if (!(options.quality >= 0.0f && options.quality <= 100.0f)) {
    return InvalidArgument("WebP: quality must be 0 to 100, got ", options.quality);
  }
  return absl::OkStatus();
}

}  // namespace

#ifdef DGRID_HAVE_WEBP

bool HaveWebp() { return true; }

namespace {

struct PictureDeleter {
  void operator()(WebPPicture* p) const {
    WebPPictureFree(p);
    delete p;
  }
};
struct AnimEncoderDeleter {
  void operator()(WebPAnimEncoder* e) const { WebPAnimEncoderDelete(e); }
};
struct AnimDecoderDeleter {
  void operator()(WebPAnimDecoder* d) const { WebPAnimDecoderDelete(d); }
};

absl::StatusOr<std::unique_ptr<WebPPicture, PictureDeleter>> ToPicture(const Image8& frame) {
  std::unique_ptr<WebPPicture, PictureDeleter> picture(new WebPPicture());
  if (!WebPPictureInit(picture.get())) return Internal("WebP: WebPPictureInit failed");
  picture->use_argb = 1;  // exact RGB for lossless
  picture->width = static_cast<int>(frame.width);
  picture->height = static_cast<int>(frame.height);
  if (!WebPPictureImportRGB(picture.get(), frame.pixels.data(),
                            static_cast<int>(frame.width * 3))) {
    return Internal("WebP: importing a ", frame.width, "x", frame.height, " frame failed");
  }
  return picture;
}

}  // namespace

absl::StatusOr<std::string> EncodeWebp(const std::vector<Image8>& frames,
                                       const WebpOptions& options) {
  RETURN_IF_ERROR(CheckFrames(frames, options));
  WebPConfig config;
  if (!WebPConfigInit(&config)) return Internal("WebP: WebPConfigInit failed");
  config.lossless = options.lossless ? 1 : 0;
  config.quality = options.quality;
  config.method = 4;
  config.thread_level = 0;  // one thread: the same bytes on every machine
  config.exact = 1;         // keep RGB under transparent pixels (there are none; no surprises)
  if (!WebPValidateConfig(&config)) return Internal("WebP: invalid encoder config");
  const int width = static_cast<int>(frames[0].width);
  const int height = static_cast<int>(frames[0].height);

  WebPAnimEncoderOptions anim;
  if (!WebPAnimEncoderOptionsInit(&anim))
    return Internal("WebP: WebPAnimEncoderOptionsInit failed");
  anim.anim_params.loop_count = 0;  // forever
  anim.anim_params.bgcolor = 0xff000000;
  anim.allow_mixed = 0;  // every frame lossless, or every frame lossy
  std::unique_ptr<WebPAnimEncoder, AnimEncoderDeleter> encoder(
      WebPAnimEncoderNew(width, height, &anim));
  if (encoder == nullptr) return Internal("WebP: WebPAnimEncoderNew failed");
  const int frame_ms = std::max(1, static_cast<int>(std::lround(1000.0 / options.fps)));
  int timestamp = 0;
  for (const Image8& frame : frames) {
    ASSIGN_OR_RETURN(auto picture, ToPicture(frame));
    if (!WebPAnimEncoderAdd(encoder.get(), picture.get(), timestamp, &config)) {
      return Internal("WebP: encoding a frame failed: ", WebPAnimEncoderGetError(encoder.get()));
    }
    timestamp += frame_ms;
  }
  if (!WebPAnimEncoderAdd(encoder.get(), nullptr, timestamp, nullptr)) {
    return Internal("WebP: finishing the animation failed: ",
                    WebPAnimEncoderGetError(encoder.get()));
  }
  WebPData data;
  WebPDataInit(&data);
  if (!WebPAnimEncoderAssemble(encoder.get(), &data)) {
    return Internal("WebP: assembling the file failed: ", WebPAnimEncoderGetError(encoder.get()));
  }
  std::string out(reinterpret_cast<const char*>(data.bytes), data.size);
  WebPDataClear(&data);
  return out;
}

absl::StatusOr<DecodedWebp> DecodeWebp(absl::string_view bytes) {
  WebPData data;
  data.bytes = reinterpret_cast<const uint8_t*>(bytes.data());
  data.size = bytes.size();
  WebPAnimDecoderOptions options;
  if (!WebPAnimDecoderOptionsInit(&options)) return Internal("WebP: decoder options init failed");
  options.color_mode = MODE_RGBA;
  options.use_threads = 0;
  std::unique_ptr<WebPAnimDecoder, AnimDecoderDeleter> decoder(WebPAnimDecoderNew(&data, &options));
  if (decoder == nullptr) return DataLoss("WebP: the bytes are not a readable WebP");
  WebPAnimInfo info;
  if (!WebPAnimDecoderGetInfo(decoder.get(), &info)) return DataLoss("WebP: no image info");
  DecodedWebp out;
  int previous = 0;
  while (WebPAnimDecoderHasMoreFrames(decoder.get())) {
    uint8_t* rgba = nullptr;
    int timestamp = 0;
    if (!WebPAnimDecoderGetNext(decoder.get(), &rgba, &timestamp)) {
      return DataLoss("WebP: frame ", out.frames.size(), " cannot be decoded");
    }
    Image8 frame;
    frame.width = info.canvas_width;
    frame.height = info.canvas_height;
    frame.channels = 3;
    const size_t n = static_cast<size_t>(frame.width * frame.height);
    frame.pixels.resize(n * 3);
    for (size_t i = 0; i < n; ++i) {
      for (int c = 0; c < 3; ++c) frame.pixels[i * 3 + c] = rgba[i * 4 + c];
    }
    out.frames.push_back(std::move(frame));
    out.durations_ms.push_back(info.frame_count > 1 ? timestamp - previous : 0);
    previous = timestamp;
  }
  if (out.frames.empty()) return DataLoss("WebP: no frames");
  return out;
}

#else  // !DGRID_HAVE_WEBP

bool HaveWebp() { return false; }

absl::StatusOr<std::string> EncodeWebp(const std::vector<Image8>& frames,
                                       const WebpOptions& options) {
  RETURN_IF_ERROR(CheckFrames(frames, options));
  return absl::UnimplementedError(
      "WebP output needs libwebp; this build has none (install libwebp-dev and rebuild)");
}

absl::StatusOr<DecodedWebp> DecodeWebp(absl::string_view) {
  return absl::UnimplementedError(
      "WebP needs libwebp; this build has none (install libwebp-dev and rebuild)");
}

#endif

}  // namespace dgrid::decoder
