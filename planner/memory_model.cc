#include "planner/memory_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "families/registry.h"
#include "planner/json_fields.h"

namespace dgrid::planner {
namespace {

constexpr double kMib = 1024.0 * 1024.0;
constexpr double kBf16Bytes = 2;

// The rank's sequence of one pass in MiB of inner_dim bf16 values (the x of the fit).
double TokenMib(const ModelShape& model, const RequestShape& request, const GroupShape& layout) {
  double tokens = static_cast<double>(
      model.VideoTokens(request.width, request.height, std::max(request.frames, 1)));
  if (model.joint_text_attention) tokens += model.text_tokens;
  tokens /= static_cast<double>(layout.ulysses) * layout.ring;
  return tokens * model.inner_dim() * 2.0 / kMib;
}

// Passes that run as one batch on a rank: both CFG passes when batched on a rank that runs both
// (cfg axis 1). A batch holds everything twice, the fixed part included.
double Passes(const RequestShape& request, const GroupShape& layout, bool cfg_batched) {
  return request.cfg && cfg_batched && layout.cfg == 1 ? 2 : 1;
}

// The largest sum of prefetch + 1 consecutive entries of `blocks` (FLUX's joint blocks are 2.4x
// its single ones), all of them when there are fewer.
double LargestWindow(const std::vector<double>& blocks, int prefetch) {
  const size_t window = std::min(blocks.size(), static_cast<size_t>(std::max(prefetch, 1)) + 1);
  double largest = 0;
  for (size_t first = 0; first + window <= blocks.size(); ++first) {
    double sum = 0;
    for (size_t i = first; i < first + window; ++i) sum += blocks[i];
    largest = std::max(largest, sum);
  }
  return largest;
}

}  // namespace

const char kBuiltInMemorySource[] =
    "fit to bench/results 2026-11-28-h100-85b3b27-dgrid-denoise-{512,1024,2048} (FLUX.1-dev), "
    "2026-12-06-h100-b0ba836-dgrid-fused{,-cfgbatch}-wan{1.3b,14b}-480p81 (Wan2.1) and the "
    "2026-11-28-h200x4-dgrid-{u2,u4,r2,r4,cfg2,cfg2u2}-1024 groups";

const char* DitPrecisionName(DitPrecision precision) {
  return precision == DitPrecision::kFp8 ? "fp8" : "bf16";
}

absl::StatusOr<DitPrecision> ParseDitPrecision(absl::string_view text) {
  if (text == "bf16" || text.empty()) return DitPrecision::kBf16;
  if (text == "fp8" || text == "fp8-fast") return DitPrecision::kFp8;
  return absl::InvalidArgumentError(
      absl::StrCat("dit precision: bf16, fp8 or fp8-fast, not '", text, "'"));
}

MemoryModel BuiltInMemoryModel() {
  // FitMemoryModel over kBuiltInMemorySource's reports (docs/placement.md, "Memory model").
  MemoryModel m;
  m.families["flux"] = {/*fixed_mib=*/3.683, /*per_token=*/16.2874};
  m.families["wan"] = {/*fixed_mib=*/486.641, /*per_token=*/7.3741};
  m.collective_mib = 204.718;
  m.source = kBuiltInMemorySource;
  return m;
}

absl::StatusOr<double> WeightMib(const ModelShape& model, DitPrecision precision) {
  const double bf16 = model.WeightBytes();
  if (precision == DitPrecision::kBf16) return bf16 / kMib;
  if (model.family != "flux") {
    return absl::InvalidArgumentError(absl::StrCat(
        "dit precision fp8: served for FLUX only, not for ", model.family, " (", model.name, ")"));
  }
  // In FP8: per joint block both streams' qkv, out and MLP (24 D^2), per single block qkv, MLP in
  // and out (12 D^2): one byte each instead of two. Modulations and embedders stay bf16.
  const double d2 = static_cast<double>(model.inner_dim()) * model.inner_dim();
  const double fp8_params = (24.0 * model.num_layers + 12.0 * model.num_single_layers) * d2;
  return (bf16 - fp8_params) / kMib;
}

double OffloadedWeightMib(const ModelShape& model, int prefetch) {
  return (model.NonBlockWeightBytes() + LargestWindow(model.BlockWeightBytes(), prefetch)) / kMib;
}

double ShardBytesPerRank(double block_bytes, int ranks) {
  const double parts = std::max(ranks, 1);
  const double elements = std::ceil(block_bytes / kBf16Bytes);
  return std::ceil(elements / parts) * kBf16Bytes;
}

double ShardedWeightMib(const ModelShape& model, int ranks, int prefetch) {
  double kept = 0;
  std::vector<double> gathered;
  for (double bytes : model.BlockWeightBytes()) {
    const double shard = ShardBytesPerRank(bytes, ranks);
    kept += shard;
    gathered.push_back(shard * std::max(ranks, 1));
  }
  return (model.NonBlockWeightBytes() + kept + LargestWindow(gathered, prefetch)) / kMib;
}

double ShardGatherBytesPerForward(const ModelShape& model, int ranks) {
  const double n = std::max(ranks, 1);
  double bytes = 0;
  for (double block : model.BlockWeightBytes()) {
    bytes += ShardBytesPerRank(block, ranks) * n * (n - 1) / n;
  }
  return bytes;
}

double BlockWeightMib(const ModelShape& model) {
  double sum = 0;
  for (double bytes : model.BlockWeightBytes()) sum += bytes;
  return sum / kMib;
}

absl::StatusOr<MemoryEstimate> DenoiserPeak(const MemoryModel& memory, const ModelShape& model,
                                            const RequestShape& request, const GroupShape& layout,
                                            DitPrecision precision, bool cfg_batched,
                                            int offload_prefetch, int shard_prefetch) {
  auto it = memory.families.find(model.family);
  if (it == memory.families.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory model: no coefficients for family '", model.family, "'"));
  }
  MemoryEstimate e;
  ASSIGN_OR_RETURN(e.weights_mib, WeightMib(model, precision));
  if (offload_prefetch > 0) {
    if (precision != DitPrecision::kBf16) {
      return absl::InvalidArgumentError(
          "--dit-offload layerwise: not combined with --dit-precision fp8 yet (bf16 only)");
    }
    e.weights_mib = OffloadedWeightMib(model, offload_prefetch);
    e.host_mib = BlockWeightMib(model);
  }
  if (shard_prefetch > 0) {
    if (precision != DitPrecision::kBf16 || offload_prefetch > 0) {
      return absl::InvalidArgumentError(
          "--dit-shard-weights: not combined with --dit-precision fp8 or --dit-offload layerwise "
          "(bf16 only)");
    }
    if (layout.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dit-shard-weights: shards over a denoiser group's ranks; ",
                       layout.ToString(), " is one GPU"));
    }
    e.weights_mib = ShardedWeightMib(model, layout.size(), shard_prefetch);
  }
  e.activations_mib =
      Passes(request, layout, cfg_batched) *
      (it->second.fixed_mib + it->second.per_token * TokenMib(model, request, layout));
  e.collective_mib = layout.size() > 1 ? memory.collective_mib : 0;
  return e;
}

