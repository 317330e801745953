#include "common/input_image.h"

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid {
namespace {

absl::Status BadImage(absl::string_view why) { return InvalidArgument("image: ", why); }

absl::Status CheckSides(int64_t width, int64_t height, absl::string_view format) {
  if (width < 1 || height < 1) return BadImage(absl::StrCat(format, " has no pixels"));
  if (width > kMaxInputImageSide || height > kMaxInputImageSide ||
      width * height > kMaxInputImagePixels) {
    return BadImage(absl::StrCat(format, " is ", width, "x", height, "; at most ",
                                 kMaxInputImageSide, " pixels a side and ", kMaxInputImagePixels,
                                 " pixels in all"));
  }
  return absl::OkStatus();
}

// ---- PNG (libpng) ----------------------------------------------------------------------------

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t offset;
  char message[256];
};

void PngRead(png_structp png, png_bytep out, size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->offset) png_error(png, "the data ends early (truncated)");
  std::memcpy(out, src->data + src->offset, n);
  src->offset += n;
}

[[noreturn]] void PngError(png_structp png, png_const_charp message) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof(src->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

// Everything between setjmp and its longjmp: no object with a destructor lives in this frame.
// `rows` and `out` belong to the caller. Returns false after a libpng error (src->message).
bool ReadPngInto(png_structp png, png_infop info, PngSource* src, RgbImage* out,
                 std::vector<png_bytep>* rows, bool* too_big) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, src, PngRead);
  png_set_user_limits(png, kMaxInputImageSide, kMaxInputImageSide);
  png_set_chunk_malloc_max(png, 8 << 20);
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int depth = 0, color = 0;
  png_get_IHDR(png, info, &width, &height, &depth, &color, nullptr, nullptr, nullptr);
  if (!CheckSides(width, height, "the PNG").ok()) {
    *too_big = true;
    out->width = width;
    out->height = height;
    return false;
  }
  // zlib inflates at most ~1032:1 and a 1-bit image holds 8 pixels a byte: an image that cannot
  // fit in the data is refused before its pixels are allocated (truncated, or a zip bomb).
  if (uint64_t{width} * height > uint64_t{src->size} * 1032 * 8) {
    png_error(png, "the data is far too short for the declared size (truncated)");
  }
  // PIL's convert("RGB"): palette looked up, gray replicated, alpha (and tRNS) dropped.
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color & PNG_COLOR_MASK_COLOR) == 0) {
    if (depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    png_set_gray_to_rgb(png);
  }
  if (depth == 16) png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_rowbytes(png, info) != size_t{width} * 3) {
    png_error(png, "unexpected row layout after conversion to RGB");
  }
  out->width = width;
  out->height = height;
  out->pixels.resize(size_t{width} * height * 3);
  rows->resize(height);
  for (png_uint_32 y = 0; y < height; ++y) (*rows)[y] = out->pixels.data() + size_t{y} * width * 3;
  png_read_image(png, rows->data());
  return true;
}

absl::StatusOr<RgbImage> DecodePngRgb(absl::string_view bytes) {
  PngSource src{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, PngError, PngWarning);
  if (png == nullptr) return absl::ResourceExhaustedError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return absl::ResourceExhaustedError("libpng: out of memory");
  }
  RgbImage out;
  std::vector<png_bytep> rows;
  bool too_big = false;
  const bool ok = ReadPngInto(png, info, &src, &out, &rows, &too_big);
  png_destroy_read_struct(&png, &info, nullptr);
  if (too_big) return CheckSides(out.width, out.height, "the PNG");
  if (!ok) return BadImage(absl::StrCat("not a valid PNG: ", src.message));
  return out;
}

// ---- JPEG (libjpeg) --------------------------------------------------------------------------

struct JpegErrors {
  jpeg_error_mgr mgr;  // first: libjpeg hands back a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void JpegFail(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings are ignored except a premature end of the data: PIL refuses a truncated JPEG.
void JpegMessage(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) JpegFail(cinfo);
}

