// The orchestrator's placement policies on hand-built situations.
#include <gtest/gtest.h>

#include "orchestrator/placement/least_loaded.h"
#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/placement/predicted_completion.h"
#include "orchestrator/placement/round_robin.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::orchestrator {
namespace {

PlacementCandidate Group(std::string id, int cfg, int ulysses, int inflight = 0,
                         int max_inflight = 4, double outstanding_ms = -1) {
  PlacementCandidate c;
  c.worker_id = id;
  c.address = id + ":1";
  c.layout.cfg = cfg;
  c.layout.ulysses = ulysses;
  c.inflight = inflight;
  c.max_inflight = max_inflight;
  c.outstanding_ms = outstanding_ms;
  return c;
}

PlacementRequest Image(int side, bool cfg = false, double deadline_ms = 0) {
  PlacementRequest r;
  r.width = r.height = side;
  r.cfg = cfg;
  r.deadline_ms = deadline_ms;
  return r;
}

TEST(PredictedCompletionTest, LargeImageGoesToTheWideGroup) {
  PredictedCompletionPolicy policy{PlacementContext()};
  const std::vector<PlacementCandidate> c = {Group("a-sp1", 1, 1), Group("b-sp8", 1, 8)};
  EXPECT_EQ(*policy.Choose(Image(2048), c, {}), 1u);
}

TEST(PredictedCompletionTest, QueueOnTheFastGroupSendsSmallImagesElsewhere) {
  PredictedCompletionPolicy policy{PlacementContext()};
  // The SP=8 group has 20 s of work queued; a 512^2 request finishes sooner on an idle GPU.
  const std::vector<PlacementCandidate> c = {Group("a-sp8", 1, 8, 2, 4, 20000),
                                             Group("b-sp1", 1, 1, 0, 4, 0)};
  EXPECT_EQ(*policy.Choose(Image(512), c, {}), 1u);
  // With an empty queue the SP=8 group wins again.
  const std::vector<PlacementCandidate> idle = {Group("a-sp8", 1, 8, 0, 4, 0),
                                                Group("b-sp1", 1, 1, 0, 4, 0)};
  EXPECT_EQ(*policy.Choose(Image(512), idle, {}), 0u);
}

TEST(PredictedCompletionTest, UnknownBacklogIsEstimatedFromInflight) {
  PredictedCompletionPolicy policy{PlacementContext()};
  const PlacementCandidate busy = Group("a", 1, 4, 3);
  const PlacementCandidate idle = Group("b", 1, 4, 0);
  const double busy_ms = *policy.PredictMs(Image(1024), busy);
  const double idle_ms = *policy.PredictMs(Image(1024), idle);
  EXPECT_NEAR(busy_ms, 4 * idle_ms, 1e-6);
  EXPECT_EQ(*policy.Choose(Image(1024), {busy, idle}, {}), 1u);
}

TEST(PredictedCompletionTest, ImpossibleDeadlineIsRefusedAtOnce) {
  PredictedCompletionPolicy policy{PlacementContext()};
  const std::vector<PlacementCandidate> c = {Group("a", 1, 8), Group("b", 1, 1)};
  const double best = *policy.PredictMs(Image(2048), c[0]);
  absl::StatusOr<size_t> refused = policy.Choose(Image(2048, false, best * 0.5), c, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(refused.status().message().find("deadline"), std::string::npos);
  // The client learns the size of the best group, not its worker's id.
  EXPECT_NE(refused.status().message().find("on a group of 8 GPUs"), std::string::npos)
      << refused.status();
  EXPECT_EQ(refused.status().message().find("\"a\""), std::string::npos);
  EXPECT_EQ(refused.status().message().find(" a,"), std::string::npos) << refused.status();
  // A deadline the fast group can meet is accepted there.
  EXPECT_EQ(*policy.Choose(Image(2048, false, best * 1.1), c, {}), 0u);
}

TEST(PredictedCompletionTest, AGroupsMeasuredSpeedScalesItsPredictions) {
  PredictedCompletionPolicy policy{PlacementContext()};
  PlacementCandidate measured = Group("a-sp8", 1, 8);
  const double model_ms = policy.ServiceMs(Image(2048), measured);
  measured.speed = 3;  // its steps take three times what the cost model says
  EXPECT_NEAR(policy.ServiceMs(Image(2048), measured), 3 * model_ms, 1e-6);
  EXPECT_NEAR(*policy.PredictMs(Image(2048), measured), 3 * model_ms, 1e-6);
  // Slower than predicted, it can no longer meet a deadline the model alone would have accepted.
  EXPECT_EQ(policy.Choose(Image(2048, false, 2 * model_ms), {measured}, {}).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  // And a faster one wins a choice it would have lost: an SP=2 group measured at a fifth of its
  // predicted step time beats an unmeasured SP=8 group.
  PlacementCandidate fast = Group("b-sp2", 1, 2);
  fast.speed = 0.2;
  EXPECT_EQ(*policy.Choose(Image(2048), {Group("a-sp8", 1, 8), fast}, {}), 1u);
}

TEST(PredictedCompletionTest, DeadlineOnlyAFullGroupCanMeetMeansWait) {
  PredictedCompletionPolicy policy{PlacementContext()};
  // The SP=8 group is at its limit but could still finish in time; the open SP=1 group cannot.
  const std::vector<PlacementCandidate> c = {Group("a", 1, 8, 1, 1, 0), Group("b", 1, 1, 0, 4, 0)};
  const double fast = *policy.PredictMs(Image(2048), c[0]);
  absl::StatusOr<size_t> r = policy.Choose(Image(2048, false, fast * 1.5), c, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PredictedCompletionTest, CfgRequestsPreferCfgParallelGroups) {
  PredictedCompletionPolicy policy{PlacementContext()};
  // Same size groups: cfg2 x ulysses4 and ulysses8.
  const std::vector<PlacementCandidate> c = {Group("a-u8", 1, 8), Group("b-cfg2", 2, 4)};
  EXPECT_EQ(*policy.Choose(Image(1024, true), c, {}), 1u);
  EXPECT_EQ(*policy.Choose(Image(1024, false), c, {}), 0u);
}

TEST(PredictedCompletionTest, InflightLimitsAndExclusions) {
  PlacementContext context;
  context.max_inflight_per_group = 2;
  PredictedCompletionPolicy policy(context);
  // "a" is faster but has 2 in flight: the policy's own cap makes it full.
  const std::vector<PlacementCandidate> c = {Group("a", 1, 8, 2, 8, 0), Group("b", 1, 1, 0, 8, 0)};
  EXPECT_EQ(*policy.Choose(Image(1024), c, {}), 1u);
  EXPECT_EQ(policy.Choose(Image(1024), c, {"b"}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(policy.Choose(Image(1024), c, {"a", "b"}).status().code(),
            absl::StatusCode::kUnavailable);
  // A layout the model cannot run (24 heads, ulysses 5) is never chosen.
  const std::vector<PlacementCandidate> bad = {Group("x", 1, 5)};
  EXPECT_EQ(policy.Choose(Image(1024), bad, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PredictedCompletionTest, EdfGroupTakesAnUrgentRequestAheadOfItsQueue) {
  PredictedCompletionPolicy policy{PlacementContext()};
  // Two SP=8 groups, both busy with long work due far away; "b" runs earliest-deadline-first.
  auto busy = [](std::string id, planner::GroupScheduling scheduling) {
    PlacementCandidate c = Group(id, 1, 8, 2, 4, 20000);
    planner::PendingWork running, queued;
    running.remaining_ms = 5000;
    running.deadline_ms = 60000;
    running.step_ms = 50;
    running.running = true;
    queued.remaining_ms = 15000;
    queued.deadline_ms = 90000;
    c.pending = {running, queued};
    c.scheduling = scheduling;
    return c;
  };
  const std::vector<PlacementCandidate> c = {
      busy("a", planner::GroupScheduling::kFifo),
      busy("b", planner::GroupScheduling::kEarliestDeadline)};
  const PlacementRequest urgent = Image(512, false, 3000);
  const double service = policy.ServiceMs(urgent, c[0]);
  // On the fifo group it waits 20 s; on the edf group one step.
  EXPECT_NEAR(*policy.PredictMs(urgent, c[0]), 20000 + service, 1e-6);
  EXPECT_NEAR(*policy.PredictMs(urgent, c[1]), 50 + service, 1e-6);
  EXPECT_EQ(*policy.Choose(urgent, c, {}), 1u);
  // When the queued request has no slack left, the edf group would make it late: refused.
  std::vector<PlacementCandidate> tight = c;
  tight[1].pending[0].deadline_ms = 6000;
  tight[1].pending[1].deadline_ms = 20000 + service / 2;
  absl::StatusOr<size_t> refused = policy.Choose(urgent, {tight[1]}, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(refused.status().message().find("accepted request late"), std::string::npos)
      << refused.status().message();
}

TEST(PlacementContextTest, ModelAndCalibrationFromFlags) {
  absl::StatusOr<PlacementContext> defaults = MakePlacementContext("flux-dev", "");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->model.num_single_layers, 38);
  EXPECT_EQ(defaults->calibration.rate_tflops, planner::Calibration().rate_tflops);
  // The one-GPU H100 rows of 2026-11-27 give back the built-in calibration (fitted on them).
  const std::string results = planner::testing::SourceDir() + "/bench/results/";
  absl::StatusOr<PlacementContext> fitted =
      MakePlacementContext("flux-dev", results + "2026-11-27-h100-dgrid-denoise-512.json," +
                                           results + "2026-11-27-h100-dgrid-denoise-1024.json," +
                                           results + "2026-11-27-h100-dgrid-denoise-2048.json");
  ASSERT_TRUE(fitted.ok()) << fitted.status();
  EXPECT_NEAR(fitted->calibration.rate_tflops, 470.6, 1.0);
  EXPECT_NEAR(fitted->calibration.overhead_ms, 15.2, 0.5);
  absl::StatusOr<PlacementContext> bad_model = MakePlacementContext("/no/such/model", "");
  ASSERT_FALSE(bad_model.ok());
  EXPECT_NE(bad_model.status().message().find("--placement-model"), std::string::npos);
  absl::StatusOr<PlacementContext> no_rows = MakePlacementContext("flux-dev", "/no/such.json");
  ASSERT_FALSE(no_rows.ok());
  EXPECT_NE(no_rows.status().message().find("--placement-calibration"), std::string::npos);
}

TEST(RoundRobinTest, CyclesInIdOrderAndSkipsFullOnes) {
  RoundRobinPolicy policy;
  const std::vector<PlacementCandidate> c = {Group("c", 1, 1), Group("a", 1, 1), Group("b", 1, 1)};
  std::vector<std::string> order;
  for (int i = 0; i < 6; ++i) order.push_back(c[*policy.Choose(c, {})].worker_id);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c", "a", "b", "c"}));
  const std::vector<PlacementCandidate> one_full = {Group("a", 1, 1, 4, 4), Group("b", 1, 1)};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(*policy.Choose(one_full, {}), 1u);
  EXPECT_EQ(policy.Choose({Group("a", 1, 1, 4, 4)}, {}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(PolicyFactoryTest, NamesAndErrors) {
  for (const std::string& name : PlacementPolicyNames()) {
    absl::StatusOr<std::unique_ptr<PlacementPolicy>> p = MakePlacementPolicy(name);
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_EQ((*p)->name(), name);
  }
  EXPECT_EQ(PlacementPolicyNames().size(), 3u);
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> unknown = MakePlacementPolicy("fastest");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("policy: unknown placement policy 'fastest'"),
            std::string::npos);
  EXPECT_NE(unknown.status().message().find("predicted-completion"), std::string::npos);
}

TEST(GroupShapeFromRegistrationTest, DefaultsAndInterconnects) {
  planner::GroupShape unset = GroupShapeFromRegistration(0, 0, 0, "");
  EXPECT_EQ(unset.size(), 1);
  EXPECT_EQ(unset.ulysses_link, planner::LinkClass::kNvlink);
  planner::GroupShape pcie = GroupShapeFromRegistration(2, 1, 2, "PCIe");
  EXPECT_EQ(pcie.cfg, 2);
  EXPECT_EQ(pcie.ulysses_link, planner::LinkClass::kPcie);
  EXPECT_EQ(pcie.ring_link, planner::LinkClass::kPcie);
  planner::GroupShape multi_node = GroupShapeFromRegistration(1, 2, 8, "nvlink+ib");
  EXPECT_EQ(multi_node.ulysses_link, planner::LinkClass::kNvlink);
  EXPECT_EQ(multi_node.ring_link, planner::LinkClass::kInterNode);
}

}  // namespace
}  // namespace dgrid::orchestrator
