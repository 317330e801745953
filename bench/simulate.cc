// dgrid-bench-simulate: the cluster simulator of docs/placement.md. For each topology (8xH100
// NVLink node, two such nodes, 4 nodes x 4 PCIe GPUs), arrival process (Poisson, bursty) and load,
// it simulates the mixed workload (planner::DefaultMixedWorkload) under:
//   dgrid          `dgrid plan`'s groups, run earliest-deadline-first with step-level preemption
//                  (--scheduling edf), + predicted-completion placement, each request with a
//                  deadline of 1.2x its isolated latency (the SLO the acceptance is measured at)
//   dgrid-fifo     the same with fifo groups (planned for fifo)
//   dgrid-dl1.5    the same with deadlines of 1.5x
//   dgrid-nodl     the same without deadlines (no admission control, no deadline packing)
//   planned+rr     the planned groups, round-robin placement
//   planned+ll     the planned groups, least-loaded placement
//   fixed-spN      every node split into SP=N groups (N = 1, 2, 4, 8 where it fits), least-loaded
// and writes one JSON report per topology. The placement decisions are made by the orchestrator's
// own policies (orchestrator/placement), service times by the planner's cost model.
//
//   dgrid-bench-simulate [--out DIR] [--requests N] [--date YYYY-MM-DD] [--loads 0.3,0.5,0.7,0.9]
//                        [--slo-reference best-layout|single-gpu] [--seed N] [--topology NAME]
// --seed picks the arrival/class draw (default 11, the reports of docs/placement.md; another seed
// adds "-seedN" to the file name); --topology runs one of the three. --trace FILE replays a
// recorded trace (planner/trace.h: one request per line with its arrival, size, frames, steps,
// CFG and deadline) instead: its shapes and shares are the mix, its arrivals the only run of each
// configuration ("trace-<file name>" in the report's name).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/report.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/placement/sim_placer.h"
#include "planner/group_planner.h"
#include "planner/model_shape.h"
#include "planner/simulation.h"
#include "planner/trace.h"