bool ReadJpegInto(jpeg_decompress_struct* cinfo, JpegErrors* errors, absl::string_view bytes,
                  RgbImage* out, bool* refused) {
  if (setjmp(errors->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(cinfo, TRUE);
  out->width = cinfo->image_width;
  out->height = cinfo->image_height;
  if (!CheckSides(out->width, out->height, "the JPEG").ok() ||
      cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    *refused = true;
    return false;
  }
  cinfo->out_color_space = JCS_RGB;
  jpeg_start_decompress(cinfo);
  if (cinfo->output_components != 3) {
    std::snprintf(errors->message, sizeof(errors->message), "%d components after RGB conversion",
                  cinfo->output_components);
    return false;
  }
  const size_t stride = size_t{cinfo->output_width} * 3;
  out->width = cinfo->output_width;
  out->height = cinfo->output_height;
  out->pixels.resize(stride * cinfo->output_height);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->pixels.data() + stride * cinfo->output_scanline;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

absl::StatusOr<RgbImage> DecodeJpegRgb(absl::string_view bytes) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  std::memset(&cinfo, 0, sizeof(cinfo));
  errors.message[0] = '\0';
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = JpegFail;
  errors.mgr.emit_message = JpegMessage;
  RgbImage out;
  bool refused = false;
  const bool ok = ReadJpegInto(&cinfo, &errors, bytes, &out, &refused);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  jpeg_destroy_decompress(&cinfo);
  if (refused) {
    if (cmyk) return BadImage("CMYK JPEGs are not supported; send an RGB or gray image");
    return CheckSides(out.width, out.height, "the JPEG");
  }
  if (!ok) return BadImage(absl::StrCat("not a valid JPEG: ", errors.message));
  return out;
}

// ---- Lanczos resize (Pillow's Resample.c) ---------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= M_PI;
  return std::sin(x) / x;
}

double Lanczos3(double x) { return (-3.0 <= x && x < 3.0) ? Sinc(x) * Sinc(x / 3) : 0.0; }

// For each output index: the first input index, how many inputs, and their fixed-point weights
// (ksize a row).
struct ResampleCoefficients {
  int64_t ksize = 0;
  std::vector<int64_t> first, count;
  std::vector<int32_t> weights;
};

ResampleCoefficients Coefficients(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 3.0 * filter_scale;
  ResampleCoefficients c;
  c.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(out_size * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    // Truncation toward zero, then clamping, as the C casts do.
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(center - support + 0.5));
    const int64_t hi = std::min<int64_t>(in_size, static_cast<int64_t>(center + support + 0.5));
    const int64_t n = hi - lo;
    double sum = 0.0;
    for (int64_t x = 0; x < n; ++x) {
      k[x] = Lanczos3((x + lo - center + 0.5) / filter_scale);
      sum += k[x];
    }
    for (int64_t x = 0; x < n; ++x) {
      const double w = sum != 0.0 ? k[x] / sum : k[x];
      c.weights[i * c.ksize + x] = static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits)
                                                              : 0.5 + w * (1 << kPrecisionBits));
    }
    c.first[i] = lo;
    c.count[i] = n;
  }
  return c;
}

uint8_t Clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Rows [row0, row0 + rows) of `in`, resampled along x to `c`'s output width.
RgbImage Horizontal(const RgbImage& in, int64_t row0, int64_t rows, const ResampleCoefficients& c) {
  RgbImage out;
  out.width = static_cast<int64_t>(c.first.size());
  out.height = rows;
  out.pixels.resize(out.width * rows * 3);
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* src = in.pixels.data() + (row0 + y) * in.width * 3;
    uint8_t* dst = out.pixels.data() + y * out.width * 3;
    for (int64_t x = 0; x < out.width; ++x) {
      const int32_t* k = c.weights.data() + x * c.ksize;
      for (int ch = 0; ch < 3; ++ch) {
        int64_t s = int64_t{1} << (kPrecisionBits - 1);
        for (int64_t j = 0; j < c.count[x]; ++j) s += src[(c.first[x] + j) * 3 + ch] * k[j];
        dst[x * 3 + ch] = Clip8(s);
      }
    }
  }
  return out;
}

