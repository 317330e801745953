// Step-level batching through a denoiser group (--max-batch on a group's leader; DenoiserGroup,
// group_protocol.h kBatchStep): two ranks over the thread test seam, each with its own engine on
// the committed default model (models/dgrid-shapes, float32 on the CPU); rank 1 serves as a peer
// while the leader's engine batches. Concurrent requests mixing prompts, seeds, steps and
// guidance (CFG2 with true CFG, U2 without) end with their lone group run's latents and one
// process's (within 1e-5 of the largest latent); a request that joins mid-way and one cancelled
// mid-way leave the others unchanged; a request due sooner (edf) runs on every rank between two
// of a batch's steps; the group stays healthy and the peer leaves cleanly. A peer that serves
// nothing ends every member with the failed message's DEADLINE_EXCEEDED and breaks the group. Every
// wait is for an event (a step report, requests waiting in the batcher), never for time.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "families/flux/flux_family.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/group/denoiser_group.h"
#include "tests/unit/default_model.h"
#include "tests/unit/denoiser/batch_test_harness.h"
#include "tests/unit/parallel/sp_thread_communicator.h"

namespace dgrid {
namespace {

constexpr double kTolerance = 1e-5;

std::string ModelDir() { return testing::DefaultModelDir(); }

using testing::OneTo;
using testing::RelativeError;
using testing::Tracked;

struct Layout {
  std::string name;
  int cfg, ulysses;
};

class GroupBatchTest : public ::testing::TestWithParam<Layout> {
 protected:
  void SetUp() override { at::set_num_threads(1); }

  // Forms the group: rank 1 (an engine and a group serving as a peer, unless `peer_serves` is
  // false: it joins and then waits, serving nothing, until the test ends) on its own thread, rank
  // 0's engine (--max-batch `max_batch`) running requests through the group. Both engines load
  // before the ranks meet; `timeout` bounds every collective.
  void Form(int max_batch, absl::Duration batch_wait, bool edf = false, bool peer_serves = true,
            absl::Duration timeout = absl::Seconds(120)) {
    const Layout& l = GetParam();
    DenoiserEngineOptions peer_options = EngineOptions();
    peer_options.max_queued = 0;
    auto peer_engine = DenoiserEngine::Create(peer_options);
    ASSERT_TRUE(peer_engine.ok()) << peer_engine.status();
    DenoiserEngineOptions options = EngineOptions();
    options.max_batch = max_batch;
    options.batch_wait = batch_wait;
    options.earliest_deadline_first = edf;
    auto engine = DenoiserEngine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    std::vector<std::unique_ptr<Communicator>> comms =
        testing::CreateThreadCommunicators(2, timeout);
    peer_thread_ = std::thread([this, l, peer_serves, peer_engine = *std::move(peer_engine),
                                peer_comm = std::move(comms[1])]() mutable {
      auto layout = ParallelLayout::Create(l.cfg, 1, l.ulysses, 1);
      ASSERT_TRUE(layout.ok());
      auto group = DenoiserGroup::JoinOver(
          std::move(peer_comm), *layout, peer_engine->family_denoiser(), at::kCPU, absl::Hours(1));
      ASSERT_TRUE(group.ok()) << group.status();
      if (peer_serves) {
        peer_status_ = (*group)->ServePeer();
      } else {
        release_peer_.WaitForNotification();
      }
    });
    auto layout = ParallelLayout::Create(l.cfg, 1, l.ulysses, 0);
    ASSERT_TRUE(layout.ok());
    auto group = DenoiserGroup::JoinOver(std::move(comms[0]), *layout, engine_->family_denoiser(),
                                         at::kCPU, absl::Hours(1));
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = *std::move(group);
    DenoiserGroup* g = group_.get();
    engine_->SetRunner([g](const DenoiseInput& input,
                           const SamplerHooks& hooks) { return g->RunRequest(input, hooks); },
                       g->BatchBackend());
    ASSERT_NE(engine_->batcher(), nullptr);
  }

  // Stops the group (the peer leaves with OK) after checking it is healthy.
  void Stop() {
    EXPECT_TRUE(group_->healthy());
    group_->Stop();
    peer_thread_.join();
    EXPECT_TRUE(peer_status_.ok()) << peer_status_;
  }

  void TearDown() override {
    if (peer_thread_.joinable()) {
      if (group_) group_->Stop();
      release_peer_.Notify();
      peer_thread_.join();
    }
    engine_.reset();  // its batches refer to the group
    group_.reset();
  }

