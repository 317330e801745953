// GPU topology of a node or a cluster: which GPUs exist, how much memory they have, which of them
// share an NVLink island, and how fast each class of link is. The same structure comes from NVML
// discovery (planner/nvml_discovery.h) or from a JSON file (for tests, and for planning clusters
// that are not at hand).
//
// JSON form (every field named in errors with its path, e.g. "nodes[1].gpus[3].memory_gb"):
//   {
//     "links": {"nvlink_gbps": 450, "pcie_gbps": 50, "inter_node_gbps": 50, "latency_us": 10,
//               "ring_overlap": 0.8},
//     "nodes": [
//       {"name": "node0", "gpus": [
//         {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gb": 80, "pci_bus_id": "...",
//          "numa_node": 0, "nvlink_peers": [1, 2, 3]}, ...]}]
//   }
// Bandwidths are GB/s per direction per GPU; `links` may be omitted (defaults below). nvlink_peers
// must be symmetric and name GPUs of the same node.
//
// Plain values; thread-compatible. Errors: INVALID_ARGUMENT naming the field, NOT_FOUND for a
// missing file.
#ifndef DGRID_PLANNER_TOPOLOGY_H_
#define DGRID_PLANNER_TOPOLOGY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dgrid::planner {

// Link speeds. Defaults are the assumptions of docs/placement.md: NVLink 4 on H100 SXM (~450 GB/s
// per direction), PCIe Gen5 x16 (~50 GB/s), 400 Gb/s InfiniBand per GPU (50 GB/s).
struct LinkSpeeds {
  double nvlink_gbps = 450;
  double pcie_gbps = 50;
  double inter_node_gbps = 50;
  // Fixed cost of one collective call or ring hop (launch + synchronisation), microseconds; never
  // hidden behind compute.
  double latency_us = 10;
  // At most this fraction of Ring attention's K/V traffic hides behind the blockwise attention
  // (the rest, and anything beyond the attention time, is exposed).
  double ring_overlap = 0.8;
};

struct GpuDevice {
  int index = 0;
  std::string name;
  uint64_t memory_bytes = 0;
  std::string pci_bus_id;
  int numa_node = 0;
  std::vector<int> nvlink_peers;  // indices of GPUs of the same node
};

struct NodeTopology {
  std::string name;
  std::vector<GpuDevice> gpus;
};

struct Topology {
  LinkSpeeds links;
  std::vector<NodeTopology> nodes;

  int TotalGpus() const;
};

// Sets of GPU indices of `node` connected all-to-all by NVLink (every member lists every other as a
// peer), largest first; a GPU without NVLink peers is an island of one.
std::vector<std::vector<int>> NvlinkIslands(const NodeTopology& node);

// Checks the invariants above (>= 1 node, unique node names, >= 1 GPU per node, unique GPU
// indices, symmetric peers inside the node, positive bandwidths).
absl::Status ValidateTopology(const Topology& topology);

// JSON text <-> Topology. Parse validates.
absl::StatusOr<Topology> ParseTopologyJson(absl::string_view text);
std::string TopologyToJson(const Topology& topology);
absl::StatusOr<Topology> ReadTopologyFile(const std::string& path);
absl::Status WriteTopologyFile(const std::string& path, const Topology& topology);

}  // namespace dgrid::planner

#endif  // DGRID_PLANNER_TOPOLOGY_H_
