#include "planner/simulation.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dgrid::planner {
namespace {

// A request held by a group.
struct Held {
  int64_t id = 0;
  int class_index = 0;
  int steps_left = 0;
  double step_ms = 0;
  double deadline_ms = 0;  // absolute; infinity = none
};

struct GroupRun {
  std::vector<Held> held;        // running and waiting, in arrival order
  std::vector<int64_t> running;  // ids of the requests whose (batched) step is under way
  double step_end = 0;           // when that step ends
  double busy_ms = 0;
  std::vector<double> service_ms;  // per class, on this group's layout
  // batch_step_ms[c][b - 1]: one step of a batch of b requests of class c (b <= max_batch).
  std::vector<std::vector<double>> batch_step_ms;
  bool Running(int64_t id) const {
    return std::find(running.begin(), running.end(), id) != running.end();
  }
};

struct RequestRecord {
  SimRequest request;
  double given_deadline_ms = 0;  // a trace request's own deadline after arrival; 0 = none
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
  if (options.trace != nullptr) {
    if (options.trace->empty()) return absl::InvalidArgumentError("simulation: empty trace");
    for (const TraceArrival& a : *options.trace) {
      if (a.class_index < 0 || a.class_index >= static_cast<int>(workload.classes.size())) {
        return absl::InvalidArgumentError("simulation: trace request of an unknown class");
      }
    }
  } else if (!(options.rate_per_s > 0) || options.num_requests < 1) {
    return absl::InvalidArgumentError("simulation: rate and request count must be positive");
  }
  std::vector<GroupRun> runs(groups.size());
  int total_gpus = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    total_gpus += groups[g].layout.size();
    if (groups[g].max_batch < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("simulation: group ", groups[g].id, ": max_batch must be >= 1"));
    }
    for (const RequestClass& c : workload.classes) {
      ASSIGN_OR_RETURN(double ms, cost.RequestMs(model, c.shape, groups[g].layout));
      runs[g].service_ms.push_back(ms);
      std::vector<double> per_batch;
      // A cached class batches too: its batched steps cost the rows that run (RequestMs).
      for (int b = 1; b <= groups[g].max_batch; ++b) {
        RequestShape shape = c.shape;
        shape.batch = b;
        ASSIGN_OR_RETURN(double batch_ms, cost.RequestMs(model, shape, groups[g].layout));
        per_batch.push_back(batch_ms / std::max(1, shape.steps));
      }
      runs[g].batch_step_ms.push_back(std::move(per_batch));
    }
  }

  std::mt19937_64 rng(options.seed);
  std::vector<double> arrivals;
  std::vector<RequestRecord> records;
  if (options.trace != nullptr) {
    for (const TraceArrival& a : *options.trace) arrivals.push_back(a.arrival_ms);
    records.resize(arrivals.size());
    for (size_t i = 0; i < arrivals.size(); ++i) {
      records[i].request.class_index = (*options.trace)[i].class_index;
      records[i].given_deadline_ms = (*options.trace)[i].deadline_ms;
    }
  } else {
    arrivals = ArrivalTimes(options, rng);
    std::vector<double> shares;
    for (const RequestClass& c : workload.classes) shares.push_back(c.share);
    std::discrete_distribution<int> pick_class(shares.begin(), shares.end());
    records.resize(arrivals.size());
    for (RequestRecord& record : records) record.request.class_index = pick_class(rng);
  }
  for (size_t i = 0; i < arrivals.size(); ++i) {
    SimRequest& r = records[i].request;
    r.id = static_cast<int64_t>(i);
    r.shape = workload.classes[r.class_index].shape;
    r.arrival_ms = arrivals[i];
  }

  std::deque<int64_t> waiting;  // the orchestrator's queue while every group is full
  std::vector<SimGroupView> views(groups.size());
  constexpr double kNever = std::numeric_limits<double>::infinity();
  // Starts the next step on group g at `now`: the running request (the first of a running batch)
  // goes on under fifo; otherwise (edf, or nothing running) the scheduling picks one. With
  // max_batch > 1, held requests of the picked one's class join it, in the group's order.
  auto next_step = [&](size_t g, double now) {
    GroupRun& run = runs[g];
    if (run.held.empty()) {
      run.running.clear();
      return;
    }
    const bool edf = groups[g].scheduling == GroupScheduling::kEarliestDeadline;
    // The group's order: arrival order (fifo; what runs goes on first) or deadline order (edf;
    // ties in arrival order).
    std::vector<size_t> order(run.held.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (edf) return run.held[a].deadline_ms < run.held[b].deadline_ms;
      return run.Running(run.held[a].id) && !run.Running(run.held[b].id);
    });
    const Held& lead = run.held[order.front()];
    std::vector<int64_t> batch;
    const int max_batch = static_cast<int>(run.batch_step_ms[lead.class_index].size());
    for (size_t i : order) {
      if (static_cast<int>(batch.size()) == max_batch) break;
      if (run.held[i].class_index == lead.class_index) batch.push_back(run.held[i].id);
    }
    const double step_ms =
        batch.size() == 1 ? lead.step_ms : run.batch_step_ms[lead.class_index][batch.size() - 1];
    run.running = std::move(batch);
    run.step_end = now + step_ms;
    run.busy_ms += step_ms * groups[g].layout.size();
  };
  // Places request `id` at `now`: true when it was placed or rejected, false when it must wait.
  auto try_place = [&](int64_t id, double now) {
    SimRequest& r = records[id].request;
    const double reference = reference_ms[r.class_index];
    const double given = records[id].given_deadline_ms;
    const double due_after = given > 0 ? given : options.deadline_factor * reference;
    r.deadline_left_ms = due_after > 0 ? due_after - (now - r.arrival_ms) : 0;
    if (due_after > 0 && r.deadline_left_ms <= 0) {
      records[id].rejected = true;
      return true;
    }
    for (size_t g = 0; g < groups.size(); ++g) {
      const GroupRun& run = runs[g];
      SimGroupView& view = views[g];
      view.group = &groups[g];
      view.inflight = static_cast<int>(run.held.size());
      view.outstanding_ms = 0;
      view.pending.clear();
      for (const Held& h : run.held) {
        PendingWork p;
        p.running = run.Running(h.id);
        p.step_ms = h.step_ms;
        if (p.running) p.step_left_ms = std::max(run.step_end - now, 1e-6);
        p.remaining_ms = p.running ? (h.steps_left - 1) * h.step_ms + (run.step_end - now)
                                   : h.steps_left * h.step_ms;
        // A request already past its deadline still counts as having one.
        p.deadline_ms = h.deadline_ms == kNever ? 0 : std::max(h.deadline_ms - now, 1e-6);
        view.outstanding_ms += p.remaining_ms;
        if (p.running) {
          view.pending.insert(view.pending.begin(), p);
        } else {
          view.pending.push_back(p);
        }
      }
    }
    absl::StatusOr<size_t> chosen = placer.Place(r, views);
    if (!chosen.ok()) {
      if (absl::IsResourceExhausted(chosen.status())) return false;
      records[id].rejected = true;
      return true;
    }
    GroupRun& run = runs[*chosen];
    Held h;
    h.id = id;
    h.class_index = r.class_index;
    h.steps_left = std::max(1, r.shape.steps);
    h.step_ms = run.service_ms[r.class_index] / h.steps_left;
    h.deadline_ms = r.deadline_left_ms > 0 ? now + r.deadline_left_ms : kNever;
    run.held.push_back(h);
    if (run.running.empty()) next_step(*chosen, now);
    return true;
  };
  auto drain = [&](double now) {
    while (!waiting.empty()) {
      if (!try_place(waiting.front(), now)) break;
      waiting.pop_front();
    }
  };

  size_t next_arrival = 0;
  while (true) {
    double next_boundary = kNever;
    size_t stepping = 0;
    for (size_t g = 0; g < runs.size(); ++g) {
      if (!runs[g].running.empty() && runs[g].step_end < next_boundary) {
        next_boundary = runs[g].step_end;
        stepping = g;
      }
    }
    const double arrival = next_arrival < arrivals.size() ? arrivals[next_arrival] : kNever;
    if (arrival == kNever && next_boundary == kNever) break;
    if (next_boundary <= arrival) {
      GroupRun& run = runs[stepping];
      bool finished = false;
      for (auto it = run.held.begin(); it != run.held.end();) {
        if (!run.Running(it->id) || --it->steps_left > 0) {
          ++it;
          continue;
        }
        records[it->id].finish_ms = next_boundary;
        run.running.erase(std::find(run.running.begin(), run.running.end(), it->id));
        it = run.held.erase(it);
        finished = true;
      }
      next_step(stepping, next_boundary);
      if (finished) drain(next_boundary);  // only a finished request frees a slot
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
