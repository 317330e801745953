// GPU memory gauges through NVML, loaded with dlopen() so that CPU builds and hosts need nothing.
// NVML reports per-device memory in use by every process (what DCGM and nvidia-smi show); a stage
// owns its GPU in the deployments dgrid targets, so that is the stage's footprint.
#include <dlfcn.h>

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/metrics.h"

namespace dgrid::metrics {
namespace {

// The subset of nvml.h used here (stable C ABI since NVML 2.x).
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
using NvmlDevice = void*;
using InitFn = int (*)();
using CountFn = int (*)(unsigned int*);
using HandleFn = int (*)(unsigned int, NvmlDevice*);
using MemoryFn = int (*)(NvmlDevice, NvmlMemory*);

struct Nvml {
  CountFn count = nullptr;
  HandleFn handle = nullptr;
  MemoryFn memory = nullptr;
};

// Reads one field of device `index`'s memory; NaN when NVML fails (a lost GPU shows as a gap).
double ReadMemory(const Nvml& nvml, unsigned int index, bool used) {
  NvmlDevice device = nullptr;
  NvmlMemory memory{};
  if (nvml.handle(index, &device) != 0 || nvml.memory(device, &memory) != 0) return std::nan("");
  return static_cast<double>(used ? memory.used : memory.total);
}

}  // namespace

bool RegisterGpuMemoryGauges(Registry& registry) {
  static const bool registered = [&registry] {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return false;
    auto init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
    static Nvml nvml;
    nvml.count = reinterpret_cast<CountFn>(dlsym(lib, "nvmlDeviceGetCount_v2"));
    nvml.handle = reinterpret_cast<HandleFn>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    nvml.memory = reinterpret_cast<MemoryFn>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    unsigned int count = 0;
    if (init == nullptr || nvml.count == nullptr || nvml.handle == nullptr ||
        nvml.memory == nullptr || init() != 0 || nvml.count(&count) != 0) {
      DG_LOG_WARN("", "NVML found but unusable: no dgrid_gpu_memory_bytes");
      return false;
    }
    for (unsigned int i = 0; i < count; ++i) {
      for (const bool used : {true, false}) {
        // Registered for the life of the process (the registry and NVML both live until exit).
        registry.AddCallbackGauge("dgrid_gpu_memory_bytes",
                                  "GPU memory in bytes (NVML), used and total, per device",
                                  {{"gpu", absl::StrCat(i)}, {"kind", used ? "used" : "total"}},
                                  [i, used] { return ReadMemory(nvml, i, used); });
      }
    }
    return true;
  }();
  return registered;
}

}  // namespace dgrid::metrics
