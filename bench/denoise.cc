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
//
// --precisions=bf16,fp8 times each precision of the DiT's linear layers in turn (the same random
// weights, quantized at load for fp8; "fp8-fast" is fp8 with Hopper's fast FP8 accumulation, as
// --dit-precision fp8-fast serves it; "bf16-gated" is bf16 with the gated residuals folded into
// the output GEMMs, the opt-in DGRID_GATED_GEMM=1 path; "bf16" keeps them as separate passes;
// "bf16-graph" / "fp8-fast-graph" add CUDA graphs of the forward pass (DGRID_CUDA_GRAPHS);
// "bf16-stepmod" is bf16 with the modulation linears run in every forward pass (the path before
// modulation rows were computed 16 steps at a time, DGRID_MODULATION_WINDOW=0);
// "offload:N" is bf16 with the blocks offloaded layerwise at prefetch N, --dit-offload layerwise
// --dit-offload-prefetch N, its report's config.dit_offload saying so; "shard:N", in a group, bf16
// with the blocks sharded over the group at prefetch N, --dit-shard-weights, config.dit_shard),
// one report per precision and size. With --quality_seeds, each precision also runs those seeds at
// --quality_size and keeps the final latents; every precision is then compared with bf16 on the
// same seeds: relative error of the latents, and, with --vae (an AutoencoderKL folder with 16
// latent channels, e.g. the embedded models/dgrid-shapes/vae), PSNR and largest pixel difference
// of the decoded 8-bit images (one <prefix>quality.json).
//
// --batches=1,2,4 (one GPU) times each size's request as a batch of B same-size requests with
// different seeds through the served batched loop (services/denoiser/batched_sampler.h, what
// dgrid-denoiser --max-batch runs), after an untimed warm-up batch of the same B: batch step time
// and images per second against B = 1 (<prefix>batch-<size>.json). --caches=fbcache:0.08,... runs
// each size's timed request again with each step-cache setting (common/step_cache.h spec): time,
// skipped steps, speed-up over the uncached timed run and, with --vae, PSNR of the decoded image
// against the uncached one (<prefix>cache-<size>.json).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "bench/gpu_measure.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/status.h"
#include "common/step_cache.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "families/flux/flux_family.h"
#include "kernels/cuda_graph.h"
#include "kernels/fp8_linear.h"
#include "kernels/gated_linear.h"
#include "parallel/communicator.h"
#include "parallel/parallel_layout.h"
#include "services/decoder/image_io.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/models/flux_fused_blocks.h"
#include "services/denoiser/models/flux_parameters.h"
#include "services/denoiser/models/flux_transformer.h"
#include "services/denoiser/models/modulation_schedule.h"
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

// The FP8 rate of an n^3 product through kernels::Fp8Linear (row-wise scales, bf16 output): median
// of `reps` products after 3 warm-ups, each timed with the device synchronised.
double MeasureFp8MatmulTflops(int64_t n, int reps) {
  const at::TensorOptions o =
      at::TensorOptions().dtype(at::kBFloat16).device(at::Device(at::kCUDA, g_device));
  const kernels::Fp8Rows a = kernels::QuantizeRowsFp8(at::randn({n, n}, o));
  const kernels::Fp8Rows b = kernels::QuantizeRowsFp8(at::randn({n, n}, o));
  for (int i = 0; i < 3; ++i) kernels::Fp8Linear(a, b, at::Tensor());
  Sync();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    kernels::Fp8Linear(a, b, at::Tensor());
    Sync();
    ms.push_back(MsSince(start));
  }
  return 2.0 * static_cast<double>(n) * n * n / (Median(ms) * 1e-3) / 1e12;
}

// One precision of the DiT's linear layers to time.
struct PrecisionSpec {
  std::string name;  // "bf16", "bf16-gated", "bf16-graph", "fp8", "fp8-fast", "fp8-fast-graph"
  flux::LinearPrecision precision = flux::LinearPrecision::kModelDtype;
  // The gated residuals folded into the output GEMMs where the device runs that (bf16 only).
  bool gated_residual_gemm = false;
  // "offload:N": bf16 with layerwise offload of the blocks (--dit-offload layerwise
  // --dit-offload-prefetch N); empty: every weight on the GPU.
  std::string offload_prefetch;
  // "bf16-graph", "fp8-fast-graph": the same with CUDA graphs of the forward pass
  // (FluxTransformer2DModel::EnableCudaGraphs, DGRID_CUDA_GRAPHS in the served stage).
  bool cuda_graphs = false;
  // "bf16-stepmod": modulation linears in every pass (ModulationWindow 0) instead of the default.
  bool per_step_modulation = false;
  // "shard:N": bf16 with the blocks sharded over the group (--dit-shard-weights
  // --dit-shard-prefetch N); 0: whole weights on every rank.
  int64_t shard_prefetch = 0;
};

