// dgrid-bench-denoise: times the FLUX.1 sampling loop (services/denoiser/sampler.h) on one GPU with
// a FLUX.1-dev-shaped transformer whose bf16 weights are random and made on the GPU (no download),
// and writes one JSON perf report per image size (bench/report.h).
//
//   dgrid-bench-denoise --runs=1024x28,512x28,2048x4 --out_dir=DIR --commit=SHA --card="H100"
//
// Per size: one untimed warm-up call of the sampler (--warmup_steps steps), then a timed call whose
// per-step times come from the sampler's on_step hook (it synchronises the device before each).
// The reported step time is the median of those steps. Achieved TFLOP/s divides the analytic
// FLOP count (families/flux/flux_family.h) by it; the card's bf16 matmul rate is measured in the
// same process (8192^3 at::matmul on random data, median of several) so the fraction compares like
// with like. Without a CUDA device it prints why and exits 1.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "bench/gpu_measure.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "families/flux/flux_family.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/sequence_parallel.h"
#include "services/denoiser/sampler.h"

namespace dgrid::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The GPU of this process: 0, or the rank's GPU in a group run.
c10::DeviceIndex g_device = 0;

void Sync() { at::accelerator::synchronizeDevice(g_device); }

struct RunSpec {
  int64_t size = families::flux::kFluxDefaults.width;
  int steps = families::flux::kFluxDefaults.steps;
};

absl::StatusOr<std::vector<RunSpec>> ParseRuns(const std::string& text) {
  std::vector<RunSpec> runs;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, 'x');
    RunSpec r;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &r.size) ||
        !absl::SimpleAtoi(parts[1], &r.steps) ||
        r.size < families::flux::kFluxDefaults.size_multiple() || r.steps < 1) {
      return InvalidArgument("--runs: expected SIZExSTEPS[,...], got '", item, "'");
    }
    runs.push_back(r);
  }
  if (runs.empty()) return InvalidArgument("--runs is empty");
  return runs;
}

// FLUX.1-dev's transformer config (black-forest-labs/FLUX.1-dev, transformer/config.json): the
// family's shape, plus the RoPE axes the shape facts do not need.
FluxTransformerConfig FluxDevConfig() {
  const families::TransformerShape shape = families::flux::FluxDevShape();
  FluxTransformerConfig c;
  c.in_channels = shape.in_channels;
  c.out_channels = shape.in_channels;
  c.num_layers = shape.num_layers;
  c.num_single_layers = shape.num_single_layers;
  c.attention_head_dim = shape.head_dim;
  c.num_attention_heads = shape.num_heads;
  c.joint_attention_dim = shape.joint_attention_dim;
  c.pooled_projection_dim = shape.pooled_projection_dim;
  c.guidance_embeds = shape.guidance_embeds;
  c.axes_dims_rope = {16, 56, 56};
  return c;
}

// Random weights under diffusers' parameter names: linear weights N(0, 0.02), biases 0, RMSNorm
// scales 1 (as a fresh init would give), bf16 on the GPU.
WeightMap RandomFluxWeights(const FluxTransformerConfig& c, const at::TensorOptions& opts) {
  WeightMap w("random FLUX.1-dev weights");
  for (const FluxParameter& p : FluxParameters(c)) {
    switch (p.kind) {
      case FluxParameter::kLinearWeight:
        w.Insert(p.name, at::empty(p.shape, opts).normal_(0.0, 0.02));
        break;
      case FluxParameter::kLinearBias:
        w.Insert(p.name, at::zeros(p.shape, opts));
        break;
      case FluxParameter::kNormScale:
        w.Insert(p.name, at::ones(p.shape, opts));
        break;
    }
  }
  return w;
}

