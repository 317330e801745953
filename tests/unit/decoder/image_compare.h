// PSNR of two 8-bit pictures of the same size, for the lossy round-trip tests (MP4, lossy WebP).
#ifndef DGRID_TESTS_UNIT_DECODER_IMAGE_COMPARE_H_
#define DGRID_TESTS_UNIT_DECODER_IMAGE_COMPARE_H_

#include <cmath>

#include "services/decoder/image_io.h"

namespace dgrid::decoder {

// 10 log10(255^2 / MSE) over every byte; 99 for identical pictures.
inline double Psnr(const Image8& a, const Image8& b) {
  double se = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const double d = static_cast<double>(a.pixels[i]) - b.pixels[i];
    se += d * d;
  }
  const double mse = se / static_cast<double>(a.pixels.size());
  return mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
}

}  // namespace dgrid::decoder

#endif  // DGRID_TESTS_UNIT_DECODER_IMAGE_COMPARE_H_
