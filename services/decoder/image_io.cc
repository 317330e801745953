#include "services/decoder/image_io.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <png.h>

#include "common/status.h"
#include "common/torch_status.h"

namespace dgrid::decoder {

absl::StatusOr<std::vector<Image8>> PostprocessImages(const at::Tensor& vae_output) {
  if (!vae_output.defined() || vae_output.dim() != 4) {
    return InvalidArgument("postprocess: expected a [batch, channels, height, width] tensor");
  }
  const int64_t channels = vae_output.size(1);
  if (channels != 1 && channels != 3 && channels != 4) {
    return InvalidArgument("postprocess: expected 1, 3 or 4 channels, got ", channels);
  }
  if (!vae_output.is_floating_point()) {
    return InvalidArgument("postprocess: expected a floating-point tensor");
  }
  return TorchCall("image postprocess", [&] {
    c10::InferenceMode inference;
    // VaeImageProcessor.denormalize, in the tensor's own dtype and device.
    at::Tensor x = at::clamp(at::add(at::mul(vae_output, 0.5), 0.5), 0, 1);
    // pt_to_numpy: .cpu().permute(0, 2, 3, 1).float(); numpy_to_pil: float32 * 255, round half to
    // even (at::round is nearbyint, like numpy's), cast.
    x = x.cpu().permute({0, 2, 3, 1}).to(at::kFloat);
    const at::Tensor bytes = at::round(at::mul(x, 255)).to(at::kByte).contiguous();
    std::vector<Image8> images(bytes.size(0));
    const uint8_t* src = bytes.data_ptr<uint8_t>();
    const int64_t per_image = bytes.size(1) * bytes.size(2) * bytes.size(3);
    for (int64_t b = 0; b < bytes.size(0); ++b) {
      Image8& image = images[b];
      image.height = bytes.size(1);
      image.width = bytes.size(2);
      image.channels = bytes.size(3);
      image.pixels.assign(src + b * per_image, src + (b + 1) * per_image);
    }
    return images;
  });
}

namespace {

// libpng reports errors by calling the error function, which must not return: it longjmps back to
// the setjmp of the function running libpng. Those functions (WritePngRows, ReadPngHeader,
// ReadPngRows) therefore keep only trivially destructible locals, and C++ exceptions never cross
// libpng frames (the I/O callbacks catch theirs and report them through png_error).
struct PngState {
  char message[256] = {0};
  // Write: the output being built. Read: the input and the read position.
  std::string* out = nullptr;
  const unsigned char* in = nullptr;
  size_t in_size = 0;
  size_t in_pos = 0;
};

void OnPngError(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message ? message : "libpng error");
  png_longjmp(png, 1);
}

void OnPngWarning(png_structp, png_const_charp) {}

void WriteToString(png_structp png, png_bytep data, png_size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    state->out->append(reinterpret_cast<const char*>(data), length);
  } catch (...) {
    failed = true;
  }
  if (failed) png_error(png, "out of memory while writing PNG");
}

void FlushNothing(png_structp) {}

void ReadFromMemory(png_structp png, png_bytep data, png_size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (length > state->in_size - state->in_pos) png_error(png, "truncated PNG data");
  std::memcpy(data, state->in + state->in_pos, length);
  state->in_pos += length;
}

int ColorType(int64_t channels) {
  switch (channels) {
    case 1:
      return PNG_COLOR_TYPE_GRAY;
    case 2:
      return PNG_COLOR_TYPE_GRAY_ALPHA;
    case 3:
      return PNG_COLOR_TYPE_RGB;
    default:
      return PNG_COLOR_TYPE_RGBA;
  }
}

bool WritePngRows(PngState* state, const unsigned char* pixels, png_uint_32 width,
                  png_uint_32 height, int channels, int level) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, state, OnPngError, OnPngWarning);
  if (png == nullptr) return false;
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, state, WriteToString, FlushNothing);
  png_set_IHDR(png, info, width, height, 8, ColorType(channels), PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, level);
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(width) * channels;
  for (png_uint_32 y = 0; y < height; ++y) png_write_row(png, pixels + y * stride);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

