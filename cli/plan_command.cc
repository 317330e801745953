// `dgrid plan`: GPU topology (a JSON file, or NVML discovery on this node) + model shape + request
// mix -> denoiser group layouts, explained as text and JSON. The planning itself is
// planner/group_planner.h; candidate splits are scored by simulating the orchestrator's
// predicted-completion policy (orchestrator/placement).
//
//   dgrid plan [--topology t.json] [--model SHAPE|DIR] [--workload mix.json] [--json out.json]
//              [--calibrate FILE,DIR,...] [--check FILE,DIR,...] [--write-topology t.json]
//              [--scheduling fifo|edf] [--max-batch N] [--trace requests.jsonl [--trace-model
//              NAME]]
//              [--vram-budget 24GiB] [--performance-mode auto|speed|memory]
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
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
#include "planner/dit_settings.h"
#include "planner/group_planner.h"
#include "planner/memory_model.h"
#include "planner/model_shape.h"
#include "planner/nvml_discovery.h"
#include "planner/stage_memory.h"
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
      "                  [--performance-mode auto|speed|memory]\n"
      "Without --topology the local GPUs are discovered through NVML. --check prints the cost\n"
      "model's step time next to each measured bench row given (out of sample when those rows are\n"
      "not also in --calibrate). Splits are scored with requests due at the workload's slo_factor "
      "x\n"
      "isolated latency, on groups run as --scheduling says (the stages' flag; default fifo),\n"
      "batching up to --max-batch requests of one shape per step (the denoisers' flag; default "
      "1).\n"
      "Each group's DiT settings (bf16, layerwise offload, FP8, sharded weights) are chosen to "
      "fit\n--vram-budget "
      "(default: the GPU's memory) as --performance-mode says: auto (fastest lossless), speed\n"
      "(fastest, FP8 included) or memory (smallest peak); the rejected ones are listed with "
      "why.\n");
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
  std::string performance_mode = "auto";
};

// Where the host-to-device bandwidth came from: the committed fit, or a card-class default.
std::string HostToDeviceNote(const planner::CostModel& cost) {
  return cost.calibration().host_to_device_gbps == planner::kMeasuredHostToDeviceGbps
             ? std::string(planner::kHostToDeviceSource)
             : "a card-class default or --calibrate's offload rows (planner/cost_model.h)";
}