absl::StatusOr<std::vector<PrecisionSpec>> ParsePrecisions(const std::string& text) {
  std::vector<PrecisionSpec> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    if (item == "bf16") {
      out.push_back({"bf16", flux::LinearPrecision::kModelDtype, false});
    } else if (item == "bf16-gated") {
      out.push_back({"bf16-gated", flux::LinearPrecision::kModelDtype, true});
    } else if (item == "fp8") {
      out.push_back({"fp8", flux::LinearPrecision::kFp8, false});
    } else if (item == "fp8-fast") {
      out.push_back({"fp8-fast", flux::LinearPrecision::kFp8Fast, false});
    } else if (item == "bf16-graph") {
      out.push_back({"bf16-graph", flux::LinearPrecision::kModelDtype, false, "", true});
    } else if (item == "fp8-fast-graph") {
      out.push_back({"fp8-fast-graph", flux::LinearPrecision::kFp8Fast, false, "", true});
    } else if (item == "bf16-stepmod") {
      out.push_back({"bf16-stepmod", flux::LinearPrecision::kModelDtype, false, "", false, true});
    } else if (absl::StartsWith(item, "offload:")) {
      const std::string prefetch(item.substr(8));
      RETURN_IF_ERROR(ParseDitOffload("layerwise", prefetch).status());
      out.push_back({absl::StrCat("offload-", prefetch), flux::LinearPrecision::kModelDtype, false,
                     prefetch});
    } else if (absl::StartsWith(item, "shard:")) {
      ASSIGN_OR_RETURN(DitShard shard,
                       ParseDitShard("true", std::string(item.substr(6)), DitOffload()));
      PrecisionSpec spec{absl::StrCat("shard-", shard.prefetch),
                         flux::LinearPrecision::kModelDtype};
      spec.shard_prefetch = shard.prefetch;
      out.push_back(std::move(spec));
    } else {
      return InvalidArgument(
          "--precisions: '", item,
          "' must be bf16, bf16-gated, bf16-graph, bf16-stepmod, fp8, fp8-fast, fp8-fast-graph, ",
          "offload:N or shard:N");
    }
  }
  if (out.empty()) return InvalidArgument("--precisions is empty");
  return out;
}

absl::StatusOr<std::vector<int64_t>> ParseSeeds(const std::string& text) {
  std::vector<int64_t> seeds;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t seed = 0;
    if (!absl::SimpleAtoi(item, &seed) || seed < 0) {
      return InvalidArgument("--quality_seeds: '", item, "' is not a seed");
    }
    seeds.push_back(seed);
  }
  return seeds;
}

// The request of one timed or quality run: random prompt embeddings drawn from `seed`, so every
// precision sees the same ones.
absl::StatusOr<FluxSamplerRequest> MakeRequest(const FluxTransformerConfig& mc, int64_t size,
                                               int64_t seed, int64_t text_tokens, double true_cfg,
                                               const at::TensorOptions& opts) {
  return TorchCall("request", [&] {
    at::manual_seed(static_cast<uint64_t>(seed));
    FluxSamplerRequest req;
    req.request_id = absl::StrCat("bench-", size);
    req.height = req.width = size;
    req.guidance_scale = families::flux::kFluxDefaults.guidance_scale;
    req.seed = static_cast<uint64_t>(seed);
    req.prompt_embeds = at::randn({1, text_tokens, mc.joint_attention_dim}, opts);
    req.pooled_prompt_embeds = at::randn({1, mc.pooled_projection_dim}, opts);
    if (true_cfg > 1.0) {
      req.true_cfg_scale = true_cfg;
      req.negative_prompt_embeds = at::randn({1, text_tokens, mc.joint_attention_dim}, opts);
      req.negative_pooled_prompt_embeds = at::randn({1, mc.pooled_projection_dim}, opts);
    }
    return req;
  });
}

absl::StatusOr<std::vector<int64_t>> ParseBatches(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t b = 0;
    if (!absl::SimpleAtoi(item, &b) || b < 1 || b > 64) {
      return InvalidArgument("--batches: '", item, "' is not a batch size in [1, 64]");
    }
    out.push_back(b);
  }
  return out;
}

