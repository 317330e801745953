#include "services/decoder/video_io.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

#if DGRID_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace dgrid::decoder {

#if DGRID_HAVE_FFMPEG
namespace {

std::string AvError(int code) {
  char buffer[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, buffer, sizeof(buffer));
  return buffer;
}

// An in-memory file for libavformat's custom I/O: write (growing), read, seek.
struct MemoryFile {
  std::string data;
  int64_t pos = 0;
  absl::string_view source;  // reading: the bytes given

  static int Write(void* opaque, uint8_t* buf, int size) {
    auto* f = static_cast<MemoryFile*>(opaque);
    if (static_cast<size_t>(f->pos) + size > f->data.size()) f->data.resize(f->pos + size);
    std::memcpy(f->data.data() + f->pos, buf, size);
    f->pos += size;
    return size;
  }
  static int Read(void* opaque, uint8_t* buf, int size) {
    auto* f = static_cast<MemoryFile*>(opaque);
    const int64_t left = static_cast<int64_t>(f->source.size()) - f->pos;
    if (left <= 0) return AVERROR_EOF;
    const int n = static_cast<int>(std::min<int64_t>(left, size));
    std::memcpy(buf, f->source.data() + f->pos, n);
    f->pos += n;
    return n;
  }
  static int64_t Seek(void* opaque, int64_t offset, int whence) {
    auto* f = static_cast<MemoryFile*>(opaque);
    const int64_t size =
        f->source.empty() ? static_cast<int64_t>(f->data.size()) : f->source.size();
    switch (whence & ~AVSEEK_FORCE) {
      case AVSEEK_SIZE:
        return size;
      case SEEK_SET:
        f->pos = offset;
        break;
      case SEEK_CUR:
        f->pos += offset;
        break;
      case SEEK_END:
        f->pos = size + offset;
        break;
      default:
        return AVERROR(EINVAL);
    }
    if (f->pos < 0) return AVERROR(EINVAL);
    return f->pos;
  }
};

// Every FFmpeg object of one call, freed in any case.
struct Resources {
  AVFormatContext* format = nullptr;
  bool output = false;
  AVIOContext* io = nullptr;
  AVCodecContext* codec = nullptr;
  SwsContext* sws = nullptr;
  AVFrame* frame = nullptr;
  AVFrame* rgb = nullptr;
  AVPacket* packet = nullptr;
  ~Resources() {
    av_packet_free(&packet);
    av_frame_free(&rgb);
    av_frame_free(&frame);
    sws_freeContext(sws);
    avcodec_free_context(&codec);
    if (format != nullptr) {
      if (output) {
        avformat_free_context(format);
      } else {
        avformat_close_input(&format);
      }
    }
    if (io != nullptr) {
      av_freep(&io->buffer);
      avio_context_free(&io);
    }
  }
};

constexpr int kIoBuffer = 1 << 16;

// FFmpeg logs to stderr on its own; keep it to errors (statuses carry the details).
void QuietLogs() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_ERROR); });
}

// x264's parameters ("key=value:..."), the same for every encode.
//
// Why x264's AVX-512 code is switched off: with it the bytes of an encode depended on what the
// heap held before (earlier encodes and decodes, other threads' allocations), so the same frames
// gave MP4s of different sizes under load, on several threads at once and later in a process.
// Cause, from x264's source (r3095, Debian's libx264-164; common/x86/mc-a2.asm) and the
// experiments below: its AVX-512 mbtree_propagate_list, part of the macroblock-tree rate control
// (on by default), handles a row's macroblocks 8 at a time and does not mask the lanes past the
// row's end (the AVX2 and older versions leave the tail to a C loop bounded by the row), so for a
// frame whose width in macroblocks, ceil(width / 16), is not a multiple of 8 it takes propagate
// amounts, costs and motion vectors from past the row's end, past the last row memory that x264
// never wrote, and adds their weights to the reference frame's costs. Evidence, with these
// settings on an AVX-512 CPU: glibc's MALLOC_PERTURB_ (new and freed memory filled with a byte)
// changes the bytes of a single encode in a fresh process; widths of 8 or 16 macroblocks (120,
// 128, 256 pixels) give the same bytes for any fill, widths of 2, 4, 7, 9, 13, 15 and 52 (Wan's
// 832) do not; without mbtree (rc-lookahead=0), or with x264's SIMD capped at AVX2, the bytes no
// longer depend on the fill, on encodes running at once or on the process's history; valgrind,
// which has no AVX-512 (x264 then runs its AVX2 code), finds no uninitialised read in x264.
// Hence SIMD capped at AVX2 on AVX-512 CPUs (x264's "AVX2" set: SSE*, AVX, AVX2, FMA3, BMI1, BMI2
// and LZCNT, all of which AVX-512 CPUs have; x264 then runs exactly that set, so a capped
// AVX-512 host and an AVX2 host may still differ in flags such as its cache-line ones; where a
// hypervisor hides one of them, the AVX set below it), keeping mbtree (without it a 64 x 48 test
// clip took a quarter more bytes). video_io_test checks encodes against the heap's contents
// (M_PERTURB), encodes at once and the process's history.
//
// Threads: x264's frame threads (its default), deterministic for a given count as long as its
// "non-deterministic" option is off. (Slice threads had replaced them on the belief that frame
// threads caused the differences; it was this read. Frame threads also take 8-10% fewer
// bytes.)
const std::string& X264Params() {
  static const std::string params = [] {
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f")) {
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")) {
        return std::string("asm=AVX2");
      }
      return std::string("asm=AVX");  // never the AVX-512 code, whatever is hidden
    }
