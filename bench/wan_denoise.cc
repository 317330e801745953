// dgrid-bench-wan-denoise: times the Wan2.1 text-to-video sampling loop (services/denoiser/
// wan_sampler.h) on one GPU with a transformer of a released Wan shape (families/wan/wan_family.h)
// whose bf16 weights are random and made on the GPU (no download), and writes one JSON perf report
// per shape (bench/report.h), in the fields of the FLUX reports (bench/denoise.cc).
//
//   dgrid-bench-wan-denoise --runs=wan2.1-1.3b:8,wan2.1-14b:4 --out_dir=DIR --commit=SHA
//       --card="NVIDIA H100 80GB HBM3"        (one command line)
//
// A step is what WanPipeline does per step: classifier-free guidance on (guidance 5.0: the
// transformer runs on the prompt and on the negative prompt, two forward passes), the guidance
// combination and the UniPC update (flow_shift 3.0, Wan2.1's 480p scheduler config). Per shape:
// one untimed warm-up call of the sampler (--warmup_steps steps), then a timed call; the bench's
// step hook synchronises the device after each step, so step k's time runs from the end of step
// k - 1 (or the synchronised start of the call) to the end of step k on the device. The reported
// step time is the median of the timed steps. Achieved TFLOP/s divides twice WanForwardFlops (the
// two passes) by it; the card's bf16 matmul rate is measured in the same process (n^3 at::matmul on
// random data, median of several) so the fraction compares like with like.
//
// Weights: every tensor of two or more dimensions (linear and patch-embedding weights, the
// scale-shift tables) N(0, 0.02), biases 0, norm scales 1; bf16, except the modules diffusers keeps
// in float32 (time_embedder, scale_shift_table, norm2), as WanTransformer3DModel::Load leaves them.
// bench/diffusers_wan_denoise.py builds the same shapes the same way.
//
// Which path ran is in each report's config: `fused_blocks` (UseWanFusedBlocks; DGRID_WAN_FUSED=0
// selects the reference path) and `cfg_batch` (UseWanCfgBatch; DGRID_WAN_CFG_BATCH=1 runs both
// CFG passes as one batch-2 forward). --profile_dir writes, per shape, the Kineto Chrome trace of
// one more sampler step (dgrid-<tag>-step-trace.json) after the report; bench/gpu_wan_run.sh sums
// its kernels.
//
// --offload=none,1,2 runs each shape once per entry: "none" with every weight on the GPU, N (a
// count) or F (a fraction, "0.1") with layerwise offload of the blocks at that prefetch depth
// (--dit-offload layerwise --dit-offload-prefetch N; the weights start in host memory, as Load
// reads them with the flag). The random weights are the same for every entry (same seed), so the
// final latents of an offloaded run are compared with the first "none" run's of the same shape
// (metrics.max_abs_diff_vs_plain; offload must not change them). Offloaded reports are named
// <prefix><tag>-<height>p<frames>-offload-<N>.json.
//
// Without a CUDA device it prints why and exits 1.
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "bench/gpu_measure.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "families/model_family.h"
#include "families/wan/wan_family.h"
#include "services/denoiser/models/wan_transformer.h"
#include "services/denoiser/schedulers/unipc_multistep.h"
#include "services/denoiser/wan_sampler.h"

namespace dgrid::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

constexpr c10::DeviceIndex kDevice = 0;

void Sync() { at::accelerator::synchronizeDevice(kDevice); }

struct RunSpec {
  families::TransformerShape shape;
  std::string tag;  // "wan14b": the shape in report names
  int steps = 0;
};

// "wan2.1-14b:4,wan2.1-1.3b:8". Only the Wan2.1 text-to-video shapes: TI2V-5B has its own VAE
// factors and per-token timesteps, which this bench does not set up.
absl::StatusOr<std::vector<RunSpec>> ParseRuns(const std::string& text) {
  std::vector<RunSpec> runs;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    RunSpec r;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &r.steps) || r.steps < 1) {
      return InvalidArgument("--runs: expected SHAPE:STEPS[,...], got '", item, "'");
    }
    ASSIGN_OR_RETURN(r.shape, families::wan::WanFamily().LookupShape(parts[0]));
    if (r.shape.name != families::wan::Wan14BShape().name &&
        r.shape.name != families::wan::Wan13BShape().name) {
      return InvalidArgument("--runs: ", parts[0], " is not a Wan2.1 text-to-video shape (",
                             families::wan::Wan13BShape().name, ", ",
                             families::wan::Wan14BShape().name, ")");
    }
    // "wan2.1-14b" -> "wan14b".
    r.tag = absl::StrCat("wan", r.shape.name.substr(r.shape.name.rfind('-') + 1));
    runs.push_back(std::move(r));
  }
  if (runs.empty()) return InvalidArgument("--runs is empty");
  return runs;
}

