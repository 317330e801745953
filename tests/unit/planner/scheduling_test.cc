// planner/scheduling.h: where a newcomer runs on a fifo or edf group, and the simulator's edf
// groups against fifo ones.
#include "planner/scheduling.h"

#include <gtest/gtest.h>

#include "orchestrator/placement/placement_policy.h"
#include "orchestrator/placement/sim_placer.h"
#include "planner/group_planner.h"
#include "planner/simulation.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

PendingWork Work(double remaining_ms, double deadline_ms, bool running = false,
                 double step_ms = 10) {
  PendingWork w;
  w.remaining_ms = remaining_ms;
  w.deadline_ms = deadline_ms;
  w.running = running;
  w.step_ms = step_ms;
  return w;
}

TEST(SchedulingTest, NamesParseAndBadOnesNameTheField) {
  EXPECT_EQ(*ParseGroupScheduling("", "f"), GroupScheduling::kFifo);
  EXPECT_EQ(*ParseGroupScheduling("fifo", "f"), GroupScheduling::kFifo);
  EXPECT_EQ(*ParseGroupScheduling("edf", "f"), GroupScheduling::kEarliestDeadline);
  absl::StatusOr<GroupScheduling> bad = ParseGroupScheduling("lifo", "worker.scheduling");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("worker.scheduling"), std::string::npos);
  EXPECT_STREQ(GroupSchedulingName(GroupScheduling::kEarliestDeadline), "edf");
}

TEST(SchedulingTest, FifoWaitsForEverything) {
  const std::vector<PendingWork> pending = {Work(1000, 5000, true), Work(3000, 9000)};
  const Admission a = PredictAdmission(GroupScheduling::kFifo, pending, 500, 800);
  EXPECT_DOUBLE_EQ(a.completion_ms, 4500);
  EXPECT_FALSE(a.delays_others);
}

TEST(SchedulingTest, EdfRunsAnUrgentRequestAfterTheRunningStep) {
  // Running: 1000 ms left, due in 5000, steps of 40 ms. Waiting: 3000 ms due in 9000.
  const std::vector<PendingWork> pending = {Work(1000, 5000, true, 40), Work(3000, 9000)};
  const Admission urgent = PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 800);
  EXPECT_DOUBLE_EQ(urgent.completion_ms, 40 + 500);  // the current step, then itself
  EXPECT_FALSE(urgent.delays_others);                // both still finish in time
  // Due between the two: after the running one, before the waiting one.
  const Admission middle = PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 7000);
  EXPECT_DOUBLE_EQ(middle.completion_ms, 1500);
  // Without a deadline: last, like fifo.
  const Admission none = PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 0);
  EXPECT_DOUBLE_EQ(none.completion_ms, 4500);
}

TEST(SchedulingTest, EdfWaitsOnlyForWhatIsLeftOfTheRunningStep) {
  // The running request's step (40 ms) is 25 ms along: a preempting newcomer starts in 15 ms.
  std::vector<PendingWork> pending = {Work(1000, 5000, true, 40)};
  pending[0].step_left_ms = 15;
  EXPECT_DOUBLE_EQ(
      PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 800).completion_ms,
      15 + 500);
  // Never more than the running request has left.
  pending[0].remaining_ms = 10;
  pending[0].step_left_ms = 15;
  EXPECT_DOUBLE_EQ(
      PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 800).completion_ms,
      10 + 500);
}

TEST(SchedulingTest, EdfNeverMakesAnAcceptedRequestLate) {
  // The waiting request has 200 ms of slack (finishes at 4000, due at 4200): a 500 ms newcomer due
  // before it would push it to 4500.
  const std::vector<PendingWork> pending = {Work(1000, 4000, true), Work(3000, 4200)};
  const Admission a = PredictAdmission(GroupScheduling::kEarliestDeadline, pending, 500, 600);
  EXPECT_TRUE(a.delays_others);
  // A request that is already late does not block newcomers.
  const std::vector<PendingWork> late = {Work(1000, 500, true)};
  EXPECT_FALSE(PredictAdmission(GroupScheduling::kEarliestDeadline, late, 100, 300).delays_others);
}

// SLO attainment (1.2x deadlines) of the predicted-completion policy on one 8x H100 node split
// into groups of `group_size`, run fifo and then edf; checks that nothing admitted finishes late
// (the predictions include the step a preempted request finishes first).
std::vector<double> FifoThenEdfAttainment(int group_size, SloReference unit, double load,
                                          uint64_t seed) {
  const Topology t = *ReadTopologyFile(testing::TopologyPath("h100x8-nvlink.json"));
  const ModelShape flux = *LookupModelShape("flux-dev");
  const CostModel cost(Calibration(), t.links);
  const Workload w = DefaultMixedWorkload();
  const std::vector<double> reference = *ReferenceLatenciesMs(t, flux, cost, w, unit);
  SimOptions options;
  options.num_requests = 1500;
  options.rate_per_s = Sp1ArrivalRate(t, flux, cost, w, load);
  options.deadline_factor = 1.2;
  options.seed = seed;
  std::vector<double> attained;
  for (GroupScheduling scheduling : {GroupScheduling::kFifo, GroupScheduling::kEarliestDeadline}) {
    std::vector<PlannedGroup> groups = *FixedGroups(t, flux, cost, w, group_size, 4);
    for (PlannedGroup& g : groups) g.scheduling = scheduling;
    auto policy = *orchestrator::MakePlacementPolicy("predicted-completion");
    orchestrator::PolicySimPlacer placer(policy.get());
    absl::StatusOr<SimResult> r = Simulate(flux, cost, groups, w, reference, placer, options);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {0, 0};
    EXPECT_NEAR(r->slo_attainment[1], static_cast<double>(r->completed) / r->arrived, 1e-9);
    attained.push_back(r->slo_attainment[1]);
  }
  return attained;
}

TEST(SchedulingTest, EdfGroupsMeetMoreDeadlinesThanFifoOnesInTheSimulator) {
  // Ulysses-2 groups, deadlines of 1.2x one GPU's latency: slack for small requests.
  const std::vector<double> attained = FifoThenEdfAttainment(2, SloReference::kSingleGpu, 0.8, 3);
  EXPECT_GT(attained[1], attained[0] + 0.05) << "fifo " << attained[0] << ", edf " << attained[1];
}

TEST(SchedulingTest, AnEdfGroupAtTheBestLayoutsSloAdmitsRequestsBetweenStepsOfALongOne) {
  // One Ulysses-8 group, deadlines of 1.2x the best layout's latency: a request's slack is a fifth
  // of its own time, so a short one can only be admitted behind a long one by preempting it, and
  // only when the rest of the running step is short enough.
  const std::vector<double> attained = FifoThenEdfAttainment(8, SloReference::kBestLayout, 0.3, 5);
  EXPECT_GT(attained[1], attained[0] + 0.02) << "fifo " << attained[0] << ", edf " << attained[1];
}

}  // namespace
}  // namespace dgrid::planner