absl::Status Run(const Config& config) {
  ASSIGN_OR_RETURN(std::string runs_text, config.GetString("runs"));
  ASSIGN_OR_RETURN(std::vector<RunSpec> runs, ParseRuns(runs_text));
  ASSIGN_OR_RETURN(std::string out_dir, config.GetString("out_dir"));
  ASSIGN_OR_RETURN(std::string prefix, config.GetString("prefix"));
  ASSIGN_OR_RETURN(int64_t warmup_steps, config.GetInt("warmup_steps"));
  ASSIGN_OR_RETURN(int64_t matmul_size, config.GetInt("matmul_size"));
  ASSIGN_OR_RETURN(int64_t matmul_reps, config.GetInt("matmul_reps"));
  ASSIGN_OR_RETURN(int64_t text_tokens, config.GetInt("text_tokens"));
  ASSIGN_OR_RETURN(int64_t seed, config.GetInt("seed"));
  PerfReport base;
  base.tool = "dgrid";
  ASSIGN_OR_RETURN(base.card, config.GetString("card"));
  ASSIGN_OR_RETURN(base.commit, config.GetString("commit"));
  ASSIGN_OR_RETURN(base.date, config.GetString("date"));
  if (base.date.empty()) base.date = TodayUtc();

  if (!at::hasCUDA()) {
    return absl::FailedPreconditionError(
        "no CUDA device: dgrid-bench-denoise measures the GPU path and needs one");
  }
  FluxTransformerConfig mc = FluxDevConfig();
  ASSIGN_OR_RETURN(mc.num_layers, config.GetInt("layers"));
  ASSIGN_OR_RETURN(mc.num_single_layers, config.GetInt("single_layers"));
  // A denoiser group (sequence / CFG parallel over NCCL): one process per GPU, rank r on GPU r.
  ASSIGN_OR_RETURN(int64_t ulysses, config.GetInt("ulysses"));
  ASSIGN_OR_RETURN(int64_t ring, config.GetInt("ring"));
  ASSIGN_OR_RETURN(int64_t cfg, config.GetInt("cfg"));
  ASSIGN_OR_RETURN(int64_t rank, config.GetInt("rank"));
  ASSIGN_OR_RETURN(double true_cfg, config.GetDouble("true_cfg"));
  ASSIGN_OR_RETURN(std::string save_latents, config.GetString("save_latents"));
  ASSIGN_OR_RETURN(ParallelLayout layout,
                   ParallelLayout::Create(static_cast<int>(cfg), static_cast<int>(ring),
                                          static_cast<int>(ulysses), static_cast<int>(rank)));
  RETURN_IF_ERROR(layout.CheckModel(static_cast<int>(mc.num_attention_heads)));
  g_device = static_cast<c10::DeviceIndex>(rank);
  RETURN_IF_ERROR(TorchCall("set device", [] { at::accelerator::setDeviceIndex(g_device); }));
  std::unique_ptr<Communicator> group_comm;
  std::unique_ptr<SequenceParallelGroup> group;
  if (layout.size() > 1) {
    CommunicatorOptions co;
    ASSIGN_OR_RETURN(co.leader_address, config.GetString("leader_address"));
    co.rank = layout.rank();
    co.size = layout.size();
    co.device_index = g_device;
    co.timeout = absl::Seconds(300);
    ASSIGN_OR_RETURN(group_comm, CreateNcclCommunicator(co));
    ASSIGN_OR_RETURN(group, SplitSequenceParallelGroup(*group_comm, layout));
  }
  const SequenceParallelContext* sp = group ? &group->context : nullptr;
  const bool leader = layout.rank() == 0;
  const at::TensorOptions opts =
      at::TensorOptions().dtype(at::kBFloat16).device(at::Device(at::kCUDA, g_device));

  ASSIGN_OR_RETURN(double matmul_tflops, TorchCall("matmul probe", [&] {
                     return MeasureMatmulTflops(g_device, matmul_size,
                                                static_cast<int>(matmul_reps));
                   }));
  std::printf("measured bf16 matmul %ld^3: %.1f TFLOP/s\n", static_cast<long>(matmul_size),
              matmul_tflops);

  auto start = Clock::now();
  ASSIGN_OR_RETURN(WeightMap weights, TorchCall("random weights", [&] {
                     at::manual_seed(static_cast<uint64_t>(seed));
                     WeightMap w = RandomFluxWeights(mc, opts);
                     Sync();
                     return w;
                   }));
  ASSIGN_OR_RETURN(FluxTransformer2DModel model, FluxTransformer2DModel::FromWeights(mc, weights));
  if (weights.size() != 0) {
    return Internal("random weights left unused: ", weights.RemainingNames().front());
  }
  const double build_ms = MsSince(start);
  const nlohmann::json after_weights = MemoryCheckpoint(g_device, "after_weights");

  FlowMatchEulerSchedulerConfig sched;  // FLUX.1-dev's scheduler_config.json
  sched.shift = 3.0;
  sched.use_dynamic_shifting = true;

  if (leader)
    std::printf("\n%-10s %6s %12s %12s %10s %9s %12s\n", "size", "steps", "step_ms(med)",
                "total_ms", "TFLOP/s", "fraction", "peak_MiB");
  std::vector<std::string> table;
  for (const RunSpec& r : runs) {
    FluxSamplerRequest req;
    req.request_id = absl::StrCat("bench-", r.size);
    req.height = req.width = r.size;
    req.guidance_scale = families::flux::kFluxDefaults.guidance_scale;
    req.seed = static_cast<uint64_t>(seed);
    ASSIGN_OR_RETURN(req.prompt_embeds, TorchCall("embeds", [&] {
                       return at::randn({1, text_tokens, mc.joint_attention_dim}, opts);
                     }));
    ASSIGN_OR_RETURN(req.pooled_prompt_embeds, TorchCall("pooled", [&] {
                       return at::randn({1, mc.pooled_projection_dim}, opts);
                     }));
    if (true_cfg > 1.0) {
      req.true_cfg_scale = true_cfg;
      ASSIGN_OR_RETURN(req.negative_prompt_embeds, TorchCall("negative embeds", [&] {
                         return at::randn({1, text_tokens, mc.joint_attention_dim}, opts);
                       }));
      ASSIGN_OR_RETURN(req.negative_pooled_prompt_embeds, TorchCall("negative pooled", [&] {
                         return at::randn({1, mc.pooled_projection_dim}, opts);
                       }));
    }
    RETURN_IF_ERROR(TorchCall("reset peak", [&] { at::accelerator::resetPeakStats(g_device); }));

    PerfReport rep = base;
    rep.steps.emplace_back("build_random_weights", build_ms);
    rep.memory_checkpoints.push_back(after_weights);
    req.num_inference_steps = static_cast<int>(warmup_steps);
    start = Clock::now();
    if (warmup_steps > 0) {
      RETURN_IF_ERROR(RunFluxSampler(model, sched, req, {}, sp).status());
    }
    rep.steps.emplace_back("warmup_sampler", MsSince(start));

    req.num_inference_steps = r.steps;
    std::vector<double> step_ms;
    FluxSamplerHooks hooks;
    hooks.on_step = [&](int, int, double seconds) { step_ms.push_back(seconds * 1e3); };
    RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
    start = Clock::now();
    ASSIGN_OR_RETURN(at::Tensor latents, RunFluxSampler(model, sched, req, hooks, sp));
    RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
    rep.total_duration_ms = MsSince(start);
    rep.steps.emplace_back("denoise", rep.total_duration_ms);
    rep.denoise_steps_ms = step_ms;
    ASSIGN_OR_RETURN(bool finite, TorchCall("finite check", [&] {
                       return at::isfinite(latents).all().item<bool>();
                     }));
    rep.memory_checkpoints.push_back(MemoryCheckpoint(g_device, "after_denoise"));

    families::TransformerShape shape = families::flux::FluxDevShape();
    shape.text_tokens = static_cast<int>(text_tokens);
    shape.num_layers = static_cast<int>(mc.num_layers);
    shape.num_single_layers = static_cast<int>(mc.num_single_layers);
    const int64_t image_tokens =
        shape.ImageTokens(static_cast<int>(r.size), static_cast<int>(r.size));
    // True CFG runs the transformer twice per step (on two ranks with cfg = 2).
    const double flops = shape.ForwardFlops(image_tokens) * (true_cfg > 1.0 ? 2 : 1);
    const double median_ms = Median(step_ms);
    const double tflops = flops / (median_ms * 1e-3) / 1e12;
    const double peak_mb = rep.memory_checkpoints.back()["peak_allocated_mb"].get<double>();
    rep.config = {{"model", "FLUX.1-dev shape, random bf16 weights"},
                  {"layers", mc.num_layers},
                  {"single_layers", mc.num_single_layers},
                  {"height", r.size},
                  {"width", r.size},
                  {"num_inference_steps", r.steps},
                  {"warmup_steps", warmup_steps},
                  {"text_tokens", text_tokens},
                  {"image_tokens", image_tokens},
                  {"guidance_scale", req.guidance_scale},
                  {"dtype", "bfloat16"},
                  {"layout", layout.ToString()},
                  {"gpus", layout.size()},
                  {"true_cfg_scale", true_cfg},
                  {"step_timing", "sampler on_step hook (device synchronised per step)"}};
    rep.metrics = {{"median_step_ms", median_ms},
                   {"flops_per_step", flops},
                   {"achieved_tflops", tflops},
                   {"matmul_tflops", matmul_tflops},
                   {"matmul_size", matmul_size},
                   {"fraction_of_matmul", tflops / matmul_tflops},
                   {"arithmetic_floor_ms", flops / (matmul_tflops * 1e12) * 1e3},
                   {"peak_memory_mb", peak_mb},
                   {"output_finite", finite}};
    if (!save_latents.empty() && leader) {
      RETURN_IF_ERROR(TorchCall("save latents", [&]() -> absl::Status {
        const at::Tensor f = latents.to(at::kFloat).contiguous().cpu();
        std::FILE* out = std::fopen(absl::StrCat(save_latents, "-", r.size, ".f32").c_str(), "wb");
        if (out == nullptr) return Internal("cannot write ", save_latents);
        std::fwrite(f.data_ptr(), sizeof(float), f.numel(), out);
        std::fclose(out);
        return absl::OkStatus();
      }));
    }
    if (!leader) continue;  // Every rank holds the same latents; the leader reports.
    if (!out_dir.empty()) {
      const std::string path = absl::StrCat(out_dir, "/", prefix, r.size, ".json");
      RETURN_IF_ERROR(WriteJsonFile(path, rep.ToJson()));
    }
    table.push_back(absl::StrCat(r.size, "x", r.size));
    std::printf("%-10s %6d %12.1f %12.1f %10.1f %9.3f %12.0f%s\n", table.back().c_str(), r.steps,
                median_ms, rep.total_duration_ms, tflops, tflops / matmul_tflops, peak_mb,
                finite ? "" : "  NON-FINITE OUTPUT");
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace dgrid::bench

int main(int argc, char** argv) {
  using dgrid::Setting;
  const dgrid::families::TransformerShape flux_dev = dgrid::families::flux::FluxDevShape();
  dgrid::Config config({
      {"runs", Setting::kString, "1024x28,512x28", "image sizes and steps: SIZExSTEPS,..."},
      {"warmup_steps", Setting::kInt, "2", "steps of the untimed warm-up call per size", 0, 100},
      {"text_tokens", Setting::kInt,
       absl::StrCat(dgrid::families::flux::kFluxDefaults.max_sequence_length), "T5 sequence length",
       1, 4096},
      {"ulysses", Setting::kInt, "1", "Ulysses degree of the group (one process per GPU)", 1, 64},
      {"ring", Setting::kInt, "1", "Ring degree of the group", 1, 64},
      {"cfg", Setting::kInt, "1", "CFG-parallel degree (1 or 2; 2 needs --true_cfg > 1)", 1, 2},
      {"rank", Setting::kInt, "0", "this process's rank in the group; it runs on GPU <rank>", 0,
       1023},
      {"leader_address", Setting::kString, "127.0.0.1:29517", "rank 0's rendezvous host:port"},
      {"true_cfg", Setting::kDouble, "1.0", "true CFG scale (> 1 adds a negative prompt pass)", 0,
       100},
      {"save_latents", Setting::kString, "",
       "leader writes the final latents as raw float32 to <path>-<size>.f32"},
      {"layers", Setting::kInt, absl::StrCat(flux_dev.num_layers),
       "double-stream blocks (FLUX.1-dev's by default; fewer for profiling)", 0, 100},
      {"single_layers", Setting::kInt, absl::StrCat(flux_dev.num_single_layers),
       "single-stream blocks (FLUX.1-dev's by default)", 0, 200},
      {"seed", Setting::kInt, "0", "seed of weights, embeddings and noise", 0, 1e9},
      {"matmul_size", Setting::kInt, "8192", "n of the n^3 bf16 matmul probe", 256, 32768},
      {"matmul_reps", Setting::kInt, "20", "timed products of the probe", 1, 1000},
      {"out_dir", Setting::kString, "", "folder for the JSON reports (none written if empty)"},
      {"prefix", Setting::kString, "dgrid-denoise-", "report name prefix (<prefix><size>.json)"},
      {"card", Setting::kString, "", "GPU name for the report"},
      {"commit", Setting::kString, "", "git commit for the report"},
      {"date", Setting::kString, "", "date for the report (default: today, UTC)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-denoise", config, argc, argv, dgrid::bench::Run);
}