// One entry of --offload: "none" (every weight on the GPU) or a layerwise prefetch depth.
struct OffloadSpec {
  std::string prefetch;  // empty: none
  DitOffload offload;
};

absl::StatusOr<std::vector<OffloadSpec>> ParseOffloads(const std::string& text) {
  std::vector<OffloadSpec> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    OffloadSpec spec;
    if (item != "none") {
      spec.prefetch = std::string(item);
      absl::StatusOr<DitOffload> offload = ParseDitOffload("layerwise", item);
      if (!offload.ok()) {
        return InvalidArgument("--offload: '", item, "' is neither none nor a prefetch depth (",
                               offload.status().message(), ")");
      }
      spec.offload = *offload;
    }
    out.push_back(std::move(spec));
  }
  if (out.empty()) return InvalidArgument("--offload is empty");
  return out;
}

WanTransformerConfig ConfigOf(const families::TransformerShape& shape) {
  WanTransformerConfig c;
  c.num_attention_heads = shape.num_heads;
  c.attention_head_dim = shape.head_dim;
  c.in_channels = shape.in_channels;
  c.out_channels = shape.in_channels;
  c.text_dim = shape.joint_attention_dim;
  c.ffn_dim = shape.ffn_dim;
  c.num_layers = shape.num_layers;
  return c;
}

// Random weights under diffusers' parameter names (the file comment says which values and dtypes).
WeightMap RandomWanWeights(const WanTransformerConfig& c, const at::TensorOptions& opts) {
  WeightMap w("random Wan weights");
  const at::TensorOptions f32 = opts.dtype(at::kFloat);
  const int64_t d = c.inner_dim();
  auto normal = [](std::vector<int64_t> shape, const at::TensorOptions& o) {
    return at::empty(shape, o).normal_(0.0, 0.02);
  };
  auto linear = [&](const std::string& name, int64_t in, int64_t out, const at::TensorOptions& o) {
    w.Insert(name + ".weight", normal({out, in}, o));
    w.Insert(name + ".bias", at::zeros({out}, o));
  };
  const auto& p = c.patch_size;
  w.Insert("patch_embedding.weight", normal({d, c.in_channels, p[0], p[1], p[2]}, opts));
  w.Insert("patch_embedding.bias", at::zeros({d}, opts));
  linear("condition_embedder.time_embedder.linear_1", c.freq_dim, d, f32);
  linear("condition_embedder.time_embedder.linear_2", d, d, f32);
  linear("condition_embedder.time_proj", d, 6 * d, opts);
  linear("condition_embedder.text_embedder.linear_1", c.text_dim, d, opts);
  linear("condition_embedder.text_embedder.linear_2", d, d, opts);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string block = absl::StrCat("blocks.", i);
    for (const char* attn : {".attn1", ".attn2"}) {
      const std::string prefix = block + attn;
      for (const char* proj : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
        linear(prefix + proj, d, d, opts);
      }
      w.Insert(prefix + ".norm_q.weight", at::ones({d}, opts));
      w.Insert(prefix + ".norm_k.weight", at::ones({d}, opts));
    }
    if (c.cross_attn_norm) {
      w.Insert(block + ".norm2.weight", at::ones({d}, f32));
      w.Insert(block + ".norm2.bias", at::zeros({d}, f32));
    }
    linear(block + ".ffn.net.0.proj", d, c.ffn_dim, opts);
    linear(block + ".ffn.net.2", c.ffn_dim, d, opts);
    w.Insert(block + ".scale_shift_table", normal({1, 6, d}, f32));
  }
  linear("proj_out", d, c.out_channels * p[0] * p[1] * p[2], opts);
  w.Insert("scale_shift_table", normal({1, 2, d}, f32));
  return w;
}

