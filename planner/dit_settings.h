// Choosing how a denoiser rank holds its DiT within a memory budget (issue #20 item 5): each
// candidate (bf16; bf16 with layerwise offload at a few prefetch depths; FP8, lossy and FLUX only;
// sharded weights over a group of 2 or more GPUs; on one GPU shared with the stages, model offload
// of every component) gets the memory model's peak for the workload's
// largest request (planner/memory_model.h) and the cost model's share-weighted step time over the
// workload's classes (planner/cost_model.h); the mode then picks one among those that fit:
//   auto   - the fastest lossless candidate (within kSameSpeed of it, every weight on the GPU
//            over offload and sharding, then the faster of those, then the smallest peak); FP8
//            only when nothing lossless fits. Sharding, whose gathers the step hides only in
//            part (the first block's, the latencies, any excess over the compute), is so taken
//            only where it is the fastest lossless candidate that fits.
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
#include "planner/stage_memory.h"
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
  // "bf16", "bf16 + offload prefetch 2", "fp8 (lossy)", "sharded weights prefetch 1"
  std::string name;
  DitPrecision precision = DitPrecision::kBf16;
  int offload_prefetch = 0;  // 0: every weight on the device
  // Sharded weights over the layout's ranks at this prefetch depth (--dit-shard-prefetch); 0: not
  // sharded.
  int shard_prefetch = 0;
  // Model offload (--dit-offload model) on a GPU shared with the stages (DitChoiceOptions::
  // colocated), with the stages offloaded too (--text-encoder-device offload --vae-device offload):
  // every component's weights come in for its use only, so the GPU peaks at the largest use
  // (SharedGpuPeakMib with dit_model_offload). The step adds the DiT's copy per request spread
  // over the request's steps.
  bool model_offload = false;
  // Offload is bit-identical to bf16 (measured), and so is sharding (the gathered bytes are the
  // weights, tests/unit/denoiser); FP8 is not.
  bool lossless = true;
  bool available = true;  // false: not served for this model or layout (see verdict)
  MemoryEstimate memory;  // the denoiser rank's, for the workload's largest request
  // With DitChoiceOptions::colocated: the GPU's peak with the stages beside the denoiser
  // (SharedGpuPeakMib); 0 otherwise.
  double shared_peak_mib = 0;
  std::string largest_class;
  double step_ms = 0;  // share-weighted over the workload's classes
  bool fits = false;
  bool chosen = false;
  std::string verdict;  // "chosen: ..." or why not

  // What must fit the budget: shared_peak_mib when the stages share the GPU, else the denoiser's.
  double peak_mib() const { return shared_peak_mib > 0 ? shared_peak_mib : memory.total_mib(); }
  // Whether every weight stays on each GPU (neither offloaded nor sharded).
  bool resident() const { return offload_prefetch == 0 && shard_prefetch == 0 && !model_offload; }
  // --dit-precision / --dit-offload / --dit-shard-weights flags that give this candidate to a
  // denoiser (the shard flags as common/dit_shard_flags.h's DitShardArgs writes them).
  std::vector<std::string> DenoiserFlags() const;
  // The text encoders' and the VAE's flags that go with it (model offload: both offloaded).
  std::vector<std::string> StageFlags() const;
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
  // The sharded-weights depths tried (--dit-shard-prefetch N) on a layout of 2 or more GPUs. One:
  // the cost model gives a deeper prefetch no time (the gathers share one stream), so it would
  // hold more and save nothing.
  std::vector<int> shard_prefetch_depths = {1};
  // Only this sharding depth (the user's explicit --dit-shard-weights at its --dit-shard-prefetch;
  // 0 = not sharded), when set; it replaces shard_prefetch_depths.
  std::optional<int> shard_prefetch;
  bool cfg_batched = false;  // Wan's CFG passes in one batch (DGRID_WAN_CFG_BATCH)
  // The encoder and decoder stages on the same GPU as the denoiser rank (one GPU for everything:
  // `dgrid generate --local`, `dgrid up` on one GPU), planner/stage_memory.h; a candidate fits
  // when SharedGpuPeakMib does. Empty: the denoiser has its GPU to itself.
  std::vector<StageEstimate> colocated;
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
