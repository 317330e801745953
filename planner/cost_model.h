// Predicted denoising step time of one request on one denoiser-group layout.
//
//   step = compute + ulysses all-to-all + exposed ring traffic + CFG exchange
//   compute = overhead_ms + FLOPs per GPU / rate     (FLOPs: the model's family, families/)
// `overhead_ms` and `rate` are fitted to measured single-GPU rows (bench/results/*.json); the
// communication terms are analytic (bytes moved over the link class the axis runs on, plus a fixed
// latency per collective). docs/placement.md lists the assumptions and the fit's error.
//
// With layerwise offload (--dit-offload layerwise) every block is copied host-to-device once per
// transformer forward the rank runs, on a copy stream that overlaps compute:
//   offloaded step = max(step above, block bytes x forwards / host_to_device_gbps)
// The measured offload rows are copy-bound at every prefetch depth (2026-12-07, H100: 434-441 ms
// against 40-124 ms of compute) and their step hardly moves with the compute, so neither a
// per-block term nor the depth is modelled.
//
// With sharded weights (--dit-shard-weights) in a group of N ranks every block is all-gathered
// from the group once per transformer forward the rank runs: each rank receives (N - 1) / N of the
// gathered block (planner/memory_model.h, ShardGatherBytesPerForward) over the link that spans the
// group (GroupShape::ring_link, as the CFG exchange), plus the per-collective latency per block.
// The denoiser begins block b's gather as block b - 1 computes (Communicator::AllGatherStart on
// NCCL's own stream; services/denoiser/models/sharded_blocks.h), so each block's transfer hides
// behind the compute of the block before it and only the excess shows:
//   gather = forwards x sum over blocks b of
//            (max(0, transfer_b - compute_{b-1}) + latency),  compute_{-1} = 0
// with compute_b the forward's compute less the fixed overhead, spread over the blocks by weight
// bytes. Calibration::shard_gathers_overlap (kShardGathersOverlapCompute) false adds every transfer
// whole (the synchronous gathers of before). Not measured yet: the overlap is predicted, and the
// NVLink the gathers share with Ulysses' all-to-alls and the SMs NCCL's kernels take from compute
// are not modelled (docs/perf-notes.md, "Asynchronous all-gather of sharded blocks").
//
// Value types; CostModel is immutable after construction and safe to share between threads.
// Errors: INVALID_ARGUMENT for a layout the model cannot run (heads % ulysses, cfg > 2, ...).
#ifndef DGRID_PLANNER_COST_MODEL_H_
#define DGRID_PLANNER_COST_MODEL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "families/registry.h"
#include "nlohmann/json_fwd.hpp"
#include "planner/model_shape.h"
#include "planner/topology.h"

namespace dgrid::planner {

enum class LinkClass { kNvlink, kPcie, kInterNode };
const char* LinkClassName(LinkClass link);

// A denoiser group's shape: cfg * ring * ulysses GPUs, and the links its axes run on.
struct GroupShape {
  int cfg = 1;
  int ring = 1;
  int ulysses = 1;
  LinkClass ulysses_link = LinkClass::kNvlink;
  LinkClass ring_link = LinkClass::kNvlink;