  static DenoiserEngineOptions EngineOptions() {
    DenoiserEngineOptions options;
    options.model_path = ModelDir();
    options.load.device = "cpu";
    options.load.floating_dtype = "float32";
    return options;
  }

  // CFG2 runs true CFG (its branches split the two passes); U2 does not.
  DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps,
                     double guidance) const {
    DenoiseInput in;
    in.request_id = id;
    in.width = 64;
    in.height = 64;
    in.num_inference_steps = steps;
    in.seed = seed;
    in.guidance_scale = guidance;
    at::manual_seed(300 + prompt);
    in.positive[families::flux::kPromptEmbeds] = at::randn({1, 8, 64});
    in.positive[families::flux::kPooledPromptEmbeds] = at::randn({1, 64});
    if (GetParam().cfg == 2) {
      in.true_cfg_scale = 1.5 + guidance / 4;
      in.negative[families::flux::kPromptEmbeds] = at::randn({1, 8, 64});
      in.negative[families::flux::kPooledPromptEmbeds] = at::randn({1, 64});
    }
    return in;
  }

  void Enqueue(const DenoiseInput& input, Tracked& t) {
    testing::EnqueueTracked(*engine_, input, t);
  }

  static void Wait(Tracked& t) { testing::WaitEnded(t, absl::Seconds(300)); }

  // Each finished request against its lone run on the group, then (after the group stops) on one
  // process.
  void ExpectLoneRuns(const std::vector<std::pair<const DenoiseInput*, Tracked*>>& runs) {
    std::vector<at::Tensor> group_alone;
    for (const auto& [input, t] : runs) {
      ASSERT_TRUE(t->result.ok()) << input->request_id << ": " << t->result.status();
      auto alone = group_->RunRequest(*input, {});
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_LE(RelativeError(*t->result, *alone), kTolerance) << input->request_id;
      group_alone.push_back(*alone);
    }
    Stop();
    for (const auto& [input, t] : runs) {
      auto one = engine_->family_denoiser().Run(*input, {}, nullptr);
      ASSERT_TRUE(one.ok()) << one.status();
      EXPECT_LE(RelativeError(*t->result, *one), kTolerance) << input->request_id;
    }
  }

