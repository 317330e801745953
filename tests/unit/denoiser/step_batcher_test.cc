// Continuous batching through the denoiser engine (--max-batch; services/denoiser/step_batcher.h)
// on the committed default model (models/dgrid-shapes, float32 on the CPU): requests join a running
// batch at a step boundary and end with the latents of their lone run (within 1e-5), a cancelled
// member leaves without changing the others, a request of another size waits for its own batch, a
// request that fails its preparation fails alone, and under edf a request due before every member
// of a batch runs first, between two of its steps (from the queue when the batch holds every queue
// thread, or waiting in the batcher for another size), and step-cached requests share a batch with
// uncached ones, each skipping the steps it skips alone. Every wait is for an event (a step
// report, a request waiting in the batcher), never for time.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/step_cache.h"
#include "families/flux/flux_family.h"
#include "services/denoiser/denoiser_engine.h"
#include "tests/unit/default_model.h"
#include "tests/unit/denoiser/batch_test_harness.h"

namespace dgrid {
namespace {

constexpr double kTolerance = 1e-5;

using testing::EnqueueTracked;
using testing::EnqueueWithJoiners;
using testing::OneTo;
using testing::Tracked;
using testing::WaitEnded;

class StepBatchingTest : public ::testing::Test {
 protected:
  static std::unique_ptr<DenoiserEngine> Engine(int max_batch, bool edf = false) {
    return testing::CpuEngine(testing::DefaultModelDir(), max_batch, edf);
  }

  static DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps,
                            int width = 64, int height = 64) {
    DenoiseInput in;
    in.request_id = id;
    in.width = width;
    in.height = height;
    in.num_inference_steps = steps;
    in.seed = seed;
    in.guidance_scale = 3.5;
    at::manual_seed(300 + prompt);
    in.positive[families::flux::kPromptEmbeds] = at::randn({1, 8, 64});
    in.positive[families::flux::kPooledPromptEmbeds] = at::randn({1, 64});
    return in;
  }

  static void ExpectAlone(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
    ASSERT_TRUE(t.result.ok()) << input.request_id << ": " << t.result.status();
    auto alone = engine.family_denoiser().Run(input, {}, nullptr);
    ASSERT_TRUE(alone.ok()) << alone.status();
    const double diff = (*t.result - *alone).abs().max().item<double>();
    EXPECT_LE(diff, kTolerance) << input.request_id << " differs from its lone run by " << diff;
  }

  // The steps (1-based) `input`'s cache skips when it runs alone.
  static std::vector<int> SkippedAlone(DenoiserEngine& engine, const DenoiseInput& input) {
    std::vector<int> skipped;
    SamplerHooks hooks;
    hooks.on_cached_step = [&](int step) { skipped.push_back(step + 1); };
    EXPECT_TRUE(engine.family_denoiser().Run(input, hooks, nullptr).ok());
    return skipped;
  }
};

TEST_F(StepBatchingTest, MaxBatchOneIsUnbatched) {
  auto engine = Engine(1);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->batcher(), nullptr);
}

TEST_F(StepBatchingTest, RequestsJoinAtAStepBoundaryAndLeaveWhenDone) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->batcher(), nullptr);
  const DenoiseInput a = Input("a", 0, 1, 6), b = Input("b", 1, 2, 4), c = Input("c", 2, 3, 2);
  Tracked ta, tb, tc;
  std::map<int, int> batched;  // after a's step k: requests in batches
  // Two requests arrive while a runs; they join before its next step.
  EnqueueWithJoiners(*engine, a, ta, {{&b, &tb}, {&c, &tc}}, &batched);
  WaitEnded(ta);
  WaitEnded(tb);
  WaitEnded(tc);
  // b and c joined for a's step 2; c (2 steps) left after a's step 3, b (4) after its step 5.
  EXPECT_EQ(batched, (std::map<int, int>{{1, 1}, {2, 3}, {3, 3}, {4, 2}, {5, 2}, {6, 1}}));
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, b, tb);
  ExpectAlone(*engine, c, tc);
  EXPECT_EQ(ta.Steps(), OneTo(6));
  EXPECT_EQ(tb.Steps(), OneTo(4));
  EXPECT_EQ(tc.Steps(), OneTo(2));
  EXPECT_EQ(engine->batcher()->batched(), 0);
}

TEST_F(StepBatchingTest, CancelledMemberLeavesTheOthersUnchanged) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  const DenoiseInput a = Input("a", 0, 1, 5), b = Input("b", 1, 2, 5);
  Tracked ta, tb;
  tb.after_step = [&](int step) {
    if (step == 2) {
      EXPECT_TRUE(engine->Cancel("b").ok());
    }
  };
  EnqueueWithJoiners(*engine, a, ta, {{&b, &tb}});
  WaitEnded(ta);
  WaitEnded(tb);
  ExpectAlone(*engine, a, ta);
  EXPECT_EQ(tb.result.status().code(), absl::StatusCode::kCancelled) << tb.result.status();
  EXPECT_EQ(tb.Steps(), OneTo(2));
  EXPECT_EQ(ta.Steps(), OneTo(5));
}

TEST_F(StepBatchingTest, OtherSizeWaitsForItsOwnBatch) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  const DenoiseInput a = Input("a", 0, 1, 3), wide = Input("wide", 1, 2, 3, 128, 64);
  Tracked ta, tw;
  int wide_steps_while_a_ran = -1;
  ta.after_step = [&](int step) {
    if (step == 3) wide_steps_while_a_ran = tw.steps_done();
  };
  EnqueueWithJoiners(*engine, a, ta, {{&wide, &tw}});
  WaitEnded(ta);
  WaitEnded(tw);
  EXPECT_EQ(wide_steps_while_a_ran, 0);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, wide, tw);
}

