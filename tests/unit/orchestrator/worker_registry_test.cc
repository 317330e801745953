#include "orchestrator/registry/worker_registry.h"

#include <cmath>
#include <thread>

#include <gtest/gtest.h>

#include "orchestrator/placement/least_loaded.h"
#include "orchestrator/placement/predicted_completion.h"

namespace dgrid::orchestrator {
namespace {

using dgrid::v1::STAGE_KIND_DECODER;
using dgrid::v1::STAGE_KIND_DENOISER;
using dgrid::v1::STAGE_KIND_ENCODER;

dgrid::v1::WorkerInfo Worker(std::string id, dgrid::v1::StageKind stage, int max_inflight = 2,
                             std::vector<std::string> models = {"tiny"}) {
  dgrid::v1::WorkerInfo w;
  w.set_worker_id(id);
  w.set_stage(stage);
  w.set_address(id + ".local:1");
  w.set_max_inflight(max_inflight);
  for (auto& m : models) w.add_models(m);
  return w;
}

dgrid::v1::HeartbeatRequest Beat(std::string id, bool serving = true) {
  dgrid::v1::HeartbeatRequest h;
  h.set_worker_id(id);
  h.set_serving(serving);
  return h;
}

class WorkerRegistryTest : public ::testing::Test {
 protected:
  ManualClock clock_;
  LeastLoadedPolicy policy_;
  WorkerRegistry registry_{&clock_, &policy_, absl::Seconds(1)};
};

TEST_F(WorkerRegistryTest, RegisterReturnsHeartbeatIntervalAndValidates) {
  absl::StatusOr<int64_t> interval = registry_.RegisterWorker(Worker("e1", STAGE_KIND_ENCODER));
  ASSERT_TRUE(interval.ok());
  EXPECT_EQ(*interval, 1000);
  dgrid::v1::WorkerInfo bad = Worker("", STAGE_KIND_ENCODER);
  EXPECT_EQ(registry_.RegisterWorker(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Worker("x", STAGE_KIND_ENCODER, 0);
  EXPECT_NE(registry_.RegisterWorker(bad).status().message().find("max_inflight"),
            std::string::npos);
  bad = Worker("x", dgrid::v1::STAGE_KIND_UNSPECIFIED);
  EXPECT_EQ(registry_.RegisterWorker(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WorkerRegistryTest, UnknownHeartbeatIsNotKnownAndDeregisterRemoves) {
  EXPECT_FALSE(registry_.HeartbeatWorker(Beat("ghost")));
  ASSERT_TRUE(registry_.RegisterWorker(Worker("e1", STAGE_KIND_ENCODER)).ok());
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("e1")));
  EXPECT_TRUE(registry_.DeregisterWorker("e1").ok());
  EXPECT_FALSE(registry_.HeartbeatWorker(Beat("e1")));
  EXPECT_EQ(registry_.DeregisterWorker("e1").code(), absl::StatusCode::kNotFound);
}

TEST_F(WorkerRegistryTest, ThreeMissedHeartbeatsTakeWorkerOutUntilNextHeartbeat) {
  ASSERT_TRUE(registry_.RegisterWorker(Worker("d1", STAGE_KIND_DENOISER)).ok());
  clock_.Advance(absl::Milliseconds(2900));
  EXPECT_TRUE(registry_.InRotation("d1"));
  EXPECT_TRUE(registry_.Reserve(STAGE_KIND_DENOISER, "tiny", {}).ok());
  clock_.Advance(absl::Milliseconds(200));  // 3.1 intervals without a heartbeat
  EXPECT_FALSE(registry_.InRotation("d1"));
  EXPECT_EQ(registry_.Reserve(STAGE_KIND_DENOISER, "tiny", {}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("d1")));
  EXPECT_TRUE(registry_.InRotation("d1"));
  // Heartbeats keep it alive indefinitely.
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(absl::Milliseconds(900));
    EXPECT_TRUE(registry_.HeartbeatWorker(Beat("d1")));
  }
  EXPECT_TRUE(registry_.InRotation("d1"));
}

TEST_F(WorkerRegistryTest, NotServingAndUnavailableLeaveRotationUntilGoodHeartbeat) {
  ASSERT_TRUE(registry_.RegisterWorker(Worker("c1", STAGE_KIND_DECODER)).ok());
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("c1", /*serving=*/false)));
  EXPECT_FALSE(registry_.InRotation("c1"));
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("c1")));
  EXPECT_TRUE(registry_.InRotation("c1"));
  registry_.MarkUnavailable("c1");
  EXPECT_FALSE(registry_.InRotation("c1"));
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("c1", /*serving=*/false)));
  EXPECT_FALSE(registry_.InRotation("c1"));
  EXPECT_TRUE(registry_.HeartbeatWorker(Beat("c1")));
  EXPECT_TRUE(registry_.InRotation("c1"));
}

