#include "planner/group_planner.h"

#include <gtest/gtest.h>

#include <set>

#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/placement/sim_placer.h"
#include "planner/simulation.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

ModelShape Flux() { return *LookupModelShape("flux-dev"); }

PlacerFactory Policy(const std::string& name) {
  return [name]() {
    return orchestrator::MakeOwningSimPlacer(*orchestrator::MakePlacementPolicy(name));
  };
}

Topology Read(const std::string& name) { return *ReadTopologyFile(testing::TopologyPath(name)); }

// Every GPU of the topology in exactly one group.
void ExpectCoversEveryGpuOnce(const Topology& t, const std::vector<PlannedGroup>& groups) {
  std::multiset<std::string> used;
  int total = 0;
  for (const PlannedGroup& g : groups) {
    EXPECT_EQ(static_cast<int>(g.gpus.size()), g.layout.size()) << g.id;
    used.insert(g.gpus.begin(), g.gpus.end());
    total += g.layout.size();
  }
  EXPECT_EQ(total, t.TotalGpus());
  for (const std::string& gpu : used) EXPECT_EQ(used.count(gpu), 1u) << gpu;
}

TEST(GroupPlannerTest, NvlinkNodeKeepsUlyssesOnNvlink) {
  const Topology t = Read("h100x8-nvlink.json");
  const CostModel cost(Calibration(), t.links);
  absl::StatusOr<Plan> plan =
      PlanGroups(t, Flux(), cost, DefaultMixedWorkload(), Policy("predicted-completion"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectCoversEveryGpuOnce(t, plan->groups);
  for (const PlannedGroup& g : plan->groups) {
    EXPECT_EQ(g.layout.ulysses_link, LinkClass::kNvlink) << g.layout.ToString();
    EXPECT_EQ(24 % g.layout.ulysses, 0);
  }
  // The planner scored several splits and says why it chose.
  EXPECT_GE(plan->candidates.size(), 5u);
  EXPECT_GE(plan->reasons.size(), 2u);
  EXPECT_GT(plan->workload.arrival_rate_per_s, 0);
  const nlohmann::json json = plan->ToJson();
  EXPECT_EQ(json["groups"].size(), plan->groups.size());
  EXPECT_NE(plan->ToText().find("why:"), std::string::npos);
}

TEST(GroupPlannerTest, ChosenSplitIsTheBestScoredCandidate) {
  const Topology t = Read("h100x8-nvlink.json");
  const CostModel cost(Calibration(), t.links);
  absl::StatusOr<Plan> plan =
      PlanGroups(t, Flux(), cost, DefaultMixedWorkload(), Policy("predicted-completion"));
  ASSERT_TRUE(plan.ok());
  for (const CandidateScore& c : plan->candidates) {
    EXPECT_LE(c.slo_attainment, plan->candidates.front().slo_attainment + 1e-9) << c.split;
  }
}

TEST(GroupPlannerTest, PcieClusterNeverRunsUlyssesAcrossNodes) {
  const Topology t = Read("4x-h100x4-pcie.json");
  const CostModel cost(Calibration(), t.links);
  absl::StatusOr<Plan> plan =
      PlanGroups(t, Flux(), cost, DefaultMixedWorkload(), Policy("predicted-completion"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectCoversEveryGpuOnce(t, plan->groups);
  for (const PlannedGroup& g : plan->groups) {
    EXPECT_NE(g.layout.ulysses_link, LinkClass::kInterNode) << g.layout.ToString();
    EXPECT_NE(g.layout.ulysses_link, LinkClass::kNvlink) << "no NVLink in this cluster";
  }
}

TEST(GroupPlannerTest, TwoNodesOfferCrossNodeRingGroups) {
  const Topology t = Read("2x-h100x8-nvlink.json");
  std::vector<GroupShape> sixteen = CandidateLayouts(t, Flux(), 16, false);
  ASSERT_FALSE(sixteen.empty());
  for (const GroupShape& s : sixteen) EXPECT_EQ(s.ring_link, LinkClass::kInterNode);
  // Ulysses 16 does not divide 24 heads: the widest Ulysses is 8, inside a node, ring across.
  int widest = 0;
  for (const GroupShape& s : sixteen) widest = std::max(widest, s.ulysses);
  EXPECT_EQ(widest, 8);
  const CostModel cost(Calibration(), t.links);
  absl::StatusOr<Plan> plan =
      PlanGroups(t, Flux(), cost, DefaultMixedWorkload(), Policy("predicted-completion"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectCoversEveryGpuOnce(t, plan->groups);
}

TEST(GroupPlannerTest, CfgLayoutsOnlyWhenTheMixUsesCfg) {
  const Topology t = Read("h100x8-nvlink.json");
  const CostModel cost(Calibration(), t.links);
  Workload no_cfg = DefaultMixedWorkload();
  no_cfg.classes.erase(std::remove_if(no_cfg.classes.begin(), no_cfg.classes.end(),
                                      [](const RequestClass& c) { return c.shape.cfg; }),
                       no_cfg.classes.end());
  absl::StatusOr<Plan> plan = PlanGroups(t, Flux(), cost, no_cfg, Policy("predicted-completion"));
  ASSERT_TRUE(plan.ok());
  for (const PlannedGroup& g : plan->groups) EXPECT_EQ(g.layout.cfg, 1);
}

TEST(GroupPlannerTest, InvalidTopologiesAndModelsAreClearErrors) {
  Topology small = Read("h100x8-nvlink.json");
  for (GpuDevice& gpu : small.nodes[0].gpus) gpu.memory_bytes = 16'000'000'000ull;
  const CostModel cost(Calibration(), small.links);
  absl::StatusOr<Plan> plan =
      PlanGroups(small, Flux(), cost, DefaultMixedWorkload(), Policy("least-loaded"));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("GB of weights per GPU"), std::string::npos);

  Topology broken = Read("h100x8-nvlink.json");
  broken.nodes[0].gpus[0].nvlink_peers = {9};
  EXPECT_EQ(PlanGroups(broken, Flux(), cost, DefaultMixedWorkload(), Policy("least-loaded"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_FALSE(
      PlanGroups(Read("h100x8-nvlink.json"), Flux(), cost, Workload(), Policy("least-loaded"))
          .ok());
  // A model whose heads no Ulysses degree > 1 divides only gets ring layouts.
  ModelShape odd = Flux();
  odd.num_heads = 7;
  for (const GroupShape& s : CandidateLayouts(Read("h100x8-nvlink.json"), odd, 8, true)) {
    EXPECT_EQ(s.ulysses, 1) << s.ToString();
  }
}

TEST(WorkloadTest, ParsesAndRejectsWithFieldNames) {
  absl::StatusOr<Workload> w = ParseWorkloadJson(
      R"({"arrival_rate_per_s": 2, "classes": [{"width": 512, "height": 512, "share": 3},
                                               {"width": 1024, "height": 1024, "cfg": true}]})");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_DOUBLE_EQ(w->classes[0].share, 0.75);
  EXPECT_TRUE(w->classes[1].shape.cfg);
  EXPECT_EQ(w->classes[1].shape.steps, 28);
  EXPECT_EQ(w->classes[1].name, "1024x1024-cfg");
  const std::vector<std::pair<const char*, const char*>> bad = {
      {R"({"classes": []})", "classes: empty"},
      {R"({"classes": [{"height": 512}]})", "classes[0].width: missing"},
      {R"({"classes": [{"width": 500, "height": 512}]})", "classes[0].width/height"},
      {R"({"classes": [{"width": 512, "height": 512, "cfg": 1}]})", "classes[0].cfg: expected"},
      {R"({"slo_factor": 0.5, "classes": [{"width": 512, "height": 512}]})", "slo_factor"},
  };
  for (const auto& [json, error] : bad) {
    absl::StatusOr<Workload> b = ParseWorkloadJson(json);
    ASSERT_FALSE(b.ok()) << json;
    EXPECT_NE(b.status().message().find(error), std::string::npos) << b.status().message();
  }
}

TEST(SimulationTest, IdleClusterMeetsIsolatedLatencyExactly) {
  const Topology t = Read("h100x8-nvlink.json");
  const CostModel cost(Calibration(), t.links);
  Workload w = DefaultMixedWorkload();
  // Eight one-GPU groups: a request only waits if eight arrive within one service time.
  absl::StatusOr<std::vector<PlannedGroup>> groups = FixedGroups(t, Flux(), cost, w, 1, 4);
  ASSERT_TRUE(groups.ok());
  std::vector<double> reference;
  for (const RequestClass& c : w.classes) {
    reference.push_back(*cost.RequestMs(Flux(), c.shape, (*groups)[0].layout));
  }
  SimOptions options;
  options.num_requests = 200;
  options.rate_per_s = 0.001;  // one request every ~17 minutes
  auto placer = Policy("least-loaded")();
  absl::StatusOr<SimResult> r = Simulate(Flux(), cost, *groups, w, reference, *placer, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 200);
  EXPECT_DOUBLE_EQ(r->slo_attainment[0], 1.0);
  EXPECT_LT(r->gpu_utilisation, 0.01);
}

TEST(SimulationTest, DeadlinesRejectEarlyAndEveryCompletedRequestMeetsIt) {
  const Topology t = Read("h100x8-nvlink.json");
  const CostModel cost(Calibration(), t.links);
  Workload w = DefaultMixedWorkload();
  absl::StatusOr<std::vector<PlannedGroup>> groups = FixedGroups(t, Flux(), cost, w, 8, 4);
  ASSERT_TRUE(groups.ok());
  std::vector<double> reference;
  for (const RequestClass& c : w.classes) {
    reference.push_back(*IsolatedLatencyMs(t, Flux(), cost, c.shape));
  }
  SimOptions options;
  options.num_requests = 500;
  options.rate_per_s = Sp1ArrivalRate(t, Flux(), cost, w, 0.9);  // overload for one SP=8 group
  options.deadline_factor = 1.5;
  auto placer = Policy("predicted-completion")();
  absl::StatusOr<SimResult> r = Simulate(Flux(), cost, *groups, w, reference, *placer, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->rejected, 0);
  EXPECT_EQ(r->completed + r->rejected, r->arrived);
  // The policy's predictions are the simulator's service times: nothing admitted is late.
  EXPECT_NEAR(r->slo_attainment[2], static_cast<double>(r->completed) / r->arrived, 1e-9);
}

}  // namespace
}  // namespace dgrid::planner
