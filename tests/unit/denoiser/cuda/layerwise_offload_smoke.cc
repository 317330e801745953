// GPU smoke test of LayerwiseOffload (services/denoiser/models/layerwise_offload.h) on CUDA: 24
// synthetic bf16 layers of 64 MiB (a fused [2d, d] weight used through two views, and a bias,
// d = 4096), run plain (all weights on the GPU) and offloaded at prefetch 1, 2, 4 and 23 (all);
// prints time per pass, whether the output is bitwise the plain one (5 passes each, which would
// catch a copy overwriting weights still in use), the allocator's peak and whether the host copies
// are pinned. Exits 2 when an output differs.
//
// Not part of the CMake build: layerwise_offload_smoke.sh compiles it with the host's LibTorch
// on a GPU machine where dgrid's own build is not set up (docs/performance.md has its results).
#include <chrono>
#include <cstdio>

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include "services/denoiser/models/layerwise_offload.h"

using namespace dgrid;

int64_t Peak() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
}
void ResetPeak() { c10::cuda::CUDACachingAllocator::resetPeakStats(0); }

at::Tensor Layer(const at::Tensor& x, const std::vector<at::Tensor>& t) {
  // t[0]: fused [2d, d]; t[1], t[2]: its halves (views); t[3]: bias [d].
  at::Tensor h = at::tanh(at::matmul(x, t[1].t()));
  return x + at::matmul(h, t[2].t()) + t[3];
}

int main(int argc, char** argv) {
  const int64_t d = 4096, layers = 24, tokens = argc > 1 ? atoi(argv[1]) : 8192;
  at::manual_seed(0);
  const c10::Device cuda("cuda:0");
  std::vector<std::vector<at::Tensor>> host;
  for (int64_t l = 0; l < layers; ++l) {
    at::Tensor fused = (at::randn({2 * d, d}) * 0.01).to(at::kBFloat16);
    host.push_back({fused, fused.narrow(0, 0, d), fused.narrow(0, d, d),
                    (at::randn({d}) * 0.01).to(at::kBFloat16)});
  }
  std::vector<std::vector<at::Tensor>> plain;
  for (auto& l : host) {
    at::Tensor f = l[0].to(cuda);
    plain.push_back({f, f.narrow(0, 0, d), f.narrow(0, d, d), l[3].to(cuda)});
  }
  const at::Tensor x0 = at::randn({tokens, d}).to(at::kBFloat16).to(cuda);
  auto run_plain = [&] {
    at::Tensor x = x0;
    for (auto& l : plain) x = Layer(x, l);
    return x;
  };
  at::Tensor want;
  for (int i = 0; i < 3; ++i) want = run_plain();
  c10::cuda::device_synchronize();
  auto t0 = std::chrono::steady_clock::now();
  const int reps = 5;
  for (int i = 0; i < reps; ++i) want = run_plain();
  c10::cuda::device_synchronize();
  const double plain_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
      reps;
  ResetPeak();
  const int64_t base =
      c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
  (void)run_plain();
  c10::cuda::device_synchronize();
  std::printf("plain: %.2f ms/pass, peak above resident %.0f MiB, weights on GPU %.0f MiB\n",
              plain_ms, (Peak() - base) / 1048576.0, layers * (2 * d * d + d) * 2 / 1048576.0);
  plain.clear();
  c10::cuda::CUDACachingAllocator::emptyCache();
  const int64_t layer_mib = (2 * d * d + d) * 2 / 1048576;
  bool all_equal = true;
  for (int64_t prefetch : {1, 2, 4, 23}) {
    std::vector<std::vector<at::Tensor>> copy = host;
    auto offload = LayerwiseOffload::Create(std::move(copy), cuda, prefetch);
    if (!offload.ok()) {
      std::printf("%s\n", offload.status().ToString().c_str());
      return 1;
    }
    auto run = [&] {
      LayerwiseOffload::Pass pass(**offload, nullptr);
      at::Tensor x = x0;
      for (int64_t l = 0; l < layers; ++l) x = Layer(x, pass.Acquire(l));
      return x;
    };
    at::Tensor got;
    for (int i = 0; i < 2; ++i) got = run();
    c10::cuda::device_synchronize();
    ResetPeak();
    const int64_t before =
        c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
    auto t1 = std::chrono::steady_clock::now();
    bool eq = true;
    for (int i = 0; i < reps; ++i) {
      got = run();
      eq = eq && at::equal(got, want);
    }
    c10::cuda::device_synchronize();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count() /
        reps;
    all_equal = all_equal && eq;
    std::printf(
        "prefetch %ld: %.2f ms/pass (%.2fx plain), bitwise equal %s, peak above idle %.0f MiB "
        "(one layer %ld MiB; prefetch+1 layers = %ld MiB), pinned host %s\n",
        prefetch, ms, ms / plain_ms, eq ? "yes" : "NO", (Peak() - before) / 1048576.0, layer_mib,
        (prefetch + 1) * layer_mib, (*offload)->host_layer(0)[0].is_pinned() ? "yes" : "no");
  }
  return all_equal ? 0 : 2;
}
