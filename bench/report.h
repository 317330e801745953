// JSON perf reports of the dgrid benchmarks (bench/results/*.json), in the shape of
// SGLang-Diffusion's perf dumps: total_duration_ms, steps[{name, duration_ms}], denoise_steps_ms[],
// memory_checkpoints[], plus card, date, commit and config. bench/diffusers_denoise.py writes the
// same fields, so `dgrid bench compare` reads either. The FLOP counts that turn step times into
// TFLOP/s are the model family's (families/, e.g. families::flux::FluxForwardFlops).
//
// Plain functions; thread-compatible. Errors are absl statuses (file I/O only).
#ifndef DGRID_BENCH_REPORT_H_
#define DGRID_BENCH_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace dgrid::bench {

// Today's date in UTC as YYYY-MM-DD (the report's default date).
std::string TodayUtc();

// Median of `values` (mean of the two middle ones for an even count); 0 for none.
double Median(std::vector<double> values);

// The same report fields for every tool.
struct PerfReport {
  std::string tool;  // "dgrid", "diffusers-eager", "diffusers-compile"
  std::string card;
  std::string date;
  std::string commit;
  nlohmann::json config = nlohmann::json::object();
  double total_duration_ms = 0;
  std::vector<std::pair<std::string, double>> steps;  // named phases, ms
  std::vector<double> denoise_steps_ms;
  nlohmann::json memory_checkpoints = nlohmann::json::array();
  nlohmann::json metrics = nlohmann::json::object();  // median_step_ms, tflops, peak_memory_mb, ...

  nlohmann::json ToJson() const;
};

// Writes `json` (indented) to `path`; INTERNAL when the file cannot be written.
absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& json);

}  // namespace dgrid::bench

#endif  // DGRID_BENCH_REPORT_H_
