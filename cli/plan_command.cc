// `dgrid plan`: GPU topology (a JSON file, or NVML discovery on this node) + model shape + request
// mix -> denoiser group layouts, explained as text and JSON. The planning itself is
// planner/group_planner.h; candidate splits are scored by simulating the orchestrator's
// predicted-completion policy (orchestrator/placement).
//
//   dgrid plan [--topology t.json] [--model SHAPE|DIR] [--workload mix.json] [--json out.json]
//              [--calibrate FILE,DIR,...] [--check FILE,DIR,...] [--write-topology t.json]
//              [--scheduling fifo|edf] [--max-batch N] [--trace requests.jsonl [--trace-model
//              NAME]]
//              [--vram-budget 24GiB]
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/status.h"
#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/placement/sim_placer.h"
#include "planner/cost_model.h"
#include "planner/group_planner.h"
#include "planner/memory_model.h"
#include "planner/model_shape.h"
#include "planner/nvml_discovery.h"
#include "planner/topology.h"
#include "planner/trace.h"
#include "planner/workload.h"

namespace dgrid::cli {
namespace {

// The usage text; the --model names are the model families' known shapes.
std::string Usage() {
  return absl::StrCat(
      "usage: dgrid plan [--topology t.json] [--model ",
      absl::StrJoin(planner::KnownModelShapes(), "|"), "|DIR] [--workload mix.json]\n",
      "                  [--json out.json] [--calibrate DIR_OF_BENCH_JSON] "
      "[--write-topology t.json]\n"
      "                  [--check FILE,DIR,...] [--scheduling fifo|edf] [--max-batch N]\n"
      "                  [--trace requests.jsonl [--trace-model NAME]] [--vram-budget 24GiB]\n"
      "Without --topology the local GPUs are discovered through NVML. --check prints the cost\n"
      "model's step time next to each measured bench row given (out of sample when those rows are\n"
      "not also in --calibrate). Splits are scored with requests due at the workload's slo_factor "
      "x\n"
      "isolated latency, on groups run as --scheduling says (the stages' flag; default fifo),\n"
      "batching up to --max-batch requests of one shape per step (the denoisers' flag; default "
      "1).\n");
}

struct PlanArgs {
  std::string topology;
  std::string model = planner::DefaultModelShape().name;
  std::string workload;
  std::string json_out;
  std::string calibrate;
  std::string write_topology;
  std::string check;
  std::string scheduling = "fifo";
  std::string max_batch = "1";
  std::string trace;
  std::string trace_model;
  std::string vram_budget;
};

// The memory section of a plan: each chosen layout's predicted peak per rank for the workload's
// largest request, against the budget (--vram-budget, else the smallest GPU of the group), and the
// DiT precision that fits: bf16 when it does, else FP8 where the family serves it (lossy), else a
// refusal naming what each would need.
absl::Status ExplainMemory(const planner::Topology& topology, const planner::ModelShape& model,
                           const planner::Workload& workload, const planner::Plan& plan,
                           double budget_flag_mib, std::string* text, nlohmann::json* json) {
  const planner::MemoryModel memory = planner::BuiltInMemoryModel();
  std::map<std::string, uint64_t> gpu_bytes;
  for (const planner::NodeTopology& node : topology.nodes) {
    for (const planner::GpuDevice& gpu : node.gpus) {
      gpu_bytes[absl::StrCat(node.name, ":", gpu.index)] = gpu.memory_bytes;
    }
  }
  nlohmann::json groups = nlohmann::json::array();
  bool bf16_fits = true, fp8_fits = true;
  std::string fp8_error;
  absl::StrAppendFormat(text,
                        "memory per rank (predicted allocator peak, planner/memory_model.h; "
                        "budget %s, less %s for the CUDA context):\n",
                        budget_flag_mib > 0 ? "--vram-budget" : "each group's smallest GPU",
                        planner::FormatMib(planner::kContextReserveMib));
  for (const planner::PlannedGroup& g : plan.groups) {
    double budget = budget_flag_mib;
    if (budget <= 0) {
      for (const std::string& gpu : g.gpus) {
        const double mib = gpu_bytes[gpu] / 1048576.0;
        if (mib > 0 && (budget <= 0 || mib < budget)) budget = mib;
      }
    }
    nlohmann::json group = {{"group", g.id}, {"layout", g.layout.ToString()}};
    if (budget > 0) group["budget_mib"] = budget;
    for (planner::DitPrecision precision :
         {planner::DitPrecision::kBf16, planner::DitPrecision::kFp8}) {
      planner::MemoryEstimate worst;
      std::string worst_class;
      absl::Status status;
      for (const planner::RequestClass& c : workload.classes) {
        absl::StatusOr<planner::MemoryEstimate> e =
            planner::DenoiserPeak(memory, model, c.shape, g.layout, precision);
        if (!e.ok()) {
          status = e.status();
          break;
        }
        if (e->total_mib() > worst.total_mib()) {
          worst = *e;
          worst_class = c.name;
        }
      }
      const char* name = planner::DitPrecisionName(precision);
      if (!status.ok()) {
        if (precision == planner::DitPrecision::kBf16) {
          // A family the memory model has no coefficients for: a budget cannot be checked.
          if (budget_flag_mib > 0) return status;
          absl::StrAppend(text, "  not predicted: ", status.message(), "\n");
          (*json)["memory"] = {{"error", std::string(status.message())}};
          return absl::OkStatus();
        }
        fp8_fits = false;
        fp8_error = std::string(status.message());
        continue;
      }
      const bool fits = budget <= 0 || planner::FitsBudget(worst, budget);
      (precision == planner::DitPrecision::kBf16 ? bf16_fits : fp8_fits) &= fits;
      absl::StrAppendFormat(
          text, "  %-4s %-22s %-4s weights %s + activations %s (%s) + collectives %s = %s%s\n",
          g.id, g.layout.ToString(), name, planner::FormatMib(worst.weights_mib),
          planner::FormatMib(worst.activations_mib), worst_class,
          planner::FormatMib(worst.collective_mib), planner::FormatMib(worst.total_mib()),
          budget <= 0 ? ""
          : fits      ? absl::StrCat(" <= ", planner::FormatMib(budget))
                      : absl::StrCat(" > ", planner::FormatMib(budget)));
      group[name] = {
          {"weights_mib", worst.weights_mib},       {"activations_mib", worst.activations_mib},
          {"collective_mib", worst.collective_mib}, {"peak_mib", worst.total_mib()},
          {"largest_class", worst_class},           {"fits", fits}};
    }
    groups.push_back(group);
  }
  (*json)["memory"] = {{"groups", groups},
                       {"source", memory.source},
                       {"context_reserve_mib", planner::kContextReserveMib}};
  if (bf16_fits) {
    absl::StrAppend(text, fp8_error.empty()
                              ? "DiT precision: bf16 (fits; --dit-precision fp8 would save memory "
                                "at a small, measured quality cost, docs/performance.md)\n"
                              : "DiT precision: bf16 (fits)\n");
    (*json)["memory"]["dit_precision"] = "bf16";
    return absl::OkStatus();
  }
  if (fp8_fits) {
    absl::StrAppend(text,
                    "DiT precision: fp8, because bf16 does not fit (start the denoisers with "
                    "--dit-precision fp8; lossy: PSNR 35-38 dB against bf16 measured, "
                    "docs/performance.md)\n");
    (*json)["memory"]["dit_precision"] = "fp8";
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "nothing fits the memory budget: bf16 ",
      fp8_error.empty() ? "and fp8 exceed it"
                        : absl::StrCat("exceeds it and fp8 is not available (", fp8_error, ")"),
      " (per group below); layerwise offload and sharded weights, which would fit it, are not "
      "available yet: a larger GPU or budget is needed\n",
      *text));
}

absl::Status RunPlan(const PlanArgs& args) {
  planner::Topology topology;
  if (args.topology.empty()) {
    ASSIGN_OR_RETURN(topology, planner::DiscoverLocalTopology());
  } else {
    ASSIGN_OR_RETURN(topology, planner::ReadTopologyFile(args.topology));
  }
  if (!args.write_topology.empty()) {
    RETURN_IF_ERROR(planner::WriteTopologyFile(args.write_topology, topology));
  }
  ASSIGN_OR_RETURN(planner::ModelShape model, planner::ResolveModelShape(args.model));
  double budget_mib = 0;
  if (!args.vram_budget.empty()) {
    ASSIGN_OR_RETURN(budget_mib, planner::ParseMemorySize(args.vram_budget, "--vram-budget"));
  }
  planner::Workload workload = planner::DefaultWorkloadFor(model);
  if (!args.workload.empty()) {
    ASSIGN_OR_RETURN(workload, planner::ReadWorkloadFile(args.workload));
  }
  // A recorded trace (planner/trace.h) is planned for as its own mix (its shapes, their shares,
  // its rate), then replayed against the chosen groups.
  std::optional<planner::TraceReplay> trace;
  if (!args.trace.empty()) {
    if (!args.workload.empty()) {
      return absl::InvalidArgumentError("--trace and --workload: give one of them");
    }
    ASSIGN_OR_RETURN(planner::Trace file, planner::ReadTraceFile(args.trace));
    ASSIGN_OR_RETURN(trace, planner::ReplayFor(file, args.trace_model, workload.slo_factor));
    workload = trace->workload;
  } else if (!args.trace_model.empty()) {
    return absl::InvalidArgumentError("--trace-model: only with --trace");
  }
  orchestrator::PlacementContext context;
  context.model = model;
  context.links = topology.links;
  std::string calibration_note = context.calibration.source;
  if (!args.calibrate.empty()) {
    ASSIGN_OR_RETURN(std::vector<planner::MeasuredRow> rows,
                     planner::ReadBenchRows(planner::ExpandJsonPaths(args.calibrate)));
    ASSIGN_OR_RETURN(context.calibration, planner::FitCalibration(model, rows));
    calibration_note = context.calibration.source;
    // Multi-GPU rows, when given, calibrate the per-collective latency as well.
    absl::StatusOr<double> latency =
        planner::FitCollectiveLatencyUs(model, context.calibration, topology.links, rows);
    if (latency.ok()) {
      topology.links.latency_us = *latency;
      context.links.latency_us = *latency;
      absl::StrAppendFormat(&calibration_note,
                            "; collective latency %.0f us fitted to the multi-GPU rows", *latency);
    }
  }
  const planner::CostModel cost(context.calibration, context.links);
  std::string check_text;
  nlohmann::json check_json = nlohmann::json::array();
  if (!args.check.empty()) {
    ASSIGN_OR_RETURN(std::vector<planner::MeasuredRow> rows,
                     planner::ReadBenchRows(planner::ExpandJsonPaths(args.check)));
    check_text = "cost model against measured rows:\n";
    absl::StrAppendFormat(&check_text, "  %-22s %13s %5s %11s %11s %8s\n", "layout", "size", "cfg",
                          "measured", "predicted", "error");
    for (const planner::MeasuredRow& row : rows) {
      ASSIGN_OR_RETURN(planner::StepEstimate e, cost.Step(model, row.request, row.layout));
      const double error = e.total_ms() / row.step_ms - 1.0;
      // A batched-loop row (dgrid-bench-denoise --batches) shows its batch: "512x512 b4".
      const std::string size =
          absl::StrCat(row.request.width, "x", row.request.height,
                       row.request.frames > 1 ? absl::StrCat("x", row.request.frames) : "",
                       row.request.batch > 1 ? absl::StrCat(" b", row.request.batch) : "");
      absl::StrAppendFormat(&check_text, "  %-22s %13s %5s %8.1f ms %8.1f ms %+7.1f%%\n",
                            row.layout.ToString(), size, row.request.cfg ? "yes" : "no",
                            row.step_ms, e.total_ms(), 100.0 * error);
      check_json.push_back({{"file", row.label},
                            {"card", row.card},
                            {"layout", row.layout.ToString()},
                            {"width", row.request.width},
                            {"height", row.request.height},
                            {"frames", row.request.frames},
                            {"batch", row.request.batch},
                            {"true_cfg", row.request.cfg},
                            {"measured_step_ms", row.step_ms},
                            {"predicted_step_ms", e.total_ms()},
                            {"relative_error", error}});
    }
    // The same files' measured peaks against the memory model (each row's own model shape).
    ASSIGN_OR_RETURN(std::vector<planner::MemoryRow> memory_rows,
                     planner::ReadMemoryRows(planner::ExpandJsonPaths(args.check)));
    if (!memory_rows.empty()) {
      const planner::MemoryModel memory = planner::BuiltInMemoryModel();
      absl::StrAppend(&check_text, "memory model against measured peaks (MiB per rank):\n");
      absl::StrAppendFormat(&check_text, "  %-12s %-22s %13s %5s %10s %10s %8s\n", "model",
                            "layout", "size", "dit", "measured", "predicted", "error");
      for (const planner::MemoryRow& row : memory_rows) {
        ASSIGN_OR_RETURN(planner::MemoryEstimate e,
                         planner::DenoiserPeak(memory, row.model, row.request, row.layout,
                                               row.precision, row.cfg_batched));
        const double error = e.total_mib() / row.peak_mib - 1.0;
        const std::string size =
            absl::StrCat(row.request.width, "x", row.request.height,
                         row.request.frames > 1 ? absl::StrCat("x", row.request.frames) : "");
        absl::StrAppendFormat(&check_text, "  %-12s %-22s %13s %5s %10.0f %10.0f %+7.1f%%\n",
                              row.model.name, row.layout.ToString(), size,
                              planner::DitPrecisionName(row.precision), row.peak_mib, e.total_mib(),
                              100.0 * error);
        check_json.push_back({{"file", row.label},
                              {"model", row.model.name},
                              {"layout", row.layout.ToString()},
                              {"measured_peak_mib", row.peak_mib},
                              {"predicted_peak_mib", e.total_mib()},
                              {"relative_error", error}});
      }
    }
  }
  planner::PlacerFactory placer = [&context]() -> std::unique_ptr<planner::SimPlacer> {
    absl::StatusOr<std::unique_ptr<orchestrator::PlacementPolicy>> policy =
        orchestrator::MakePlacementPolicy("predicted-completion", context);
    return orchestrator::MakeOwningSimPlacer(std::move(*policy));
  };
  planner::PlanOptions plan_options;
  plan_options.deadline_factor = workload.slo_factor;  // clients' deadlines, as the SLO says
  ASSIGN_OR_RETURN(plan_options.scheduling,
                   planner::ParseGroupScheduling(args.scheduling, "--scheduling"));
  if (!absl::SimpleAtoi(args.max_batch, &plan_options.max_batch) || plan_options.max_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batch: a whole number >= 1, not '", args.max_batch, "'"));
  }
  if (trace.has_value()) plan_options.trace = &trace->arrivals;
  ASSIGN_OR_RETURN(planner::Plan plan,
                   planner::PlanGroups(topology, model, cost, workload, placer, plan_options));

  std::string text = absl::StrFormat(
      "topology: %d node(s), %d GPUs; model %s (%d heads, %.1f GB bf16 weights)\n"
      "cost model: %.1f ms overhead + FLOPs / %.0f TFLOP/s (%s); links nvlink %.0f, pcie %.0f, "
      "inter-node %.0f GB/s\n",
      static_cast<int>(topology.nodes.size()), topology.TotalGpus(), model.name, model.num_heads,
      model.WeightBytes() / 1e9, cost.calibration().overhead_ms, cost.calibration().rate_tflops,
      calibration_note, topology.links.nvlink_gbps, topology.links.pcie_gbps,
      topology.links.inter_node_gbps);
  absl::StrAppendFormat(&text, "groups run %s%s; requests due at %.2fx isolated latency\n",
                        planner::GroupSchedulingName(plan_options.scheduling),
                        plan_options.max_batch > 1
                            ? absl::StrCat(", batching up to ", plan_options.max_batch,
                                           " requests of one shape per step")
                            : "",
                        workload.slo_factor);
  absl::StrAppend(&text, plan.ToText());
  absl::StrAppend(&text, "predicted step time per class on the chosen layouts (ms):\n");
  nlohmann::json json = plan.ToJson();
  json["model"] = model.name;
  json["scheduling"] = planner::GroupSchedulingName(plan_options.scheduling);
  json["max_batch"] = plan_options.max_batch;
  json["deadline_factor"] = plan_options.deadline_factor;
  json["calibration"] = {{"overhead_ms", cost.calibration().overhead_ms},
                         {"rate_tflops", cost.calibration().rate_tflops},
                         {"source", calibration_note}};
  nlohmann::json steps = nlohmann::json::object();
  std::vector<std::string> seen;
  for (const planner::PlannedGroup& g : plan.groups) {
    const std::string name = g.layout.ToString();
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) continue;
    seen.push_back(name);
    absl::StrAppendFormat(&text, "  %-22s", name);
    for (const planner::RequestClass& c : workload.classes) {
      ASSIGN_OR_RETURN(planner::StepEstimate e, cost.Step(model, c.shape, g.layout));
      absl::StrAppendFormat(&text, " %s %.0f (comm %.1f)", c.name, e.total_ms(),
                            e.ulysses_ms + e.ring_ms + e.cfg_ms);
      steps[name][c.name] = {{"total_ms", e.total_ms()},
                             {"compute_ms", e.compute_ms},
                             {"ulysses_ms", e.ulysses_ms},
                             {"ring_ms", e.ring_ms},
                             {"cfg_ms", e.cfg_ms}};
    }
    absl::StrAppend(&text, "\n");
  }
  json["step_estimates"] = steps;
  if (!args.check.empty()) {
    absl::StrAppend(&text, check_text);
    json["check"] = check_json;
  }
  if (trace.has_value()) {
    ASSIGN_OR_RETURN(
        std::vector<double> reference,
        planner::ReferenceLatenciesMs(topology, model, cost, workload, plan_options.slo_reference));
    planner::SimOptions sim;
    sim.trace = &trace->arrivals;
    sim.deadline_factor = workload.slo_factor;
    std::unique_ptr<planner::SimPlacer> replay_placer = placer();
    ASSIGN_OR_RETURN(planner::SimResult r, planner::Simulate(model, cost, plan.groups, workload,
                                                             reference, *replay_placer, sim));
    absl::StrAppendFormat(
        &text,
        "trace %s replayed on these groups: %d requests (%d of other models skipped) over %.1f s; "
        "SLO attainment %.1f%% / %.1f%% / %.1f%% at 1.0x / 1.2x / 1.5x isolated latency; "
        "p50 %.0f ms, p99 %.0f ms; %d rejected; GPUs %.0f%% busy\n",
        args.trace, r.arrived, trace->skipped_other_models, r.span_s, 100 * r.slo_attainment[0],
        100 * r.slo_attainment[1], 100 * r.slo_attainment[2], r.p50_ms, r.p99_ms, r.rejected,
        100 * r.gpu_utilisation);
    json["trace_replay"] = r.ToJson(sim, workload);
    json["trace_replay"]["trace"] = args.trace;
    json["trace_replay"]["skipped_other_models"] = trace->skipped_other_models;
  }
  RETURN_IF_ERROR(ExplainMemory(topology, model, workload, plan, budget_mib, &text, &json));
  std::fputs(text.c_str(), stdout);
  if (!args.json_out.empty()) {
    std::FILE* out = args.json_out == "-" ? stdout : std::fopen(args.json_out.c_str(), "w");
    if (out == nullptr) return absl::InternalError(absl::StrCat("cannot write ", args.json_out));
    std::fputs((json.dump(2) + "\n").c_str(), out);
    if (out != stdout) std::fclose(out);
  }
  return absl::OkStatus();
}

}  // namespace

