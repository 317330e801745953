// dgrid-bench-vae-decode: the FLUX VAE decode of one picture (or, with --wan_vae FOLDER, the Wan
// VAE decode of one video) on one GPU and split over a group of GPUs
// (services/decoder/parallel_vae.h), with random FLUX.1-shaped AutoencoderKL weights (or a real VAE
// folder with --vae).
//
// One process per rank, rank r on GPU r, as the denoiser group bench runs (NCCL, rendezvous at
// --leader_address); --ranks=1 times the single-GPU decode (AutoencoderKL::Decode) for the
// baseline. Each rank writes <out_dir>/<prefix>vae-decode-<shape>-r<rank>of<ranks>.json: median and
// every timed decode (ms, the device synchronised and the group at a barrier before each), the
// peak allocated / reserved GPU memory of the decodes (the peak reset after the weights are
// loaded), and with --check the max abs difference (and relative L2 error) of the group's image
// against this rank's own single-GPU decode of the same latents (run after the timing, so that it
// does not count in the peak).
//   dgrid-bench-vae-decode --size=2048 --ranks=1 --out_dir=DIR
//   for r in 1 0; do dgrid-bench-vae-decode --size=2048 --ranks=2 --rank=$r --out_dir=DIR & done
// --device=cpu runs the same over Gloo on the CPU (a functional check, not a measurement).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/core/InferenceMode.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_main.h"
#include "bench/gpu_measure.h"
#include "bench/report.h"
#include "common/config.h"
#include "common/status.h"
#include "common/torch_status.h"
#include "common/weight_map.h"
#include "parallel/communicator.h"
#include "services/decoder/models/autoencoder_kl.h"
#include "services/decoder/models/autoencoder_kl_wan.h"
#include "services/decoder/parallel_vae.h"

namespace dgrid::bench {
namespace {

using decoder::AutoencoderKL;
using decoder::AutoencoderKLConfig;

// black-forest-labs/FLUX.1-dev vae/config.json.
AutoencoderKLConfig FluxVaeConfig() {
  AutoencoderKLConfig c;
  c.down_block_types.assign(4, "DownEncoderBlock2D");
  c.up_block_types.assign(4, "UpDecoderBlock2D");
  c.block_out_channels = {128, 256, 512, 512};
  c.layers_per_block = 2;
  c.latent_channels = 16;
  c.norm_num_groups = 32;
  c.scaling_factor = 0.3611;
  c.shift_factor = 0.1159;
  c.use_quant_conv = false;
  c.use_post_quant_conv = false;
  c.sample_size = 1024;
  return c;
}

// Random AutoencoderKL parameters under diffusers' names for `c` (encoder and decoder: FromWeights
// takes both): convolutions and projections scaled by 1/sqrt(fan-in), norms at identity.
class RandomVaeWeights {
 public:
  RandomVaeWeights(const AutoencoderKLConfig& c, at::TensorOptions options) : options_(options) {
    const std::vector<int64_t>& ch = c.block_out_channels;
    const size_t levels = ch.size();
    Conv("encoder.conv_in", c.in_channels, ch[0], 3);
    for (size_t i = 0; i < levels; ++i) {
      const std::string p = absl::StrCat("encoder.down_blocks.", i);
      for (int64_t j = 0; j < c.layers_per_block; ++j) {
        Resnet(absl::StrCat(p, ".resnets.", j), j == 0 ? ch[i > 0 ? i - 1 : 0] : ch[i], ch[i]);
      }
      if (i + 1 < levels) Conv(p + ".downsamplers.0.conv", ch[i], ch[i], 3);
    }
    Mid("encoder.mid_block", ch.back(), c.mid_block_add_attention);
    Norm("encoder.conv_norm_out", ch.back());
    Conv("encoder.conv_out", ch.back(), 2 * c.latent_channels, 3);
    const std::vector<int64_t> rev(ch.rbegin(), ch.rend());
    Conv("decoder.conv_in", c.latent_channels, rev[0], 3);
    Mid("decoder.mid_block", rev[0], c.mid_block_add_attention);
    for (size_t i = 0; i < levels; ++i) {
      const std::string p = absl::StrCat("decoder.up_blocks.", i);
      for (int64_t j = 0; j <= c.layers_per_block; ++j) {
        Resnet(absl::StrCat(p, ".resnets.", j), j == 0 ? rev[i > 0 ? i - 1 : 0] : rev[i], rev[i]);
      }
      if (i + 1 < levels) Conv(p + ".upsamplers.0.conv", rev[i], rev[i], 3);
    }
    Norm("decoder.conv_norm_out", rev.back());
    Conv("decoder.conv_out", rev.back(), c.out_channels, 3);
    if (c.use_quant_conv) Conv("quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
    if (c.use_post_quant_conv) Conv("post_quant_conv", c.latent_channels, c.latent_channels, 1);
  }
  WeightMap& map() { return map_; }

 private:
  void Conv(const std::string& p, int64_t in, int64_t out, int64_t k) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(in * k * k));
    map_.Insert(p + ".weight", at::randn({out, in, k, k}, options_).mul_(scale));
    map_.Insert(p + ".bias", at::zeros({out}, options_));
  }
  void Linear(const std::string& p, int64_t c) {
    map_.Insert(p + ".weight",
                at::randn({c, c}, options_).mul_(1.0 / std::sqrt(static_cast<double>(c))));
    map_.Insert(p + ".bias", at::zeros({c}, options_));
  }
  void Norm(const std::string& p, int64_t c) {
    map_.Insert(p + ".weight", at::ones({c}, options_));
    map_.Insert(p + ".bias", at::zeros({c}, options_));
  }
  void Resnet(const std::string& p, int64_t in, int64_t out) {
    Norm(p + ".norm1", in);
    Conv(p + ".conv1", in, out, 3);
    Norm(p + ".norm2", out);
    Conv(p + ".conv2", out, out, 3);
    if (in != out) Conv(p + ".conv_shortcut", in, out, 1);
  }
  void Mid(const std::string& p, int64_t c, bool attention) {
    Resnet(p + ".resnets.0", c, c);
    Resnet(p + ".resnets.1", c, c);
    if (!attention) return;
    Norm(p + ".attentions.0.group_norm", c);
    for (const char* name : {"to_q", "to_k", "to_v", "to_out.0"}) {
      Linear(absl::StrCat(p, ".attentions.0.", name), c);
    }
  }