absl::StatusOr<double> ParseMemorySize(absl::string_view text, absl::string_view flag) {
  const std::pair<const char*, double> units[] = {
      {"GiB", 1024.0}, {"MiB", 1.0}, {"GB", 1e9 / kMib}, {"MB", 1e6 / kMib}};
  for (const auto& [suffix, mib] : units) {
    if (!absl::EndsWith(text, suffix)) continue;
    double value = 0;
    if (absl::SimpleAtod(text.substr(0, text.size() - std::strlen(suffix)), &value) && value > 0 &&
        std::isfinite(value)) {
      return value * mib;
    }
    break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": expected a size such as 24GiB, 80GB or 20480MiB, got '", text, "'"));
}

std::string FormatMib(double mib) {
  return mib >= 1024 ? absl::StrFormat("%.1f GiB", mib / 1024.0) : absl::StrFormat("%.1f MiB", mib);
}

bool FitsBudget(const MemoryEstimate& estimate, double budget_mib) {
  return estimate.total_mib() + kContextReserveMib <= budget_mib;
}

absl::Status CheckDenoiserBudget(const MemoryModel& memory, const ModelShape& model,
                                 const RequestShape& largest, const GroupShape& layout,
                                 DitPrecision precision, double budget_mib) {
  ASSIGN_OR_RETURN(MemoryEstimate e, DenoiserPeak(memory, model, largest, layout, precision));
  if (FitsBudget(e, budget_mib)) return absl::OkStatus();
  const std::string size =
      absl::StrCat(largest.width, "x", largest.height,
                   largest.frames > 1 ? absl::StrCat("x", largest.frames) : "");
  std::string other;
  const DitPrecision alternative =
      precision == DitPrecision::kBf16 ? DitPrecision::kFp8 : DitPrecision::kBf16;
  absl::StatusOr<MemoryEstimate> alt = DenoiserPeak(memory, model, largest, layout, alternative);
  if (!alt.ok()) {
    other = absl::StrCat("; ", alt.status().message());
  } else {
    other = absl::StrCat("; with --dit-precision ", DitPrecisionName(alternative), " it needs ",
                         FormatMib(alt->total_mib()),
                         FitsBudget(*alt, budget_mib) ? " (fits)" : " (does not fit either)");
  }
  return absl::ResourceExhaustedError(
      absl::StrCat(model.name, " needs ", FormatMib(e.total_mib()), " per denoiser rank at ",
                   DitPrecisionName(precision), " for its largest request (", size, " on ",
                   layout.ToString(), ": weights ", FormatMib(e.weights_mib), ", activations ",
                   FormatMib(e.activations_mib), "), more than the ", FormatMib(budget_mib),
                   " budget less ", FormatMib(kContextReserveMib), " for the CUDA context", other));
}