  std::unique_ptr<DenoiserEngine> engine_;
  std::unique_ptr<DenoiserGroup> group_;
  std::thread peer_thread_;
  absl::Notification release_peer_;
  absl::Status peer_status_ = absl::UnknownError("not run");
};

TEST_P(GroupBatchTest, ConcurrentRequestsMatchTheirLoneRuns) {
  // The first request waits for company until all three wait (the wait ends when the batch is
  // full): one batch of three, on any machine.
  Form(/*max_batch=*/3, absl::Minutes(5));
  if (HasFatalFailure()) return;
  const DenoiseInput a = Input("a", 0, 1, 5, 3.5), b = Input("b", 1, 2, 3, 1.0),
                     c = Input("c", 2, 3, 4, 6.0);
  Tracked ta, tb, tc;
  int largest = 0;
  ta.after_step = [&](int) { largest = std::max(largest, engine_->batcher()->batched()); };
  Enqueue(a, ta);
  Enqueue(b, tb);
  Enqueue(c, tc);
  Wait(ta);
  Wait(tb);
  Wait(tc);
  EXPECT_EQ(largest, 3);
  EXPECT_EQ(ta.Steps(), OneTo(5));
  EXPECT_EQ(tb.Steps(), OneTo(3));
  EXPECT_EQ(tc.Steps(), OneTo(4));
  ExpectLoneRuns({{&a, &ta}, {&b, &tb}, {&c, &tc}});
}

TEST_P(GroupBatchTest, AJoinerAndACancelledMemberLeaveTheOthersUnchanged) {
  Form(/*max_batch=*/4, absl::ZeroDuration());
  if (HasFatalFailure()) return;
  const DenoiseInput a = Input("a", 0, 1, 6, 3.5), b = Input("b", 1, 2, 5, 2.0),
                     c = Input("c", 2, 3, 3, 5.0);
  Tracked ta, tb, tc;
  tb.after_step = [&](int step) {
    if (step == 2) EXPECT_TRUE(engine_->Cancel("b").ok());
  };
  // b and c arrive while a runs; they join before its next step.
  testing::EnqueueWithJoiners(*engine_, a, ta, {{&b, &tb}, {&c, &tc}});
  Wait(ta);
  Wait(tb);
  Wait(tc);
  EXPECT_EQ(tb.result.status().code(), absl::StatusCode::kCancelled) << tb.result.status();
  EXPECT_EQ(tb.Steps(), OneTo(2));
  EXPECT_EQ(ta.Steps(), OneTo(6));
  EXPECT_EQ(tc.Steps(), OneTo(3));
  ExpectLoneRuns({{&a, &ta}, {&c, &tc}});
}

TEST_P(GroupBatchTest, AMemberEndedOnTheLeaderAloneLeavesNothingOnThePeers) {
  // a's progress hook throws after its second step: a ends on the leader only (the peers' hooks
  // are the leader's list, not the engine's). Its batch is then empty and goes; the peers must drop
  // their copy of a with it, or the next batch (b, another size, so another key) would not fit
  // the peers' stale batch and the group would break.
  Form(/*max_batch=*/2, absl::ZeroDuration());
  if (HasFatalFailure()) return;
  const DenoiseInput a = Input("a", 0, 1, 5, 3.5);
  DenoiseInput b = Input("b", 1, 2, 3, 2.0);
  b.width = 32;
  Tracked ta, tb;
  ta.after_step = [](int step) {
    if (step == 2) throw std::runtime_error("progress hook failed");
  };
  Enqueue(a, ta);
  Wait(ta);
  EXPECT_FALSE(ta.result.ok());
  EXPECT_NE(ta.result.status().message().find("progress hook failed"), std::string::npos)
      << ta.result.status();
  Enqueue(b, tb);
  Wait(tb);
  EXPECT_TRUE(group_->healthy());
  ExpectLoneRuns({{&b, &tb}});
}

TEST_P(GroupBatchTest, EdfRunsARequestDueSoonerBetweenABatchsSteps) {
  // One batch of one holds the only queue thread but one; the urgent request arrives while it
  // runs and, due first, runs on every rank between two of its steps.
  Form(/*max_batch=*/2, absl::ZeroDuration(), /*edf=*/true);
  if (HasFatalFailure()) return;
  DenoiseInput a = Input("a", 0, 1, 5, 3.5);
  a.deadline = absl::Now() + absl::Hours(2);
  DenoiseInput urgent = Input("urgent", 1, 2, 3, 2.0);
  urgent.width = 32;  // another batch key: it cannot join a's batch
  urgent.deadline = absl::Now() + absl::Hours(1);
  Tracked ta, tu;
  std::vector<int> a_steps_when_urgent_ended;
  tu.after_step = [&](int step) {
    if (step == 3) a_steps_when_urgent_ended = ta.Steps();
  };
  testing::EnqueueWithJoiners(*engine_, a, ta, {{&urgent, &tu}});
  Wait(ta);
  Wait(tu);
  // It ran right after a's step 1, before a's step 2.
  EXPECT_EQ(a_steps_when_urgent_ended, OneTo(1));
  EXPECT_EQ(ta.Steps(), OneTo(5));
  EXPECT_EQ(tu.Steps(), OneTo(3));
  ExpectLoneRuns({{&a, &ta}, {&urgent, &tu}});
}

TEST_P(GroupBatchTest, AMissingPeerEndsEveryMemberAndBreaksTheGroup) {
  // Rank 1 joins, then serves nothing: the batch's first step cannot reach it (DEADLINE_EXCEEDED
  // once the communicator's timeout has passed). Both members end with that code, the group is
  // unhealthy for good, and later requests end UNAVAILABLE at once.
  Form(/*max_batch=*/2, absl::Minutes(5), /*edf=*/false, /*peer_serves=*/false, absl::Seconds(5));
  if (HasFatalFailure()) return;
  const DenoiseInput a = Input("a", 0, 1, 3, 3.5), b = Input("b", 1, 2, 4, 2.0);
  Tracked ta, tb;
  Enqueue(a, ta);
  Enqueue(b, tb);
  Wait(ta);
  Wait(tb);
  for (Tracked* t : {&ta, &tb}) {
    EXPECT_EQ(t->result.status().code(), absl::StatusCode::kDeadlineExceeded) << t->result.status();
    EXPECT_TRUE(t->Steps().empty());
  }
  EXPECT_FALSE(group_->healthy());
  // A full batch (the first member waits for company) that the broken group refuses.
  const DenoiseInput c = Input("c", 2, 3, 2, 1.0), d = Input("d", 3, 4, 2, 1.0);
  Tracked tc, td;
  Enqueue(c, tc);
  Enqueue(d, td);
  Wait(tc);
  Wait(td);
  for (Tracked* t : {&tc, &td}) {
    EXPECT_EQ(t->result.status().code(), absl::StatusCode::kUnavailable) << t->result.status();
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, GroupBatchTest,
                         ::testing::Values(Layout{"CFG2", 2, 1}, Layout{"U2", 1, 2}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace dgrid
