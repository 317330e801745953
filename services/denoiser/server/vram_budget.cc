#include "services/denoiser/server/vram_budget.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "planner/cost_model.h"
#include "planner/dit_settings.h"
#include "planner/memory_model.h"
#include "planner/model_shape.h"
#include "planner/workload.h"

namespace dgrid {

absl::Status CheckDenoiserVramBudget(const StageOptions& options, const GroupFlags& group) {
  if (options.vram_budget.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const double budget_mib,
                   planner::ParseMemorySize(options.vram_budget, "--vram-budget"));
  ASSIGN_OR_RETURN(const planner::ModelShape transformer,
                   planner::ReadModelShape(options.model_path));
  planner::GroupShape layout;
  layout.ulysses = group.ulysses;
  layout.ring = group.ring;
  layout.cfg = group.cfg;
  planner::RequestClass request;
  request.shape.width = options.limits.max_width;
  request.shape.height = options.limits.max_height;
  request.shape.frames = std::max(options.limits.max_num_frames, 1);
  request.shape.cfg = true;
  request.name = absl::StrCat(
      "its largest request (", request.shape.width, "x", request.shape.height,
      request.shape.frames > 1 ? absl::StrCat("x", request.shape.frames) : std::string(), ", CFG)");
  planner::Workload largest;
  largest.classes.push_back(request);
  const planner::CostModel cost{planner::Calibration(), planner::LinkSpeeds()};

  // What the flags given ask for: their precision, and offload at their depth or none.
  planner::DitChoiceOptions given;
  const std::string precision =
      options.load.dit_precision.empty() ? "bf16" : options.load.dit_precision;
  // fp8-fast holds the same bytes as fp8.
  ASSIGN_OR_RETURN(given.precision,
                   planner::ParseDitPrecision(precision == "fp8-fast" ? "fp8" : precision));
  const int depth = static_cast<int>(options.load.dit_offload.PrefetchDepth(
      static_cast<int64_t>(transformer.BlockWeightBytes().size())));
  // Model offload peaks as bf16 while a request denoises: the same candidate.
  given.offload_prefetch = options.load.dit_offload.layerwise ? depth : 0;
  given.prefetch_depths = {depth};
  // Sharded weights over the group (--dit-shard-weights) at their prefetch, or none.
  const int shard_depth = static_cast<int>(options.load.dit_shard.prefetch);
  given.shard_prefetch = options.load.dit_shard.weights ? shard_depth : 0;
  given.shard_prefetch_depths = {shard_depth};
  ASSIGN_OR_RETURN(const planner::DitChoice mine,
                   planner::ChooseDitSettings(planner::BuiltInMemoryModel(), cost, transformer,
                                              largest, layout, budget_mib, given));
  if (mine.fits()) {
    const planner::DitCandidate& c = mine.candidates[mine.chosen];
    DG_LOG_INFO("", "--vram-budget %s: %s fits (predicted peak %s per rank for %s)",
                options.vram_budget, c.name, planner::FormatMib(c.memory.total_mib()),
                request.name);
    return absl::OkStatus();
  }
  // What would fit: the planner's own choice with no flag fixed (lossless first).
  ASSIGN_OR_RETURN(const planner::DitChoice any,
                   planner::ChooseDitSettings(planner::BuiltInMemoryModel(), cost, transformer,
                                              largest, layout, budget_mib, {}));
  std::string would_fit;
  if (any.fits()) {
    const planner::DitCandidate& c = any.candidates[any.chosen];
    const std::vector<std::string> flags = c.DenoiserFlags();
    would_fit = absl::StrCat("; ", c.name, " would fit (predicted peak ",
                             planner::FormatMib(c.memory.total_mib()), ")",
                             flags.empty() ? "" : absl::StrCat(": ", absl::StrJoin(flags, " ")));
  } else {
    would_fit = absl::StrCat("; nothing fits: ", any.refusal);
  }
  // The given settings' own prediction (the first candidate they allow).
  std::string needs;
  for (const planner::DitCandidate& c : mine.candidates) {
    if (!c.available) continue;
    needs = absl::StrCat(
        " needs ", planner::FormatMib(c.memory.total_mib() + planner::kContextReserveMib),
        " per rank (predicted: weights ", planner::FormatMib(c.memory.weights_mib),
        ", activations ", planner::FormatMib(c.memory.activations_mib),
        c.memory.collective_mib > 0
            ? absl::StrCat(", collectives ", planner::FormatMib(c.memory.collective_mib))
            : std::string(),
        ", plus ", planner::FormatMib(planner::kContextReserveMib), " for the CUDA context)");
    break;
  }
  if (needs.empty()) needs = absl::StrCat(": ", mine.refusal);
  return absl::ResourceExhaustedError(
      absl::StrCat("--vram-budget ", options.vram_budget, ": ", transformer.name,
                   " with --dit-precision ", precision,
                   options.load.dit_offload.layerwise
                       ? absl::StrCat(" --dit-offload layerwise --dit-offload-prefetch ", depth)
                   : options.load.dit_offload.model
                       ? std::string(" --dit-offload model (which peaks as bf16 while it denoises)")
                       : std::string(),
                   options.load.dit_shard.weights
                       ? absl::StrCat(" --dit-shard-weights --dit-shard-prefetch ", shard_depth)
                       : std::string(),
                   " does not fit: for ", request.name, " on ", layout.ToString(), " it", needs,
                   would_fit, "\n", any.ToText("  ")));
}

}  // namespace dgrid
