// JSON perf reports of the dgrid benchmarks (bench/results/*.json), in the shape of
// SGLang-Diffusion's perf dumps: total_duration_ms, steps[{name, duration_ms}], denoise_steps_ms[],
// memory_checkpoints[], plus card, date, commit and config. bench/diffusers_denoise.py writes the
// same fields, so `dgrid bench compare` reads either.
//
// Also the analytic FLOP count of one FLUX transformer forward pass, used to turn step times into
// TFLOP/s. Plain functions; thread-compatible. Errors are absl statuses (file I/O only).
#ifndef DGRID_BENCH_REPORT_H_
#define DGRID_BENCH_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace dgrid::bench {

// Shape of one FLUX transformer forward pass (batch 1).
struct FluxFlopShape {
  int64_t image_tokens = 4096;  // (H/16) * (W/16)
  int64_t text_tokens = 512;
  int64_t num_layers = 19;         // double-stream blocks
  int64_t num_single_layers = 38;  // single-stream blocks
  int64_t inner_dim = 3072;
  int64_t mlp_ratio = 4;
  int64_t in_channels = 64;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = true;
};

// FLOPs of one forward pass: 2*M*N*K for every linear layer (the per-sample modulation and
// embedding MLPs included) plus 4*S^2*D per block for QK^T and PV, S = image + text tokens.
// Elementwise work (norms, RoPE, softmax, GELU) is not counted.
double FluxForwardFlops(const FluxFlopShape& shape);

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
