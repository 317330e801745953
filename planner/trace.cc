#include "planner/trace.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "families/registry.h"
#include "planner/json_fields.h"

namespace dgrid::planner {
namespace {

absl::StatusOr<TraceRequest> ParseLine(absl::string_view line, const std::string& where) {
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(line, where));
  if (!json.is_object()) return absl::InvalidArgumentError(where + ": expected a JSON object");
  const families::GenerationDefaults& defaults = families::DefaultFamily().defaults();
  const int multiple = defaults.size_multiple();
  const int default_steps = defaults.steps, one_frame = 1;
  const bool no_cfg = false;
  const double no_deadline = 0;
  const std::string no_model;
  TraceRequest r;
  ASSIGN_OR_RETURN(double arrival_s, NumberField(json, where, "arrival_s"));
  if (!(arrival_s >= 0)) return absl::InvalidArgumentError(where + ".arrival_s: must be >= 0");
  r.arrival_ms = arrival_s * 1e3;
  ASSIGN_OR_RETURN(r.model, StringField(json, where, "model", &no_model));
  ASSIGN_OR_RETURN(r.shape.width, IntField(json, where, "width"));
  ASSIGN_OR_RETURN(r.shape.height, IntField(json, where, "height"));
  if (r.shape.width < multiple || r.shape.height < multiple || r.shape.width % multiple != 0 ||
      r.shape.height % multiple != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".width/height: must be positive multiples of ", multiple));
  }
  ASSIGN_OR_RETURN(r.shape.steps, IntField(json, where, "steps", &default_steps));
  if (r.shape.steps < 1) return absl::InvalidArgumentError(where + ".steps: must be >= 1");
  RETURN_IF_ERROR(ReadStepCacheFields(json, where, &r.shape));
  ASSIGN_OR_RETURN(r.shape.cfg, BoolField(json, where, "cfg", &no_cfg));
  ASSIGN_OR_RETURN(r.shape.frames, IntField(json, where, "frames", &one_frame));
  if (r.shape.frames < 1) return absl::InvalidArgumentError(where + ".frames: must be >= 1");
  ASSIGN_OR_RETURN(r.deadline_ms, NumberField(json, where, "deadline_ms", &no_deadline));
  if (!(r.deadline_ms >= 0)) {
    return absl::InvalidArgumentError(where + ".deadline_ms: must be >= 0");
  }
  return r;
}

std::string ClassName(const RequestShape& s) {
  return absl::StrCat(
      s.width, "x", s.height, s.frames > 1 ? absl::StrCat("x", s.frames) : "", "-", s.steps, "s",
      s.cfg ? "-cfg" : "",
      s.cache.empty() ? "" : absl::StrCat("-", s.cache, "-", s.skipped_steps, "skipped"));
}

}  // namespace

absl::StatusOr<Trace> ParseTrace(absl::string_view text, absl::string_view source) {
  Trace trace;
  trace.source = std::string(source);
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    ASSIGN_OR_RETURN(TraceRequest r, ParseLine(line, absl::StrCat(source, ":", number)));
    trace.requests.push_back(std::move(r));
  }
  if (trace.requests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no requests"));
  }
  std::stable_sort(
      trace.requests.begin(), trace.requests.end(),
      [](const TraceRequest& a, const TraceRequest& b) { return a.arrival_ms < b.arrival_ms; });
  return trace;
}

absl::StatusOr<Trace> ReadTraceFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  return ParseTrace(text, path);
}

absl::StatusOr<TraceReplay> ReplayFor(const Trace& trace, absl::string_view model,
                                      double slo_factor) {
  TraceReplay replay;
  replay.workload.slo_factor = slo_factor;
  // Classes in order of first arrival, keyed by the whole shape.
  std::map<std::tuple<int, int, int, int, bool, std::string, int>, int> class_of;
  std::vector<int> counts;
  for (const TraceRequest& r : trace.requests) {
    if (!model.empty() && !r.model.empty() && r.model != model) {
      ++replay.skipped_other_models;
      continue;
    }
    const auto key = std::make_tuple(r.shape.width, r.shape.height, r.shape.frames, r.shape.steps,
                                     r.shape.cfg, r.shape.cache, r.shape.skipped_steps);
    auto [it, added] = class_of.emplace(key, static_cast<int>(counts.size()));
    if (added) {
      RequestClass c;
      c.name = ClassName(r.shape);
      c.shape = r.shape;
      replay.workload.classes.push_back(c);
      counts.push_back(0);
    }
    ++counts[it->second];
    replay.arrivals.push_back({r.arrival_ms, it->second, r.deadline_ms});
  }
  if (replay.arrivals.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(trace.source, ": no request for model '", model, "'"));
  }
  const double n = static_cast<double>(replay.arrivals.size());
  for (size_t c = 0; c < counts.size(); ++c) replay.workload.classes[c].share = counts[c] / n;
  const double span_ms = replay.arrivals.back().arrival_ms - replay.arrivals.front().arrival_ms;
  // One request, or all at once: the rate is that of the burst over one second.
  replay.workload.arrival_rate_per_s = span_ms > 0 ? (n - 1) / (span_ms / 1e3) : n;
  return replay;
}

}  // namespace dgrid::planner