#endif
    return std::string();
  }();
  return params;
}

}  // namespace

bool HaveVideoCodecs() { return true; }

absl::StatusOr<std::string> EncodeMp4(const std::vector<Image8>& frames, const Mp4Options& o) {
  if (frames.empty()) return InvalidArgument("MP4: no frames");
  const int64_t width = frames[0].width, height = frames[0].height;
  for (size_t i = 0; i < frames.size(); ++i) {
    const Image8& f = frames[i];
    if (f.channels != 3 || f.width != width || f.height != height ||
        f.pixels.size() != static_cast<size_t>(width * height * 3)) {
      return InvalidArgument("MP4: frame ", i, " is not a ", width, "x", height, " RGB image");
    }
  }
  if (width < 2 || height < 2 || width % 2 != 0 || height % 2 != 0) {
    return InvalidArgument("MP4: H.264 4:2:0 needs an even width and height, got ", width, "x",
                           height);
  }
  if (o.fps < 1 || o.fps > 240) return InvalidArgument("fps must be in 1..240, got ", o.fps);
  if (o.crf < 0 || o.crf > 51) return InvalidArgument("MP4: crf must be in 0..51, got ", o.crf);
  if (o.threads < 1) return InvalidArgument("MP4: threads must be >= 1");

  QuietLogs();
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (codec == nullptr) codec = avcodec_find_encoder(AV_CODEC_ID_H264);
  if (codec == nullptr) {
    return absl::UnimplementedError("MP4: this FFmpeg build has no H.264 encoder");
  }
  Resources r;
  r.output = true;
  MemoryFile file;
  int rc = avformat_alloc_output_context2(&r.format, nullptr, "mp4", nullptr);
  if (rc < 0) return Internal("MP4 muxer: ", AvError(rc));
  auto* buffer = static_cast<unsigned char*>(av_malloc(kIoBuffer));
  r.io = avio_alloc_context(buffer, kIoBuffer, 1, &file, nullptr, &MemoryFile::Write,
                            &MemoryFile::Seek);
  if (r.io == nullptr) {
    av_free(buffer);
    return Internal("MP4: cannot allocate the output");
  }
  r.format->pb = r.io;
  r.format->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_BITEXACT;

  r.codec = avcodec_alloc_context3(codec);
  r.codec->width = static_cast<int>(width);
  r.codec->height = static_cast<int>(height);
  r.codec->time_base = AVRational{1, o.fps};
  r.codec->framerate = AVRational{o.fps, 1};
  r.codec->pix_fmt = AV_PIX_FMT_YUV420P;
  r.codec->color_primaries = AVCOL_PRI_BT709;
  r.codec->color_trc = AVCOL_TRC_BT709;
  r.codec->colorspace = AVCOL_SPC_BT709;
  r.codec->color_range = AVCOL_RANGE_MPEG;
  r.codec->thread_count = o.threads;
  r.codec->flags |= AV_CODEC_FLAG_BITEXACT;
  if (r.format->oformat->flags & AVFMT_GLOBALHEADER) r.codec->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* options = nullptr;
  av_dict_set(&options, "crf", std::to_string(o.crf).c_str(), 0);
  av_dict_set(&options, "preset", o.preset.c_str(), 0);
  // No AVX-512: its code reads memory it never wrote (X264Params).
  if (!X264Params().empty()) av_dict_set(&options, "x264-params", X264Params().c_str(), 0);
  rc = avcodec_open2(r.codec, codec, &options);
  av_dict_free(&options);
  if (rc < 0) return Internal("MP4: cannot open the H.264 encoder: ", AvError(rc));
  AVStream* stream = avformat_new_stream(r.format, nullptr);
  if (stream == nullptr) return Internal("MP4: cannot add a stream");
  rc = avcodec_parameters_from_context(stream->codecpar, r.codec);
  if (rc < 0) return Internal("MP4: ", AvError(rc));
  stream->time_base = r.codec->time_base;
  rc = avformat_write_header(r.format, nullptr);
  if (rc < 0) return Internal("MP4 header: ", AvError(rc));

  r.sws = sws_getContext(static_cast<int>(width), static_cast<int>(height), AV_PIX_FMT_RGB24,
                         static_cast<int>(width), static_cast<int>(height), AV_PIX_FMT_YUV420P,
                         SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr,
                         nullptr);
  if (r.sws == nullptr) return Internal("MP4: cannot set up the colour conversion");
  // RGB (full range) -> BT.709 limited-range YUV.
  sws_setColorspaceDetails(r.sws, sws_getCoefficients(SWS_CS_ITU709), 1,
                           sws_getCoefficients(SWS_CS_ITU709), 0, 0, 1 << 16, 1 << 16);
  r.frame = av_frame_alloc();
  r.packet = av_packet_alloc();
  r.frame->format = AV_PIX_FMT_YUV420P;
  r.frame->width = static_cast<int>(width);
  r.frame->height = static_cast<int>(height);
  rc = av_frame_get_buffer(r.frame, 0);
  if (rc < 0) return Internal("MP4: ", AvError(rc));

  auto drain = [&]() -> absl::Status {
    while (true) {
      const int got = avcodec_receive_packet(r.codec, r.packet);
      if (got == AVERROR(EAGAIN) || got == AVERROR_EOF) return absl::OkStatus();
      if (got < 0) return Internal("H.264 encoding: ", AvError(got));
      // One frame long: without a duration the muxer's edit list ends at the last frame's start
      // and readers drop that frame.
      if (r.packet->duration == 0) r.packet->duration = 1;
      av_packet_rescale_ts(r.packet, r.codec->time_base, stream->time_base);
      r.packet->stream_index = stream->index;
      const int written = av_interleaved_write_frame(r.format, r.packet);
      if (written < 0) return Internal("MP4 write: ", AvError(written));
    }
  };
  // swscale's SIMD RGB readers load 16 bytes at a time and so read up to a few bytes past the
  // last pixel (valgrind: 4 past a 32 x 32 frame); they do not use them, but a frame ending at a
  // page boundary could fault. Each frame is converted from a copy with zeroed padding.
  std::vector<uint8_t> padded(frames[0].pixels.size() + AV_INPUT_BUFFER_PADDING_SIZE, 0);
  for (size_t i = 0; i < frames.size(); ++i) {
    rc = av_frame_make_writable(r.frame);
    if (rc < 0) return Internal("MP4: ", AvError(rc));
    std::memcpy(padded.data(), frames[i].pixels.data(), frames[i].pixels.size());
    // sws_scale reads four plane pointers and strides: the unused ones must be null / 0.
    const uint8_t* src[4] = {padded.data(), nullptr, nullptr, nullptr};
    const int src_stride[4] = {static_cast<int>(width * 3), 0, 0, 0};
    sws_scale(r.sws, src, src_stride, 0, static_cast<int>(height), r.frame->data,
              r.frame->linesize);
    r.frame->pts = static_cast<int64_t>(i);
    rc = avcodec_send_frame(r.codec, r.frame);
    if (rc < 0) return Internal("H.264 encoding: ", AvError(rc));
    RETURN_IF_ERROR(drain());
  }
  rc = avcodec_send_frame(r.codec, nullptr);
  if (rc < 0) return Internal("H.264 encoding: ", AvError(rc));
  RETURN_IF_ERROR(drain());
  rc = av_write_trailer(r.format);
  if (rc < 0) return Internal("MP4 trailer: ", AvError(rc));
  avio_flush(r.io);
  return std::move(file.data);
}

