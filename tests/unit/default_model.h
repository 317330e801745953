// The committed default model (models/dgrid-shapes) for unit tests that load it: found through
// DGRID_SOURCE_DIR, which ctest sets, else from this header's own path (which ccache may make
// relative to the build folder, hence the variable first).
#ifndef DGRID_TESTS_UNIT_DEFAULT_MODEL_H_
#define DGRID_TESTS_UNIT_DEFAULT_MODEL_H_

#include <cstdlib>
#include <string>

namespace dgrid::testing {

inline std::string DefaultModelDir() {
  if (const char* source = std::getenv("DGRID_SOURCE_DIR")) {
    return std::string(source) + "/models/dgrid-shapes";
  }
  const std::string here = __FILE__;  // <repo>/tests/unit/default_model.h
  return here.substr(0, here.rfind("/tests/unit/")) + "/models/dgrid-shapes";
}

}  // namespace dgrid::testing

#endif  // DGRID_TESTS_UNIT_DEFAULT_MODEL_H_
