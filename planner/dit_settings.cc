#include "planner/dit_settings.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace dgrid::planner {
namespace {

bool SameSpeed(double a, double b) { return std::abs(a - b) <= kSameSpeed * std::min(a, b); }

// Whether `a` is the better pick than `b` under `mode` (both fit).
bool Better(const DitCandidate& a, const DitCandidate& b, PerformanceMode mode) {
  const double pa = a.peak_mib(), pb = b.peak_mib();
  switch (mode) {
    case PerformanceMode::kAuto:
      if (a.lossless != b.lossless) return a.lossless;
      if (!SameSpeed(a.step_ms, b.step_ms)) return a.step_ms < b.step_ms;
      // As fast: every weight on the GPU over offload and sharding (no pinned host memory, no
      // gathers, and the copies' overlap with a long step is predicted, not measured); between
      // those the faster, so that sharding is taken only where it is the fastest; then the
      // smaller peak.
      if (a.resident() != b.resident()) return a.resident();
      if ((a.shard_prefetch > 0) != (b.shard_prefetch > 0) && a.step_ms != b.step_ms) {
        return a.step_ms < b.step_ms;
      }
      return pa < pb;
    case PerformanceMode::kSpeed:
      if (a.step_ms != b.step_ms) return a.step_ms < b.step_ms;
      if (a.lossless != b.lossless) return a.lossless;
      return pa > pb;  // at equal speed the deeper prefetch: more slack for the copies
    case PerformanceMode::kMemory:
      if (a.lossless != b.lossless) return a.lossless;
      if (pa != pb) return pa < pb;
      return a.step_ms < b.step_ms;
  }
  return false;
}

std::string Ms(double ms) { return absl::StrFormat("%.0f ms", ms); }

}  // namespace

const char* PerformanceModeName(PerformanceMode mode) {
  switch (mode) {
    case PerformanceMode::kAuto:
      return "auto";
    case PerformanceMode::kSpeed:
      return "speed";
    case PerformanceMode::kMemory:
      return "memory";
  }
  return "?";
}

absl::StatusOr<PerformanceMode> ParsePerformanceMode(absl::string_view text,
                                                     absl::string_view flag) {
  if (text == "auto" || text.empty()) return PerformanceMode::kAuto;
  if (text == "speed") return PerformanceMode::kSpeed;
  if (text == "memory") return PerformanceMode::kMemory;
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": auto, speed or memory, not '", text, "'"));
}

std::vector<std::string> DitCandidate::DenoiserFlags() const {
  std::vector<std::string> flags;
  if (precision != DitPrecision::kBf16) flags.insert(flags.end(), {"--dit-precision", "fp8"});
  if (offload_prefetch > 0) {
    flags.insert(flags.end(), {"--dit-offload", "layerwise", "--dit-offload-prefetch",
                               std::to_string(offload_prefetch)});
  }
  if (model_offload) flags.insert(flags.end(), {"--dit-offload", "model"});
  if (shard_prefetch > 0) {
    flags.insert(flags.end(), {"--dit-shard-weights=true", "--dit-shard-prefetch",
                               std::to_string(shard_prefetch)});
  }
  return flags;
}

std::vector<std::string> DitCandidate::StageFlags() const {
  if (!model_offload) return {};
  return {"--text-encoder-device", "offload", "--vae-device", "offload"};
}

nlohmann::json DitCandidate::ToJson() const {
  nlohmann::json j = {{"name", name},
                      {"dit_precision", DitPrecisionName(precision)},
                      {"dit_offload", model_offload          ? "model"
                                      : offload_prefetch > 0 ? "layerwise"
                                                             : "none"},
                      {"dit_shard_weights", shard_prefetch > 0},
                      {"lossless", lossless},
                      {"available", available},
                      {"fits", fits},
                      {"chosen", chosen},
                      {"verdict", verdict}};
  if (offload_prefetch > 0) j["dit_offload_prefetch"] = offload_prefetch;
  if (shard_prefetch > 0) j["dit_shard_prefetch"] = shard_prefetch;
  if (model_offload) j["stage_flags"] = StageFlags();
  if (available) {
    j["predicted_step_ms"] = step_ms;
    j["predicted_peak_mib"] = peak_mib();
    if (shared_peak_mib > 0) j["denoiser_peak_mib"] = memory.total_mib();
    j["weights_mib"] = memory.weights_mib;
    j["activations_mib"] = memory.activations_mib;
    j["collective_mib"] = memory.collective_mib;
    j["host_mib"] = memory.host_mib;
    j["largest_class"] = largest_class;
  }
  return j;
}