absl::StatusOr<DecodedVideo> DecodeVideo(absl::string_view bytes) {
  if (bytes.empty()) return absl::DataLossError("video: no bytes");
  QuietLogs();
  Resources r;
  MemoryFile file;
  file.source = bytes;
  r.format = avformat_alloc_context();
  auto* buffer = static_cast<unsigned char*>(av_malloc(kIoBuffer));
  r.io = avio_alloc_context(buffer, kIoBuffer, 0, &file, &MemoryFile::Read, nullptr,
                            &MemoryFile::Seek);
  if (r.format == nullptr || r.io == nullptr) {
    if (r.io == nullptr) av_free(buffer);
    return Internal("video: cannot allocate the input");
  }
  r.format->pb = r.io;
  r.format->flags |= AVFMT_FLAG_CUSTOM_IO;
  int rc = avformat_open_input(&r.format, nullptr, nullptr, nullptr);
  if (rc < 0) {
    r.format = nullptr;  // freed by avformat_open_input on failure
    return absl::DataLossError(absl::StrCat("video: not a readable file (", AvError(rc), ")"));
  }
  rc = avformat_find_stream_info(r.format, nullptr);
  if (rc < 0) return absl::DataLossError(absl::StrCat("video: ", AvError(rc)));
  const AVCodec* codec = nullptr;
  const int index = av_find_best_stream(r.format, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (index < 0 || codec == nullptr) return absl::DataLossError("video: no decodable video stream");
  AVStream* stream = r.format->streams[index];
  r.codec = avcodec_alloc_context3(codec);
  avcodec_parameters_to_context(r.codec, stream->codecpar);
  r.codec->thread_count = 1;
  rc = avcodec_open2(r.codec, codec, nullptr);
  if (rc < 0) return absl::DataLossError(absl::StrCat("video: ", AvError(rc)));
  DecodedVideo out;
  const AVRational rate =
      stream->avg_frame_rate.num > 0 ? stream->avg_frame_rate : stream->r_frame_rate;
  out.fps = rate.den > 0 ? av_q2d(rate) : 0;
  r.frame = av_frame_alloc();
  r.packet = av_packet_alloc();
  auto receive = [&]() -> absl::Status {
    while (true) {
      const int got = avcodec_receive_frame(r.codec, r.frame);
      if (got == AVERROR(EAGAIN) || got == AVERROR_EOF) return absl::OkStatus();
      if (got < 0) return absl::DataLossError(absl::StrCat("video decoding: ", AvError(got)));
      const int w = r.frame->width, h = r.frame->height;
      r.sws = sws_getCachedContext(
          r.sws, w, h, static_cast<AVPixelFormat>(r.frame->format), w, h, AV_PIX_FMT_RGB24,
          SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
      if (r.sws == nullptr) return Internal("video: cannot set up the colour conversion");
      const bool full = r.frame->color_range == AVCOL_RANGE_JPEG;
      const int space = r.frame->colorspace == AVCOL_SPC_BT709 ? SWS_CS_ITU709 : SWS_CS_DEFAULT;
      sws_setColorspaceDetails(r.sws, sws_getCoefficients(space), full ? 1 : 0,
                               sws_getCoefficients(SWS_CS_ITU709), 1, 0, 1 << 16, 1 << 16);
      Image8 image;
      image.width = w;
      image.height = h;
      image.channels = 3;
      image.pixels.resize(static_cast<size_t>(w) * h * 3);
      uint8_t* dst[4] = {image.pixels.data(), nullptr, nullptr, nullptr};
      const int dst_stride[4] = {w * 3, 0, 0, 0};
      sws_scale(r.sws, r.frame->data, r.frame->linesize, 0, h, dst, dst_stride);
      out.frames.push_back(std::move(image));
      av_frame_unref(r.frame);
    }
  };
  while ((rc = av_read_frame(r.format, r.packet)) >= 0) {
    if (r.packet->stream_index == index) {
      const int sent = avcodec_send_packet(r.codec, r.packet);
      av_packet_unref(r.packet);
      if (sent < 0) return absl::DataLossError(absl::StrCat("video decoding: ", AvError(sent)));
      RETURN_IF_ERROR(receive());
    } else {
      av_packet_unref(r.packet);
    }
  }
  if (rc != AVERROR_EOF) return absl::DataLossError(absl::StrCat("video: ", AvError(rc)));
  avcodec_send_packet(r.codec, nullptr);
  RETURN_IF_ERROR(receive());
  if (out.frames.empty()) return absl::DataLossError("video: no frames");
  return out;
}

#else  // !DGRID_HAVE_FFMPEG

namespace {
absl::Status NoFfmpeg() {
  return absl::UnimplementedError(
      "video output needs FFmpeg: install libavcodec-dev, libavformat-dev and libswscale-dev "
      "and build dgrid again");
}
}  // namespace

bool HaveVideoCodecs() { return false; }
absl::StatusOr<std::string> EncodeMp4(const std::vector<Image8>&, const Mp4Options&) {
  return NoFfmpeg();
}
absl::StatusOr<DecodedVideo> DecodeVideo(absl::string_view) { return NoFfmpeg(); }

#endif  // DGRID_HAVE_FFMPEG

}  // namespace dgrid::decoder
