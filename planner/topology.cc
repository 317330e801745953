#include "planner/topology.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "planner/json_fields.h"

namespace dgrid::planner {
namespace {

constexpr double kBytesPerGb = 1e9;

absl::StatusOr<GpuDevice> ParseGpu(const nlohmann::json& json, const std::string& path) {
  GpuDevice gpu;
  ASSIGN_OR_RETURN(gpu.index, IntField(json, path, "index"));
  const std::string empty;
  ASSIGN_OR_RETURN(gpu.name, StringField(json, path, "name", &empty));
  ASSIGN_OR_RETURN(double memory_gb, NumberField(json, path, "memory_gb"));
  if (memory_gb <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldPath(path, "memory_gb"), ": must be > 0, got ", memory_gb));
  }
  gpu.memory_bytes = static_cast<uint64_t>(memory_gb * kBytesPerGb);
  ASSIGN_OR_RETURN(gpu.pci_bus_id, StringField(json, path, "pci_bus_id", &empty));
  const int zero = 0;
  ASSIGN_OR_RETURN(gpu.numa_node, IntField(json, path, "numa_node", &zero));
  if (json.contains("nvlink_peers")) {
    ASSIGN_OR_RETURN(const nlohmann::json* peers, ArrayField(json, path, "nvlink_peers"));
    for (size_t i = 0; i < peers->size(); ++i) {
      if (!(*peers)[i].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(FieldPath(path, "nvlink_peers"), "[", i, "]: expected an integer"));
      }
      gpu.nvlink_peers.push_back((*peers)[i].get<int>());
    }
  }
  return gpu;
}

absl::StatusOr<LinkSpeeds> ParseLinks(const nlohmann::json& json) {
  LinkSpeeds links;
  if (!json.contains("links")) return links;
  const nlohmann::json& l = json["links"];
  ASSIGN_OR_RETURN(links.nvlink_gbps, NumberField(l, "links", "nvlink_gbps", &links.nvlink_gbps));
  ASSIGN_OR_RETURN(links.pcie_gbps, NumberField(l, "links", "pcie_gbps", &links.pcie_gbps));
  ASSIGN_OR_RETURN(links.inter_node_gbps,
                   NumberField(l, "links", "inter_node_gbps", &links.inter_node_gbps));
  ASSIGN_OR_RETURN(links.latency_us, NumberField(l, "links", "latency_us", &links.latency_us));
  ASSIGN_OR_RETURN(links.ring_overlap,
                   NumberField(l, "links", "ring_overlap", &links.ring_overlap));
  return links;
}

}  // namespace

int Topology::TotalGpus() const {
  int total = 0;
  for (const NodeTopology& node : nodes) total += static_cast<int>(node.gpus.size());
  return total;
}

std::vector<std::vector<int>> NvlinkIslands(const NodeTopology& node) {
  std::map<int, std::set<int>> peers;
  for (const GpuDevice& gpu : node.gpus) {
    peers[gpu.index].insert(gpu.nvlink_peers.begin(), gpu.nvlink_peers.end());
  }
  // Greedy cliques in index order: NVLink islands are all-to-all (NVSwitch) or pairs (bridges), so
  // the greedy pass finds them exactly for the topologies that occur.
  std::set<int> assigned;
  std::vector<std::vector<int>> islands;
  for (const auto& [index, unused] : peers) {
    if (assigned.count(index) > 0) continue;
    std::vector<int> island = {index};
    for (int candidate : peers[index]) {
      if (assigned.count(candidate) > 0 || peers.count(candidate) == 0) continue;
      bool linked_to_all = true;
      for (int member : island) {
        if (peers[candidate].count(member) == 0) linked_to_all = false;
      }
      if (linked_to_all) island.push_back(candidate);
    }
    std::sort(island.begin(), island.end());
    assigned.insert(island.begin(), island.end());
    islands.push_back(std::move(island));
  }
  std::stable_sort(islands.begin(), islands.end(),
                   [](const auto& a, const auto& b) { return a.size() > b.size(); });
  return islands;
}

