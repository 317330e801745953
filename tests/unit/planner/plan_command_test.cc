// `dgrid plan` end to end through its entry point (cli/plan_command.cc).
#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/match.h"
#include "cli/commands.h"
#include "nlohmann/json.hpp"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::cli {
namespace {

using planner::testing::SourceDir;
using planner::testing::TopologyPath;

TEST(PlanCommandTest, WritesExplainedJsonForATopologyFile) {
  const std::string out = ::testing::TempDir() + "/plan.json";
  const std::string workload = ::testing::TempDir() + "/mix.json";
  std::ofstream(workload) << R"({"classes": [{"width": 1024, "height": 1024, "share": 1},
                                             {"width": 2048, "height": 2048, "cfg": true}]})";
  ASSERT_EQ(
      PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--model", "flux-dev",
                   "--workload", workload, "--json", out, "--calibrate",
                   SourceDir() + "/bench/results/2026-11-27-h100-dgrid-denoise-512.json," +
                       SourceDir() + "/bench/results/2026-11-27-h100-dgrid-denoise-1024.json," +
                       SourceDir() + "/bench/results/2026-11-27-h100-dgrid-denoise-2048.json"}),
      0);
  std::ifstream in(out);
  nlohmann::json plan = nlohmann::json::parse(in);
  int gpus = 0;
  for (const auto& g : plan["groups"]) gpus += static_cast<int>(g["gpus"].size());
  EXPECT_EQ(gpus, 8);
  EXPECT_FALSE(plan["reasons"].empty());
  EXPECT_EQ(plan["isolated_latency_ms"].size(), 2u);
  EXPECT_NE(plan["calibration"]["source"].get<std::string>().find("fit to 3"), std::string::npos);
  EXPECT_FALSE(plan["step_estimates"].empty());
}

TEST(PlanCommandTest, PlansForATraceAndReplaysIt) {
  const std::string out = ::testing::TempDir() + "/plan-trace.json";
  const std::string trace = ::testing::TempDir() + "/requests.jsonl";
  {
    std::ofstream f(trace);
    for (int i = 0; i < 40; ++i) {
      f << "{\"arrival_s\": " << i * 0.5 << ", \"width\": " << (i % 4 == 0 ? 1024 : 512)
        << ", \"height\": " << (i % 4 == 0 ? 1024 : 512)
        << (i % 10 == 0 ? ", \"model\": \"x\"" : "") << "}\n";
    }
  }
  ASSERT_EQ(PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--model", "flux-dev",
                         "--trace", trace, "--trace-model", "y", "--json", out}),
            0);
  std::ifstream in(out);
  nlohmann::json plan = nlohmann::json::parse(in);
  // Two shapes, planned for; the four lines of model x are left out of the replay.
  EXPECT_EQ(plan["isolated_latency_ms"].size(), 2u);
  const nlohmann::json& replay = plan["trace_replay"];
  EXPECT_EQ(replay["arrived"], 36);
  EXPECT_EQ(replay["skipped_other_models"], 4);
  EXPECT_EQ(replay["completed"].get<int>() + replay["rejected"].get<int>(), 36);
  EXPECT_TRUE(replay["slo_attainment"].contains("1.2x"));

  const std::string mix = ::testing::TempDir() + "/mix-too.json";
  std::ofstream(mix) << R"({"classes": [{"width": 1024, "height": 1024}]})";
  EXPECT_EQ(PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--trace", trace,
                         "--workload", mix}),
            1);
  EXPECT_EQ(PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--trace-model", "y"}),
            1);
  EXPECT_EQ(PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--trace",
                         "/nonexistent.jsonl"}),
            1);
}