// The DiT-settings section of a plan (issue #20 item 5): for each chosen group, the candidates of
// planner/dit_settings.h (bf16, bf16 with layerwise offload, FP8, sharded weights) with their
// predicted step time and peak per rank for the workload, against the budget (--vram-budget, else
// the group's smallest GPU), the one --performance-mode picks and why each other was not; a
// refusal naming what would fit when nothing does.
absl::Status ExplainMemory(const planner::Topology& topology, const planner::ModelShape& model,
                           const planner::Workload& workload, const planner::Plan& plan,
                           const planner::CostModel& cost, double budget_flag_mib,
                           planner::PerformanceMode mode, std::string* text, nlohmann::json* json) {
  const planner::MemoryModel memory = planner::BuiltInMemoryModel();
  std::map<std::string, uint64_t> gpu_bytes;
  for (const planner::NodeTopology& node : topology.nodes) {
    for (const planner::GpuDevice& gpu : node.gpus) {
      gpu_bytes[absl::StrCat(node.name, ":", gpu.index)] = gpu.memory_bytes;
    }
  }
  absl::StrAppendFormat(
      text,
      "DiT settings per rank (predictions, not measurements: peak from planner/memory_model.h, %s;"
      "\n  step from the cost model above, offload copies at %.1f GB/s host-to-device (%s),"
      "\n  sharded weights' all-gathers over the link spanning the group, %s;"
      "\n  budget %s less %s for the CUDA context; --performance-mode %s):\n",
      memory.source, cost.calibration().host_to_device_gbps, HostToDeviceNote(cost),
      cost.calibration().shard_gathers_overlap
          ? "each hidden behind the previous block's compute (the excess added)"
          : "added to the step (not overlapped)",
      budget_flag_mib > 0 ? "--vram-budget" : "each group's smallest GPU",
      planner::FormatMib(planner::kContextReserveMib), planner::PerformanceModeName(mode));
  // The encoder and decoder stages (planner/stage_memory.h): the text encoders, and the VAE
  // decode of the mix's largest output with --vae-tiling auto, in bf16 on the GPU. On a topology
  // of one GPU every stage shares it with the denoiser, and the DiT choice counts them.
  std::vector<planner::StageEstimate> stages;
  absl::StatusOr<planner::StageEstimate> encoder = planner::EncoderPeak(model, 2);
  absl::StatusOr<planner::StageEstimate> decoder = absl::InvalidArgumentError("no classes");
  for (const planner::RequestClass& c : workload.classes) {
    absl::StatusOr<planner::StageEstimate> d =
        planner::DecoderPeak(model, c.shape, planner::VaeTiling(), 2);
    if (!d.ok() || (decoder.ok() && d->total_mib() <= decoder->total_mib())) continue;
    decoder = d;
  }
  const bool shared_gpu = topology.TotalGpus() == 1;
  nlohmann::json stage_json = nlohmann::json::object();
  absl::StrAppend(text,
                  "Encoder and decoder stages per GPU (predictions from the parameter counts and "
                  "the decode's live tensors,\n  not measured: planner/stage_memory.h):\n");
  for (const auto& [name, stage] :
       {std::make_pair("encoder", &encoder), std::make_pair("decoder", &decoder)}) {
    if (!stage->ok()) {
      absl::StrAppend(text, "  ", name, ": not predicted: ", stage->status().message(), "\n");
      continue;
    }
    const planner::StageEstimate& e = **stage;
    absl::StrAppend(text, "  ", name, ": ", e.detail, ": weights ",
                    planner::FormatMib(e.weights_mib), ", activations ",
                    planner::FormatMib(e.activations_mib), ", peak ",
                    planner::FormatMib(e.total_mib()), "\n");
    stage_json[name] = {{"detail", e.detail},
                        {"placement", planner::ComponentPlacementName(e.placement)},
                        {"weights_mib", e.weights_mib},
                        {"activations_mib", e.activations_mib},
                        {"peak_mib", e.total_mib()}};
    stages.push_back(e);
  }
  if (shared_gpu) {
    absl::StrAppend(text,
                    "  one GPU: the stages share it with the denoiser (every weight resident, the "
                    "largest stage's activations;\n  bf16 + model offload: every component's "
                    "weights there only during its use), counted in the DiT settings' peaks "
                    "below\n");
  }
  stage_json["shared_gpu"] = shared_gpu;
  (*json)["stages"] = stage_json;
  nlohmann::json groups = nlohmann::json::array();
  // Groups of one layout and budget share a choice: printed once, under all their ids.
  std::map<std::pair<std::string, double>, std::vector<std::string>> same;
  std::vector<std::pair<std::pair<std::string, double>, planner::DitChoice>> choices;
  absl::Status refusal;
  for (const planner::PlannedGroup& g : plan.groups) {
    double budget = budget_flag_mib;
    if (budget <= 0) {
      for (const std::string& gpu : g.gpus) {
        const double mib = gpu_bytes[gpu] / 1048576.0;
        if (mib > 0 && (budget <= 0 || mib < budget)) budget = mib;
      }
    }
    const double effective = budget > 0 ? budget : std::numeric_limits<double>::infinity();
    planner::DitChoiceOptions options{mode};
    if (shared_gpu) options.colocated = stages;
    absl::StatusOr<planner::DitChoice> choice =
        planner::ChooseDitSettings(memory, cost, model, workload, g.layout, effective, options);
    if (!choice.ok()) {
      // A family the memory model has no coefficients for: a budget cannot be checked.
      if (budget_flag_mib > 0) return choice.status();
      absl::StrAppend(text, "  not predicted: ", choice.status().message(), "\n");
      (*json)["memory"] = {{"error", std::string(choice.status().message())}};
      return absl::OkStatus();
    }
    nlohmann::json group = {{"group", g.id}, {"layout", g.layout.ToString()}};
    if (budget > 0) group["budget_mib"] = budget;
    nlohmann::json candidates = nlohmann::json::array();
    for (const planner::DitCandidate& c : choice->candidates) {
      candidates.push_back(c.ToJson());
      // The plain candidates under their precision's name, as before offload was counted.
      if (c.available && c.resident()) {
        group[planner::DitPrecisionName(c.precision)] = {
            {"weights_mib", c.memory.weights_mib},
            {"activations_mib", c.memory.activations_mib},
            {"collective_mib", c.memory.collective_mib},
            {"peak_mib", c.memory.total_mib()},
            {"largest_class", c.largest_class},
            {"fits", c.fits}};
      }
    }
    group["candidates"] = candidates;
    if (choice->fits()) {
      group["choice"] = choice->candidates[choice->chosen].name;
    } else {
      group["refusal"] = choice->refusal;
      if (refusal.ok()) refusal = choice->RefusalStatus();
    }
    groups.push_back(group);
    const auto key = std::make_pair(g.layout.ToString(), budget);
    if (same[key].empty()) choices.emplace_back(key, *choice);
    same[key].push_back(g.id);
  }
  for (const auto& [key, choice] : choices) {
    absl::StrAppendFormat(text, "  %s (%s, budget %s):\n", absl::StrJoin(same[key], " "), key.first,
                          key.second > 0 ? planner::FormatMib(key.second) : std::string("none"));
    absl::StrAppend(text, choice.ToText("    "));
  }
  (*json)["memory"] = {{"groups", groups},
                       {"source", memory.source},
                       {"context_reserve_mib", planner::kContextReserveMib},
                       {"performance_mode", planner::PerformanceModeName(mode)},
                       {"host_to_device_gbps", cost.calibration().host_to_device_gbps},
                       {"host_to_device_source", HostToDeviceNote(cost)}};
  if (!refusal.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(refusal.message(), "\n", *text));
  }
  // The settings the denoisers start with: the most any group needs (one set of flags per
  // deployment; `dgrid up` starts every group alike).
  // FP8 first, then offload (it fits wherever sharding does, and on one GPU too), then sharding;
  // of one kind the deeper prefetch.
  const auto strength = [](const planner::DitCandidate& c) {
    const int kind = c.precision == planner::DitPrecision::kFp8  ? 3
                     : c.offload_prefetch > 0 || c.model_offload ? 2
                     : c.shard_prefetch > 0                      ? 1
                                                                 : 0;
    return std::make_pair(kind, c.offload_prefetch + c.shard_prefetch);
  };
  const planner::DitCandidate* strongest = nullptr;
  for (const auto& [key, choice] : choices) {
    const planner::DitCandidate& c = choice.candidates[choice.chosen];
    if (strongest == nullptr || strength(c) > strength(*strongest)) strongest = &c;
  }
  if (strongest == nullptr) return absl::OkStatus();  // no groups
  (*json)["memory"]["dit_precision"] = planner::DitPrecisionName(strongest->precision);
  (*json)["memory"]["dit_offload"] = strongest->model_offload          ? "model"
                                     : strongest->offload_prefetch > 0 ? "layerwise"
                                                                       : "none";
  (*json)["memory"]["dit_offload_prefetch"] = strongest->offload_prefetch;
  (*json)["memory"]["dit_shard_weights"] = strongest->shard_prefetch > 0;
  (*json)["memory"]["dit_shard_prefetch"] = strongest->shard_prefetch;
  (*json)["memory"]["denoiser_flags"] = strongest->DenoiserFlags();
  (*json)["memory"]["stage_flags"] = strongest->StageFlags();
  const std::vector<std::string> flags = strongest->DenoiserFlags();
  const std::vector<std::string> stage_flags = strongest->StageFlags();
  absl::StrAppend(
      text, "DiT settings: ", strongest->name,
      flags.empty()
          ? " (the denoisers' defaults)"
          : absl::StrCat(" (start the denoisers with ", absl::StrJoin(flags, " "),
                         stage_flags.empty() ? std::string()
                                             : absl::StrCat(", the encoders and decoders with ",
                                                            absl::StrJoin(stage_flags, " ")),
                         ")"),
      strongest->precision == planner::DitPrecision::kFp8
          ? "; lossy: PSNR 35-38 dB against bf16 measured, docs/performance.md"
      : strongest->model_offload
          ? "; outputs identical to bf16 (not yet measured on a GPU), every component "
            "copied in from pinned host memory for each use"
      : strongest->offload_prefetch > 0
          ? "; outputs identical to bf16 (measured), needs pinned host memory for "
            "the blocks"
      : strongest->shard_prefetch > 0
          ? "; outputs identical to bf16, every block all-gathered over the group "
            "before it runs (not overlapped with compute yet)"
          : "",
      "\n");
  return absl::OkStatus();
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
  ASSIGN_OR_RETURN(planner::PerformanceMode mode,
                   planner::ParsePerformanceMode(args.performance_mode, "--performance-mode"));
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
  // Layerwise offload's copies: fitted to --calibrate's offload rows when it has some, else the
  // default of the topology's (smallest) card class.
  absl::StatusOr<double> h2d = absl::InvalidArgumentError("no --calibrate");
  if (!args.calibrate.empty()) {
    ASSIGN_OR_RETURN(std::vector<planner::MeasuredRow> rows,
                     planner::ReadBenchRows(planner::ExpandJsonPaths(args.calibrate)));
    h2d = planner::FitHostToDeviceGbps(model, context.calibration, rows);
  }
  if (h2d.ok()) {
    context.calibration.host_to_device_gbps = *h2d;
    absl::StrAppendFormat(&calibration_note,
                          "; host-to-device %.1f GB/s fitted to the offload rows", *h2d);
  } else {
    for (const planner::NodeTopology& node : topology.nodes) {
      for (const planner::GpuDevice& gpu : node.gpus) {
        context.calibration.host_to_device_gbps = std::min(
            context.calibration.host_to_device_gbps, planner::DefaultHostToDeviceGbps(gpu.name));
      }
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
      ASSIGN_OR_RETURN(planner::StepEstimate e,
                       cost.Step(model, row.request, row.layout, row.offload));
      const double error = e.total_ms() / row.step_ms - 1.0;
      // A batched-loop row (dgrid-bench-denoise --batches) shows its batch: "512x512 b4".
      // An offloaded row shows its prefetch depth: "1024x1024 off2".
      const std::string size =
          absl::StrCat(row.request.width, "x", row.request.height,
                       row.request.frames > 1 ? absl::StrCat("x", row.request.frames) : "",
                       row.request.batch > 1 ? absl::StrCat(" b", row.request.batch) : "",
                       row.offload.prefetch > 0 ? absl::StrCat(" off", row.offload.prefetch) : "");
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
                            {"offload_prefetch", row.offload.prefetch},
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
        ASSIGN_OR_RETURN(
            planner::MemoryEstimate e,
            planner::DenoiserPeak(memory, row.model, row.request, row.layout, row.precision,
                                  row.cfg_batched, row.offload_prefetch));
        const double error = e.total_mib() / row.peak_mib - 1.0;
        const std::string size = absl::StrCat(
            row.request.width, "x", row.request.height,
            row.request.frames > 1 ? absl::StrCat("x", row.request.frames) : "",
            row.offload_prefetch > 0 ? absl::StrCat(" off", row.offload_prefetch) : "");
        absl::StrAppendFormat(&check_text, "  %-12s %-22s %13s %5s %10.0f %10.0f %+7.1f%%\n",
                              row.model.name, row.layout.ToString(), size,
                              planner::DitPrecisionName(row.precision), row.peak_mib, e.total_mib(),
                              100.0 * error);
        check_json.push_back({{"file", row.label},
                              {"model", row.model.name},
                              {"layout", row.layout.ToString()},
                              {"offload_prefetch", row.offload_prefetch},
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
  RETURN_IF_ERROR(
      ExplainMemory(topology, model, workload, plan, cost, budget_mib, mode, &text, &json));
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
    } else if (a == "--performance-mode") {
      plan.performance_mode = v;
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
