#include "planner/nvml_discovery.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace dgrid::planner {
namespace {

// The few NVML types and entry points used, declared here so that no NVML header is needed at
// build time (layouts from nvml.h of the R535+ drivers).
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct NvmlPciInfo {
  char bus_id_legacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pci_device_id;
  unsigned int pci_subsystem_id;
  char bus_id[32];
};
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr int kP2pCapsIndexNvlink = 2;
constexpr int kP2pStatusOk = 0;

struct NvmlApi {
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*device_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, NvmlMemory*) = nullptr;
  nvmlReturn_t (*pci_info)(nvmlDevice_t, NvmlPciInfo*) = nullptr;
  nvmlReturn_t (*p2p_status)(nvmlDevice_t, nvmlDevice_t, int, int*) = nullptr;
};

// Closes the library when the discovery returns, whatever the path.
class Library {
 public:
  explicit Library(void* handle) : handle_(handle) {}
  ~Library() {
    if (handle_ != nullptr) dlclose(handle_);
  }
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;
  void* handle() const { return handle_; }

 private:
  void* handle_;
};

template <typename Fn>
bool Bind(void* handle, const char* symbol, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
  return *fn != nullptr;
}

int SysfsNumaNode(const std::string& bus_id) {
  // sysfs spells the bus id in lower case with a 4-digit domain ("0000:1b:00.0"); NVML gives an
  // 8-digit domain.
  std::string id = absl::AsciiStrToLower(bus_id);
  if (id.size() > 12) id = id.substr(id.size() - 12);
  std::ifstream in(absl::StrCat("/sys/bus/pci/devices/", id, "/numa_node"));
  int node = 0;
  if (in >> node && node >= 0) return node;
  return 0;
}

}  // namespace

absl::StatusOr<Topology> DiscoverLocalTopology(const std::string& library) {
  Library lib(dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (lib.handle() == nullptr) {
    const char* why = dlerror();
    return absl::UnavailableError(
        absl::StrCat("NVML not available: cannot load ", library, " (", why ? why : "?",
                     "); pass --topology FILE to plan without discovery"));
  }
  NvmlApi api;
  if (!Bind(lib.handle(), "nvmlInit_v2", &api.init) ||
      !Bind(lib.handle(), "nvmlShutdown", &api.shutdown) ||
      !Bind(lib.handle(), "nvmlErrorString", &api.error_string) ||
      !Bind(lib.handle(), "nvmlDeviceGetCount_v2", &api.device_count) ||
      !Bind(lib.handle(), "nvmlDeviceGetHandleByIndex_v2", &api.handle_by_index) ||
      !Bind(lib.handle(), "nvmlDeviceGetName", &api.name) ||
      !Bind(lib.handle(), "nvmlDeviceGetMemoryInfo", &api.memory) ||
      !Bind(lib.handle(), "nvmlDeviceGetPciInfo_v3", &api.pci_info) ||
      !Bind(lib.handle(), "nvmlDeviceGetP2PStatus", &api.p2p_status)) {
    return absl::UnavailableError(
        absl::StrCat("NVML not available: ", library, " lacks a needed symbol (driver too old?)"));
  }
  if (nvmlReturn_t rc = api.init(); rc != kNvmlSuccess) {
    return absl::UnavailableError(
        absl::StrCat("NVML not available: nvmlInit failed: ", api.error_string(rc)));
  }
  auto fail = [&](const char* call, nvmlReturn_t rc) {
    absl::Status status =
        absl::InternalError(absl::StrCat("NVML ", call, " failed: ", api.error_string(rc)));
    api.shutdown();
    return status;
  };
  unsigned int count = 0;
  if (nvmlReturn_t rc = api.device_count(&count); rc != kNvmlSuccess) {
    return fail("nvmlDeviceGetCount", rc);
  }
  std::vector<nvmlDevice_t> handles(count);
  NodeTopology node;
  char host[256] = {0};
  node.name = gethostname(host, sizeof(host) - 1) == 0 ? host : "localhost";
  for (unsigned int i = 0; i < count; ++i) {
    if (nvmlReturn_t rc = api.handle_by_index(i, &handles[i]); rc != kNvmlSuccess) {
      return fail("nvmlDeviceGetHandleByIndex", rc);
    }
    GpuDevice gpu;
    gpu.index = static_cast<int>(i);
    char name[96] = {0};
    if (nvmlReturn_t rc = api.name(handles[i], name, sizeof(name)); rc != kNvmlSuccess) {
      return fail("nvmlDeviceGetName", rc);
    }
    gpu.name = name;
    NvmlMemory memory{};
    if (nvmlReturn_t rc = api.memory(handles[i], &memory); rc != kNvmlSuccess) {
      return fail("nvmlDeviceGetMemoryInfo", rc);
    }
    gpu.memory_bytes = memory.total;
    NvmlPciInfo pci{};
    if (nvmlReturn_t rc = api.pci_info(handles[i], &pci); rc != kNvmlSuccess) {
      return fail("nvmlDeviceGetPciInfo", rc);
    }
    gpu.pci_bus_id = pci.bus_id;
    gpu.numa_node = SysfsNumaNode(gpu.pci_bus_id);
    node.gpus.push_back(std::move(gpu));
  }
  for (unsigned int i = 0; i < count; ++i) {
    for (unsigned int j = 0; j < count; ++j) {
      if (i == j) continue;
      int status = -1;
      // A failure here means "no NVLink path" on GPUs without NVLink; not an error.
      if (api.p2p_status(handles[i], handles[j], kP2pCapsIndexNvlink, &status) == kNvmlSuccess &&
          status == kP2pStatusOk) {
        node.gpus[i].nvlink_peers.push_back(static_cast<int>(j));
      }
    }
  }
  api.shutdown();
  Topology topology;
  topology.nodes.push_back(std::move(node));
  if (count == 0) return absl::UnavailableError("NVML reports no GPU on this node");
  return topology;
}

}  // namespace dgrid::planner