absl::Status ValidateTopology(const Topology& topology) {
  const LinkSpeeds& l = topology.links;
  for (const auto& [name, value] : {std::pair<const char*, double>{"nvlink_gbps", l.nvlink_gbps},
                                    {"pcie_gbps", l.pcie_gbps},
                                    {"inter_node_gbps", l.inter_node_gbps}}) {
    if (!(value > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("links.", name, ": must be > 0, got ", value));
    }
  }
  if (l.ring_overlap < 0 || l.ring_overlap > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("links.ring_overlap: must be in [0, 1], got ", l.ring_overlap));
  }
  if (l.latency_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("links.latency_us: must be >= 0, got ", l.latency_us));
  }
  if (topology.nodes.empty()) return absl::InvalidArgumentError("nodes: no node");
  std::set<std::string> names;
  for (size_t n = 0; n < topology.nodes.size(); ++n) {
    const NodeTopology& node = topology.nodes[n];
    const std::string path = absl::StrCat("nodes[", n, "]");
    if (node.name.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ".name: empty"));
    if (!names.insert(node.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".name: duplicate node name '", node.name, "'"));
    }
    if (node.gpus.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ".gpus: no GPU"));
    std::map<int, const GpuDevice*> by_index;
    for (size_t g = 0; g < node.gpus.size(); ++g) {
      const GpuDevice& gpu = node.gpus[g];
      if (gpu.index < 0 || !by_index.emplace(gpu.index, &gpu).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".gpus[", g, "].index: negative or duplicate index ", gpu.index));
      }
      if (gpu.memory_bytes == 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".gpus[", g, "].memory_gb: zero"));
      }
    }
    for (size_t g = 0; g < node.gpus.size(); ++g) {
      const GpuDevice& gpu = node.gpus[g];
      for (int peer : gpu.nvlink_peers) {
        const std::string field = absl::StrCat(path, ".gpus[", g, "].nvlink_peers");
        auto it = by_index.find(peer);
        if (peer == gpu.index || it == by_index.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ": ", peer, " is not another GPU of node '", node.name, "'"));
        }
        const std::vector<int>& back = it->second->nvlink_peers;
        if (std::find(back.begin(), back.end(), gpu.index) == back.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ": GPU ", gpu.index, " lists ", peer, " but ", peer,
                           " does not list it (links are symmetric)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Topology> ParseTopologyJson(absl::string_view text) {
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonText(text, "topology"));
  Topology topology;
  ASSIGN_OR_RETURN(topology.links, ParseLinks(json));
  ASSIGN_OR_RETURN(const nlohmann::json* nodes, ArrayField(json, "", "nodes"));
  for (size_t n = 0; n < nodes->size(); ++n) {
    const std::string path = absl::StrCat("nodes[", n, "]");
    const nlohmann::json& node_json = (*nodes)[n];
    NodeTopology node;
    ASSIGN_OR_RETURN(node.name, StringField(node_json, path, "name"));
    ASSIGN_OR_RETURN(const nlohmann::json* gpus, ArrayField(node_json, path, "gpus"));
    for (size_t g = 0; g < gpus->size(); ++g) {
      ASSIGN_OR_RETURN(GpuDevice gpu, ParseGpu((*gpus)[g], absl::StrCat(path, ".gpus[", g, "]")));
      node.gpus.push_back(std::move(gpu));
    }
    topology.nodes.push_back(std::move(node));
  }
  RETURN_IF_ERROR(ValidateTopology(topology));
  return topology;
}

std::string TopologyToJson(const Topology& topology) {
  nlohmann::json json;
  json["links"] = {{"nvlink_gbps", topology.links.nvlink_gbps},
                   {"pcie_gbps", topology.links.pcie_gbps},
                   {"inter_node_gbps", topology.links.inter_node_gbps},
                   {"latency_us", topology.links.latency_us},
                   {"ring_overlap", topology.links.ring_overlap}};
  json["nodes"] = nlohmann::json::array();
  for (const NodeTopology& node : topology.nodes) {
    nlohmann::json gpus = nlohmann::json::array();
    for (const GpuDevice& gpu : node.gpus) {
      gpus.push_back({{"index", gpu.index},
                      {"name", gpu.name},
                      {"memory_gb", static_cast<double>(gpu.memory_bytes) / kBytesPerGb},
                      {"pci_bus_id", gpu.pci_bus_id},
                      {"numa_node", gpu.numa_node},
                      {"nvlink_peers", gpu.nvlink_peers}});
    }
    json["nodes"].push_back({{"name", node.name}, {"gpus", std::move(gpus)}});
  }
  return json.dump(2);
}

absl::StatusOr<Topology> ReadTopologyFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  absl::StatusOr<Topology> topology = ParseTopologyJson(text);
  if (!topology.ok()) {
    return absl::Status(topology.status().code(),
                        absl::StrCat(path, ": ", topology.status().message()));
  }
  return topology;
}

absl::Status WriteTopologyFile(const std::string& path, const Topology& topology) {
  std::ofstream out(path);
  if (!out) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  out << TopologyToJson(topology) << "\n";
  return out.good() ? absl::OkStatus()
                    : absl::InternalError(absl::StrCat("write to '", path, "' failed"));
}

}  // namespace dgrid::planner
