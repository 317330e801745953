// Predicted peak GPU memory of one denoiser rank: the transformer's weights at the deployment's
// precision, the activations of one step, and the collective buffers of a group, checked against
// the peaks the benchmarks measured (bench/results: peak_memory_mb and the allocation after the
// weights) and used by `dgrid plan --vram-budget` to choose a precision that fits.
//
//   peak = weights(precision) + passes x (fixed + per_token x tokens_per_rank x inner_dim x 2
//   bytes)
//          + collective buffers (groups of more than one GPU)
//
// tokens_per_rank: the sequence one rank attends over (image or video tokens, plus the text where
// the family joins it to the sequence) divided by ulysses x ring; passes: 2 when both CFG passes
// run as one batch (Wan's cfg_batch), else 1 (FLUX runs them one after the other on a rank).
// `fixed` and `per_token` are per family, fitted to measured rows (FitMemoryModel); the built-in
// values are that fit to the committed reports named in kBuiltInMemorySource.
//
// With layerwise offload (--dit-offload layerwise --dit-offload-prefetch N) the blocks live in
// pinned host memory and at most N + 1 consecutive ones are on the device, so
//   weights = the weights outside the blocks + the largest N + 1 consecutive blocks
// (the family's parameter counts, families/model_family.h); the activations are the same. Nothing
// here is fitted to the offload rows: they check it (2026-12-07-h100-55379e5-offload-run-*).
//
// With sharded weights (--dit-shard-weights --dit-shard-prefetch P) in a group of N ranks
// (services/denoiser/models/sharded_blocks.h) every rank keeps 1/N of each block's packed buffer,
// zero-padded to a multiple of N elements, and a pass holds at most P + 1 consecutive blocks
// gathered whole (ShardedBlocks::Pass::Acquire drops the blocks before the running one, then
// gathers up to P ahead), so
//   weights = the weights outside the blocks + sum over blocks of ShardBytesPerRank
//             + the largest P + 1 consecutive gathered blocks (N x ShardBytesPerRank each)
// the activations and collective buffers as for the same layout unsharded. No sharded run has
// measured a peak yet: this is the parameter counts, not a fit (docs/placement.md).
//
// Plain values; thread-compatible. Errors: INVALID_ARGUMENT naming the field or the file.
#ifndef DGRID_PLANNER_MEMORY_MODEL_H_
#define DGRID_PLANNER_MEMORY_MODEL_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "planner/cost_model.h"
#include "planner/model_shape.h"