TEST_F(WorkerRegistryTest, ReservationsCountInflightAndRespectLimits) {
  ASSERT_TRUE(registry_.RegisterWorker(Worker("a", STAGE_KIND_DECODER, 1)).ok());
  ASSERT_TRUE(registry_.RegisterWorker(Worker("b", STAGE_KIND_DECODER, 2)).ok());
  absl::StatusOr<Reservation> r1 = registry_.Reserve(STAGE_KIND_DECODER, "tiny", {});
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->worker_id(), "a");  // tie at 0 -> smallest name
  absl::StatusOr<Reservation> r2 = registry_.Reserve(STAGE_KIND_DECODER, "tiny", {});
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->worker_id(), "b");
  absl::StatusOr<Reservation> r3 = registry_.Reserve(STAGE_KIND_DECODER, "tiny", {});
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(r3->worker_id(), "b");  // "a" is full
  EXPECT_EQ(registry_.Inflight("b"), 2);
  EXPECT_EQ(registry_.Reserve(STAGE_KIND_DECODER, "tiny", {}).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Unknown model, excluded workers, wrong stage.
  EXPECT_EQ(registry_.Reserve(STAGE_KIND_DECODER, "other", {}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry_.Reserve(STAGE_KIND_ENCODER, "tiny", {}).status().code(),
            absl::StatusCode::kUnavailable);
  r1->Release();
  EXPECT_EQ(registry_.Inflight("a"), 0);
  absl::StatusOr<Reservation> r4 = registry_.Reserve(STAGE_KIND_DECODER, "tiny", {"a"});
  EXPECT_EQ(r4.status().code(), absl::StatusCode::kResourceExhausted);  // only "b" left, full
  { Reservation moved = std::move(*r2); }
  EXPECT_EQ(registry_.Inflight("b"), 1);
}

// Predicted completion, remembering the candidates of the last choice.
class RecordingPolicy : public PredictedCompletionPolicy {
 public:
  RecordingPolicy() : PredictedCompletionPolicy(PlacementContext()) {}
  absl::StatusOr<size_t> Choose(const PlacementRequest& request,
                                const std::vector<PlacementCandidate>& candidates,
                                const std::set<std::string>& excluded) const override {
    last = candidates;
    return PredictedCompletionPolicy::Choose(request, candidates, excluded);
  }
  mutable std::vector<PlacementCandidate> last;
};

TEST(WorkerRegistryPendingTest, TracksEachWorkersPredictedWorkInItsOwnOrder) {
  ManualClock clock;
  RecordingPolicy policy;
  WorkerRegistry registry(&clock, &policy, absl::Seconds(1));
  dgrid::v1::WorkerInfo group = Worker("g", STAGE_KIND_DENOISER, 4);
  group.mutable_layout()->set_ulysses(8);
  group.set_scheduling("lifo");
  absl::StatusOr<int64_t> bad = registry.RegisterWorker(group);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("worker.scheduling"), std::string::npos);
  group.set_scheduling("edf");
  ASSERT_TRUE(registry.RegisterWorker(group).ok());
  auto request = [](int side, double deadline_ms) {
    PlacementRequest r;
    r.width = r.height = side;
    r.deadline_ms = deadline_ms;
    return r;
  };
  const PlacementCandidate shape = [&] {
    PlacementCandidate c;
    c.layout.ulysses = 8;
    return c;
  }();
  const double a_ms = policy.ServiceMs(request(2048, 0), shape);
  const double b_ms = policy.ServiceMs(request(1024, 0), shape);

  absl::StatusOr<Reservation> a =
      registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, request(2048, 60000));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(policy.last.size(), 1u);
  EXPECT_TRUE(policy.last[0].pending.empty());  // nothing held yet
  EXPECT_EQ(policy.last[0].scheduling, planner::GroupScheduling::kEarliestDeadline);

  clock.Advance(absl::Milliseconds(1000));
  absl::StatusOr<Reservation> b =
      registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, request(1024, 50000));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(policy.last[0].pending.size(), 1u);
  EXPECT_TRUE(policy.last[0].pending[0].running);
  EXPECT_NEAR(policy.last[0].pending[0].remaining_ms, a_ms - 1000, 1e-6);
  EXPECT_NEAR(policy.last[0].pending[0].deadline_ms, 59000, 1e-6);
  // 1000 ms into A at the predicted speed: part-way through one of its 28 steps.
  const double a_step = a_ms / 28;
  EXPECT_NEAR(policy.last[0].pending[0].step_left_ms, a_step - std::fmod(1000.0, a_step), 1e-6);

  // B is due first, so the worker (edf) has spent the next 500 ms on it.
  clock.Advance(absl::Milliseconds(500));
  absl::StatusOr<Reservation> c =
      registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, request(512, 0));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(policy.last[0].pending.size(), 2u);
  EXPECT_TRUE(policy.last[0].pending[0].running);
  EXPECT_NEAR(policy.last[0].pending[0].remaining_ms, b_ms - 500, 1e-6);
  EXPECT_NEAR(policy.last[0].pending[1].remaining_ms, a_ms - 1000, 1e-6);
  EXPECT_NEAR(policy.last[0].outstanding_ms, a_ms + b_ms - 1500, 1e-6);
  const double b_step = b_ms / 28;
  EXPECT_NEAR(policy.last[0].pending[0].step_left_ms, b_step - std::fmod(500.0, b_step), 1e-6);
  EXPECT_EQ(policy.last[0].pending[1].step_left_ms, 0);  // waiting: not inside a step

  // Released calls leave the worker's work.
  b->Release();
  c->Release();
  absl::StatusOr<Reservation> d =
      registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, request(512, 0));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(policy.last[0].pending.size(), 1u);
  EXPECT_NEAR(policy.last[0].pending[0].remaining_ms, a_ms - 1000, 1e-6);
}