  at::TensorOptions options_;
  WeightMap map_{"random FLUX.1 VAE"};
};

absl::Status Run(const Config& config) {
  ASSIGN_OR_RETURN(const int64_t size, config.GetInt("size"));
  ASSIGN_OR_RETURN(const int64_t ranks, config.GetInt("ranks"));
  ASSIGN_OR_RETURN(const int64_t rank, config.GetInt("rank"));
  ASSIGN_OR_RETURN(const int64_t iters, config.GetInt("iters"));
  ASSIGN_OR_RETURN(const int64_t warmup, config.GetInt("warmup"));
  ASSIGN_OR_RETURN(const bool check, config.GetBool("check"));
  ASSIGN_OR_RETURN(const std::string device_name, config.GetString("device"));
  ASSIGN_OR_RETURN(const std::string dtype_name, config.GetString("dtype"));
  ASSIGN_OR_RETURN(const std::string vae_path, config.GetString("vae"));
  ASSIGN_OR_RETURN(const std::string wan_path, config.GetString("wan_vae"));
  ASSIGN_OR_RETURN(const int64_t frames, config.GetInt("frames"));
  ASSIGN_OR_RETURN(const int64_t height, config.GetInt("height"));
  ASSIGN_OR_RETURN(const int64_t width, config.GetInt("width"));
  ASSIGN_OR_RETURN(const std::string out_dir, config.GetString("out_dir"));
  ASSIGN_OR_RETURN(const std::string prefix, config.GetString("prefix"));
  PerfReport report;
  report.tool = "dgrid";
  ASSIGN_OR_RETURN(report.card, config.GetString("card"));
  ASSIGN_OR_RETURN(report.commit, config.GetString("commit"));
  ASSIGN_OR_RETURN(report.date, config.GetString("date"));
  if (report.date.empty()) report.date = TodayUtc();
  if (rank >= ranks) return InvalidArgument("--rank must be below --ranks");
  const bool cuda = device_name == "cuda";
  if (!cuda && device_name != "cpu") return InvalidArgument("--device is cuda or cpu");
  if (cuda && !at::hasCUDA()) return absl::FailedPreconditionError("no CUDA device");
  if (dtype_name != "bf16" && dtype_name != "fp32")
    return InvalidArgument("--dtype is bf16 or fp32");
  const auto device_index = static_cast<c10::DeviceIndex>(cuda ? rank : -1);
  const at::Device device = cuda ? at::Device(at::kCUDA, device_index) : at::Device(at::kCPU);
  const at::ScalarType dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  if (cuda) {
    RETURN_IF_ERROR(
        TorchCall("set device", [&] { at::accelerator::setDeviceIndex(device_index); }));
  }

  std::unique_ptr<Communicator> comm;
  if (ranks > 1) {
    CommunicatorOptions co;
    ASSIGN_OR_RETURN(co.leader_address, config.GetString("leader_address"));
    co.rank = static_cast<int>(rank);
    co.size = static_cast<int>(ranks);
    co.device_index = cuda ? device_index : 0;
    co.timeout = absl::Seconds(300);
    if (cuda) {
      ASSIGN_OR_RETURN(comm, CreateNcclCommunicator(co));
    } else {
      ASSIGN_OR_RETURN(comm, CreateGlooCommunicator(co));
    }
  }

  LoadOptions load;
  load.device = device.str();
  load.floating_dtype = dtype == at::kBFloat16 ? "bfloat16" : "float32";
  // What one decode is: the picture's latents (the same on every rank, from a seeded CPU
  // generator, as a denoiser group hands them over), the single-GPU decode and the group's.
  at::Tensor latents;
  std::string shape;
  std::function<absl::StatusOr<at::Tensor>()> single_decode, group_decode;
  std::optional<AutoencoderKL> vae;
  std::optional<decoder::AutoencoderKLWan> wan;
  if (!wan_path.empty()) {
    ASSIGN_OR_RETURN(wan, decoder::AutoencoderKLWan::Load(wan_path, load));
    const int64_t s = wan->config().scale_factor_spatial, t = wan->config().scale_factor_temporal;
    if (height % s != 0 || width % s != 0 || (frames - 1) % t != 0) {
      return InvalidArgument("--height and --width must be multiples of ", s,
                             " and --frames one more than a multiple of ", t);
    }
    ASSIGN_OR_RETURN(
        latents, TorchCall("latents", [&] {
          at::manual_seed(1);
          return at::randn({1, wan->config().z_dim, (frames - 1) / t + 1, height / s, width / s})
              .to(device, dtype);
        }));
    shape = absl::StrCat("wan-", width, "x", height, "x", frames);
    single_decode = [&] { return wan->Decode(latents); };
    group_decode = [&] { return decoder::ParallelVaeDecode(*wan, *comm, latents); };
  } else {
    if (vae_path.empty()) {
      ASSIGN_OR_RETURN(RandomVaeWeights weights, TorchCall("random VAE weights", [&] {
                         at::manual_seed(0);
                         return RandomVaeWeights(FluxVaeConfig(),
                                                 at::TensorOptions().dtype(dtype).device(device));
                       }));
      ASSIGN_OR_RETURN(vae, AutoencoderKL::FromWeights(FluxVaeConfig(), weights.map()));
    } else {
      ASSIGN_OR_RETURN(vae, AutoencoderKL::Load(vae_path, load));
    }
    const int64_t scale = vae->config().spatial_scale();
    if (size % scale != 0) return InvalidArgument("--size must be a multiple of ", scale);
    ASSIGN_OR_RETURN(
        latents, TorchCall("latents", [&] {
          at::manual_seed(1);
          return at::randn({1, vae->config().latent_channels, size / scale, size / scale})
              .to(device, dtype);
        }));
    shape = absl::StrCat(size);
    single_decode = [&] { return vae->Decode(latents); };
    group_decode = [&] { return decoder::ParallelVaeDecode(*vae, *comm, latents); };
  }

  auto sync = [&]() -> absl::Status {
    if (cuda)
      RETURN_IF_ERROR(TorchCall("sync", [&] { at::accelerator::synchronizeDevice(device_index); }));
    return comm ? comm->Barrier() : absl::OkStatus();
  };
  auto decode = [&]() -> absl::StatusOr<at::Tensor> {
    return comm ? group_decode() : single_decode();
  };
  if (cuda) {
    report.memory_checkpoints.push_back(MemoryCheckpoint(device_index, "after_weights"));
    RETURN_IF_ERROR(
        TorchCall("reset peak", [&] { at::accelerator::resetPeakStats(device_index); }));
  }
  using Clock = std::chrono::steady_clock;
  std::vector<double> times_ms;
  at::Tensor image;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    RETURN_IF_ERROR(sync());
    const auto start = Clock::now();
    ASSIGN_OR_RETURN(image, decode());
    RETURN_IF_ERROR(sync());
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (i >= warmup) times_ms.push_back(ms);
  }
  if (cuda) report.memory_checkpoints.push_back(MemoryCheckpoint(device_index, "after_decodes"));
  const double median = Median(times_ms);
  report.total_duration_ms = median;
  report.steps.emplace_back("vae_decode", median);
  report.metrics["median_decode_ms"] = median;
  report.metrics["decode_ms"] = times_ms;
  if (cuda) {
    report.metrics["peak_memory_mb"] =
        report.memory_checkpoints.back()["peak_allocated_mb"].get<double>();
  }
  std::printf("rank %ld of %ld: %s VAE decode (%s, %s) median %.1f ms\n", static_cast<long>(rank),
              static_cast<long>(ranks), shape.c_str(), device_name.c_str(), dtype_name.c_str(),
              median);
  if (check && comm) {
    ASSIGN_OR_RETURN(const at::Tensor single, single_decode());
    ASSIGN_OR_RETURN(nlohmann::json diff, TorchCall("compare", [&] {
                       const at::Tensor d = (image.to(at::kDouble) - single.to(at::kDouble));
                       return nlohmann::json{
                           {"max_abs", d.abs().max().item<double>()},
                           {"relative_l2", d.norm().item<double>() /
                                               single.to(at::kDouble).norm().item<double>()}};
                     }));
    report.metrics["against_single_rank"] = diff;
    std::printf("rank %ld: against the single-rank decode %s\n", static_cast<long>(rank),
                diff.dump().c_str());
  }
  report.config = {{"size", size},
                   {"ranks", ranks},
                   {"rank", rank},
                   {"iters", iters},
                   {"warmup", warmup},
                   {"device", device_name},
                   {"dtype", dtype_name},
                   {"vae", !wan_path.empty()  ? wan_path
                           : vae_path.empty() ? "random FLUX.1"
                                              : vae_path},
                   {"shape", shape}};
  if (out_dir.empty()) return absl::OkStatus();
  return WriteJsonFile(
      absl::StrCat(out_dir, "/", prefix, "vae-decode-", shape, "-r", rank, "of", ranks, ".json"),
      report.ToJson());
}

}  // namespace
}  // namespace dgrid::bench