// A decoder for comparing images (loaded once, on first use).
class ImageDecoder {
 public:
  explicit ImageDecoder(std::string path) : path_(std::move(path)) {}
  bool enabled() const { return !path_.empty(); }
  absl::StatusOr<decoder::Image8> Decode(const at::Tensor& latents) {
    if (!vae_) {
      LoadOptions load;
      load.device = absl::StrCat("cuda:", g_device);
      load.floating_dtype = "float32";
      ASSIGN_OR_RETURN(decoder::AutoencoderKL loaded, decoder::AutoencoderKL::Load(path_, load));
      vae_.emplace(std::move(loaded));
    }
    ASSIGN_OR_RETURN(at::Tensor images,
                     vae_->DecodeDenoised(latents.to(vae_->device(), at::kFloat)));
    ASSIGN_OR_RETURN(std::vector<decoder::Image8> out, decoder::PostprocessImages(images));
    return out.at(0);
  }

 private:
  std::string path_;
  std::optional<decoder::AutoencoderKL> vae_;
};

// The request `base` as a batch of B (seeds seed, seed+1, ...; each its own random prompt
// embeddings) through FluxBatchedSampler until every member ends; returns the wall time (ms) of
// the batch from its first step to the last member's end, device synchronised.
absl::StatusOr<double> RunBatch(const FluxTransformer2DModel& model,
                                const FlowMatchEulerSchedulerConfig& sched,
                                const FluxTransformerConfig& mc, int64_t size, int steps,
                                int64_t batch, int64_t seed, int64_t text_tokens, double true_cfg,
                                const at::TensorOptions& opts) {
  // The requests are added as the lone loop takes them (AddRequest), not through a DenoiseInput.
  FluxBatchedSampler sampler(model, sched, [](const DenoiseInput&) {
    return absl::StatusOr<FluxSamplerRequest>(absl::UnimplementedError("not used"));
  });
  for (int64_t i = 0; i < batch; ++i) {
    ASSIGN_OR_RETURN(FluxSamplerRequest req,
                     MakeRequest(mc, size, seed + i, text_tokens, true_cfg, opts));
    req.request_id = absl::StrCat("batch-", i);
    req.num_inference_steps = steps;
    RETURN_IF_ERROR(sampler.AddRequest(i, req, {}));
  }
  RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
  const auto start = Clock::now();
  while (sampler.size() > 0) {
    for (BatchedSampler::Ended& e : sampler.Step()) {
      if (!e.result.ok()) return e.result.status();
    }
  }
  RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
  return MsSince(start);
}

// PSNR (dB, peak 255) and the largest and mean absolute difference of two 8-bit images.
nlohmann::json CompareImages(const decoder::Image8& a, const decoder::Image8& b) {
  double sq = 0, sum = 0;
  int max_diff = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const int d = std::abs(static_cast<int>(a.pixels[i]) - static_cast<int>(b.pixels[i]));
    max_diff = std::max(max_diff, d);
    sum += d;
    sq += static_cast<double>(d) * d;
  }
  const double n = static_cast<double>(a.pixels.size());
  const double mse = sq / n;
  return {{"psnr_db", mse == 0 ? 999.0 : 10 * std::log10(255.0 * 255.0 / mse)},
          {"max_abs_pixel_diff", max_diff},
          {"mean_abs_pixel_diff", sum / n},
          {"height", a.height},
          {"width", a.width}};
}