  int size() const { return cfg * ring * ulysses; }
  // "cfg2-ring1-ulysses4", the name parallel/ParallelLayout uses.
  std::string ToString() const;
};

// What a request asks for, as far as cost goes; by default the default family's default request.
struct RequestShape {
  int width = families::DefaultFamily().defaults().width;
  int height = families::DefaultFamily().defaults().height;
  int steps = families::DefaultFamily().defaults().steps;
  bool cfg = false;  // true CFG: a conditional and an unconditional pass per step
  int frames = 1;    // a video's frames (tokens grow with its latent frames)
  // Requests of this shape sharing each step's forward (continuous batching at step boundaries,
  // dgrid-denoiser --max-batch): the FLOPs and the bytes moved grow with it, the fixed overhead
  // and the collectives' latency do not, so a batched step costs less than `batch` lone ones.
  int batch = 1;
  // Step caching (GenerateRequest.cache): the method ("" = none, "fbcache", "teacache") and how
  // many of `steps` reuse the cache (the result's skipped_steps). A skipped fbcache step still runs
  // the first transformer block (1 / attention_layers() of a computed step, collectives included);
  // a skipped teacache step runs nothing the model counts. In a batch (`batch` > 1 requests of this
  // shape and cache) a member that skips a step leaves that step's forward and the others run it,
  // as the denoiser's batched loop does (services/denoiser/batched_sampler.h): RequestMs charges
  // each step the expected rows that run.
  std::string cache;
  int skipped_steps = 0;
};

struct StepEstimate {
  double compute_ms = 0;
  double ulysses_ms = 0;
  double ring_ms = 0;  // exposed part (ring traffic overlaps the attention of the block)
  double cfg_ms = 0;
  // Layerwise offload: the part of the step's host-to-device block copies that the compute and
  // communication above do not hide (0 without offload).
  double copy_ms = 0;
  // Sharded weights: the part of the step's block all-gathers that is not hidden (all of it with
  // Calibration::shard_gathers_overlap false; 0 without sharding).
  double gather_ms = 0;
  double total_ms() const {
    return compute_ms + ulysses_ms + ring_ms + cfg_ms + copy_ms + gather_ms;
  }
};

// Host-to-device copy bandwidth (GB/s) of layerwise offload when nothing is measured for the card:
// PCIe Gen5 x16 cards (H100, H200, B200) get the fit to the committed H100 offload rows
// (kMeasuredHostToDeviceGbps), and so does an empty name; other names (A100, L40S, RTX 4090: PCIe
// Gen4 x16) half of it, an assumption, not a measurement.
inline constexpr double kMeasuredHostToDeviceGbps = 54.2;
inline constexpr char kHostToDeviceSource[] =
    "fit to bench/results/2026-12-07-h100-55379e5-offload-run-offload-{1,2,4}-{512,1024}.json "
    "(NVIDIA H100 80GB HBM3, PCIe Gen5 x16, FLUX.1-dev shape)";
double DefaultHostToDeviceGbps(absl::string_view card_name);

// Whether sharded weights' block all-gathers run alongside compute: true since the denoiser begins
// the next blocks' gathers (AllGatherStart) before a block computes and joins each only before its
// own block. false: every gather adds to the step (a backend that gathers synchronously).
inline constexpr bool kShardGathersOverlapCompute = true;

// How a rank holds and runs its DiT, as far as step time goes.
struct OffloadShape {
  int prefetch = 0;          // layerwise offload at this prefetch depth; 0: none
  bool cfg_batched = false;  // both CFG passes in one forward (Wan's cfg_batch): one copy a step
  // Sharded weights over the layout's ranks (--dit-shard-weights) at this prefetch depth; 0: none.
  // The depth changes the memory, not the time: the gathers share one stream, so a deeper
  // prefetch begins them earlier but moves no more bytes per block computed.
  int shard_prefetch = 0;
};

struct Calibration {
  // Fitted on the H100 rows of 2026-11-27 (docs/placement.md); FitCalibration recomputes them.
  double overhead_ms = 15.2;
  double rate_tflops = 470.6;
  // Layerwise offload's host-to-device copies: fitted to the 2026-12-07 H100 offload rows
  // (bench/results/2026-12-07-h100-55379e5-offload-run-offload-*.json, FitHostToDeviceGbps).
  double host_to_device_gbps = kMeasuredHostToDeviceGbps;
  // Sharded weights' gathers hidden behind the step (kShardGathersOverlapCompute).
  bool shard_gathers_overlap = kShardGathersOverlapCompute;
  std::string source = "built-in (H100 SXM, bench/results 2026-11-27)";
};

// One measured step time.
struct MeasuredRow {
  std::string label;  // the file it came from
  std::string card;   // "NVIDIA H100 80GB HBM3", "NVIDIA H200 x 4", ...
  RequestShape request;
  GroupShape layout;  // config.layout ("cfg2-ring1-ulysses2"), 1/1/1 when absent; NVLink links
  // config.dit_offload's prefetch depth (0: none) and config.cfg_batch.
  OffloadShape offload;
  double step_ms = 0;
};

class CostModel {
 public:
  CostModel(Calibration calibration, LinkSpeeds links)
      : calibration_(std::move(calibration)), links_(links) {}

