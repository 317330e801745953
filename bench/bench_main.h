// The main() of a benchmark program: parse flags into `config`, print usage for --help, run.
// Returns the exit code: 0, 2 for bad flags, 1 when `run` fails (its status on stderr).
#ifndef DGRID_BENCH_BENCH_MAIN_H_
#define DGRID_BENCH_BENCH_MAIN_H_

#include <cstdio>

#include "absl/status/status.h"
#include "common/config.h"

namespace dgrid::bench {

template <typename Run>
int BenchMain(const char* program, Config& config, int argc, char** argv, Run run) {
  if (absl::Status s = config.ParseArgs(argc, argv); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, s.ToString().c_str());
    return 2;
  }
  if (config.help_requested()) {
    std::printf("usage: %s [flags]\n%s", program, config.Usage().c_str());
    return 0;
  }
  if (absl::Status s = run(config); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace dgrid::bench

#endif  // DGRID_BENCH_BENCH_MAIN_H_