int main(int argc, char** argv) {
  using dgrid::Setting;
  dgrid::Config config({
      {"size", Setting::kInt, "2048", "pixels per side of the square picture", 8, 16384},
      {"ranks", Setting::kInt, "1", "GPUs in the group (1: the single-GPU decode)", 1, 64},
      {"rank", Setting::kInt, "0", "this process's rank; it runs on GPU <rank>", 0, 63},
      {"leader_address", Setting::kString, "127.0.0.1:29531", "rank 0's rendezvous host:port"},
      {"iters", Setting::kInt, "5", "timed decodes", 1, 1000},
      {"warmup", Setting::kInt, "1", "untimed decodes first", 0, 100},
      {"check", Setting::kBool, "true",
       "groups: compare the image with this rank's single-GPU decode (after the timing)"},
      {"device", Setting::kString, "cuda", "cuda (NCCL) or cpu (Gloo, a functional check)"},
      {"dtype", Setting::kString, "bf16", "bf16 or fp32"},
      {"vae", Setting::kString, "",
       "an AutoencoderKL folder (empty: random FLUX.1-shaped weights)"},
      {"wan_vae", Setting::kString, "",
       "an AutoencoderKLWan folder: decode a Wan video of --width x --height x --frames instead"},
      {"frames", Setting::kInt, "81", "Wan: video frames", 1, 1001},
      {"height", Setting::kInt, "480", "Wan: pixels", 8, 8192},
      {"width", Setting::kInt, "832", "Wan: pixels", 8, 8192},
      {"out_dir", Setting::kString, "", "where the JSON report goes (none written if empty)"},
      {"prefix", Setting::kString, "dgrid-", "report file name prefix"},
      {"card", Setting::kString, "", "machine / card for the report"},
      {"commit", Setting::kString, "", "git commit for the report"},
      {"date", Setting::kString, "", "date for the report (default: today, UTC)"},
  });
  return dgrid::bench::BenchMain("dgrid-bench-vae-decode", config, argc, argv, dgrid::bench::Run);
}