TEST_F(StepBatchingTest, BadRequestFailsAlone) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  const DenoiseInput a = Input("a", 0, 1, 4);
  DenoiseInput bad = Input("bad", 1, 2, 4);
  bad.positive[families::flux::kPooledPromptEmbeds] = at::randn({1, 63});
  Tracked ta, tbad;
  EnqueueWithJoiners(*engine, a, ta, {{&bad, &tbad}});
  WaitEnded(ta);
  WaitEnded(tbad);
  ExpectAlone(*engine, a, ta);
  EXPECT_EQ(tbad.result.status().code(), absl::StatusCode::kInvalidArgument)
      << tbad.result.status();
}

TEST_F(StepBatchingTest, EdfRunsARequestDueFirstBetweenAFullBatchsSteps) {
  auto engine = Engine(2, /*edf=*/true);
  ASSERT_NE(engine, nullptr);
  DenoiseInput a = Input("a", 0, 1, 5), b = Input("b", 1, 2, 5), urgent = Input("urgent", 2, 3, 2);
  a.deadline = b.deadline = absl::Now() + absl::Hours(2);
  urgent.deadline = absl::Now() + absl::Hours(1);
  Tracked ta, tb, tu;
  int a_steps_when_urgent_done = -1;
  tu.after_step = [&](int step) {
    if (step == 2) a_steps_when_urgent_done = ta.steps_done();
  };
  ta.after_step = [&](int step) {
    // The batch (a, b) is full and both queue threads are in it: urgent waits in the queue.
    if (step == 2) EnqueueTracked(*engine, urgent, tu);
  };
  EnqueueWithJoiners(*engine, a, ta, {{&b, &tb}});
  WaitEnded(ta);
  WaitEnded(tb);
  WaitEnded(tu);
  EXPECT_EQ(a_steps_when_urgent_done, 2);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, b, tb);
  ExpectAlone(*engine, urgent, tu);
}

TEST_F(StepBatchingTest, EdfRunsAWaitingRequestOfAnotherSizeFirst) {
  auto engine = Engine(4, /*edf=*/true);
  ASSERT_NE(engine, nullptr);
  DenoiseInput a = Input("a", 0, 1, 4), urgent = Input("urgent", 1, 2, 2, 128, 64);
  a.deadline = absl::Now() + absl::Hours(2);
  urgent.deadline = absl::Now() + absl::Hours(1);
  Tracked ta, tu;
  int a_steps_when_urgent_done = -1;
  tu.after_step = [&](int step) {
    if (step == 2) a_steps_when_urgent_done = ta.steps_done();
  };
  // A queue thread is free: urgent waits in the batcher, not in the queue.
  EnqueueWithJoiners(*engine, a, ta, {{&urgent, &tu}});
  WaitEnded(ta);
  WaitEnded(tu);
  EXPECT_EQ(a_steps_when_urgent_done, 1);
  ExpectAlone(*engine, a, ta);
  ExpectAlone(*engine, urgent, tu);
}

TEST_F(StepBatchingTest, CachedAndUncachedRequestsShareABatch) {
  auto engine = Engine(4);
  ASSERT_NE(engine, nullptr);
  // Huge thresholds: each cached request skips every step its rules allow, whatever the measured
  // changes, so no decision depends on rounding. tea skips steps 2 and 4 (1-based), fb 2 and 3.
  DenoiseInput tea = Input("tea", 0, 1, 6), plain = Input("plain", 1, 2, 4),
               fb = Input("fb", 2, 3, 4);
  tea.cache.method = StepCacheMethod::kTeaCache;
  tea.cache.threshold = 1e9;
  tea.cache.max_skip = 1;
  fb.cache.method = StepCacheMethod::kFirstBlock;
  fb.cache.threshold = 1e9;
  fb.cache.warmup_steps = 1;
  Tracked tt, tp, tf;
  std::map<int, int> batched;  // after tea's step k: requests in batches
  EnqueueWithJoiners(*engine, tea, tt, {{&plain, &tp}, {&fb, &tf}}, &batched);
  WaitEnded(tt);
  WaitEnded(tp);
  WaitEnded(tf);
  // plain and fb joined tea's batch for its step 2 and left after its step 5.
  EXPECT_EQ(batched, (std::map<int, int>{{1, 1}, {2, 3}, {3, 3}, {4, 3}, {5, 3}, {6, 1}}));
  ExpectAlone(*engine, tea, tt);
  ExpectAlone(*engine, plain, tp);
  ExpectAlone(*engine, fb, tf);
  EXPECT_EQ(tt.Skipped(), (std::vector<int>{2, 4}));
  EXPECT_EQ(tt.Skipped(), SkippedAlone(*engine, tea));
  EXPECT_EQ(tf.Skipped(), (std::vector<int>{2, 3}));
  EXPECT_EQ(tf.Skipped(), SkippedAlone(*engine, fb));
  EXPECT_TRUE(tp.Skipped().empty());
  EXPECT_EQ(tt.Steps(), OneTo(6));
  EXPECT_EQ(tp.Steps(), OneTo(4));
  EXPECT_EQ(tf.Steps(), OneTo(4));
}

}  // namespace
}  // namespace dgrid