struct PngHeader {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int channels = 0;
  size_t row_bytes = 0;
};

// Reads up to the image data and sets the 8-bit transforms; fills `header`.
bool ReadPngHeader(PngState* state, png_structp png, png_infop info, PngHeader* header) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, state, ReadFromMemory);
  png_set_user_limits(png, kMaxPngSide, kMaxPngSide);
  png_read_info(png, info);
  png_set_expand(png);    // palette -> RGB, gray < 8 bits -> 8 bits, tRNS -> alpha
  png_set_strip_16(png);  // 16-bit samples -> 8 bits
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  header->width = png_get_image_width(png, info);
  header->height = png_get_image_height(png, info);
  header->channels = png_get_channels(png, info);
  header->row_bytes = png_get_rowbytes(png, info);
  return true;
}

bool ReadPngRows(PngState* state, png_structp png, png_infop info, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return true;
}

}  // namespace

absl::StatusOr<std::string> EncodePng(const Image8& image, const PngOptions& options) {
  if (image.channels < 1 || image.channels > 4) {
    return InvalidArgument("PNG encode: channels must be 1..4, got ", image.channels);
  }
  if (image.width < 1 || image.height < 1 || image.width > kMaxPngSide ||
      image.height > kMaxPngSide) {
    return InvalidArgument("PNG encode: image size ", image.width, "x", image.height,
                           " outside 1..", kMaxPngSide);
  }
  if (image.pixels.size() != static_cast<size_t>(image.width * image.height * image.channels)) {
    return InvalidArgument("PNG encode: ", image.pixels.size(), " bytes for a ", image.width, "x",
                           image.height, "x", image.channels, " image");
  }
  if (options.compression_level < 0 || options.compression_level > 9) {
    return InvalidArgument("PNG encode: compression level must be 0..9");
  }
  std::string out;
  PngState state;
  state.out = &out;
  if (!WritePngRows(&state, image.pixels.data(), static_cast<png_uint_32>(image.width),
                    static_cast<png_uint_32>(image.height), static_cast<int>(image.channels),
                    options.compression_level)) {
    return Internal("PNG encode: ", state.message[0] ? state.message : "libpng setup failed");
  }
  return out;
}

absl::StatusOr<Image8> DecodePng(absl::string_view png_bytes) {
  constexpr size_t kSignatureBytes = 8;
  if (png_bytes.size() < kSignatureBytes ||
      png_sig_cmp(reinterpret_cast<png_const_bytep>(png_bytes.data()), 0, kSignatureBytes) != 0) {
    return DataLoss("PNG decode: not a PNG (bad signature)");
  }
  PngState state;
  state.in = reinterpret_cast<const unsigned char*>(png_bytes.data());
  state.in_size = png_bytes.size();
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, OnPngError, OnPngWarning);
  if (png == nullptr) return Internal("PNG decode: libpng setup failed");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return Internal("PNG decode: libpng setup failed");
  }
  PngHeader header;
  if (!ReadPngHeader(&state, png, info, &header)) {
    png_destroy_read_struct(&png, &info, nullptr);
    return DataLoss("PNG decode: ", state.message);
  }
  Image8 image;
  image.width = header.width;
  image.height = header.height;
  image.channels = header.channels;
  if (header.row_bytes != static_cast<size_t>(image.width * image.channels)) {
    png_destroy_read_struct(&png, &info, nullptr);
    return DataLoss("PNG decode: unexpected row size after 8-bit expansion");
  }
  std::vector<png_bytep> rows;
  bool ok = false;
  try {
    rows.resize(header.height);
    image.pixels.resize(header.row_bytes * header.height);
    for (png_uint_32 y = 0; y < header.height; ++y) rows[y] = &image.pixels[y * header.row_bytes];
    ok = true;
  } catch (const std::bad_alloc&) {
  }
  if (!ok) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::ResourceExhaustedError("PNG decode: out of memory");
  }
  const bool read = ReadPngRows(&state, png, info, rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  if (!read) return DataLoss("PNG decode: ", state.message);
  return image;
}

}  // namespace dgrid::decoder