TEST(PlanCommandTest, VramBudgetChoosesTheDitSettingsOrRefuses) {
  const std::string out = ::testing::TempDir() + "/plan-memory.json";
  const auto plan = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--topology", TopologyPath("h100x8-nvlink.json"), "--json",
                                     out};
    args.insert(args.end(), extra.begin(), extra.end());
    return PlanCommand(args);
  };
  const auto memory = [&] {
    std::ifstream in(out);
    return nlohmann::json::parse(in)["memory"];
  };
  const auto candidate = [](const nlohmann::json& m, const std::string& name) {
    for (const auto& c : m["groups"][0]["candidates"]) {
      if (c["name"] == name) return c;
    }
    return nlohmann::json();
  };
  // Without a budget, each GPU's own memory (80 GB) is the budget: plain bf16.
  ASSERT_EQ(plan({}), 0);
  nlohmann::json m = memory();
  EXPECT_EQ(m["dit_precision"], "bf16");
  EXPECT_EQ(m["dit_offload"], "none");
  EXPECT_EQ(m["performance_mode"], "auto");
  EXPECT_NEAR(m["groups"][0]["budget_mib"].get<double>(), 80e9 / 1048576.0, 1);
  const double bf16_peak = m["groups"][0]["bf16"]["peak_mib"];
  const double fp8_peak = m["groups"][0]["fp8"]["peak_mib"];
  EXPECT_GT(bf16_peak, 22000);  // FLUX.1-dev's weights alone are about 22 GiB
  EXPECT_LT(fp8_peak, 0.7 * bf16_peak);
  EXPECT_EQ(m["groups"][0]["choice"], "bf16");
  // Every candidate is listed with its predicted step and peak and a verdict; on this group of 8
  // sharded weights are one, slower than plain bf16 by their gathers.
  EXPECT_EQ(m["groups"][0]["layout"], "cfg1-ring1-ulysses8");
  EXPECT_EQ(m["groups"][0]["candidates"].size(), 6u);
  const nlohmann::json sharded = candidate(m, "sharded weights prefetch 1");
  EXPECT_TRUE(sharded["available"].get<bool>());
  EXPECT_TRUE(sharded["fits"].get<bool>());
  EXPECT_TRUE(absl::StrContains(sharded["verdict"].get<std::string>(), "slower"));
  EXPECT_FALSE(m["dit_shard_weights"].get<bool>());
  EXPECT_TRUE(absl::StrContains(
      candidate(m, "bf16 + offload prefetch 1")["verdict"].get<std::string>(), "slower"));

  ASSERT_EQ(plan({"--vram-budget", "24GiB"}), 0);
  EXPECT_EQ(memory()["dit_precision"], "bf16");
  // 16 GiB: bf16 does not fit; of the lossless candidates that do, sharding over the group of 8
  // (gathers over NVLink) is faster than layerwise offload (copies over PCIe) and is taken over
  // FP8.
  ASSERT_EQ(plan({"--vram-budget", "16GiB"}), 0);
  m = memory();
  EXPECT_EQ(m["dit_precision"], "bf16");
  EXPECT_EQ(m["dit_offload"], "none");
  EXPECT_TRUE(m["dit_shard_weights"].get<bool>());
  EXPECT_EQ(m["denoiser_flags"],
            nlohmann::json({"--dit-shard-weights=true", "--dit-shard-prefetch", "1"}));
  EXPECT_TRUE(absl::StrContains(
      candidate(m, "bf16 + offload prefetch 1")["verdict"].get<std::string>(), "slower"));
  // memory: offload's smaller footprint.
  ASSERT_EQ(plan({"--vram-budget", "16GiB", "--performance-mode", "memory"}), 0);
  m = memory();
  EXPECT_EQ(m["dit_offload"], "layerwise");
  EXPECT_EQ(m["dit_offload_prefetch"], 1);
  EXPECT_EQ(m["denoiser_flags"],
            nlohmann::json({"--dit-offload", "layerwise", "--dit-offload-prefetch", "1"}));
  EXPECT_FALSE(m["groups"][0]["bf16"]["fits"].get<bool>());
  EXPECT_TRUE(m["groups"][0]["fp8"]["fits"].get<bool>());
  EXPECT_TRUE(
      absl::StrContains(candidate(m, "fp8 (lossy)")["verdict"].get<std::string>(), "lossy"));
  // speed takes FP8 there (as fast as bf16 by the cost model, no copies).
  ASSERT_EQ(plan({"--vram-budget", "16GiB", "--performance-mode", "speed"}), 0);
  EXPECT_EQ(memory()["dit_precision"], "fp8");
  EXPECT_EQ(plan({"--vram-budget", "2GiB"}), 1);  // not even offload
  // Wan2.1-14B fits 24 GiB only with offload (no FP8 for Wan).
  ASSERT_EQ(plan({"--model", "wan2.1-14b", "--vram-budget", "24GiB"}), 0);
  EXPECT_EQ(memory()["dit_offload"], "layerwise");
  ASSERT_EQ(plan({"--model", "wan2.1-14b", "--vram-budget", "40GiB"}), 0);
  EXPECT_EQ(memory()["dit_precision"], "bf16");
  EXPECT_EQ(memory()["dit_offload"], "none");
  for (const char* bad : {"24", "GiB", "-3GiB", "24TiB"}) {
    EXPECT_EQ(plan({"--vram-budget", bad}), 1) << bad;
  }
  EXPECT_EQ(plan({"--performance-mode", "fast"}), 1);
}

