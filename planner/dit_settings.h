// Choosing how a denoiser rank holds its DiT within a memory budget (issue #20 item 5): each
// candidate (bf16; bf16 with layerwise offload at a few prefetch depths; FP8, lossy and FLUX only;
// sharded weights, not predicted yet) gets the memory model's peak for the workload's largest
// request (planner/memory_model.h) and the cost model's share-weighted step time over the
// workload's classes (planner/cost_model.h); the mode then picks one among those that fit:
//   auto   - the fastest lossless candidate (within kSameSpeed of it, every weight on the GPU
//            over offload, then the smallest peak); FP8 only when nothing lossless fits
//   speed  - the fastest of all that fit, FP8's measured small quality cost accepted (ties go to
//            lossless ones)
//   memory - the smallest peak of the lossless ones (of the lossy ones when none fits)
// Every other candidate carries why it was not chosen. Predictions, not measurements: the models'
// sources say what they were fitted to.
//
// Plain values and pure functions; thread-compatible. Errors: INVALID_ARGUMENT naming the flag or
// the layout; RESOURCE_EXHAUSTED (DitChoice::RefusalStatus) when nothing fits, naming the smallest
// candidate and the budget it would need.
#ifndef DGRID_PLANNER_DIT_SETTINGS_H_
#define DGRID_PLANNER_DIT_SETTINGS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "planner/cost_model.h"
#include "planner/memory_model.h"
#include "planner/workload.h"

namespace dgrid::planner {

enum class PerformanceMode { kAuto, kSpeed, kMemory };
const char* PerformanceModeName(PerformanceMode mode);
// "auto", "speed" or "memory"; INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<PerformanceMode> ParsePerformanceMode(absl::string_view text,
                                                     absl::string_view flag);

// Step times within this fraction of each other count as the same speed (auto then takes the
// smaller peak): the offload depths' measured steps differ by under 1%.
inline constexpr double kSameSpeed = 0.02;

struct DitCandidate {
  std::string name;  // "bf16", "bf16 + offload prefetch 2", "fp8", "sharded weights"
  DitPrecision precision = DitPrecision::kBf16;
  int offload_prefetch = 0;  // 0: every weight on the device
  bool lossless = true;      // offload is bit-identical to bf16 (measured); FP8 is not
  bool available = true;     // false: not served for this model or not predicted yet (see verdict)
  MemoryEstimate memory;     // for the workload's largest request
  std::string largest_class;
  double step_ms = 0;  // share-weighted over the workload's classes
  bool fits = false;
  bool chosen = false;
  std::string verdict;  // "chosen: ..." or why not

  // --dit-precision / --dit-offload flags that give this candidate to a denoiser.
  std::vector<std::string> DenoiserFlags() const;
  nlohmann::json ToJson() const;
};

struct DitChoiceOptions {
  PerformanceMode mode = PerformanceMode::kAuto;
  // The layerwise offload depths tried (--dit-offload-prefetch N).
  std::vector<int> prefetch_depths = {1, 2, 4};
  // Only candidates of this precision (the user's explicit --dit-precision), when set.
  std::optional<DitPrecision> precision;
  // Only these offload depths (the user's explicit --dit-offload flags; 0 = none), when set.
  std::optional<int> offload_prefetch;
  bool cfg_batched = false;  // Wan's CFG passes in one batch (DGRID_WAN_CFG_BATCH)
};

struct DitChoice {
  std::vector<DitCandidate> candidates;  // in the order tried
  int chosen = -1;                       // index into candidates; -1 when nothing fits
  // When nothing fits: what would (the smallest candidate, its peak and the budget it needs).
  std::string refusal;

  bool fits() const { return chosen >= 0; }
  // One line per candidate: name, predicted step and peak, verdict.
  std::string ToText(absl::string_view indent) const;
  // RESOURCE_EXHAUSTED with `refusal` (OK when something fits).
  absl::Status RefusalStatus() const;
};

// The candidates for one rank of `layout` serving `workload`, within `budget_mib` (the GPU's
// memory or --vram-budget; kContextReserveMib is kept free). INVALID_ARGUMENT for a layout or
// workload the models cannot predict; a budget nothing fits is not an error here (DitChoice::fits).
absl::StatusOr<DitChoice> ChooseDitSettings(const MemoryModel& memory, const CostModel& cost,
                                            const ModelShape& model, const Workload& workload,
                                            const GroupShape& layout, double budget_mib,
                                            const DitChoiceOptions& options);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_DIT_SETTINGS_H_