// `in` resampled along y; `c.first` shifted down by `row0` (the rows `in` starts at).
RgbImage Vertical(const RgbImage& in, int64_t row0, const ResampleCoefficients& c) {
  RgbImage out;
  out.width = in.width;
  out.height = static_cast<int64_t>(c.first.size());
  out.pixels.resize(out.width * out.height * 3);
  const int64_t stride = in.width * 3;
  for (int64_t y = 0; y < out.height; ++y) {
    const int32_t* k = c.weights.data() + y * c.ksize;
    const uint8_t* src = in.pixels.data() + (c.first[y] - row0) * stride;
    uint8_t* dst = out.pixels.data() + y * stride;
    for (int64_t i = 0; i < stride; ++i) {
      int64_t s = int64_t{1} << (kPrecisionBits - 1);
      for (int64_t j = 0; j < c.count[y]; ++j) s += src[j * stride + i] * k[j];
      dst[i] = Clip8(s);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<InputImageFormat> SniffInputImage(absl::string_view bytes) {
  if (bytes.empty()) return BadImage("empty; send PNG or JPEG bytes");
  if (static_cast<int64_t>(bytes.size()) > kMaxInputImageBytes) {
    return BadImage(
        absl::StrCat(bytes.size(), " bytes; at most ", kMaxInputImageBytes, " are accepted"));
  }
  static constexpr unsigned char kPng[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() >= sizeof(kPng) && std::memcmp(bytes.data(), kPng, sizeof(kPng)) == 0) {
    return InputImageFormat::kPng;
  }
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xff &&
      static_cast<unsigned char>(bytes[1]) == 0xd8 &&
      static_cast<unsigned char>(bytes[2]) == 0xff) {
    return InputImageFormat::kJpeg;
  }
  return BadImage("neither PNG nor JPEG (unknown signature)");
}

absl::StatusOr<RgbImage> DecodeInputImage(absl::string_view bytes) {
  ASSIGN_OR_RETURN(InputImageFormat format, SniffInputImage(bytes));
  return format == InputImageFormat::kPng ? DecodePngRgb(bytes) : DecodeJpegRgb(bytes);
}

absl::StatusOr<RgbImage> ResizeLanczos(const RgbImage& image, int64_t width, int64_t height) {
  if (width < 1 || height < 1) {
    return InvalidArgument("ResizeLanczos: target ", width, "x", height, " has no pixels");
  }
  if (image.width < 1 || image.height < 1 ||
      static_cast<int64_t>(image.pixels.size()) != image.width * image.height * 3) {
    return InvalidArgument("ResizeLanczos: inconsistent image ", image.width, "x", image.height);
  }
  const bool horizontal = width != image.width;
  const bool vertical = height != image.height;
  if (!horizontal && !vertical) return image;
  const ResampleCoefficients cx = Coefficients(image.width, width);
  const ResampleCoefficients cy = Coefficients(image.height, height);
  if (!horizontal) return Vertical(image, 0, cy);
  // Pillow runs the vertical pass first when it shrinks and the horizontal one enlarges (the
  // order changes the rounding of the intermediate image); otherwise horizontal first.
  if (vertical && width > image.width && height < image.height) {
    return Horizontal(Vertical(image, 0, cy), 0, height, cx);
  }
  // Only the source rows the vertical pass reads go through the horizontal one.
  const int64_t row0 = vertical ? cy.first.front() : 0;
  const int64_t row1 = vertical ? cy.first.back() + cy.count.back() : image.height;
  RgbImage tmp = Horizontal(image, row0, row1 - row0, cx);
  if (!vertical) return tmp;
  return Vertical(tmp, row0, cy);
}

}  // namespace dgrid
