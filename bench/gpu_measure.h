// GPU measurements the benchmark programs share: the caching allocator's memory at a point of the
// run, and the card's bf16 matmul rate measured in the same process (the ceiling a step's
// achieved TFLOP/s is compared with).
#ifndef DGRID_BENCH_GPU_MEASURE_H_
#define DGRID_BENCH_GPU_MEASURE_H_

#include <cstdint>
#include <string>

#include <c10/core/Device.h>

#include "nlohmann/json.hpp"

namespace dgrid::bench {

// {"name", "allocated_mb", "peak_allocated_mb", "reserved_mb", "peak_reserved_mb"} of `device`.
nlohmann::json MemoryCheckpoint(c10::DeviceIndex device, const std::string& name);

// bf16 n^3 matmul rate on random data on CUDA `device`: median over `reps` products after 3
// warm-ups, each timed with the device synchronised.
double MeasureMatmulTflops(c10::DeviceIndex device, int64_t n, int reps);

}  // namespace dgrid::bench

#endif  // DGRID_BENCH_GPU_MEASURE_H_