// FLOPs of the attention products alone in one forward pass (self-attention over the video tokens,
// cross-attention to the text): the part of WanForwardFlops that is not a linear layer.
double AttentionFlops(const families::TransformerShape& s, int64_t image_tokens) {
  const double n = static_cast<double>(image_tokens);
  const double d = static_cast<double>(s.inner_dim());
  return s.num_layers * (4.0 * n * n * d + 4.0 * n * s.text_tokens * d);
}

// One sampler step of `req` (both passes, the guidance and the UniPC update) under the Kineto
// profiler (CPU and CUDA activities); its Chrome trace is written to `path`.
absl::Status ProfileStep(const WanTransformer3DModel& model, const WanPipelineConfig& pipeline,
                         const UniPCMultistepSchedulerConfig& sched, WanSamplerRequest req,
                         const std::string& path) {
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  req.num_inference_steps = 1;
  absl::Status run_status;
  RETURN_IF_ERROR(TorchCall("profile", [&] {
    const ProfilerConfig cfg(ProfilerState::KINETO);
    const std::set<ActivityType> activities = {ActivityType::CPU, ActivityType::CUDA};
    profiler::prepareProfiler(cfg, activities);
    profiler::enableProfiler(cfg, activities);
    run_status = RunWanSampler(model, nullptr, pipeline, sched, req).status();
    Sync();
    profiler::disableProfiler()->save(path);
  }));
  return run_status;
}

