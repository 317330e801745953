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

// A Ulysses-8 fifo group and 1024^2 28-step requests, with the cost model's time for them.
class WorkerRegistrySpeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dgrid::v1::WorkerInfo group = Worker("g", STAGE_KIND_DENOISER, 4);
    group.mutable_layout()->set_ulysses(8);
    ASSERT_TRUE(registry.RegisterWorker(group).ok());
    r.width = r.height = 1024;
    r.steps = 28;
    PlacementCandidate shape;
    shape.layout.ulysses = 8;
    model_ms = policy.ServiceMs(r, shape);
    model_step = model_ms / 28;
  }

  ManualClock clock;
  RecordingPolicy policy;
  WorkerRegistry registry{&clock, &policy, absl::Seconds(1)};
  PlacementRequest r;
  double model_ms = 0;
  double model_step = 0;
};

TEST_F(WorkerRegistrySpeedTest, ReportedStepsReplaceThePredictionAndSetTheWorkersSpeed) {
  absl::StatusOr<Reservation> a = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(policy.last[0].speed, 1);  // nothing measured yet
  // The group runs at half the predicted step time: step 1 comes back after half a step.
  clock.Advance(absl::Microseconds(static_cast<int64_t>(model_step * 500)));
  a->ObserveStep(1, model_step / 2);
  // A quarter of a (measured) step later, a second request is placed.
  clock.Advance(absl::Microseconds(static_cast<int64_t>(model_step * 125)));
  absl::StatusOr<Reservation> b = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(policy.last[0].pending.size(), 1u);
  const planner::PendingWork& running = policy.last[0].pending[0];
  EXPECT_NEAR(policy.last[0].speed, 0.5, 1e-9);
  EXPECT_NEAR(running.step_ms, model_step / 2, 1e-6);
  EXPECT_NEAR(running.remaining_ms, 27 * model_step / 2 - model_step / 8, 1e-3);
  EXPECT_NEAR(running.step_left_ms, model_step / 2 - model_step / 8, 1e-3);
  // The policy predicts the newcomer at the worker's speed too.
  EXPECT_NEAR(policy.ServiceMs(r, policy.last[0]), model_ms / 2, 1e-6);

  // While few steps are seen the speed is their mean, as is the call's step time.
  a->ObserveStep(2, model_step);
  absl::StatusOr<Reservation> c = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(policy.last[0].speed, 0.75, 1e-9);
  EXPECT_NEAR(policy.last[0].pending[0].step_ms, 0.75 * model_step, 1e-6);
  EXPECT_NEAR(policy.last[0].pending[0].remaining_ms, 26 * 0.75 * model_step, 1e-3);
  // Right after a reported step the call is at a boundary: a whole step ahead.
  EXPECT_NEAR(policy.last[0].pending[0].step_left_ms, 0.75 * model_step, 1e-9);
  // B was placed at speed 0.5: its prediction is half the model's.
  EXPECT_NEAR(policy.last[0].pending[1].remaining_ms, model_ms / 2, 1e-3);

  // Nonsense and released calls are ignored.
  a->ObserveStep(0, 5);
  a->ObserveStep(3, -1);
  a->Release();
  a->ObserveStep(3, 1000);
  absl::StatusOr<Reservation> d = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_NEAR(policy.last[0].speed, 0.75, 1e-9);
  // After ten steps, each further one moves the speed a tenth of the way (a moving average).
  for (int step = 1; step <= 8; ++step) b->ObserveStep(step, 0.75 * model_step);
  b->ObserveStep(9, 1.75 * model_step);
  absl::StatusOr<Reservation> e = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_NEAR(policy.last[0].speed, 0.75 + 0.1 * (1.75 - 0.75), 1e-9);

  // The speed is kept per size: 512^2 steps at twice the model's time leave 1024^2's alone, and a
  // size not seen yet gets the average over all sizes.
  c->Release();  // room on the group (4 calls at most)
  d->Release();
  e->Release();
  PlacementRequest small = r;
  small.width = small.height = 512;
  absl::StatusOr<Reservation> f = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, small);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_NEAR(policy.last[0].speed, 0.85, 1e-9);  // no 512^2 step yet: all sizes'
  const double small_step = policy.ServiceMs(small, policy.last[0]) / 0.85 / 28;
  f->ObserveStep(1, 2 * small_step);
  absl::StatusOr<Reservation> g = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, small);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_NEAR(policy.last[0].speed, 2, 1e-9);
  g->Release();
  absl::StatusOr<Reservation> h = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_NEAR(policy.last[0].speed, 0.85, 1e-9);
  h->Release();
  PlacementRequest large = r;
  large.width = large.height = 2048;
  absl::StatusOr<Reservation> i = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, large);
  ASSERT_TRUE(i.ok()) << i.status();
  EXPECT_NEAR(policy.last[0].speed, 0.85 + 0.1 * (2 - 0.85), 1e-9);
}

TEST_F(WorkerRegistrySpeedTest, ACallSlowerThanPredictedKeepsTheTimeItTook) {
  // A fifo group: A then B. A's first step takes 30 predicted steps' time, so by the prediction A
  // was finished and B under way when A reports; the time was A's, and B has done nothing.
  absl::StatusOr<Reservation> a = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  absl::StatusOr<Reservation> b = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(a.ok() && b.ok());
  clock.Advance(absl::Microseconds(static_cast<int64_t>(model_step * 30'000)));
  a->ObserveStep(1, 30 * model_step);
  absl::StatusOr<Reservation> c = registry.Reserve(STAGE_KIND_DENOISER, "tiny", {}, r);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(policy.last[0].pending.size(), 2u);
  EXPECT_TRUE(policy.last[0].pending[0].running);
  EXPECT_NEAR(policy.last[0].pending[0].remaining_ms, 27 * 30 * model_step, 1e-3);
  EXPECT_NEAR(policy.last[0].pending[1].remaining_ms, model_ms, 1e-3);  // B: not started
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
  // Served once, listed still: unavailable, with its last ModelInfo. "big" never was complete.
  std::vector<dgrid::v1::ModelInfo> listed = registry_.ListedModels();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].name(), "tiny");
  EXPECT_TRUE(listed[0].unavailable());
  EXPECT_EQ(listed[0].max_width(), 512);
}

// A configured model is listed (unavailable, name only) before any stage registers, and available
// with the stages' ModelInfo once all three have.
TEST_F(WorkerRegistryTest, ExpectedModelIsListedUnavailableUntilServed) {
  registry_.ExpectModel("tiny");
  std::vector<dgrid::v1::ModelInfo> listed = registry_.ListedModels();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].name(), "tiny");
  EXPECT_TRUE(listed[0].unavailable());
  dgrid::v1::WorkerInfo d = Worker("d", STAGE_KIND_DENOISER, 1, {"tiny"});
  d.add_model_infos()->set_name("tiny");
  d.mutable_model_infos(0)->set_max_width(512);
  ASSERT_TRUE(registry_.RegisterWorker(Worker("e", STAGE_KIND_ENCODER, 1, {"tiny"})).ok());
  ASSERT_TRUE(registry_.RegisterWorker(d).ok());
  ASSERT_TRUE(registry_.RegisterWorker(Worker("c", STAGE_KIND_DECODER, 1, {"tiny"})).ok());
  listed = registry_.ListedModels();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_FALSE(listed[0].unavailable());
  EXPECT_EQ(listed[0].max_width(), 512);
  registry_.ExpectModel("tiny");  // no effect on a model already served
  EXPECT_FALSE(registry_.ListedModels()[0].unavailable());
}

}  // namespace
}  // namespace dgrid::orchestrator