// Four NVLink GPUs within 12 GiB: FLUX.1-dev's group of 4 fits neither bf16 nor FP8; sharded
// weights do and beat offload's copies, so the plan picks them and names the denoisers' flags.
TEST(PlanCommandTest, PicksShardedWeightsWhereTheyAreTheFastestThatFits) {
  const std::string topology = ::testing::TempDir() + "/h100x4.json";
  {
    nlohmann::json gpus = nlohmann::json::array();
    for (int i = 0; i < 4; ++i) {
      nlohmann::json peers = nlohmann::json::array();
      for (int j = 0; j < 4; ++j) {
        if (j != i) peers.push_back(j);
      }
      gpus.push_back({{"index", i},
                      {"name", "NVIDIA H100 80GB HBM3"},
                      {"memory_gb", 80},
                      {"nvlink_peers", peers}});
    }
    std::ofstream(topology) << nlohmann::json({{"nodes", {{{"name", "node0"}, {"gpus", gpus}}}}});
  }
  const std::string out = ::testing::TempDir() + "/plan-shard.json";
  ASSERT_EQ(PlanCommand({"--topology", topology, "--vram-budget", "12GiB", "--json", out}), 0);
  nlohmann::json m = nlohmann::json::parse(std::ifstream(out))["memory"];
  ASSERT_EQ(m["groups"].size(), 1u);
  EXPECT_EQ(m["groups"][0]["layout"], "cfg1-ring1-ulysses4");
  EXPECT_EQ(m["groups"][0]["choice"], "sharded weights prefetch 1");
  EXPECT_TRUE(m["dit_shard_weights"].get<bool>());
  EXPECT_EQ(m["dit_shard_prefetch"], 1);
  EXPECT_EQ(m["dit_offload"], "none");
  EXPECT_EQ(m["denoiser_flags"],
            nlohmann::json({"--dit-shard-weights=true", "--dit-shard-prefetch", "1"}));
  EXPECT_FALSE(m["groups"][0]["bf16"]["fits"].get<bool>());
  EXPECT_FALSE(m["groups"][0]["fp8"]["fits"].get<bool>());
  // --performance-mode memory takes offload's smaller footprint instead.
  ASSERT_EQ(PlanCommand({"--topology", topology, "--vram-budget", "12GiB", "--performance-mode",
                         "memory", "--json", out}),
            0);
  m = nlohmann::json::parse(std::ifstream(out))["memory"];
  EXPECT_EQ(m["dit_offload"], "layerwise");
  EXPECT_FALSE(m["dit_shard_weights"].get<bool>());
}

TEST(PlanCommandTest, BadInputsFailWithStatusCodes) {
  EXPECT_EQ(PlanCommand({"--topology", "/nonexistent.json"}), 1);
  EXPECT_EQ(PlanCommand({"--topology", TopologyPath("h100x8-nvlink.json"), "--model", "nope"}), 1);
  EXPECT_EQ(PlanCommand({"--frobnicate", "1"}), 2);
  EXPECT_EQ(PlanCommand({"--topology"}), 2);
}

}  // namespace
}  // namespace dgrid::cli
