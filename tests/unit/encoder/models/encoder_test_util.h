// Shared helpers of encoder_models_test: where the generated reference data lives and how outputs
// are compared.
#ifndef DGRID_TESTS_UNIT_ENCODER_MODELS_ENCODER_TEST_UTIL_H_
#define DGRID_TESTS_UNIT_ENCODER_MODELS_ENCODER_TEST_UTIL_H_

#include <cstdlib>
#include <iostream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/safetensors.h"
#include "common/weight_map.h"

namespace dgrid::encoder::testing {

// $DGRID_BUILD_DIR/parity/encoder (written by make_encoder_fixtures.py, the ctest fixture).
inline std::string FixtureDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return std::string(build ? build : ".") + "/parity/encoder";
}

// The inputs and outputs of `<case>.ref.safetensors`, as float32/int64 CPU tensors.
inline WeightMap LoadReference(const std::string& name) {
  const std::string path = FixtureDir() + "/" + name + ".ref.safetensors";
  absl::StatusOr<WeightMap> ref = LoadSafetensorsFile(path, LoadOptions{});
  if (!ref.ok()) {
    ADD_FAILURE() << "reference data missing (run ctest, whose fixture step "
                     "make_encoder_fixtures.py writes it): "
                  << ref.status();
    return WeightMap();
  }
  return *std::move(ref);
}

inline at::Tensor Get(const WeightMap& map, const std::string& name) {
  auto it = map.tensors().find(name);
  if (it == map.tensors().end()) {
    ADD_FAILURE() << "reference tensor '" << name << "' missing";
    return at::Tensor();
  }
  return it->second;
}

// ||actual - expected|| / ||expected||, in float64 on the CPU.
inline double RelError(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kCPU).to(at::kDouble);
  const at::Tensor e = expected.to(at::kCPU).to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

// Checks shape and relative error, and prints the error so that runs document it.
inline void ExpectClose(const at::Tensor& actual, const at::Tensor& expected, double tolerance,
                        const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double err = RelError(actual, expected);
  std::cout << "[ rel err  ] " << what << ": " << err << "\n";
  EXPECT_LE(err, tolerance) << what;
}

}  // namespace dgrid::encoder::testing

#endif  // DGRID_TESTS_UNIT_ENCODER_MODELS_ENCODER_TEST_UTIL_H_
