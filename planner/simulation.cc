#include "planner/simulation.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid::planner {
namespace {

struct GroupRun {
  std::deque<int64_t> queue;  // waiting on the group, FIFO
  int64_t running = -1;
  double busy_until = 0;
  double busy_ms = 0;
  std::vector<double> service_ms;  // per class, on this group's layout
};

struct RequestRecord {
  SimRequest request;
  double finish_ms = -1;
  bool rejected = false;
};

std::vector<double> ArrivalTimes(const SimOptions& options, std::mt19937_64& rng) {
  std::vector<double> times;
  times.reserve(options.num_requests);
  double now = 0;
  bool high = true;
  double state_end = 0;
  std::exponential_distribution<double> sojourn(1.0 / (options.burst_period_s * 1e3));
  if (options.process == ArrivalProcess::kBursty) state_end = sojourn(rng);
  while (static_cast<int>(times.size()) < options.num_requests) {
    double rate = options.rate_per_s / 1e3;  // per ms
    if (options.process == ArrivalProcess::kBursty) {
      rate *= high ? options.burst_high : options.burst_low;
    }
    const double gap = std::exponential_distribution<double>(rate)(rng);
    if (options.process == ArrivalProcess::kBursty && now + gap > state_end) {
      // Memorylessness: restart the draw at the state change with the new rate.
      now = state_end;
      high = !high;
      state_end = now + sojourn(rng);
      continue;
    }
    now += gap;
    times.push_back(now);
  }
  return times;
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index =
      std::min(values.size() - 1, static_cast<size_t>(q * (values.size() - 1) + 0.5));
  return values[index];
}

}  // namespace