int PlanCommand(const std::vector<std::string>& args) {
  PlanArgs plan;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(Usage().c_str(), stdout);
      return 0;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "dgrid plan: %s needs a value\n%s", a.c_str(), Usage().c_str());
      return 2;
    }
    const std::string& v = args[++i];
    if (a == "--topology") {
      plan.topology = v;
    } else if (a == "--model") {
      plan.model = v;
    } else if (a == "--workload") {
      plan.workload = v;
    } else if (a == "--json") {
      plan.json_out = v;
    } else if (a == "--calibrate") {
      plan.calibrate = v;
    } else if (a == "--write-topology") {
      plan.write_topology = v;
    } else if (a == "--check") {
      plan.check = v;
    } else if (a == "--scheduling") {
      plan.scheduling = v;
    } else if (a == "--max-batch") {
      plan.max_batch = v;
    } else if (a == "--trace") {
      plan.trace = v;
    } else if (a == "--trace-model") {
      plan.trace_model = v;
    } else if (a == "--vram-budget") {
      plan.vram_budget = v;
    } else {
      std::fprintf(stderr, "dgrid plan: unknown option %s\n%s", a.c_str(), Usage().c_str());
      return 2;
    }
  }
  absl::Status status = RunPlan(plan);
  if (!status.ok()) {
    std::fprintf(stderr, "dgrid plan: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace dgrid::cli
