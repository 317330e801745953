// The decoder-stage term of planner/stage_memory.h against the CPU allocator's peak of a real
// decode: the tiny pipeline's AutoencoderKL (block_out_channels 8, 16, 16, 16) decoding 64 x 64
// latents to 512 x 512 in float32 on the CPU, its peak read through c10's memory reporting hook
// (the one the profiler's profile_memory uses). The formula counts the live tensors of the
// decoder's code (the part that carries over to the GPU); a CPU convolution adds its own
// workspace, which this test names per engine, so that the count itself is checked exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include "services/decoder/models/autoencoder_kl.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

// The CPU allocator's bytes in use, as each allocation and free on this thread reports them.
class CpuPeak : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void* /*ptr*/, int64_t alloc_size, size_t total_allocated,
                         size_t /*total_reserved*/, c10::Device device) override {
    if (!device.is_cpu()) return;
    if (!started_) {
      // The first report is the probe allocation of Measure: what was in use before it.
      base_ = static_cast<double>(total_allocated) - static_cast<double>(alloc_size);
      started_ = true;
    }
    peak_ = std::max(peak_, static_cast<double>(total_allocated));
  }
  bool memoryProfilingEnabled() const override { return true; }
  double above_start() const { return peak_ - base_; }

 private:
  bool started_ = false;
  double base_ = 0, peak_ = 0;
};

// The allocator's peak above what was in use before, over one decode of `latents`.
double Measure(const decoder::AutoencoderKL& vae, const at::Tensor& latents) {
  auto peak = std::make_shared<CpuPeak>();
  c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, peak);
  const at::Tensor probe = at::empty({1}, at::kFloat);
  absl::StatusOr<at::Tensor> image = vae.Decode(latents);
  EXPECT_TRUE(image.ok()) << image.status();
  return peak->above_start();
}

TEST(StageMemoryCalibrationTest, TinyAutoencoderKlDecodePeakOnTheCpu) {
  const std::string vae_dir = testing::SourceDir() + "/.dgrid/tiny-flux/vae";
  if (!std::filesystem::exists(vae_dir + "/config.json")) {
    GTEST_SKIP() << vae_dir << " missing (scripts/setup.sh makes it)";
  }
  at::set_num_threads(1);  // every allocation on this thread, where the hook sees it
  absl::StatusOr<decoder::AutoencoderKL> vae = decoder::AutoencoderKL::Load(vae_dir, {});
  ASSERT_TRUE(vae.ok()) << vae.status();
  ASSERT_TRUE(vae->SetDecodeOptions({}).ok());  // tiling off
  const at::Tensor latents = at::randn({1, 16, 64, 64}, at::kFloat);
  // One channel plane of the 512 x 512 output in float32: 1 MiB.
  constexpr double kPlane = 512.0 * 512 * 4;
  // planner/stage_memory.h: the first full-resolution residual block holds 3 x its input's 16
  // channels and its output's 8 (3 x 256 + 128 for FLUX.1's VAE): 56 planes.
  constexpr double kLive = 3 * 16 + 8;

  // LibTorch's own convolution (mkldnn off): im2col columns of the 16-channel input, 9 x 16
  // planes, on top of the live tensors. Exactly the formula's count plus that workspace.
  const bool mkldnn = at::globalContext().userEnabledMkldnn();
  at::globalContext().setUserEnabledMkldnn(false);
  const double native = Measure(*vae, latents) / kPlane;
  at::globalContext().setUserEnabledMkldnn(mkldnn);
  std::printf("native convolution: %.2f planes at the peak = %.0f live + %.0f im2col\n", native,
              kLive, 9.0 * 16);
  EXPECT_NEAR(native, kLive + 9 * 16, 0.5);

  // oneDNN (the default where LibTorch has it): its reorders to a blocked layout instead of the
  // columns, about the input's and output's planes again on this machine. Informational (the
  // blocking depends on the CPU), bounded below by the live tensors.
  const double onednn = Measure(*vae, latents) / kPlane;
  std::printf("default convolution: %.2f planes at the peak (live tensors %.0f)\n", onednn, kLive);
  EXPECT_GE(onednn, kLive);
}

}  // namespace
}  // namespace dgrid::planner
