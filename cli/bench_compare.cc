// `dgrid bench compare a.json b.json`: the change between two perf reports of bench/ (written by
// dgrid-bench-denoise or bench/diffusers_denoise.py; fields in bench/report.h), one row per field:
// median step ms, total ms, peak memory, achieved TFLOP/s. b is compared against a (the baseline).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "nlohmann/json.hpp"

namespace dgrid::cli {
namespace {

bool ReadReport(const std::string& path, nlohmann::json& out) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "dgrid bench compare: cannot read %s\n", path.c_str());
    return false;
  }
  out = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded() || !out.is_object()) {
    std::fprintf(stderr, "dgrid bench compare: %s is not a JSON object\n", path.c_str());
    return false;
  }
  return true;
}

// A number field of the report, or NaN when absent.
double Field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : std::nan("");
}

std::string Describe(const nlohmann::json& j) {
  auto str = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string("?");
  };
  std::string size = "?";
  if (auto c = j.find("config"); c != j.end() && c->contains("height") && c->contains("width")) {
    size = std::to_string((*c)["width"].get<int64_t>()) + "x" +
           std::to_string((*c)["height"].get<int64_t>());
  }
  return str("tool") + " " + size + " on " + str("card") + " (" + str("date") + ")";
}

}  // namespace

int BenchCompareCommand(const std::vector<std::string>& args) {
  if (args.size() != 3 || args[0] != "compare") {
    std::fprintf(stderr,
                 "usage: dgrid bench compare BASELINE.json NEW.json\n"
                 "  prints the change of each field of two bench/ perf reports\n");
    return args.size() == 1 && (args[0] == "--help" || args[0] == "-h") ? 0 : 2;
  }
  nlohmann::json a, b;
  if (!ReadReport(args[1], a) || !ReadReport(args[2], b)) return 1;
  std::printf("a: %s\nb: %s\n\n", Describe(a).c_str(), Describe(b).c_str());
  std::printf("%-20s %14s %14s %10s\n", "field", "a", "b", "b/a");
  const struct {
    const char* key;
    const char* label;
  } kRows[] = {
      {"median_step_ms", "median step ms"},      {"total_duration_ms", "total ms"},
      {"peak_memory_mb", "peak memory MiB"},     {"achieved_tflops", "TFLOP/s"},
      {"fraction_of_matmul", "frac. of matmul"}, {"first_compiled_call_ms", "first call ms"}};
  for (const auto& row : kRows) {
    const double x = Field(a, row.key), y = Field(b, row.key);
    if (std::isnan(x) && std::isnan(y)) continue;
    auto cell = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.2f", v);
      return std::isnan(v) ? std::string("-") : std::string(buf);
    };
    char ratio[32] = "-";
    if (!std::isnan(x) && !std::isnan(y) && x != 0)
      std::snprintf(ratio, sizeof(ratio), "%.3fx", y / x);
    std::printf("%-20s %14s %14s %10s\n", row.label, cell(x).c_str(), cell(y).c_str(), ratio);
  }
  return 0;
}

}  // namespace dgrid::cli
