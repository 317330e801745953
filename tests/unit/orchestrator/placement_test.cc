#include "orchestrator/placement/least_loaded.h"

#include <gtest/gtest.h>

#include "orchestrator/placement/placement_policy.h"

namespace dgrid::orchestrator {
namespace {

PlacementCandidate C(std::string id, int inflight, int max_inflight = 4) {
  PlacementCandidate c;
  c.worker_id = id;
  c.address = id + ":1";
  c.inflight = inflight;
  c.max_inflight = max_inflight;
  return c;
}

TEST(LeastLoadedTest, PicksFewestInflightThenSmallestName) {
  LeastLoadedPolicy policy;
  EXPECT_EQ(*policy.Choose({C("b", 2), C("a", 3), C("c", 1)}, {}), 2u);
  // Tie on in-flight: "a" < "b" whatever the order of candidates.
  EXPECT_EQ(*policy.Choose({C("b", 1), C("a", 1), C("c", 2)}, {}), 1u);
  EXPECT_EQ(*policy.Choose({C("a", 1), C("b", 1)}, {}), 0u);
}

TEST(LeastLoadedTest, HonoursExclusions) {
  LeastLoadedPolicy policy;
  EXPECT_EQ(*policy.Choose({C("a", 0), C("b", 3)}, {"a"}), 1u);
  absl::StatusOr<size_t> none = policy.Choose({C("a", 0)}, {"a"});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
}

TEST(LeastLoadedTest, SkipsFullWorkersAndReportsExhaustion) {
  LeastLoadedPolicy policy;
  // "a" has fewer in flight but is at its limit.
  EXPECT_EQ(*policy.Choose({C("a", 1, 1), C("b", 3, 4)}, {}), 1u);
  absl::StatusOr<size_t> full = policy.Choose({C("a", 1, 1), C("b", 4, 4)}, {});
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(policy.Choose({}, {}).status().code(), absl::StatusCode::kUnavailable);
}

TEST(PlacementPolicyTest, SelectedByName) {
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> p = MakePlacementPolicy("least-loaded");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->name(), "least-loaded");
  absl::StatusOr<std::unique_ptr<PlacementPolicy>> bad = MakePlacementPolicy("round-robin-ish");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("policy"), std::string::npos);
}

}  // namespace
}  // namespace dgrid::orchestrator
