#include "bench/report.h"

#include <algorithm>
#include <ctime>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace dgrid::bench {
namespace {

// One linear layer [in -> out] applied to `rows` tokens.
double Linear(double rows, double in, double out) { return 2.0 * rows * in * out; }

}  // namespace

double FluxForwardFlops(const FluxFlopShape& s) {
  const double n = static_cast<double>(s.image_tokens);
  const double t = static_cast<double>(s.text_tokens);
  const double seq = n + t;
  const double d = static_cast<double>(s.inner_dim);
  const double f = d * static_cast<double>(s.mlp_ratio);
  const double attention = 4.0 * seq * seq * d;  // QK^T and PV over all heads
  constexpr double kTimeProj = 256;              // sinusoidal timestep features

  double flops = Linear(n, s.in_channels, d) + Linear(t, s.joint_attention_dim, d);
  flops += Linear(1, kTimeProj, d) + Linear(1, d, d);  // timestep embedder
  if (s.guidance_embeds) flops += Linear(1, kTimeProj, d) + Linear(1, d, d);
  flops += Linear(1, s.pooled_projection_dim, d) + Linear(1, d, d);  // pooled text embedder

  // Double-stream block: per stream, AdaLN (6 vectors), q/k/v, output projection and the MLP.
  double dbl = 2 * Linear(1, d, 6 * d) + attention;
  for (double rows : {n, t})
    dbl += 3 * Linear(rows, d, d) + Linear(rows, d, d) + 2 * Linear(rows, d, f);
  // Single-stream block over the joint sequence: AdaLN (3 vectors), q/k/v, the parallel MLP input
  // and the fused output projection over cat(attention, mlp).
  const double sgl = Linear(1, d, 3 * d) + 3 * Linear(seq, d, d) + Linear(seq, d, f) +
                     Linear(seq, d + f, d) + attention;
  flops += s.num_layers * dbl + s.num_single_layers * sgl;
  flops += Linear(1, d, 2 * d) + Linear(n, d, s.in_channels);  // norm_out and proj_out
  return flops;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

nlohmann::json PerfReport::ToJson() const {
  nlohmann::json j;
  j["tool"] = tool;
  j["card"] = card;
  j["date"] = date;
  j["commit"] = commit;
  j["config"] = config;
  j["total_duration_ms"] = total_duration_ms;
  j["steps"] = nlohmann::json::array();
  for (const auto& [name, ms] : steps) j["steps"].push_back({{"name", name}, {"duration_ms", ms}});
  j["denoise_steps_ms"] = denoise_steps_ms;
  j["memory_checkpoints"] = memory_checkpoints;
  for (const auto& [key, value] : metrics.items()) j[key] = value;
  return j;
}

absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string TodayUtc() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::gmtime(&now));
  return buf;
}

}  // namespace dgrid::bench
