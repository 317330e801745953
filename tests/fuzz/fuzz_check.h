// The contract checks of the fuzz targets: a broken contract aborts, which both libFuzzer and the
// deterministic driver report as a crash (with the input that caused it).
#ifndef DGRID_TESTS_FUZZ_FUZZ_CHECK_H_
#define DGRID_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

namespace dgrid::fuzz {

[[noreturn]] inline void Fail(const char* what) {
  std::fprintf(stderr, "fuzz target: contract violated: %s\n", what);
  std::abort();
}

inline void Check(bool ok, const char* what) {
  if (!ok) Fail(what);
}

}  // namespace dgrid::fuzz

#endif  // DGRID_TESTS_FUZZ_FUZZ_CHECK_H_