absl::Status Run(const Config& config) {
  ASSIGN_OR_RETURN(std::string runs_text, config.GetString("runs"));
  ASSIGN_OR_RETURN(std::vector<RunSpec> runs, ParseRuns(runs_text));
  ASSIGN_OR_RETURN(std::string offload_text, config.GetString("offload"));
  ASSIGN_OR_RETURN(std::vector<OffloadSpec> offloads, ParseOffloads(offload_text));
  ASSIGN_OR_RETURN(std::string out_dir, config.GetString("out_dir"));
  ASSIGN_OR_RETURN(std::string prefix, config.GetString("prefix"));
  ASSIGN_OR_RETURN(int64_t warmup_steps, config.GetInt("warmup_steps"));
  ASSIGN_OR_RETURN(int64_t height, config.GetInt("height"));
  ASSIGN_OR_RETURN(int64_t width, config.GetInt("width"));
  ASSIGN_OR_RETURN(int64_t frames, config.GetInt("frames"));
  ASSIGN_OR_RETURN(int64_t text_tokens, config.GetInt("text_tokens"));
  ASSIGN_OR_RETURN(double guidance, config.GetDouble("guidance"));
  ASSIGN_OR_RETURN(double flow_shift, config.GetDouble("flow_shift"));
  ASSIGN_OR_RETURN(int64_t matmul_size, config.GetInt("matmul_size"));
  ASSIGN_OR_RETURN(int64_t matmul_reps, config.GetInt("matmul_reps"));
  ASSIGN_OR_RETURN(int64_t seed, config.GetInt("seed"));
  ASSIGN_OR_RETURN(std::string profile_dir, config.GetString("profile_dir"));
  PerfReport base;
  base.tool = "dgrid";
  ASSIGN_OR_RETURN(base.card, config.GetString("card"));
  ASSIGN_OR_RETURN(base.commit, config.GetString("commit"));
  ASSIGN_OR_RETURN(base.date, config.GetString("date"));
  if (base.date.empty()) base.date = TodayUtc();

  if (!at::hasCUDA()) {
    return absl::FailedPreconditionError(
        "no CUDA device: dgrid-bench-wan-denoise measures the GPU path and needs one");
  }
  RETURN_IF_ERROR(TorchCall("set device", [] { at::accelerator::setDeviceIndex(kDevice); }));
  const at::TensorOptions opts =
      at::TensorOptions().dtype(at::kBFloat16).device(at::Device(at::kCUDA, kDevice));

  ASSIGN_OR_RETURN(double matmul_tflops, TorchCall("matmul probe", [&] {
                     return MeasureMatmulTflops(kDevice, matmul_size,
                                                static_cast<int>(matmul_reps));
                   }));
  std::printf("measured bf16 matmul %ld^3: %.1f TFLOP/s\n", static_cast<long>(matmul_size),
              matmul_tflops);

  // Wan2.1's scheduler_config.json at 480p: UniPC, flow prediction, flow_shift 3.0, order 2, bh2.
  UniPCMultistepSchedulerConfig sched;
  sched.flow_shift = flow_shift;
  WanPipelineConfig pipeline;  // Wan2.1: one transformer, VAE factors 4 (time) and 8 (space)
  const int64_t latent_frames = (frames - 1) / pipeline.vae_scale_factor_temporal + 1;

  std::printf("\n%-20s %6s %12s %12s %10s %9s %12s %10s\n", "shape", "steps", "step_ms(med)",
              "total_ms", "TFLOP/s", "fraction", "peak_MiB", "diff_plain");
  for (const RunSpec& r : runs) {
    at::Tensor plain_latents;  // the first "none" run's final latents (on the host)
    for (const OffloadSpec& off : offloads) {
      const bool offloaded = !off.prefetch.empty();
      const std::string name = offloaded ? absl::StrCat(r.tag, "-offload-", off.prefetch) : r.tag;
      const WanTransformerConfig mc = ConfigOf(r.shape);
      auto start = Clock::now();
      ASSIGN_OR_RETURN(WeightMap weights, TorchCall("random weights", [&] {
                         at::manual_seed(static_cast<uint64_t>(seed));
                         WeightMap w = RandomWanWeights(mc, opts);
                         Sync();
                         return w;
                       }));
      if (offloaded) {
        // Layerwise offload starts from weights on the host, as Load reads them with the flag.
        ASSIGN_OR_RETURN(weights,
                         TorchCall("weights to the host", [&]() -> absl::StatusOr<WeightMap> {
                           WeightMap host(weights.source());
                           std::vector<std::string> names;
                           for (const auto& [param, tensor] : weights.tensors())
                             names.push_back(param);
                           for (const std::string& param : names) {
                             ASSIGN_OR_RETURN(at::Tensor t, weights.Take(param));
                             host.Insert(param, t.to(at::kCPU));  // the GPU copy is freed here
                           }
                           return host;
                         }));
      }
      ASSIGN_OR_RETURN(WanTransformer3DModel model,
                       WanTransformer3DModel::FromWeights(mc, weights));
      if (weights.size() != 0) {
        return Internal("random weights left unused: ", weights.RemainingNames().front());
      }
      if (offloaded)
        RETURN_IF_ERROR(model.OffloadBlocks(absl::StrCat("cuda:", kDevice), off.offload));
      RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
      const double build_ms = MsBetween(start, Clock::now());

      WanSamplerRequest req;
      req.request_id = absl::StrCat("bench-", name);
      req.height = height;
      req.width = width;
      req.num_frames = frames;
      req.guidance_scale = guidance;
      req.seed = static_cast<uint64_t>(seed);
      ASSIGN_OR_RETURN(req.prompt_embeds, TorchCall("embeds", [&] {
                         return at::randn({1, text_tokens, mc.text_dim}, opts);
                       }));
      ASSIGN_OR_RETURN(req.negative_prompt_embeds, TorchCall("negative embeds", [&] {
                         return at::randn({1, text_tokens, mc.text_dim}, opts);
                       }));
      RETURN_IF_ERROR(TorchCall("reset peak", [] { at::accelerator::resetPeakStats(kDevice); }));

      PerfReport rep = base;
      rep.steps.emplace_back("build_random_weights", build_ms);
      rep.memory_checkpoints.push_back(MemoryCheckpoint(kDevice, "after_weights"));
      start = Clock::now();
      if (warmup_steps > 0) {
        req.num_inference_steps = static_cast<int>(warmup_steps);
        RETURN_IF_ERROR(RunWanSampler(model, nullptr, pipeline, sched, req).status());
      }
      rep.steps.emplace_back("warmup_sampler", MsBetween(start, Clock::now()));

      // The sampler does not wait for the device; the hook does, so each step is timed to its end
      // on the device. A failed synchronisation is kept and returned after the loop (hooks return
      // nothing, and no exception may leave them).
      std::vector<double> step_ms;
      absl::Status hook_status;
      Clock::time_point last;
      WanSamplerHooks hooks;
      hooks.on_step = [&](int, int, double) {
        absl::Status s = TorchCall("sync", [] { Sync(); });
        if (!s.ok() && hook_status.ok()) hook_status = s;
        const Clock::time_point now = Clock::now();
        step_ms.push_back(MsBetween(last, now));
        last = now;
      };
      req.num_inference_steps = r.steps;
      RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
      start = last = Clock::now();
      absl::StatusOr<at::Tensor> latents =
          RunWanSampler(model, nullptr, pipeline, sched, req, hooks);
      RETURN_IF_ERROR(hook_status);
      // The sampler answers INTERNAL "... hold NaN or Inf values ..." when the final latents are
      // not finite; the timing still stands and the report says so. Any other failure ends the run.
      if (!latents.ok() && !(absl::IsInternal(latents.status()) &&
                             absl::StrContains(latents.status().message(), "NaN or Inf"))) {
        return latents.status();
      }
      const bool finite = latents.ok();
      if (!finite) std::printf("%s: %s\n", name.c_str(), latents.status().ToString().c_str());
      // Offload must not change the result: the final latents against the plain run's.
      double max_abs_diff_vs_plain = -1;  // -1: no plain run of this shape before this one
      if (finite) {
        ASSIGN_OR_RETURN(at::Tensor host_latents, TorchCall("latents to the host", [&] {
                           return latents->to(at::kCPU, at::kFloat);
                         }));
        if (!offloaded && !plain_latents.defined()) {
          plain_latents = host_latents;
        } else if (plain_latents.defined()) {
          ASSIGN_OR_RETURN(max_abs_diff_vs_plain, TorchCall("latents diff", [&] {
                             return (host_latents - plain_latents).abs().max().item<double>();
                           }));
        }
      }
      RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
      rep.total_duration_ms = MsBetween(start, Clock::now());
      rep.steps.emplace_back("denoise", rep.total_duration_ms);
      rep.denoise_steps_ms = step_ms;
      rep.memory_checkpoints.push_back(MemoryCheckpoint(kDevice, "after_denoise"));

      families::TransformerShape shape = r.shape;
      shape.text_tokens = static_cast<int>(text_tokens);
      const int64_t image_tokens =
          latent_frames * shape.ImageTokens(static_cast<int>(width), static_cast<int>(height));
      const int passes = guidance > 1.0 ? 2 : 1;  // WanPipeline.do_classifier_free_guidance
      const double flops = families::wan::WanForwardFlops(shape, image_tokens) * passes;
      const double attention_flops = AttentionFlops(shape, image_tokens) * passes;
      const double median_ms = Median(step_ms);
      const double tflops = flops / (median_ms * 1e-3) / 1e12;
      const double peak_mb = rep.memory_checkpoints.back()["peak_allocated_mb"].get<double>();
      rep.config = {
          {"model", absl::StrCat(shape.name, " shape, random bf16 weights")},
          {"shape", shape.name},
          {"layers", mc.num_layers},
          {"heads", mc.num_attention_heads},
          {"ffn_dim", mc.ffn_dim},
          {"height", height},
          {"width", width},
          {"num_frames", frames},
          {"latent_frames", latent_frames},
          {"num_inference_steps", r.steps},
          {"warmup_steps", warmup_steps},
          {"text_tokens", text_tokens},
          {"image_tokens", image_tokens},
          {"guidance_scale", guidance},
          {"transformer_passes_per_step", passes},
          {"scheduler", absl::StrCat("UniPCMultistepScheduler flow_shift ", flow_shift)},
          {"dtype", "bfloat16"},
          {"gpus", 1},
          {"dit_offload", offloaded ? absl::StrCat("layerwise, prefetch ", off.prefetch, " (",
                                                   off.offload.PrefetchDepth(mc.num_layers), " of ",
                                                   mc.num_layers, " blocks)")
                                    : std::string("none")},
          {"fused_blocks", UseWanFusedBlocks(req.prompt_embeds)},
          {"cfg_batch", guidance > 1.0 && UseWanCfgBatch(opts.device())},
          {"step_timing",
           "sampler step (2 transformer passes + CFG + UniPC), device synchronised per "
           "step in the bench's step hook"}};
      rep.metrics = {{"median_step_ms", median_ms},
                     {"flops_per_step", flops},
                     {"attention_flops_per_step", attention_flops},
                     {"achieved_tflops", tflops},
                     {"matmul_tflops", matmul_tflops},
                     {"matmul_size", matmul_size},
                     {"fraction_of_matmul", tflops / matmul_tflops},
                     {"arithmetic_floor_ms", flops / (matmul_tflops * 1e12) * 1e3},
                     {"peak_memory_mb", peak_mb},
                     {"max_abs_diff_vs_plain", max_abs_diff_vs_plain},
                     {"output_finite", finite}};
      if (!out_dir.empty()) {
        const std::string path =
            absl::StrCat(out_dir, "/", prefix, r.tag, "-", height, "p", frames,
                         offloaded ? absl::StrCat("-offload-", off.prefetch) : "", ".json");
        RETURN_IF_ERROR(WriteJsonFile(path, rep.ToJson()));
      }
      std::printf("%-20s %6d %12.1f %12.1f %10.1f %9.3f %12.0f %10.3g%s\n", name.c_str(), r.steps,
                  median_ms, rep.total_duration_ms, tflops, tflops / matmul_tflops, peak_mb,
                  max_abs_diff_vs_plain, finite ? "" : "  NON-FINITE OUTPUT");
      std::fflush(stdout);
      if (!profile_dir.empty()) {
        const std::string path = absl::StrCat(profile_dir, "/dgrid-", name, "-step-trace.json");
        const absl::Status s = ProfileStep(model, pipeline, sched, req, path);
        std::printf("profile of one step: %s\n", s.ok() ? path.c_str() : s.ToString().c_str());
        std::fflush(stdout);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace dgrid::bench

int main(int argc, char** argv) {
  using dgrid::Setting;
  const dgrid::families::GenerationDefaults& wan = dgrid::families::wan::kWanDefaults;
  dgrid::Config config({
      {"runs", Setting::kString, "wan2.1-1.3b:8,wan2.1-14b:4",
       "Wan shapes and timed steps: SHAPE:STEPS,... (wan2.1-1.3b, wan2.1-14b)"},
      {"offload", Setting::kString, "none",
       "per shape, one run per entry: none (every weight on the GPU) or a layerwise offload "
       "prefetch depth (a count, or a fraction with a '.'), e.g. none,1,2"},
      {"warmup_steps", Setting::kInt, "1", "steps of the untimed warm-up call per shape", 0, 100},
      {"height", Setting::kInt, absl::StrCat(wan.height), "video height in pixels", 16, 4096},
      {"width", Setting::kInt, absl::StrCat(wan.width), "video width in pixels", 16, 4096},
      {"frames", Setting::kInt, absl::StrCat(wan.num_frames), "video frames (4k + 1)", 1, 1024},
      {"text_tokens", Setting::kInt, absl::StrCat(wan.max_sequence_length),
       "UMT5 sequence length of the prompt and of the negative prompt", 1, 4096},
      {"guidance", Setting::kDouble, absl::StrCat(wan.guidance_scale),
       "guidance_scale (> 1: classifier-free guidance, two passes per step)", 0, 100},
      {"flow_shift", Setting::kDouble, "3.0", "UniPC flow_shift (Wan2.1: 3.0 at 480p, 5.0 at 720p)",
       0.01, 100},
      {"seed", Setting::kInt, "0", "seed of weights, embeddings and noise", 0, 1e9},
      {"matmul_size", Setting::kInt, "8192", "n of the n^3 bf16 matmul probe", 256, 32768},
      {"matmul_reps", Setting::kInt, "20", "timed products of the probe", 1, 1000},
      {"out_dir", Setting::kString, "", "folder for the JSON reports (none written if empty)"},
      {"profile_dir", Setting::kString, "",
       "folder for a Kineto trace of one more step per shape (none if empty)"},
      {"prefix", Setting::kString, "dgrid-",
       "report name prefix (<prefix><wan14b|wan1.3b>-<height>p<frames>.json)"},
      {"card", Setting::kString, "", "GPU name for the report"},
      {"commit", Setting::kString, "", "git commit for the report"},
      {"date", Setting::kString, "", "date for the report (default: today, UTC)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-wan-denoise", config, argc, argv, dgrid::bench::Run);
}
