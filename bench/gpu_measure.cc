#include "bench/gpu_measure.h"

#include <chrono>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "bench/report.h"

namespace dgrid::bench {

nlohmann::json MemoryCheckpoint(c10::DeviceIndex device, const std::string& name) {
  const auto stats = at::accelerator::getDeviceStats(device);
  constexpr double kMiB = 1024.0 * 1024.0;
  const size_t all = 0;  // StatType::AGGREGATE
  return {{"name", name},
          {"allocated_mb", stats.allocated_bytes[all].current / kMiB},
          {"peak_allocated_mb", stats.allocated_bytes[all].peak / kMiB},
          {"reserved_mb", stats.reserved_bytes[all].current / kMiB},
          {"peak_reserved_mb", stats.reserved_bytes[all].peak / kMiB}};
}

double MeasureMatmulTflops(c10::DeviceIndex device, int64_t n, int reps) {
  using Clock = std::chrono::steady_clock;
  const at::TensorOptions opts =
      at::TensorOptions().dtype(at::kBFloat16).device(at::Device(at::kCUDA, device));
  const at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  at::Tensor c;
  for (int i = 0; i < 3; ++i) c = at::matmul(a, b);
  at::accelerator::synchronizeDevice(device);
  std::vector<double> tflops;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    c = at::matmul(a, b);
    at::accelerator::synchronizeDevice(device);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    tflops.push_back(2.0 * n * n * n / (ms * 1e-3) / 1e12);
  }
  return Median(tflops);
}

}  // namespace dgrid::bench
