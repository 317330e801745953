// Helpers shared by the parity tests: where a suite's reference data lives, and the error measure.
#ifndef DGRID_TESTS_PARITY_PARITY_UTIL_H_
#define DGRID_TESTS_PARITY_PARITY_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>

namespace dgrid::parity {

// $DGRID_BUILD_DIR/parity/<suite> (build/parity/<suite> without the variable): where the suite's
// make_*.py writes its cases.
inline std::string DataDir(const std::string& suite) {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : "build") + "/parity/" + suite;
}

// ||actual - expected|| / ||expected|| (L2, in double on the CPU).
inline double RelativeError(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kCPU).to(at::kDouble);
  const at::Tensor e = expected.to(at::kCPU).to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

// How two byte strings of equal length (8-bit images) differ: the largest |a[i] - b[i]| and how
// many bytes differ at all.
struct ByteDiff {
  int max = 0;
  int64_t differing = 0;
};
inline ByteDiff CompareBytes(const std::string& a, const std::string& b) {
  ByteDiff d;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const int diff = std::abs(static_cast<int>(static_cast<uint8_t>(a[i])) -
                              static_cast<int>(static_cast<uint8_t>(b[i])));
    d.max = std::max(d.max, diff);
    d.differing += diff != 0;
  }
  return d;
}

}  // namespace dgrid::parity

#endif  // DGRID_TESTS_PARITY_PARITY_UTIL_H_