absl::StatusOr<std::vector<MemoryRow>> ReadMemoryRows(const std::vector<std::string>& paths) {
  std::vector<MemoryRow> rows;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
    absl::StatusOr<nlohmann::json> parsed = ParseJsonText(text, path);
    if (!parsed.ok() || !parsed->is_object()) continue;  // not a report
    const nlohmann::json& json = *parsed;
    if (json.value("tool", "") != "dgrid" || !json.contains("peak_memory_mb") ||
        !json.contains("config") || !json.contains("memory_checkpoints")) {
      continue;
    }
    auto named = [&](const absl::Status& s) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
    };
    const nlohmann::json& config = json["config"];
    MemoryRow row;
    row.label = path;
    row.card = json.value("card", "");
    const std::string default_shape = DefaultModelShape().name, single = "cfg1-ring1-ulysses1",
                      bf16 = "bf16";
    const int one = 1;
    const double no_scale = 1, no_guidance = 0;
    const bool no_batch = false;
    absl::StatusOr<std::string> shape = StringField(config, "config", "shape", &default_shape);
    absl::StatusOr<int> w = IntField(config, "config", "width");
    absl::StatusOr<int> h = IntField(config, "config", "height");
    absl::StatusOr<int> frames = IntField(config, "config", "num_frames", &one);
    absl::StatusOr<std::string> layout = StringField(config, "config", "layout", &single);
    absl::StatusOr<double> true_cfg = NumberField(config, "config", "true_cfg_scale", &no_scale);
    absl::StatusOr<double> guidance = NumberField(config, "config", "guidance_scale", &no_guidance);
    absl::StatusOr<bool> batched = BoolField(config, "config", "cfg_batch", &no_batch);
    absl::StatusOr<std::string> precision = StringField(config, "config", "dit_precision", &bf16);
    absl::StatusOr<double> peak = NumberField(json, "", "peak_memory_mb");
    for (const absl::Status& s : {shape.status(), w.status(), h.status(), frames.status(),
                                  layout.status(), true_cfg.status(), guidance.status(),
                                  batched.status(), precision.status(), peak.status()}) {
      if (!s.ok()) return named(s);
    }
    absl::StatusOr<ModelShape> model = LookupModelShape(*shape);
    if (!model.ok()) return named(model.status());
    row.model = *model;
    absl::StatusOr<int> prefetch =
        OffloadPrefetchOfReport(json, static_cast<int>(row.model.BlockWeightBytes().size()));
    if (!prefetch.ok()) return named(prefetch.status());
    row.offload_prefetch = *prefetch;
    row.request.width = *w;
    row.request.height = *h;
    row.request.frames = std::max(*frames, 1);
    row.request.cfg = *true_cfg > 1 || (config.contains("num_frames") && *guidance > 1);
    absl::StatusOr<GroupShape> group = ParseGroupShape(*layout, "config.layout");
    if (!group.ok()) return named(group.status());
    row.layout = *group;
    row.cfg_batched = *batched;
    // The benchmark's variants of a precision keep its weights and activations: "-gated" (gated
    // residuals folded into the output GEMMs), "-graph" (CUDA graphs of the forward pass, whose
    // captured shapes keep their activations: within a few MiB of the eager peak) and "-stepmod"
    // (the modulation linears in every pass) are rows of the precision before the suffix.
    std::string base = *precision;
    for (const absl::string_view suffix : {"-gated", "-graph", "-stepmod"}) {
      if (absl::EndsWith(base, suffix)) base.resize(base.size() - suffix.size());
    }
    absl::StatusOr<DitPrecision> p = ParseDitPrecision(base);
    if (!p.ok()) return named(p.status());
    row.precision = *p;
    row.peak_mib = *peak;
    bool found = false;
    for (const nlohmann::json& checkpoint : json["memory_checkpoints"]) {
      if (checkpoint.is_object() && checkpoint.value("name", "") == "after_weights") {
        absl::StatusOr<double> allocated =
            NumberField(checkpoint, "memory_checkpoints[after_weights]", "allocated_mb");
        if (!allocated.ok()) return named(allocated.status());
        row.weights_mib = *allocated;
        found = true;
      }
    }
    if (!found) continue;  // no weights checkpoint: nothing to fit against
    rows.push_back(std::move(row));
  }
  return rows;
}

