// Where the committed default model (models/dgrid-shapes) is, for unit tests that load it: under
// DGRID_SOURCE_DIR, which ctest sets; run by hand, under the source tree that `file` (the test's
// __FILE__) names. __FILE__ alone is not enough: a compiler cache with a base directory makes it
// relative to the build folder.
#ifndef DGRID_TESTS_UNIT_DEFAULT_MODEL_DIR_H_
#define DGRID_TESTS_UNIT_DEFAULT_MODEL_DIR_H_

#include <cstdlib>
#include <string>

namespace dgrid {

inline std::string DefaultModelDir(const std::string& file) {
  if (const char* source = std::getenv("DGRID_SOURCE_DIR"); source != nullptr && *source) {
    return std::string(source) + "/models/dgrid-shapes";
  }
  return file.substr(0, file.rfind("/tests/unit/")) + "/models/dgrid-shapes";
}

}  // namespace dgrid

#endif  // DGRID_TESTS_UNIT_DEFAULT_MODEL_DIR_H_