// Every precision's quality-run latents against bf16's on the same seeds, decoded through the VAE
// at `vae_path` when given; prints a table and writes <prefix>quality.json.
absl::Status CompareQuality(const std::map<std::string, std::map<int64_t, at::Tensor>>& latents,
                            int64_t size, int64_t steps, const std::string& vae_path,
                            const std::string& out_dir, const std::string& prefix,
                            const PerfReport& base) {
  std::optional<decoder::AutoencoderKL> vae;
  if (!vae_path.empty()) {
    LoadOptions load;
    load.device = absl::StrCat("cuda:", g_device);
    load.floating_dtype = "float32";
    ASSIGN_OR_RETURN(decoder::AutoencoderKL loaded, decoder::AutoencoderKL::Load(vae_path, load));
    vae.emplace(std::move(loaded));
  }
  const auto decode = [&](const at::Tensor& l) -> absl::StatusOr<decoder::Image8> {
    ASSIGN_OR_RETURN(at::Tensor images, vae->DecodeDenoised(l));
    ASSIGN_OR_RETURN(std::vector<decoder::Image8> out, decoder::PostprocessImages(images));
    return out.at(0);
  };
  nlohmann::json rows = nlohmann::json::array();
  std::printf("\nquality against bf16, %ldx%ld, %ld steps%s\n%-9s %6s %12s %10s %9s %10s\n",
              static_cast<long>(size), static_cast<long>(size), static_cast<long>(steps),
              vae ? absl::StrCat(", decoded by ", vae_path).c_str() : "", "precision", "seed",
              "latent_rel", "PSNR_dB", "max_diff", "mean_diff");
  for (const auto& [name, by_seed] : latents) {
    if (name == "bf16") continue;
    for (const auto& [seed, l] : by_seed) {
      const at::Tensor& ref = latents.at("bf16").at(seed);
      nlohmann::json row = {{"precision", name}, {"seed", seed}};
      ASSIGN_OR_RETURN(double rel, TorchCall("latent error", [&] {
                         return ((l - ref).norm() / ref.norm()).item<double>();
                       }));
      row["latent_rel_err"] = rel;
      row["latents_finite"] = at::isfinite(l).all().item<bool>();
      if (vae) {
        ASSIGN_OR_RETURN(decoder::Image8 a, decode(l.to(vae->device())));
        ASSIGN_OR_RETURN(decoder::Image8 b, decode(ref.to(vae->device())));
        row["image"] = CompareImages(a, b);
      }
      std::printf("%-9s %6ld %12.4f %10.2f %9d %10.3f\n", name.c_str(), static_cast<long>(seed),
                  rel, vae ? row["image"]["psnr_db"].get<double>() : 0.0,
                  vae ? row["image"]["max_abs_pixel_diff"].get<int>() : -1,
                  vae ? row["image"]["mean_abs_pixel_diff"].get<double>() : 0.0);
      rows.push_back(row);
    }
  }
  std::fflush(stdout);
  if (out_dir.empty()) return absl::OkStatus();
  nlohmann::json report = {
      {"tool", "dgrid-quality"},
      {"card", base.card},
      {"date", base.date},
      {"commit", base.commit},
      {"config",
       {{"model", "FLUX.1-dev shape, random bf16 weights (same seed for every precision)"},
        {"height", size},
        {"width", size},
        {"num_inference_steps", steps},
        {"reference", "bf16 on the same seeds (noise and prompt embeddings)"},
        {"vae", vae_path.empty() ? "none (latents only)" : vae_path},
        {"pixels", "8-bit RGB as the decoder stage makes them; PSNR with peak 255"}}},
      {"comparisons", rows}};
  return WriteJsonFile(absl::StrCat(out_dir, "/", prefix, "quality.json"), report);
}

// --batches for one run size: each B's batch after an untimed warm-up batch of the same B.
absl::Status TimeBatches(const FluxTransformer2DModel& model,
                         const FlowMatchEulerSchedulerConfig& sched,
                         const FluxTransformerConfig& mc, const RunSpec& r,
                         const std::vector<int64_t>& batches, int64_t warmup_steps, int64_t seed,
                         int64_t text_tokens, double true_cfg, const at::TensorOptions& opts,
                         const PerfReport& base, const std::string& precision,
                         const std::string& out_dir, const std::string& prefix) {
  std::printf("\nbatched loop, %ldx%ld, %d steps (%s)\n%6s %12s %14s %10s %12s %12s\n",
              static_cast<long>(r.size), static_cast<long>(r.size), r.steps, precision.c_str(),
              "batch", "batch_ms", "step_ms(mean)", "images/s", "vs_batch_1", "peak_MiB");
  nlohmann::json rows = nlohmann::json::array();
  double single_rate = 0;
  for (const int64_t b : batches) {
    RETURN_IF_ERROR(TorchCall("reset peak", [&] { at::accelerator::resetPeakStats(g_device); }));
    ASSIGN_OR_RETURN(double warm_ms, RunBatch(model, sched, mc, r.size,
                                              static_cast<int>(std::max<int64_t>(warmup_steps, 1)),
                                              b, seed + 1000, text_tokens, true_cfg, opts));
    ASSIGN_OR_RETURN(double ms, RunBatch(model, sched, mc, r.size, r.steps, b, seed, text_tokens,
                                         true_cfg, opts));
    const double rate = static_cast<double>(b) * 1e3 / ms;
    if (b == 1) single_rate = rate;
    const nlohmann::json memory = MemoryCheckpoint(g_device, "after_batch");
    const double peak_mb = memory["peak_allocated_mb"].get<double>();
    nlohmann::json row = {{"batch", b},           {"warmup_ms", warm_ms},
                          {"batch_ms", ms},       {"mean_step_ms", ms / r.steps},
                          {"images_per_s", rate}, {"peak_memory_mb", peak_mb}};
    if (single_rate > 0) row["throughput_vs_batch_1"] = rate / single_rate;
    std::printf("%6ld %12.1f %14.1f %10.3f %12s %12.0f\n", static_cast<long>(b), ms, ms / r.steps,
                rate, single_rate > 0 ? absl::StrFormat("%.2fx", rate / single_rate).c_str() : "-",
                peak_mb);
    std::fflush(stdout);
    rows.push_back(row);
  }
  if (out_dir.empty()) return absl::OkStatus();
  nlohmann::json report = {
      {"tool", "dgrid-batching-gpu"},
      {"card", base.card},
      {"date", base.date},
      {"commit", base.commit},
      {"config",
       {{"model", "FLUX.1-dev shape, random bf16 weights"},
        {"dit_precision", precision},
        {"height", r.size},
        {"width", r.size},
        {"num_inference_steps", r.steps},
        {"text_tokens", text_tokens},
        {"true_cfg_scale", true_cfg},
        {"loop",
         "FluxBatchedSampler (dgrid-denoiser --max-batch), B requests with different "
         "seeds and prompt embeddings from the first step to the last, device "
         "synchronised; an untimed warm-up batch of the same B before each"}}},
      {"rows", rows}};
  return WriteJsonFile(absl::StrCat(out_dir, "/", prefix, "batch-", r.size, ".json"), report);
}

