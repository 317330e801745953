// Discovery of the local node's GPUs through NVML, loaded at run time with dlopen
// (libnvidia-ml.so.1): there is no link dependency, and a machine without the NVIDIA driver gets a
// clear status instead of a loader error.
//
// Thread-compatible (NVML is initialised and shut down inside each call). Errors: UNAVAILABLE when
// the library cannot be loaded or initialised ("NVML not available: ..."), INTERNAL naming the NVML
// call that failed.
#ifndef DGRID_PLANNER_NVML_DISCOVERY_H_
#define DGRID_PLANNER_NVML_DISCOVERY_H_

#include <string>

#include "absl/status/statusor.h"
#include "planner/topology.h"

namespace dgrid::planner {

// One node: GPUs with name, memory, PCI bus id, NUMA node (from sysfs) and NVLink peers (NVML P2P
// status over NVLink, which also sees peers behind an NVSwitch). `links` keeps its defaults.
// `library` overrides the shared object name (tests pass a missing one).
absl::StatusOr<Topology> DiscoverLocalTopology(const std::string& library = "libnvidia-ml.so.1");

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_NVML_DISCOVERY_H_
