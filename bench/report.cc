#include "bench/report.h"

#include <algorithm>
#include <ctime>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace dgrid::bench {

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