absl::StatusOr<MemoryModel> FitMemoryModel(const std::vector<MemoryRow>& rows) {
  struct Sums {
    double n = 0, x = 0, y = 0, xx = 0, xy = 0;
  };
  std::map<std::string, Sums> sums;
  for (const MemoryRow& row : rows) {
    if (row.layout.size() != 1 || row.offload_prefetch > 0) continue;
    const double x = TokenMib(row.model, row.request, row.layout);
    const double y =
        (row.peak_mib - row.weights_mib) / Passes(row.request, row.layout, row.cfg_batched);
    Sums& s = sums[row.model.family];
    s.n += 1;
    s.x += x;
    s.y += y;
    s.xx += x * x;
    s.xy += x * y;
  }
  MemoryModel m;
  for (const auto& [family, s] : sums) {
    const double det = s.n * s.xx - s.x * s.x;
    if (s.n < 2 || std::abs(det) < 1e-9 * std::max(1.0, s.xx * s.n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "memory fit: family ", family, " needs single-GPU rows of two or more token counts"));
    }
    FamilyMemory f;
    f.per_token = (s.n * s.xy - s.x * s.y) / det;
    f.fixed_mib = (s.y - f.per_token * s.x) / s.n;
    m.families[family] = f;
  }
  if (m.families.empty()) {
    return absl::InvalidArgumentError("memory fit: no single-GPU row with a measured peak");
  }
  double excess = 0;
  int groups = 0;
  for (const MemoryRow& row : rows) {
    if (row.layout.size() == 1 || row.offload_prefetch > 0) continue;
    auto it = m.families.find(row.model.family);
    if (it == m.families.end()) continue;
    const double predicted = Passes(row.request, row.layout, row.cfg_batched) *
                             (it->second.fixed_mib +
                              it->second.per_token * TokenMib(row.model, row.request, row.layout));
    excess += row.peak_mib - row.weights_mib - predicted;
    ++groups;
  }
  m.collective_mib = groups > 0 ? std::max(0.0, excess / groups) : 0;
  m.source = absl::StrCat("fit to ", rows.size(), " measured rows");
  return m;
}

}  // namespace dgrid::planner