namespace dgrid::planner {

// The DiT's linear-layer precision (the denoiser's --dit-precision).
enum class DitPrecision { kBf16, kFp8 };
const char* DitPrecisionName(DitPrecision precision);
absl::StatusOr<DitPrecision> ParseDitPrecision(absl::string_view text);

struct FamilyMemory {
  double fixed_mib = 0;  // workspaces, RoPE tables, the text embeddings, ...
  double per_token = 0;  // live activation bytes per token, in units of inner_dim bf16 values
};

struct MemoryModel {
  std::map<std::string, FamilyMemory> families;  // by ModelFamily::name()
  double collective_mib = 0;                     // a group's NCCL / exchange buffers per rank
  std::string source;
};

// Fitted to the committed single- and multi-GPU reports (see kBuiltInMemorySource).
MemoryModel BuiltInMemoryModel();
extern const char kBuiltInMemorySource[];

struct MemoryEstimate {
  double weights_mib = 0;  // on the device at the peak (with offload: the resident part)
  double activations_mib = 0;
  double collective_mib = 0;
  // With layerwise offload: the blocks held in pinned host memory (not part of the GPU total).
  double host_mib = 0;
  double total_mib() const { return weights_mib + activations_mib + collective_mib; }
};

// Bytes on the device of `model`'s weights with layerwise offload at prefetch depth `prefetch`
// (>= 1; DitOffload::PrefetchDepth of the flags): the non-block weights plus the largest sum of
// prefetch + 1 consecutive blocks, in MiB.
double OffloadedWeightMib(const ModelShape& model, int prefetch);
// The blocks' bytes, in MiB: what offload holds in host memory and copies once per forward pass.
double BlockWeightMib(const ModelShape& model);

// Bytes one rank of `ranks` keeps of a bf16 block of `block_bytes` with sharded weights: the
// block's packed buffer padded with zeros to a multiple of `ranks` elements (ShardedBlocks::Pack),
// divided by `ranks`. A gathered block is `ranks` times this. Not counted: Pack's 64-byte alignment
// gaps between tensors (under 64 bytes a tensor) and the biases and norm scales the families'
// block counts leave out (well under 1% of a block).
double ShardBytesPerRank(double block_bytes, int ranks);
// Bytes on the device of `model`'s weights sharded over `ranks` (>= 2) at prefetch depth
// `prefetch` (>= 1, --dit-shard-prefetch): the non-block weights, this rank's shard of every block
// and the largest sum of prefetch + 1 consecutive gathered blocks, in MiB.
double ShardedWeightMib(const ModelShape& model, int ranks, int prefetch);
// The bytes a rank receives gathering every block once (one forward pass): each gathered block's
// (ranks - 1) / ranks, in bytes (the cost model's all-gather traffic).
double ShardGatherBytesPerForward(const ModelShape& model, int ranks);

// Weight bytes of the transformer at `precision`, from its family's parameter counts. FP8 keeps
// the block projections and MLPs in one byte (plus per-row scales); the rest stays bf16. FP8 is
// served for FLUX only: INVALID_ARGUMENT for another family.
absl::StatusOr<double> WeightMib(const ModelShape& model, DitPrecision precision);

// One rank's predicted peak for `request` on `layout`; `offload_prefetch` > 0: with layerwise
// offload at that prefetch depth (0: every weight on the device); `shard_prefetch` > 0: with the
// blocks sharded over the layout's ranks at that prefetch depth. INVALID_ARGUMENT for a family
// the model has no coefficients for, FP8 on a family that does not serve it, FP8 with offload or
// sharding, offload with sharding (the denoiser combines none of them), or sharding on a layout
// of one GPU.
absl::StatusOr<MemoryEstimate> DenoiserPeak(const MemoryModel& memory, const ModelShape& model,
                                            const RequestShape& request, const GroupShape& layout,
                                            DitPrecision precision, bool cfg_batched = false,
                                            int offload_prefetch = 0, int shard_prefetch = 0);

// "24GiB", "80GB", "20480MiB" or "512MB", in MiB (a unit is required); INVALID_ARGUMENT naming
// `flag` otherwise.
absl::StatusOr<double> ParseMemorySize(absl::string_view text, absl::string_view flag);

// Kept free beside the allocator's predicted peak for the CUDA context and the libraries' own
// allocations: an allowance, not measured (the reports measure the allocator's peak only).
inline constexpr double kContextReserveMib = 768;

// A size given in MiB as text: "22.4 GiB", or "768.0 MiB" under 1 GiB.
std::string FormatMib(double mib);

// Whether `estimate` fits `budget_mib` less kContextReserveMib.
bool FitsBudget(const MemoryEstimate& estimate, double budget_mib);

// Whether one denoiser rank serving `model`'s `largest` request on `layout` at `precision` fits
// `budget_mib` less kContextReserveMib. RESOURCE_EXHAUSTED otherwise, saying what it needs and
// whether the other precision would fit (FP8 where the family serves it).
absl::Status CheckDenoiserBudget(const MemoryModel& memory, const ModelShape& model,
                                 const RequestShape& largest, const GroupShape& layout,
                                 DitPrecision precision, double budget_mib);

// One measured peak, read from a bench report (tool "dgrid" with peak_memory_mb).
struct MemoryRow {
  std::string label;
  std::string card;
  ModelShape model;  // config.shape, else the default shape ("flux-dev")
  RequestShape request;
  GroupShape layout;
  DitPrecision precision = DitPrecision::kBf16;
  bool cfg_batched = false;
  // config.dit_offload "layerwise, prefetch N": the prefetch depth N (a fraction of the blocks
  // made a depth as the denoiser makes it); 0 without offload.
  int offload_prefetch = 0;
  double weights_mib = 0;  // allocated after the weights (memory_checkpoints "after_weights")
  double peak_mib = 0;     // peak_memory_mb
};

// Rows of the reports among `paths` that measured a peak, layerwise-offload runs included (their
// weights_mib is then the non-block weights alone); other files are skipped.
absl::StatusOr<std::vector<MemoryRow>> ReadMemoryRows(const std::vector<std::string>& paths);

// Least squares per family of (peak - measured weights) / passes = fixed + per_token x x over the
// single-GPU rows without offload (x = tokens x inner_dim x 2 bytes, MiB), then collective_mib as
// the mean remaining excess of the multi-GPU rows. Offload rows are left out (they check the model,
// they do not fit it). INVALID_ARGUMENT when a family has fewer than two single-GPU rows with
// different token counts.
absl::StatusOr<MemoryModel> FitMemoryModel(const std::vector<MemoryRow>& rows);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_MEMORY_MODEL_H_