  absl::StatusOr<StepEstimate> Step(const ModelShape& model, const RequestShape& request,
                                    const GroupShape& layout) const;
  // The same step with `offload` (copy_ms set when offload.prefetch > 0, gather_ms when
  // offload.shard_prefetch > 0; INVALID_ARGUMENT for sharding on one GPU or with offload).
  absl::StatusOr<StepEstimate> Step(const ModelShape& model, const RequestShape& request,
                                    const GroupShape& layout, const OffloadShape& offload) const;
  // steps * Step(...).total_ms(), in milliseconds; with step caching, the skipped steps cost
  // their share of a step instead (RequestShape::cache).
  absl::StatusOr<double> RequestMs(const ModelShape& model, const RequestShape& request,
                                   const GroupShape& layout) const;

  const Calibration& calibration() const { return calibration_; }
  const LinkSpeeds& links() const { return links_; }

 private:
  Calibration calibration_;
  LinkSpeeds links_;
};

// Least-squares fit (on relative error) of overhead_ms and rate to single-GPU rows (layout 1/1/1)
// without offload. INVALID_ARGUMENT with fewer than two rows or a degenerate fit.
absl::StatusOr<Calibration> FitCalibration(const ModelShape& model,
                                           const std::vector<MeasuredRow>& rows);

// Least-squares fit (on relative error) of host_to_device_gbps to the offload rows whose copies
// `calibration`'s compute would not hide (copy-bound rows). INVALID_ARGUMENT without such a row.
absl::StatusOr<double> FitHostToDeviceGbps(const ModelShape& model, const Calibration& calibration,
                                           const std::vector<MeasuredRow>& rows);

// Fits links.latency_us (the fixed cost per collective / ring hop, the term that dominates while
// the parallel path is young) to the multi-GPU rows, by a 1-D search minimising the mean squared
// relative error; `links` gives the other link terms. INVALID_ARGUMENT without multi-GPU rows.
absl::StatusOr<double> FitCollectiveLatencyUs(const ModelShape& model,
                                              const Calibration& calibration,
                                              const LinkSpeeds& links,
                                              const std::vector<MeasuredRow>& rows);

// Reads the dgrid rows ("tool": "dgrid") of bench/report.h JSON files: config.width/height,
// config.num_frames (videos; 1 when absent), config.layout, config.true_cfg_scale (> 1 = true CFG;
// for a row with num_frames, guidance_scale > 1 is CFG, as Wan's is), card and median_step_ms;
// and the batched-loop reports of dgrid-bench-denoise --batches ("tool": "dgrid-batching-gpu"),
// one row per batch size (RequestShape::batch, mean_step_ms; one GPU), so that FitCalibration
// learns how a batched step grows. Reports of layerwise-offload runs (config.dit_offload) are rows
// with MeasuredRow::offload set (the other fits leave them out).
// Other tools' files and non-JSON files are skipped. INVALID_ARGUMENT naming the file and field.
absl::StatusOr<std::vector<MeasuredRow>> ReadBenchRows(const std::vector<std::string>& paths);

// Whether a bench report ran with layerwise offload: config.dit_offload present and not "none"
// (any other value, of any JSON type, counts as offload).
bool HasDitOffload(const nlohmann::json& report);

// The prefetch depth of a report's config.dit_offload ("layerwise, prefetch 2 (...)", or a
// fraction "prefetch 0.25", made a depth of `num_blocks` as DitOffload::PrefetchDepth does); 0 for
// "none" or no field. INVALID_ARGUMENT for another form.
absl::StatusOr<int> OffloadPrefetchOfReport(const nlohmann::json& report, int num_blocks);

// "cfg2-ring1-ulysses4" (GroupShape::ToString's form, the reports' config.layout) as a shape
// (NVLink links); INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<GroupShape> ParseGroupShape(const std::string& text, absl::string_view field);

// The files named by `list` (comma-separated files or folders; a folder means its *.json), sorted.
std::vector<std::string> ExpandJsonPaths(absl::string_view list);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_COST_MODEL_H_