TEST_F(WorkerRegistryTest, ReserveWaitingWaitsForSlotAndHonoursDeadline) {
  ASSERT_TRUE(registry_.RegisterWorker(Worker("a", STAGE_KIND_DECODER, 1)).ok());
  absl::StatusOr<Reservation> held = registry_.Reserve(STAGE_KIND_DECODER, "tiny", {});
  ASSERT_TRUE(held.ok());
  int waited_behind = -1;
  absl::StatusOr<Reservation> late = registry_.ReserveWaiting(
      STAGE_KIND_DECODER, "tiny", {}, absl::Now() + absl::Milliseconds(50), [] { return false; },
      [&](int ahead) { waited_behind = ahead; });
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(waited_behind, 0);
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(30));
    held->Release();
  });
  absl::StatusOr<Reservation> got = registry_.ReserveWaiting(
      STAGE_KIND_DECODER, "tiny", {}, absl::Now() + absl::Seconds(5), [] { return false; },
      nullptr);
  releaser.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker_id(), "a");
}

TEST_F(WorkerRegistryTest, ServedModelsNeedAllThreeStages) {
  ASSERT_TRUE(registry_.RegisterWorker(Worker("e", STAGE_KIND_ENCODER, 1, {"tiny", "big"})).ok());
  dgrid::v1::WorkerInfo d = Worker("d", STAGE_KIND_DENOISER, 1, {"tiny", "big"});
  dgrid::v1::ModelInfo* mi = d.add_model_infos();
  mi->set_name("tiny");
  mi->set_max_width(512);
  ASSERT_TRUE(registry_.RegisterWorker(d).ok());
  EXPECT_TRUE(registry_.ServedModels().empty());
  ASSERT_TRUE(registry_.RegisterWorker(Worker("c", STAGE_KIND_DECODER, 1, {"tiny"})).ok());
  std::vector<dgrid::v1::ModelInfo> models = registry_.ServedModels();
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].name(), "tiny");
  EXPECT_EQ(models[0].max_width(), 512);  // the denoiser's limits
  registry_.MarkUnavailable("c");
  EXPECT_TRUE(registry_.ServedModels().empty());
}

}  // namespace
}  // namespace dgrid::orchestrator