absl::StatusOr<SimResult> Simulate(const ModelShape& model, const CostModel& cost,
                                   const std::vector<PlannedGroup>& groups,
                                   const Workload& workload,
                                   const std::vector<double>& reference_ms, SimPlacer& placer,
                                   const SimOptions& options) {
  if (groups.empty()) return absl::InvalidArgumentError("simulation: no groups");
  if (reference_ms.size() != workload.classes.size() || workload.classes.empty()) {
    return absl::InvalidArgumentError("simulation: one reference latency per class needed");
  }
  if (!(options.rate_per_s > 0) || options.num_requests < 1) {
    return absl::InvalidArgumentError("simulation: rate and request count must be positive");
  }
  std::vector<GroupRun> runs(groups.size());
  int total_gpus = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    total_gpus += groups[g].layout.size();
    for (const RequestClass& c : workload.classes) {
      ASSIGN_OR_RETURN(double ms, cost.RequestMs(model, c.shape, groups[g].layout));
      runs[g].service_ms.push_back(ms);
    }
  }

  std::mt19937_64 rng(options.seed);
  const std::vector<double> arrivals = ArrivalTimes(options, rng);
  std::vector<double> shares;
  for (const RequestClass& c : workload.classes) shares.push_back(c.share);
  std::discrete_distribution<int> pick_class(shares.begin(), shares.end());
  std::vector<RequestRecord> records(arrivals.size());
  for (size_t i = 0; i < arrivals.size(); ++i) {
    SimRequest& r = records[i].request;
    r.id = static_cast<int64_t>(i);
    r.class_index = pick_class(rng);
    r.shape = workload.classes[r.class_index].shape;
    r.arrival_ms = arrivals[i];
  }

  std::deque<int64_t> waiting;  // the orchestrator's queue while every group is full
  std::vector<SimGroupView> views(groups.size());
  auto start_next = [&](size_t g, double now) {
    GroupRun& run = runs[g];
    if (run.running >= 0 || run.queue.empty()) return;
    run.running = run.queue.front();
    run.queue.pop_front();
    const double service = run.service_ms[records[run.running].request.class_index];
    run.busy_until = now + service;
    run.busy_ms += service * groups[g].layout.size();
  };
  // Places request `id` at `now`: true when it was placed or rejected, false when it must wait.
  auto try_place = [&](int64_t id, double now) {
    SimRequest& r = records[id].request;
    const double reference = reference_ms[r.class_index];
    r.deadline_left_ms = options.deadline_factor > 0
                             ? options.deadline_factor * reference - (now - r.arrival_ms)
                             : 0;
    if (options.deadline_factor > 0 && r.deadline_left_ms <= 0) {
      records[id].rejected = true;
      return true;
    }
    for (size_t g = 0; g < groups.size(); ++g) {
      const GroupRun& run = runs[g];
      views[g].group = &groups[g];
      views[g].inflight = static_cast<int>(run.queue.size()) + (run.running >= 0 ? 1 : 0);
      double work = run.running >= 0 ? run.busy_until - now : 0;
      for (int64_t q : run.queue) work += run.service_ms[records[q].request.class_index];
      views[g].outstanding_ms = work;
    }
    absl::StatusOr<size_t> chosen = placer.Place(r, views);
    if (!chosen.ok()) {
      if (absl::IsResourceExhausted(chosen.status())) return false;
      records[id].rejected = true;
      return true;
    }
    runs[*chosen].queue.push_back(id);
    start_next(*chosen, now);
    return true;
  };
  auto drain = [&](double now) {
    while (!waiting.empty()) {
      if (!try_place(waiting.front(), now)) break;
      waiting.pop_front();
    }
  };

  size_t next_arrival = 0;
  constexpr double kNever = std::numeric_limits<double>::infinity();
  while (true) {
    double next_finish = kNever;
    size_t finishing = 0;
    for (size_t g = 0; g < runs.size(); ++g) {
      if (runs[g].running >= 0 && runs[g].busy_until < next_finish) {
        next_finish = runs[g].busy_until;
        finishing = g;
      }
    }
    const double arrival = next_arrival < arrivals.size() ? arrivals[next_arrival] : kNever;
    if (arrival == kNever && next_finish == kNever) break;
    if (next_finish <= arrival) {
      GroupRun& run = runs[finishing];
      records[run.running].finish_ms = next_finish;
      run.running = -1;
      start_next(finishing, next_finish);
      drain(next_finish);
    } else {
      const int64_t id = static_cast<int64_t>(next_arrival++);
      if (!waiting.empty() || !try_place(id, arrival)) waiting.push_back(id);
      drain(arrival);
    }
  }
  // Requests still waiting when nothing runs any more can never be placed (their deadline-less
  // placer kept answering RESOURCE_EXHAUSTED with idle groups): count them as rejected.
  for (int64_t id : waiting) records[id].rejected = true;

  SimResult result;
  result.arrived = static_cast<int>(records.size());
  std::vector<double> latencies;
  const size_t factors = options.slo_factors.size();
  std::vector<int> met(factors, 0);
  std::vector<std::vector<int>> class_met(workload.classes.size(), std::vector<int>(factors, 0));
  std::vector<int> class_count(workload.classes.size(), 0);
  double last = 0;
  for (const RequestRecord& rec : records) {
    ++class_count[rec.request.class_index];
    if (rec.rejected || rec.finish_ms < 0) {
      ++result.rejected;
      continue;
    }
    ++result.completed;
    const double latency = rec.finish_ms - rec.request.arrival_ms;
    latencies.push_back(latency);
    last = std::max(last, rec.finish_ms);
    for (size_t f = 0; f < factors; ++f) {
      if (latency <= options.slo_factors[f] * reference_ms[rec.request.class_index] * (1 + 1e-9)) {
        ++met[f];
        ++class_met[rec.request.class_index][f];
      }
    }
  }
  result.p50_ms = Percentile(latencies, 0.5);
  result.p99_ms = Percentile(latencies, 0.99);
  for (size_t f = 0; f < factors; ++f) {
    result.slo_attainment.push_back(static_cast<double>(met[f]) / result.arrived);
  }
  for (size_t c = 0; c < workload.classes.size(); ++c) {
    std::vector<double> row;
    for (size_t f = 0; f < factors; ++f) {
      row.push_back(class_count[c] ? static_cast<double>(class_met[c][f]) / class_count[c] : 0);
    }
    result.class_slo_attainment.push_back(std::move(row));
  }
  const double span = std::max(last, arrivals.back()) - arrivals.front();
  double busy = 0;
  for (const GroupRun& run : runs) busy += run.busy_ms;
  result.span_s = span / 1e3;
  result.gpu_utilisation = span > 0 ? busy / (span * total_gpus) : 0;
  return result;
}

nlohmann::json SimResult::ToJson(const SimOptions& options, const Workload& workload) const {
  nlohmann::json json;
  json["arrived"] = arrived;
  json["completed"] = completed;
  json["rejected"] = rejected;
  json["p50_latency_ms"] = p50_ms;
  json["p99_latency_ms"] = p99_ms;
  json["gpu_utilisation"] = gpu_utilisation;
  json["span_s"] = span_s;
  nlohmann::json slo = nlohmann::json::object();
  for (size_t f = 0; f < options.slo_factors.size(); ++f) {
    slo[absl::StrCat(options.slo_factors[f], "x")] = slo_attainment[f];
  }
  json["slo_attainment"] = slo;
  nlohmann::json per_class = nlohmann::json::object();
  for (size_t c = 0; c < workload.classes.size() && c < class_slo_attainment.size(); ++c) {
    nlohmann::json row = nlohmann::json::object();
    for (size_t f = 0; f < options.slo_factors.size(); ++f) {
      row[absl::StrCat(options.slo_factors[f], "x")] = class_slo_attainment[c][f];
    }
    per_class[workload.classes[c].name] = row;
  }
  json["class_slo_attainment"] = per_class;
  return json;
}

}  // namespace dgrid::planner