// --caches for one run size: the timed request again with each setting, against its uncached
// run (`uncached`, `uncached_ms`).
absl::Status TimeCaches(const FluxTransformer2DModel& model,
                        const FlowMatchEulerSchedulerConfig& sched, const RunSpec& r,
                        const FluxSamplerRequest& request, const at::Tensor& uncached,
                        double uncached_ms,
                        const std::vector<std::pair<std::string, StepCacheConfig>>& caches,
                        ImageDecoder& images, const SequenceParallelContext* sp,
                        const PerfReport& base, const std::string& precision,
                        const std::string& out_dir, const std::string& prefix) {
  std::optional<decoder::Image8> reference;
  if (images.enabled()) {
    ASSIGN_OR_RETURN(reference, images.Decode(uncached));
  }
  std::printf(
      "\nstep cache, %ldx%ld, %d steps (%s; uncached %.1f ms)\n%-22s %8s %12s %9s "
      "%11s %9s %9s\n",
      static_cast<long>(r.size), static_cast<long>(r.size), r.steps, precision.c_str(), uncached_ms,
      "setting", "skipped", "total_ms", "speed-up", "latent_rel", "PSNR_dB", "max_diff");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [spec, cache] : caches) {
    FluxSamplerRequest req = request;
    req.cache = cache;
    int skipped = 0;
    FluxSamplerHooks hooks;
    hooks.on_cached_step = [&](int) { ++skipped; };
    RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
    const auto start = Clock::now();
    ASSIGN_OR_RETURN(at::Tensor latents, RunFluxSampler(model, sched, req, hooks, sp));
    RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
    const double ms = MsSince(start);
    ASSIGN_OR_RETURN(double rel, TorchCall("latent error", [&] {
                       return ((latents.to(at::kFloat) - uncached.to(at::kFloat)).norm() /
                               uncached.to(at::kFloat).norm())
                           .item<double>();
                     }));
    nlohmann::json row = {{"setting", spec},
                          {"method", StepCacheMethodName(cache.method)},
                          {"threshold", cache.threshold},
                          {"warmup_steps", cache.warmup_steps},
                          {"max_skip", cache.max_skip},
                          {"skipped_steps", skipped},
                          {"total_ms", ms},
                          {"uncached_total_ms", uncached_ms},
                          {"speedup", uncached_ms / ms},
                          {"latent_rel_err", rel}};
    double psnr = 0;
    int max_diff = -1;
    if (reference) {
      ASSIGN_OR_RETURN(decoder::Image8 image, images.Decode(latents));
      row["image"] = CompareImages(image, *reference);
      psnr = row["image"]["psnr_db"].get<double>();
      max_diff = row["image"]["max_abs_pixel_diff"].get<int>();
    }
    std::printf("%-22s %5d/%-2d %12.1f %8.2fx %11.4f %9.2f %9d\n", spec.c_str(), skipped, r.steps,
                ms, uncached_ms / ms, rel, psnr, max_diff);
    std::fflush(stdout);
    rows.push_back(row);
  }
  if (out_dir.empty()) return absl::OkStatus();
  nlohmann::json report = {
      {"tool", "dgrid-step-cache-gpu"},
      {"card", base.card},
      {"date", base.date},
      {"commit", base.commit},
      {"config",
       {{"model", "FLUX.1-dev shape, random bf16 weights"},
        {"dit_precision", precision},
        {"height", r.size},
        {"width", r.size},
        {"num_inference_steps", r.steps},
        {"seed", request.seed},
        {"reference", "the same request uncached (the timed run), same process"},
        {"pixels", reference ? "decoded by the --vae folder, 8-bit RGB; PSNR with peak 255"
                             : "none (no --vae)"}}},
      {"rows", rows}};
  return WriteJsonFile(absl::StrCat(out_dir, "/", prefix, "cache-", r.size, ".json"), report);
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
  double fp8_matmul_tflops = 0;
  ASSIGN_OR_RETURN(std::string precisions_text, config.GetString("precisions"));
  ASSIGN_OR_RETURN(std::vector<PrecisionSpec> precisions, ParsePrecisions(precisions_text));
  for (const PrecisionSpec& p : precisions) {
    if (!flux::IsFp8(p.precision) || fp8_matmul_tflops > 0) continue;
    if (!kernels::Fp8Supported(at::Device(at::kCUDA, g_device))) {
      return absl::FailedPreconditionError("--precisions fp8: this GPU has no FP8 products");
    }
    ASSIGN_OR_RETURN(fp8_matmul_tflops, TorchCall("fp8 matmul probe", [&] {
                       return MeasureFp8MatmulTflops(matmul_size, static_cast<int>(matmul_reps));
                     }));
    std::printf("measured fp8 (row-wise scaled) matmul %ld^3: %.1f TFLOP/s\n",
                static_cast<long>(matmul_size), fp8_matmul_tflops);
  }

  ASSIGN_OR_RETURN(std::string seeds_text, config.GetString("quality_seeds"));
  ASSIGN_OR_RETURN(std::vector<int64_t> quality_seeds, ParseSeeds(seeds_text));
  ASSIGN_OR_RETURN(int64_t quality_size, config.GetInt("quality_size"));
  ASSIGN_OR_RETURN(int64_t quality_steps, config.GetInt("quality_steps"));
  ASSIGN_OR_RETURN(std::string vae_path, config.GetString("vae"));

  FlowMatchEulerSchedulerConfig sched;  // FLUX.1-dev's scheduler_config.json
  sched.shift = 3.0;
  sched.use_dynamic_shifting = true;

  ASSIGN_OR_RETURN(std::string batches_text, config.GetString("batches"));
  ASSIGN_OR_RETURN(std::vector<int64_t> batches, ParseBatches(batches_text));
  if (!batches.empty() && layout.size() > 1) {
    return InvalidArgument("--batches times one GPU's batched loop: leave it out in a group run");
  }
  ASSIGN_OR_RETURN(std::string caches_text, config.GetString("caches"));
  std::vector<std::pair<std::string, StepCacheConfig>> caches;
  for (absl::string_view item : absl::StrSplit(caches_text, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(StepCacheConfig c, ParseStepCacheSpec(item, "--caches"));
    if (!c.enabled()) return InvalidArgument("--caches: '", item, "' caches nothing");
    caches.emplace_back(std::string(item), c);
  }
  ImageDecoder image_decoder(vae_path);

  if (leader)
    std::printf("\n%-9s %-10s %6s %12s %12s %10s %9s %12s\n", "precision", "size", "steps",
                "step_ms(med)", "total_ms", "TFLOP/s", "fraction", "peak_MiB");
  // Final latents of the quality runs: precision -> seed -> latents (float32, on the CPU).
  std::map<std::string, std::map<int64_t, at::Tensor>> quality_latents;
  for (const PrecisionSpec& precision : precisions) {
    flux::SetGatedResidualGemmEnabled(precision.gated_residual_gemm);
    SetModulationWindow(precision.per_step_modulation ? 0 : -1);
    // The same random bf16 weights for every precision (same seed), quantized at load for fp8.
    auto start = Clock::now();
    ASSIGN_OR_RETURN(WeightMap weights, TorchCall("random weights", [&] {
                       at::manual_seed(static_cast<uint64_t>(seed));
                       WeightMap w = RandomFluxWeights(mc, opts);
                       Sync();
                       return w;
                     }));
    if (!precision.offload_prefetch.empty()) {
      // Layerwise offload starts from weights on the host, as Load reads them with the flag.
      ASSIGN_OR_RETURN(weights, TorchCall("weights to the host", [&] {
                         WeightMap host(weights.source());
                         for (const auto& [name, tensor] : weights.tensors()) {
                           host.Insert(name, tensor.to(at::kCPU));
                         }
                         return host;
                       }));
    }
    ASSIGN_OR_RETURN(FluxTransformer2DModel model,
                     FluxTransformer2DModel::FromWeights(mc, weights, precision.precision));
    if (weights.size() != 0) {
      return Internal("random weights left unused: ", weights.RemainingNames().front());
    }
    if (!precision.offload_prefetch.empty()) {
      ASSIGN_OR_RETURN(DitOffload offload,
                       ParseDitOffload("layerwise", precision.offload_prefetch));
      RETURN_IF_ERROR(model.OffloadBlocks(absl::StrCat("cuda:", g_device), offload));
    }
    if (precision.shard_prefetch > 0) {
      DitShard shard;
      shard.weights = true;
      shard.prefetch = precision.shard_prefetch;
      shard.rank = layout.rank();
      shard.size = layout.size();
      RETURN_IF_ERROR(CheckDitShardGroup(shard, layout.size()));
      RETURN_IF_ERROR(model.ShardBlocks(absl::StrCat("cuda:", g_device), shard));
    }
    if (precision.cuda_graphs) model.EnableCudaGraphs(/*max_graphs=*/4);
    RETURN_IF_ERROR(TorchCall("sync", [] { Sync(); }));
    const double build_ms = MsSince(start);
    const nlohmann::json after_weights = MemoryCheckpoint(g_device, "after_weights");

    for (const RunSpec& r : runs) {
      ASSIGN_OR_RETURN(FluxSamplerRequest req,
                       MakeRequest(mc, r.size, seed, text_tokens, true_cfg, opts));
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
      const bool fp8 = flux::IsFp8(precision.precision);
      rep.config = {
          {"model", "FLUX.1-dev shape, random bf16 weights"},
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
          // Offload variants keep bf16 layers (dit_offload says how the blocks are held).
          {"dit_precision", precision.offload_prefetch.empty() && precision.shard_prefetch == 0
                                ? precision.name
                                : "bf16"},
          {"dit_shard",
           precision.shard_prefetch == 0
               ? "none"
               : absl::StrCat("sharded over the group's ", layout.size(), " ranks, prefetch ",
                              precision.shard_prefetch, " (AllGatherStart ahead of each block)")},
          {"dit_offload",
           precision.offload_prefetch.empty()
               ? "none"
               : absl::StrCat("layerwise, prefetch ", precision.offload_prefetch,
                              " (blocks in pinned host memory, copied ahead on a copy stream)")},
          {"linear_layers",
           fp8 ? "block projections and MLPs in FP8 E4M3 (per-row weight scales, per-token "
                 "activation scales, at::_scaled_mm, bf16 output); the rest bf16"
               : "bf16"},
          {"fp8_fast_accumulation", precision.precision == flux::LinearPrecision::kFp8Fast},
          {"modulation",
           ModulationWindow() > 0 && model.CanComputeModulation()
               ? absl::StrCat("rows precomputed ", ModulationWindow(), " steps at a time")
               : std::string("modulation linears in every forward pass")},
          {"cuda_graphs",
           model.cuda_graphs() == nullptr
               ? "off"
               : absl::StrCat("forward pass captured (", model.cuda_graphs()->stats().captures,
                              " captured, ", model.cuda_graphs()->stats().replays, " replays, ",
                              model.cuda_graphs()->stats().failures, " failed captures)")},
          {"gated_residual_gemm",
           !fp8 && flux::UseGatedResidualGemm(latents)
               ? absl::StrCat("folded into the output GEMMs (cuBLASLt ",
                              kernels::GatedLinearResidualGemmMode(latents), ")")
               : absl::StrCat("separate pass (cuBLASLt probe: ",
                              kernels::GatedLinearResidualGemmMode(latents), ")")},
          {"layout", layout.ToString()},
          {"gpus", layout.size()},
          {"true_cfg_scale", true_cfg},
          {"step_timing", "sampler on_step hook (device synchronised per step)"}};
      // FLOPs are counted as bf16 ones: the fraction compares with the bf16 matmul rate.
      rep.metrics = {{"median_step_ms", median_ms},
                     {"flops_per_step", flops},
                     {"achieved_tflops", tflops},
                     {"matmul_tflops", matmul_tflops},
                     {"fp8_matmul_tflops", fp8_matmul_tflops},
                     {"matmul_size", matmul_size},
                     {"fraction_of_matmul", tflops / matmul_tflops},
                     {"arithmetic_floor_ms", flops / (matmul_tflops * 1e12) * 1e3},
                     {"peak_memory_mb", peak_mb},
                     {"output_finite", finite}};
      const std::string tag = precision.name == "bf16" ? "" : precision.name + "-";
      if (!save_latents.empty() && leader) {
        RETURN_IF_ERROR(TorchCall("save latents", [&]() -> absl::Status {
          const at::Tensor f = latents.to(at::kFloat).contiguous().cpu();
          const std::string path = absl::StrCat(save_latents, "-", tag, r.size, ".f32");
          std::FILE* out = std::fopen(path.c_str(), "wb");
          if (out == nullptr) return Internal("cannot write ", path);
          std::fwrite(f.data_ptr(), sizeof(float), f.numel(), out);
          std::fclose(out);
          return absl::OkStatus();
        }));
      }
      if (!leader) continue;  // Every rank holds the same latents; the leader reports.
      if (!out_dir.empty()) {
        const std::string path = absl::StrCat(out_dir, "/", prefix, tag, r.size, ".json");
        RETURN_IF_ERROR(WriteJsonFile(path, rep.ToJson()));
      }
      std::printf("%-9s %-10s %6d %12.1f %12.1f %10.1f %9.3f %12.0f%s\n", precision.name.c_str(),
                  absl::StrCat(r.size, "x", r.size).c_str(), r.steps, median_ms,
                  rep.total_duration_ms, tflops, tflops / matmul_tflops, peak_mb,
                  finite ? "" : "  NON-FINITE OUTPUT");
      std::fflush(stdout);
      if (!batches.empty()) {
        RETURN_IF_ERROR(TimeBatches(model, sched, mc, r, batches, warmup_steps, seed, text_tokens,
                                    true_cfg, opts, base, precision.name, out_dir,
                                    absl::StrCat(prefix, tag)));
      }
      if (!caches.empty()) {
        RETURN_IF_ERROR(TimeCaches(model, sched, r, req, latents, rep.total_duration_ms, caches,
                                   image_decoder, sp, base, precision.name, out_dir,
                                   absl::StrCat(prefix, tag)));
      }
    }
    for (const int64_t quality_seed : quality_seeds) {
      ASSIGN_OR_RETURN(FluxSamplerRequest req,
                       MakeRequest(mc, quality_size, quality_seed, text_tokens, true_cfg, opts));
      req.num_inference_steps = static_cast<int>(quality_steps);
      ASSIGN_OR_RETURN(at::Tensor latents, RunFluxSampler(model, sched, req, {}, sp));
      ASSIGN_OR_RETURN(quality_latents[precision.name][quality_seed],
                       TorchCall("latents to cpu", [&] { return latents.to(at::kFloat).cpu(); }));
    }
  }
  flux::SetGatedResidualGemmEnabled(false);
  if (quality_seeds.empty() || !leader) return absl::OkStatus();
  if (quality_latents.count("bf16") == 0) {
    return InvalidArgument("--quality_seeds compares with bf16: add bf16 to --precisions");
  }
  return CompareQuality(quality_latents, quality_size, quality_steps, vae_path, out_dir, prefix,
                        base);
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
      {"precisions", Setting::kString, "bf16",
       "DiT linear-layer precisions to time in turn: bf16, bf16-gated (gated residuals in the "
       "output GEMMs), bf16-graph (CUDA graphs of the forward), bf16-stepmod (modulation linears "
       "in every pass), fp8, fp8-fast (fast accumulation), "
       "fp8-fast-graph, offload:N (bf16 with layerwise offload "
       "of the blocks, prefetch N), shard:N (bf16 with the blocks sharded over the group, "
       "prefetch N; a group of 2 or more)"},
      {"quality_seeds", Setting::kString, "",
       "seeds run by every precision and compared with bf16 (empty: no comparison)"},
      {"quality_size", Setting::kInt, "1024", "image size of the quality runs", 64, 4096},
      {"quality_steps", Setting::kInt, "28", "steps of the quality runs", 1, 1000},
      {"batches", Setting::kString, "",
       "batch sizes timed through the batched loop per size, e.g. 1,2,4 (empty: none)"},
      {"caches", Setting::kString, "",
       "step-cache settings run per size against the uncached run, e.g. fbcache:0.08,teacache:0.25 "
       "(empty: none)"},
      {"vae", Setting::kString, "",
       "AutoencoderKL folder (16 latent channels) decoding the quality runs (empty: latents only)"},
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