std::string DitChoice::ToText(absl::string_view indent) const {
  std::string text;
  for (const DitCandidate& c : candidates) {
    if (!c.available) {
      absl::StrAppendFormat(&text, "%s  %-27s %s\n", indent, c.name, c.verdict);
      continue;
    }
    absl::StrAppendFormat(
        &text, "%s%s %-27s step %7s  peak %9s%s%s  %s\n", indent, c.chosen ? "*" : " ", c.name,
        Ms(c.step_ms), FormatMib(c.peak_mib()),
        c.memory.host_mib > 0 ? absl::StrCat(" (+", FormatMib(c.memory.host_mib), " pinned host)")
                              : "",
        c.shared_peak_mib > 0
            ? absl::StrCat(" (denoiser ", FormatMib(c.memory.total_mib()), " + stages)")
            : "",
        c.verdict);
  }
  return text;
}

absl::Status DitChoice::RefusalStatus() const {
  if (fits()) return absl::OkStatus();
  return absl::ResourceExhaustedError(refusal);
}

absl::StatusOr<DitChoice> ChooseDitSettings(const MemoryModel& memory, const CostModel& cost,
                                            const ModelShape& model, const Workload& workload,
                                            const GroupShape& layout, double budget_mib,
                                            const DitChoiceOptions& options) {
  if (workload.classes.empty()) return absl::InvalidArgumentError("workload: no classes");
  DitChoice choice;
  // With model offload the stages sharing the GPU are offloaded too (a component kept on the CPU
  // stays there).
  std::vector<StageEstimate> offloaded_stages = options.colocated;
  for (StageEstimate& stage : offloaded_stages) {
    if (stage.placement == ComponentPlacement::kGpu) stage.placement = ComponentPlacement::kOffload;
  }
  auto add = [&](DitPrecision precision, int prefetch, int shard, std::string name,
                 bool model_offload = false) -> absl::Status {
    DitCandidate c;
    c.name = std::move(name);
    c.precision = precision;
    c.offload_prefetch = prefetch;
    c.shard_prefetch = shard;
    c.model_offload = model_offload;
    c.lossless = precision == DitPrecision::kBf16;
    if (options.precision.has_value() && *options.precision != precision) return absl::OkStatus();
    // The user's --dit-offload none / layerwise: model offload is not what was given either.
    if (options.offload_prefetch.has_value() &&
        (*options.offload_prefetch != prefetch || model_offload)) {
      return absl::OkStatus();
    }
    if (options.shard_prefetch.has_value() && *options.shard_prefetch != shard) {
      return absl::OkStatus();
    }
    double shares = 0, weighted_ms = 0;
    for (const RequestClass& rc : workload.classes) {
      absl::StatusOr<MemoryEstimate> e = DenoiserPeak(memory, model, rc.shape, layout, precision,
                                                      options.cfg_batched, prefetch, shard);
      if (!e.ok()) {
        if (e.status().code() != absl::StatusCode::kInvalidArgument ||
            (precision == DitPrecision::kBf16 && shard == 0)) {
          return e.status();  // bf16 is always served: the model itself is unknown
        }
        c.available = false;
        c.verdict = absl::StrCat("not available: ", e.status().message());
        choice.candidates.push_back(std::move(c));
        return absl::OkStatus();
      }
      if (e->total_mib() > c.memory.total_mib()) {
        c.memory = *e;
        c.largest_class = rc.name;
      }
      ASSIGN_OR_RETURN(
          StepEstimate step,
          cost.Step(model, rc.shape, layout, OffloadShape{prefetch, options.cfg_batched, shard}));
      double step_ms = step.total_ms();
      if (model_offload) {
        // The whole DiT crosses host-to-device once per request (MiB x 2^20 bytes / GB/s).
        const double copy_ms =
            e->weights_mib * 1048576.0 / (cost.calibration().host_to_device_gbps * 1e9) * 1e3;
        step_ms += copy_ms / std::max(rc.shape.steps, 1);
      }
      weighted_ms += rc.share * step_ms;
      shares += rc.share;
    }
    c.step_ms = shares > 0 ? weighted_ms / shares : 0;
    if (model_offload) {
      // Pinned host copies of the DiT and of every stage offloaded with it.
      c.memory.host_mib = c.memory.weights_mib;
      for (const StageEstimate& stage : offloaded_stages) {
        if (stage.placement == ComponentPlacement::kOffload) c.memory.host_mib += stage.weights_mib;
      }
    }
    if (!options.colocated.empty()) {
      c.shared_peak_mib =
          model_offload ? SharedGpuPeakMib(c.memory, offloaded_stages, /*dit_model_offload=*/true)
                        : SharedGpuPeakMib(c.memory, options.colocated);
    }
    c.fits = c.peak_mib() + kContextReserveMib <= budget_mib;
    choice.candidates.push_back(std::move(c));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(add(DitPrecision::kBf16, 0, 0, "bf16"));
  for (int depth : options.prefetch_depths) {
    RETURN_IF_ERROR(
        add(DitPrecision::kBf16, depth, 0, absl::StrCat("bf16 + offload prefetch ", depth)));
  }
  // On a GPU the stages share (`dgrid generate --local`, one GPU for everything): every component
  // model-offloaded takes its turn there.
  if (!options.colocated.empty()) {
    RETURN_IF_ERROR(add(DitPrecision::kBf16, 0, 0, "bf16 + model offload", true));
  }
  RETURN_IF_ERROR(add(DitPrecision::kFp8, 0, 0, "fp8 (lossy)"));
  // Sharded weights (FSDP-style: each rank of a group keeps 1/size of the blocks and gathers each
  // block before its use), at the given depth when --dit-shard-weights was given; on one GPU a
  // single unavailable entry says why.
  std::vector<int> shard_depths = options.shard_prefetch_depths;
  if (options.shard_prefetch.has_value()) {
    shard_depths.clear();
    if (*options.shard_prefetch > 0) shard_depths.push_back(*options.shard_prefetch);
  }
  if (layout.size() < 2 && !shard_depths.empty()) {
    DitCandidate sharded;
    sharded.name = "sharded weights";
    sharded.shard_prefetch = shard_depths.front();
    sharded.available = false;
    sharded.verdict = absl::StrCat(
        "not available: --dit-shard-weights shards over a denoiser group of 2 or more GPUs; ",
        layout.ToString(), " is one");
    choice.candidates.push_back(std::move(sharded));
  } else {
    for (int depth : shard_depths) {
      RETURN_IF_ERROR(
          add(DitPrecision::kBf16, 0, depth, absl::StrCat("sharded weights prefetch ", depth)));
    }
  }

  for (size_t i = 0; i < choice.candidates.size(); ++i) {
    const DitCandidate& c = choice.candidates[i];
    if (!c.available || !c.fits) continue;
    if (choice.chosen < 0 || Better(c, choice.candidates[choice.chosen], options.mode)) {
      choice.chosen = static_cast<int>(i);
    }
  }
  const std::string budget_text =
      absl::StrCat(FormatMib(budget_mib), " less ", FormatMib(kContextReserveMib));
  if (choice.chosen < 0) {
    const DitCandidate* smallest = nullptr;
    for (const DitCandidate& c : choice.candidates) {
      if (c.available && (smallest == nullptr || c.peak_mib() < smallest->peak_mib())) {
        smallest = &c;
      }
    }
    for (DitCandidate& c : choice.candidates) {
      if (c.available) {
        c.verdict =
            absl::StrCat("does not fit (", FormatMib(c.peak_mib()), " > ", budget_text, ")");
      }
    }
    if (smallest == nullptr) {
      choice.refusal =
          absl::StrCat(model.name, ": no candidate is available on ", layout.ToString());
    } else {
      choice.refusal = absl::StrCat(
          model.name, " needs at least ", FormatMib(smallest->peak_mib() + kContextReserveMib),
          " per denoiser rank on ", layout.ToString(), " for ", smallest->largest_class,
          " (with its smallest footprint, ", smallest->name, ": weights ",
          FormatMib(smallest->memory.weights_mib), ", activations ",
          FormatMib(smallest->memory.activations_mib), ", plus ", FormatMib(kContextReserveMib),
          " for the CUDA context); nothing fits the ", FormatMib(budget_mib),
          " budget: a larger budget, smaller requests or a layout that splits the sequence over "
          "more GPUs would be needed");
    }
    return choice;
  }
  DitCandidate& chosen = choice.candidates[choice.chosen];
  chosen.chosen = true;
  chosen.verdict = absl::StrCat("chosen (", PerformanceModeName(options.mode), ": ",
                                options.mode == PerformanceMode::kMemory  ? "smallest peak"
                                : options.mode == PerformanceMode::kSpeed ? "fastest"
                                : chosen.lossless                         ? "fastest lossless"
                                                                          : "nothing lossless fits",
                                ")");
  for (DitCandidate& c : choice.candidates) {
    if (!c.available || c.chosen) continue;
    if (!c.fits) {
      c.verdict = absl::StrCat("does not fit (", FormatMib(c.peak_mib()), " > ", budget_text, ")");
    } else if (!c.lossless && chosen.lossless && options.mode != PerformanceMode::kSpeed) {
      c.verdict = "lossy (PSNR 35-38 dB against bf16): only when nothing lossless fits";
    } else if (options.mode != PerformanceMode::kMemory && c.step_ms > chosen.step_ms &&
               !SameSpeed(c.step_ms, chosen.step_ms)) {
      c.verdict = absl::StrCat("slower (", Ms(c.step_ms), " vs ", Ms(chosen.step_ms), ")");
    } else if (options.mode == PerformanceMode::kAuto && c.offload_prefetch > 0 &&
               chosen.resident()) {
      c.verdict = absl::StrCat(
          "as fast by the model (copies hidden behind the step, predicted), but every weight on "
          "the GPU is preferred: no ",
          FormatMib(c.memory.host_mib), " of pinned host memory");
    } else if (options.mode == PerformanceMode::kAuto && c.shard_prefetch > 0 &&
               chosen.resident()) {
      c.verdict = absl::StrCat("within ", static_cast<int>(kSameSpeed * 100),
                               "% by the model, but every weight on the GPU is preferred: no "
                               "all-gather of every block over the group (",
                               Ms(c.step_ms), " vs ", Ms(chosen.step_ms), ")");
    } else if (options.mode == PerformanceMode::kAuto && c.step_ms > chosen.step_ms) {
      c.verdict =
          absl::StrCat("within ", static_cast<int>(kSameSpeed * 100), "% but slower by the model (",
                       Ms(c.step_ms), " vs ", Ms(chosen.step_ms), ")");
    } else if (c.peak_mib() > chosen.peak_mib()) {
      c.verdict =
          absl::StrCat(SameSpeed(c.step_ms, chosen.step_ms) ? "as fast, " : "", "more memory (",
                       FormatMib(c.peak_mib()), " vs ", FormatMib(chosen.peak_mib()), ")");
    } else {
      c.verdict = absl::StrCat("fits, not preferred by ", PerformanceModeName(options.mode));
    }
  }
  return choice;
}

}  // namespace dgrid::planner