namespace {

using dgrid::orchestrator::MakeOwningSimPlacer;
using dgrid::orchestrator::MakePlacementPolicy;
using dgrid::orchestrator::PlacementContext;
namespace planner = dgrid::planner;

struct Options {
  std::string out = ".";
  std::string date;
  int requests = 4000;
  std::vector<double> loads = {0.3, 0.5, 0.7, 0.9};
  planner::SloReference reference = planner::SloReference::kBestLayout;
  uint64_t seed = kDefaultSeed;
  std::string topology;  // empty = all
  std::string trace;     // a trace file to replay instead of the built-in mix
  static constexpr uint64_t kDefaultSeed = 11;
};

planner::Topology MakeTopology(int nodes, int gpus_per_node, bool nvlink) {
  planner::Topology t;
  for (int n = 0; n < nodes; ++n) {
    planner::NodeTopology node;
    node.name = absl::StrCat("node", n);
    for (int g = 0; g < gpus_per_node; ++g) {
      planner::GpuDevice gpu;
      gpu.index = g;
      gpu.name = nvlink ? "NVIDIA H100 80GB HBM3" : "NVIDIA H100 PCIe";
      gpu.memory_bytes = 80'000'000'000ull;
      gpu.numa_node = g * 2 / gpus_per_node;
      for (int p = 0; p < gpus_per_node && nvlink; ++p) {
        if (p != g) gpu.nvlink_peers.push_back(p);
      }
      node.gpus.push_back(gpu);
    }
    t.nodes.push_back(node);
  }
  return t;
}

absl::StatusOr<std::unique_ptr<planner::SimPlacer>> Placer(const std::string& policy,
                                                           const PlacementContext& context) {
  ASSIGN_OR_RETURN(auto p, MakePlacementPolicy(policy, context));
  return MakeOwningSimPlacer(std::move(p));
}

nlohmann::json GroupsJson(const std::vector<planner::PlannedGroup>& groups) {
  nlohmann::json json = nlohmann::json::array();
  for (const auto& g : groups) json.push_back(g.layout.ToString());
  return json;
}

absl::Status RunTopology(const std::string& name, const planner::Topology& topology,
                         const Options& options) {
  const planner::ModelShape model = planner::DefaultModelShape();
  PlacementContext context;
  context.model = model;
  context.links = topology.links;
  const planner::CostModel cost(context.calibration, context.links);
  planner::Workload workload = planner::DefaultMixedWorkload();
  std::optional<planner::TraceReplay> trace;
  if (!options.trace.empty()) {
    ASSIGN_OR_RETURN(planner::Trace file, planner::ReadTraceFile(options.trace));
    ASSIGN_OR_RETURN(trace, planner::ReplayFor(file, "", workload.slo_factor));
    workload = trace->workload;
  }
  ASSIGN_OR_RETURN(
      std::vector<double> reference,
      planner::ReferenceLatenciesMs(topology, model, cost, workload, options.reference));
  nlohmann::json report;
  report["tool"] = "dgrid-bench-simulate";
  report["date"] = options.date;
  report["topology_name"] = name;
  report["topology"] = {
      {"nodes", topology.nodes.size()},
      {"gpus", topology.TotalGpus()},
      {"nvlink_islands_of_node0", planner::NvlinkIslands(topology.nodes[0]).size()},
      {"nvlink_gbps", topology.links.nvlink_gbps},
      {"pcie_gbps", topology.links.pcie_gbps},
      {"inter_node_gbps", topology.links.inter_node_gbps}};
  report["model"] = model.name;
  report["calibration"] = {{"overhead_ms", cost.calibration().overhead_ms},
                           {"rate_tflops", cost.calibration().rate_tflops}};
  report["requests_per_run"] = options.requests;
  report["slo_reference"] = planner::SloReferenceName(options.reference);
  report["seed"] = options.seed;
  if (trace.has_value()) {
    report["trace"] = {{"file", options.trace},
                       {"requests", trace->arrivals.size()},
                       {"arrival_rate_per_s", workload.arrival_rate_per_s}};
  }
  nlohmann::json classes = nlohmann::json::array();
  for (size_t c = 0; c < workload.classes.size(); ++c) {
    classes.push_back({{"name", workload.classes[c].name},
                       {"share", workload.classes[c].share},
                       {"isolated_latency_ms", reference[c]}});
  }
  report["classes"] = classes;
  report["runs"] = nlohmann::json::array();

  std::printf("\n== %s (%d GPUs), SLO unit: isolated latency on %s ==\n", name.c_str(),
              topology.TotalGpus(), planner::SloReferenceName(options.reference));
  std::printf("%-8s %-5s %-12s %-34s %7s %7s %7s %9s %9s %6s\n", "process", "load", "policy",
              "groups", "slo1.0", "slo1.2", "slo1.5", "p50_ms", "p99_ms", "util");
  // The runs: each arrival process at each load, or the trace's own arrivals once.
  struct Scenario {
    const char* process_name;
    planner::ArrivalProcess process;
    double load;  // vs the cluster's SP=1 capacity
    double rate_per_s;
  };
  std::vector<Scenario> scenarios;
  if (trace.has_value()) {
    const double capacity = planner::Sp1ArrivalRate(topology, model, cost, workload, 1.0);
    scenarios.push_back({"trace", planner::ArrivalProcess::kPoisson,
                         workload.arrival_rate_per_s / capacity, workload.arrival_rate_per_s});
  } else {
    for (planner::ArrivalProcess process :
         {planner::ArrivalProcess::kPoisson, planner::ArrivalProcess::kBursty}) {
      for (double load : options.loads) {
        scenarios.push_back({process == planner::ArrivalProcess::kPoisson ? "poisson" : "bursty",
                             process, load,
                             planner::Sp1ArrivalRate(topology, model, cost, workload, load)});
      }
    }
  }
  for (const Scenario& scenario : scenarios) {
    const char* process_name = scenario.process_name;
    const planner::ArrivalProcess process = scenario.process;
    const double load = scenario.load;
    planner::Workload w = workload;
    w.arrival_rate_per_s = scenario.rate_per_s;
    planner::PlanOptions plan_options;
    plan_options.deadline_factor = w.slo_factor;
    plan_options.slo_reference = options.reference;
    if (trace.has_value()) plan_options.trace = &trace->arrivals;  // planned for the trace
    ASSIGN_OR_RETURN(planner::Plan fifo_plan,
                     planner::PlanGroups(
                         topology, model, cost, w,
                         [&] { return *Placer("predicted-completion", context); }, plan_options));
    plan_options.scheduling = planner::GroupScheduling::kEarliestDeadline;
    ASSIGN_OR_RETURN(planner::Plan plan,
                     planner::PlanGroups(
                         topology, model, cost, w,
                         [&] { return *Placer("predicted-completion", context); }, plan_options));
    plan_options.scheduling = planner::GroupScheduling::kFifo;
    struct Config {
      std::string label;
      std::vector<planner::PlannedGroup> groups;
      std::string policy;
      double deadline_factor;
    };
    std::vector<Config> configs = {
        {"dgrid", plan.groups, "predicted-completion", w.slo_factor},
        {"dgrid-fifo", fifo_plan.groups, "predicted-completion", w.slo_factor},
        {"dgrid-dl1.5", plan.groups, "predicted-completion", 1.5},
        {"dgrid-nodl", plan.groups, "predicted-completion", 0},
        {"planned+rr", plan.groups, "round-robin", 0},
        {"planned+ll", plan.groups, "least-loaded", 0},
    };
    // The planned edf groups batching up to four requests of one shape per step (dgrid-denoiser
    // --max-batch 4): each batched step costs the cost model's step of that batch.
    std::vector<planner::PlannedGroup> batched = plan.groups;
    for (planner::PlannedGroup& g : batched) g.max_batch = 4;
    configs.push_back({"dgrid-batch4", batched, "predicted-completion", w.slo_factor});
    for (int size = 1; size <= 8; size *= 2) {
      absl::StatusOr<std::vector<planner::PlannedGroup>> fixed =
          planner::FixedGroups(topology, model, cost, w, size, plan_options.max_inflight);
      if (fixed.ok())
        configs.push_back({absl::StrCat("fixed-sp", size), *fixed, "least-loaded", 0});
    }
    for (const Config& config : configs) {
      planner::SimOptions sim;
      sim.num_requests = options.requests;
      sim.rate_per_s = w.arrival_rate_per_s;
      sim.process = process;
      sim.seed = options.seed;
      sim.deadline_factor = config.deadline_factor;
      if (trace.has_value()) sim.trace = &trace->arrivals;
      ASSIGN_OR_RETURN(auto placer, Placer(config.policy, context));
      ASSIGN_OR_RETURN(planner::SimResult r,
                       planner::Simulate(model, cost, config.groups, w, reference, *placer, sim));
      std::string groups_text;
      for (const auto& g : config.groups) {
        absl::StrAppend(&groups_text, groups_text.empty() ? "" : ",", g.layout.cfg > 1 ? "c" : "",
                        g.layout.size());
      }
      if (groups_text.size() > 34) groups_text = groups_text.substr(0, 31) + "...";
      std::printf("%-8s %-5.2f %-12s %-34s %6.1f%% %6.1f%% %6.1f%% %9.0f %9.0f %5.1f%%\n",
                  process_name, load, config.label.c_str(), groups_text.c_str(),
                  100 * r.slo_attainment[0], 100 * r.slo_attainment[1], 100 * r.slo_attainment[2],
                  r.p50_ms, r.p99_ms, 100 * r.gpu_utilisation);
      nlohmann::json run = r.ToJson(sim, w);
      run["process"] = process_name;
      run["load_vs_sp1_capacity"] = load;
      run["arrival_rate_per_s"] = w.arrival_rate_per_s;
      run["policy"] = config.label;
      run["placement_policy"] = config.policy;
      run["deadline_factor"] = config.deadline_factor;
      run["groups"] = GroupsJson(config.groups);
      report["runs"].push_back(run);
    }
  }
  std::string trace_name;
  if (trace.has_value()) {
    trace_name = std::filesystem::path(options.trace).stem().string();
  }
  const std::string path = absl::StrCat(
      options.out, "/", options.date, "-simulate-", name, "-",
      planner::SloReferenceName(options.reference),
      trace.has_value() ? absl::StrCat("-trace-", trace_name) : "",
      options.seed == Options::kDefaultSeed ? "" : absl::StrCat("-seed", options.seed), ".json");
  RETURN_IF_ERROR(dgrid::bench::WriteJsonFile(path, report));
  std::printf("wrote %s\n", path.c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  char today[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(today, sizeof(today), "%Y-%m-%d", std::gmtime(&now));
  options.date = today;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--out" && has_value) {
      options.out = argv[++i];
    } else if (arg == "--date" && has_value) {
      options.date = argv[++i];
    } else if (arg == "--requests" && has_value &&
               absl::SimpleAtoi(argv[i + 1], &options.requests)) {
      ++i;
    } else if (arg == "--seed" && has_value && absl::SimpleAtoi(argv[i + 1], &options.seed)) {
      ++i;
    } else if (arg == "--topology" && has_value) {
      options.topology = argv[++i];
    } else if (arg == "--trace" && has_value) {
      options.trace = argv[++i];
    } else if (arg == "--slo-reference" && has_value) {
      const std::string v = argv[++i];
      if (v == "best-layout") {
        options.reference = planner::SloReference::kBestLayout;
      } else if (v == "single-gpu") {
        options.reference = planner::SloReference::kSingleGpu;
      } else {
        std::fprintf(stderr, "--slo-reference: best-layout or single-gpu, not '%s'\n", v.c_str());
        return 2;
      }
    } else if (arg == "--loads" && has_value) {
      options.loads.clear();
      for (absl::string_view part : absl::StrSplit(argv[++i], ',')) {
        double load;
        if (!absl::SimpleAtod(part, &load) || load <= 0) {
          std::fprintf(stderr, "--loads: '%s' is not a positive number\n",
                       std::string(part).c_str());
          return 2;
        }
        options.loads.push_back(load);
      }
    } else {
      std::fprintf(stderr,
                   "usage: dgrid-bench-simulate [--out DIR] [--requests N] [--date YYYY-MM-DD] "
                   "[--loads 0.3,0.5,0.7,0.9] [--slo-reference best-layout|single-gpu] "
                   "[--seed N] [--topology NAME] [--trace requests.jsonl]\n");
      return 2;
    }
  }
  const std::vector<std::pair<std::string, planner::Topology>> topologies = {
      {"h100x8-nvlink", MakeTopology(1, 8, true)},
      {"2x-h100x8-nvlink", MakeTopology(2, 8, true)},
      {"4x-h100x4-pcie", MakeTopology(4, 4, false)},
  };
  bool ran = false;
  for (const auto& [name, topology] : topologies) {
    if (!options.topology.empty() && options.topology != name) continue;
    ran = true;
    absl::Status status = RunTopology(name, topology, options);
    if (!status.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), status.ToString().c_str());
      return 1;
    }
  }
  if (!ran) {
    std::fprintf(stderr,
                 "--topology: '%s' is not one of h100x8-nvlink, 2x-h100x8-nvlink, "
                 "4x-h100x4-pcie\n",
                 options.topology.c_str());
    return 2;
  }
  return 0;
}
