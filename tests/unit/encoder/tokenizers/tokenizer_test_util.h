// Paths of the reference data written by make_tokenizer_fixtures.py (ctest fixture
// tokenizer_fixtures).
#ifndef DGRID_TESTS_UNIT_ENCODER_TOKENIZERS_TOKENIZER_TEST_UTIL_H_
#define DGRID_TESTS_UNIT_ENCODER_TOKENIZERS_TOKENIZER_TEST_UTIL_H_

#include <cstdlib>
#include <string>

namespace dgrid::encoder::testing {

// ${DGRID_BUILD_DIR}/parity/tokenizers; empty when DGRID_BUILD_DIR is not set.
inline std::string FixtureDir() {
  const char* build = std::getenv("DGRID_BUILD_DIR");
  return build == nullptr ? std::string() : std::string(build) + "/parity/tokenizers";
}

}  // namespace dgrid::encoder::testing

#endif  // DGRID_TESTS_UNIT_ENCODER_TOKENIZERS_TOKENIZER_TEST_UTIL_H_
