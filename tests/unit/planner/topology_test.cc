#include "planner/topology.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "planner/nvml_discovery.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

using testing::TopologyPath;

TEST(TopologyTest, ReadsEightGpuNvlinkNode) {
  absl::StatusOr<Topology> t = ReadTopologyFile(TopologyPath("h100x8-nvlink.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->nodes.size(), 1u);
  EXPECT_EQ(t->TotalGpus(), 8);
  EXPECT_EQ(t->nodes[0].gpus[3].memory_bytes, 80'000'000'000ull);
  EXPECT_EQ(t->nodes[0].gpus[3].nvlink_peers.size(), 7u);
  EXPECT_EQ(t->nodes[0].gpus[5].numa_node, 1);
  std::vector<std::vector<int>> islands = NvlinkIslands(t->nodes[0]);
  ASSERT_EQ(islands.size(), 1u);
  EXPECT_EQ(islands[0], (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_DOUBLE_EQ(t->links.nvlink_gbps, 450);
}

TEST(TopologyTest, ReadsTwoNodesAndPcieCluster) {
  absl::StatusOr<Topology> two = ReadTopologyFile(TopologyPath("2x-h100x8-nvlink.json"));
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->nodes.size(), 2u);
  EXPECT_EQ(two->TotalGpus(), 16);
  absl::StatusOr<Topology> pcie = ReadTopologyFile(TopologyPath("4x-h100x4-pcie.json"));
  ASSERT_TRUE(pcie.ok()) << pcie.status();
  EXPECT_EQ(pcie->nodes.size(), 4u);
  EXPECT_EQ(pcie->TotalGpus(), 16);
  // No NVLink: every GPU is an island of one.
  EXPECT_EQ(NvlinkIslands(pcie->nodes[2]).size(), 4u);
}

TEST(TopologyTest, PairsOfNvlinkBridgesAreSeparateIslands) {
  absl::StatusOr<Topology> t = ParseTopologyJson(R"({"nodes": [{"name": "n", "gpus": [
      {"index": 0, "memory_gb": 48, "nvlink_peers": [1]},
      {"index": 1, "memory_gb": 48, "nvlink_peers": [0]},
      {"index": 2, "memory_gb": 48, "nvlink_peers": [3]},
      {"index": 3, "memory_gb": 48, "nvlink_peers": [2]}]}]})");
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::vector<int>> islands = NvlinkIslands(t->nodes[0]);
  ASSERT_EQ(islands.size(), 2u);
  EXPECT_EQ(islands[0], (std::vector<int>{0, 1}));
  EXPECT_EQ(islands[1], (std::vector<int>{2, 3}));
  // Links not given: the documented defaults.
  EXPECT_DOUBLE_EQ(t->links.pcie_gbps, LinkSpeeds().pcie_gbps);
}

TEST(TopologyTest, JsonRoundTripKeepsEverything) {
  absl::StatusOr<Topology> t = ReadTopologyFile(TopologyPath("2x-h100x8-nvlink.json"));
  ASSERT_TRUE(t.ok());
  t->links.inter_node_gbps = 25;
  absl::StatusOr<Topology> back = ParseTopologyJson(TopologyToJson(*t));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(TopologyToJson(*back), TopologyToJson(*t));
  EXPECT_DOUBLE_EQ(back->links.inter_node_gbps, 25);
  EXPECT_EQ(back->nodes[1].gpus[7].pci_bus_id, t->nodes[1].gpus[7].pci_bus_id);
}

struct BrokenCase {
  const char* json;
  const char* error;  // the field path the message must name
};

TEST(TopologyTest, BrokenFilesNameTheField) {
  const std::vector<BrokenCase> cases = {
      {"{not json", "not valid JSON"},
      {R"({})", "nodes: missing"},
      {R"({"nodes": {}})", "nodes: expected an array"},
      {R"({"nodes": []})", "nodes: no node"},
      {R"({"nodes": [{"gpus": []}]})", "nodes[0].name: missing"},
      {R"({"nodes": [{"name": "a", "gpus": []}]})", "nodes[0].gpus: no GPU"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": "80"}]}]})",
       "nodes[0].gpus[0].memory_gb: expected a number"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0}]}]})",
       "nodes[0].gpus[0].memory_gb: missing"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0.5, "memory_gb": 80}]}]})",
       "nodes[0].gpus[0].index: expected an integer"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": 80},
                                             {"index": 0, "memory_gb": 80}]}]})",
       "nodes[0].gpus[1].index"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": 80, "nvlink_peers": [1]},
                                             {"index": 1, "memory_gb": 80}]}]})",
       "nodes[0].gpus[0].nvlink_peers: GPU 0 lists 1 but 1 does not list it"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": 80, "nvlink_peers": [5]}]}]})",
       "nodes[0].gpus[0].nvlink_peers: 5 is not another GPU"},
      {R"({"nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": 80}]},
                     {"name": "a", "gpus": [{"index": 0, "memory_gb": 80}]}]})",
       "nodes[1].name: duplicate"},
      {R"({"links": {"pcie_gbps": -1}, "nodes": [{"name": "a", "gpus": [{"index": 0, "memory_gb": 80}]}]})",
       "links.pcie_gbps: must be > 0"},
      {R"({"links": {"nvlink_gbps": "fast"}, "nodes": []})",
       "links.nvlink_gbps: expected a number"},
  };
  for (const BrokenCase& c : cases) {
    absl::StatusOr<Topology> t = ParseTopologyJson(c.json);
    ASSERT_FALSE(t.ok()) << c.json;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(t.status().message().find(c.error), std::string::npos)
        << "got: " << t.status().message() << "\nwanted: " << c.error;
  }
}

TEST(TopologyTest, MissingFileIsNotFoundAndErrorsNameTheFile) {
  EXPECT_EQ(ReadTopologyFile("/nonexistent/t.json").status().code(), absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/bad_topology.json";
  Topology empty;
  // Writing is not validated; reading it back is.
  ASSERT_TRUE(WriteTopologyFile(path, empty).ok());
  absl::StatusOr<Topology> back = ReadTopologyFile(path);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find(path), std::string::npos);
  EXPECT_NE(back.status().message().find("nodes: no node"), std::string::npos);
}

TEST(NvmlDiscoveryTest, MissingLibraryIsAClearUnavailable) {
  absl::StatusOr<Topology> t = DiscoverLocalTopology("libnvidia-ml-does-not-exist.so.1");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(t.status().message().find("NVML not available"), std::string::npos);
  EXPECT_NE(t.status().message().find("--topology"), std::string::npos);
}

TEST(NvmlDiscoveryTest, DiscoversThisMachineOrSaysWhyNot) {
  // On a GPU host this reads the real GPUs; elsewhere it must fail cleanly, never crash.
  absl::StatusOr<Topology> t = DiscoverLocalTopology();
  if (!t.ok()) {
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable) << t.status();
    GTEST_SKIP() << t.status();
  }
  EXPECT_TRUE(ValidateTopology(*t).ok());
  EXPECT_GE(t->TotalGpus(), 1);
}

}  // namespace
}  // namespace dgrid::planner
