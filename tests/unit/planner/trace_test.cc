// Recorded traces (planner/trace.h) and their replay by the simulator.
#include "planner/trace.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "planner/simulation.h"

namespace dgrid::planner {
namespace {

TEST(TraceTest, ParsesLinesWithDefaultsSkipsCommentsAndSortsByArrival) {
  absl::StatusOr<Trace> t = ParseTrace(
      "# arrival order is not file order\n"
      "{\"arrival_s\": 2.5, \"width\": 512, \"height\": 512, \"cfg\": true, \"deadline_ms\": 900}\n"
      "\n"
      "{\"arrival_s\": 0.5, \"model\": \"wan\", \"width\": 832, \"height\": 480, \"frames\": 81,"
      " \"steps\": 50}\n"
      "  {\"arrival_s\": 0.5, \"width\": 1024, \"height\": 1024}  \n",
      "t.jsonl");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->requests.size(), 3u);
  EXPECT_EQ(t->requests[0].model, "wan");  // equal arrivals keep file order
  EXPECT_EQ(t->requests[0].shape.frames, 81);
  EXPECT_EQ(t->requests[0].shape.steps, 50);
  EXPECT_DOUBLE_EQ(t->requests[0].arrival_ms, 500);
  EXPECT_EQ(t->requests[1].shape.width, 1024);
  EXPECT_EQ(t->requests[1].shape.steps, RequestShape().steps);  // the default family's
  EXPECT_FALSE(t->requests[1].shape.cfg);
  EXPECT_EQ(t->requests[1].shape.frames, 1);
  EXPECT_DOUBLE_EQ(t->requests[1].deadline_ms, 0);
  EXPECT_TRUE(t->requests[2].shape.cfg);
  EXPECT_DOUBLE_EQ(t->requests[2].deadline_ms, 900);
  EXPECT_DOUBLE_EQ(t->requests[2].arrival_ms, 2500);
}

TEST(TraceTest, BadLinesNameTheFileLineAndField) {
  const std::pair<const char*, const char*> cases[] = {
      {"{\"width\": 512, \"height\": 512}", "t.jsonl:1.arrival_s: missing"},
      {"{\"arrival_s\": -1, \"width\": 512, \"height\": 512}", "t.jsonl:1.arrival_s"},
      {"{\"arrival_s\": 0, \"width\": 500, \"height\": 512}", "t.jsonl:1.width/height"},
      {"{\"arrival_s\": 0, \"height\": 512}", "t.jsonl:1.width"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 0}", "t.jsonl:1.steps"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"frames\": 0}", "t.jsonl:1.frames"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"cfg\": 1}", "t.jsonl:1.cfg"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"deadline_ms\": -5}",
       "t.jsonl:1.deadline_ms"},
      {"[1, 2]", "t.jsonl:1: expected a JSON object"},
      {"{\"arrival_s\": 0,", "t.jsonl:1"},
      {"# only a comment\n\n", "t.jsonl: no requests"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512}\n{\"arrival_s\": \"soon\"}",
       "t.jsonl:2.arrival_s"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"cache\": \"magic:0.1\"}",
       "t.jsonl:1.cache: 'magic:0.1'"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"cache\": 3}", "t.jsonl:1.cache"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"skipped_steps\": 3}",
       "t.jsonl:1.skipped_steps: needs a cache method"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8, \"cache\": "
       "\"fbcache\", \"skipped_steps\": 8}",
       "t.jsonl:1.skipped_steps: must be in [0, 7]"},
      {"{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"cache\": \"teacache\", "
       "\"skipped_steps\": -1}",
       "t.jsonl:1.skipped_steps"},
  };
  for (const auto& [text, error] : cases) {
    absl::StatusOr<Trace> t = ParseTrace(text, "t.jsonl");
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_TRUE(absl::StrContains(t.status().message(), error))
        << text << " -> " << t.status().message();
  }
  EXPECT_EQ(ReadTraceFile("/nonexistent/trace.jsonl").status().code(), absl::StatusCode::kNotFound);
}

TEST(TraceTest, ReplayMakesOneClassPerShapeWithSharesAndRate) {
  absl::StatusOr<Trace> t = ParseTrace(
      "{\"arrival_s\": 0, \"width\": 512, \"height\": 512}\n"
      "{\"arrival_s\": 1, \"width\": 1024, \"height\": 1024, \"cfg\": true}\n"
      "{\"arrival_s\": 2, \"width\": 512, \"height\": 512, \"model\": \"a\"}\n"
      "{\"arrival_s\": 3, \"width\": 512, \"height\": 512, \"model\": \"b\"}\n"
      "{\"arrival_s\": 4, \"width\": 512, \"height\": 512, \"steps\": 4}\n",
      "t.jsonl");
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<TraceReplay> all = ReplayFor(*t, "");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->workload.classes.size(), 3u);  // 512 (28 steps), 1024 cfg, 512 (4 steps)
  EXPECT_EQ(all->workload.classes[0].name, "512x512-28s");
  EXPECT_EQ(all->workload.classes[1].name, "1024x1024-28s-cfg");
  EXPECT_EQ(all->workload.classes[2].name, "512x512-4s");
  EXPECT_DOUBLE_EQ(all->workload.classes[0].share, 3.0 / 5);
  EXPECT_DOUBLE_EQ(all->workload.classes[1].share, 1.0 / 5);
  EXPECT_DOUBLE_EQ(all->workload.arrival_rate_per_s, 1.0);  // 4 gaps in 4 s
  ASSERT_EQ(all->arrivals.size(), 5u);
  EXPECT_EQ(all->arrivals[1].class_index, 1);
  EXPECT_EQ(all->arrivals[4].class_index, 2);
  EXPECT_EQ(all->skipped_other_models, 0);

  absl::StatusOr<TraceReplay> a = ReplayFor(*t, "a");  // model a, and lines naming none
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->arrivals.size(), 4u);
  EXPECT_EQ(a->skipped_other_models, 1);
  EXPECT_FALSE(ReplayFor(*ParseTrace("{\"arrival_s\": 0, \"width\": 512, \"height\": 512, "
                                     "\"model\": \"b\"}",
                                     "t.jsonl"),
                         "a")
                   .ok());
}

// Places every request on group 0, holding one request at a time: others wait in the
// orchestrator's queue (RESOURCE_EXHAUSTED).
class OneAtATime : public SimPlacer {
 public:
  std::string name() const override { return "one-at-a-time"; }
  absl::StatusOr<size_t> Place(const SimRequest&,
                               const std::vector<SimGroupView>& groups) override {
    if (groups[0].inflight > 0) return absl::ResourceExhaustedError("busy");
    return 0;
  }
};

TEST(TraceTest, SimulatorReplaysTheTraceArrivalsAndItsDeadlines) {
  const ModelShape model = *LookupModelShape("flux-dev");
  const CostModel cost{Calibration(), LinkSpeeds()};
  PlannedGroup group;
  group.id = "g0";
  group.gpus = {"node0:0"};
  absl::StatusOr<TraceReplay> replay = ReplayFor(
      *ParseTrace("{\"arrival_s\": 0, \"width\": 512, \"height\": 512}\n"
                  "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"deadline_ms\": 1}\n"
                  "{\"arrival_s\": 0, \"width\": 512, \"height\": 512}\n"
                  "{\"arrival_s\": 1000, \"width\": 512, \"height\": 512}\n",
                  "t.jsonl"),
      "");
  ASSERT_TRUE(replay.ok()) << replay.status();
  const double service = *cost.RequestMs(model, replay->workload.classes[0].shape, group.layout);
  ASSERT_LT(2 * service, 1000e3);  // the last request finds the group idle
  SimOptions options;
  options.trace = &replay->arrivals;
  options.num_requests = 0;  // ignored with a trace, as is the rate
  options.rate_per_s = 0;
  OneAtATime placer;
  absl::StatusOr<SimResult> r =
      Simulate(model, cost, {group}, replay->workload, {service}, placer, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->arrived, 4);
  // The second request's own 1 ms deadline has passed when the group frees: refused. The third
  // (no deadline) runs after the first; the fourth arrives to an idle group.
  EXPECT_EQ(r->rejected, 1);
  EXPECT_EQ(r->completed, 3);
  EXPECT_DOUBLE_EQ(r->slo_attainment[0], 2.0 / 4);  // first and last at exactly 1.0x
  EXPECT_NEAR(r->p99_ms, 2 * service, 1e-6);
  EXPECT_NEAR(r->span_s, 1000 + service / 1e3, 1e-6);

  // The same trace without its deadline: nothing is refused.
  std::vector<TraceArrival> no_deadlines = replay->arrivals;
  for (TraceArrival& a : no_deadlines) a.deadline_ms = 0;
  options.trace = &no_deadlines;
  r = Simulate(model, cost, {group}, replay->workload, {service}, placer, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rejected, 0);
  EXPECT_EQ(r->completed, 4);

  std::vector<TraceArrival> bad = {{0, 7, 0}};
  options.trace = &bad;
  EXPECT_EQ(
      Simulate(model, cost, {group}, replay->workload, {service}, placer, options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// Continuous batching in the simulator: requests of one shape share each step (a batched step
// costs the cost model's step of that batch); a request of another shape waits for its turn.
TEST(SimulationBatchingTest, SameShapeRequestsShareStepsAndOthersWaitTheirTurn) {
  const ModelShape model = *LookupModelShape("flux-dev");
  const CostModel cost{Calibration(), LinkSpeeds()};
  absl::StatusOr<TraceReplay> replay =
      ReplayFor(*ParseTrace("{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 4}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 4}\n"
                            "{\"arrival_s\": 0, \"width\": 1024, \"height\": 1024, \"steps\": 4}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 4}\n",
                            "t.jsonl"),
                "");
  ASSERT_TRUE(replay.ok()) << replay.status();
  ASSERT_EQ(replay->workload.classes.size(), 2u);
  const int small = replay->workload.classes[0].shape.width == 512 ? 0 : 1;
  PlannedGroup group;
  group.id = "g0";
  group.gpus = {"node0:0"};
  group.max_inflight = 8;
  std::vector<double> reference;
  for (const RequestClass& c : replay->workload.classes) {
    reference.push_back(*cost.RequestMs(model, c.shape, group.layout));
  }
  // One step of a batch of b small requests.
  auto step = [&](int b) {
    RequestShape shape = replay->workload.classes[small].shape;
    shape.batch = b;
    return *cost.RequestMs(model, shape, group.layout) / shape.steps;
  };
  ASSERT_LT(step(3), 3 * step(1));
  SimOptions options;
  options.trace = &replay->arrivals;
  class AllOnOne : public SimPlacer {
   public:
    std::string name() const override { return "all-on-one"; }
    absl::StatusOr<size_t> Place(const SimRequest&, const std::vector<SimGroupView>&) override {
      return 0;
    }
  } placer;
  const double large = reference[1 - small];
  // Unbatched (fifo): one after the other.
  absl::StatusOr<SimResult> alone =
      Simulate(model, cost, {group}, replay->workload, reference, placer, options);
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ(alone->completed, 4);
  EXPECT_NEAR(alone->span_s * 1e3, 3 * reference[small] + large, 1e-6);
  // Batched: the first small request starts its first step as soon as it is placed, alone (no
  // batch wait); the other two join it at the next step boundary, and the three run together
  // until the first ends; the two that joined take their last step together; then the large one.
  group.max_batch = 4;
  absl::StatusOr<SimResult> batched =
      Simulate(model, cost, {group}, replay->workload, reference, placer, options);
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_EQ(batched->completed, 4);
  const double joined_end = step(1) + 3 * step(3) + step(2);
  EXPECT_NEAR(batched->span_s * 1e3, joined_end + large, 1e-6);
  EXPECT_NEAR(batched->p50_ms, joined_end, 1e-6);
  EXPECT_LT(batched->span_s, alone->span_s);
  EXPECT_LT(batched->gpu_utilisation * batched->span_s, alone->gpu_utilisation * alone->span_s);
  // At most two at once: the second small request joins the first for three steps and the third
  // takes the second's last step with it; the third's other steps run alone (fifo keeps what
  // runs going), then the large one.
  group.max_batch = 2;
  absl::StatusOr<SimResult> pairs =
      Simulate(model, cost, {group}, replay->workload, reference, placer, options);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  EXPECT_NEAR(pairs->span_s * 1e3, step(1) + 3 * step(2) + step(2) + 3 * step(1) + large, 1e-6);
  group.max_batch = 0;
  EXPECT_EQ(
      Simulate(model, cost, {group}, replay->workload, reference, placer, options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// Step caching in the cost model and the simulator: a trace line's cache and skipped_steps make a
// class of its own whose skipped steps cost their share (fbcache: the first of the model's blocks;
// teacache: nothing counted); batched, a step is charged the rows expected to run.
TEST(SimulationStepCacheTest, SkippedStepsCostTheirShareAlsoInABatch) {
  const ModelShape model = *LookupModelShape("flux-dev");
  const CostModel cost{Calibration(), LinkSpeeds()};
  absl::StatusOr<TraceReplay> replay =
      ReplayFor(*ParseTrace("{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8, "
                            "\"cache\": \"fbcache:0.2\", \"skipped_steps\": 3}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8, "
                            "\"cache\": \"teacache\", \"skipped_steps\": 3}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8, "
                            "\"cache\": \"fbcache\", \"skipped_steps\": 3}\n"
                            "{\"arrival_s\": 0, \"width\": 512, \"height\": 512, \"steps\": 8, "
                            "\"cache\": \"none\"}\n",
                            "t.jsonl"),
                "");
  ASSERT_TRUE(replay.ok()) << replay.status();
  // Plain (twice: "none" is no cache), fbcache 3 skipped (twice: the threshold does not matter
  // here), teacache 3 skipped.
  ASSERT_EQ(replay->workload.classes.size(), 3u);
  EXPECT_EQ(replay->workload.classes[0].name, "512x512-8s");
  EXPECT_EQ(replay->workload.classes[1].name, "512x512-8s-fbcache-3skipped");
  EXPECT_EQ(replay->workload.classes[2].name, "512x512-8s-teacache-3skipped");
  EXPECT_DOUBLE_EQ(replay->workload.classes[0].share, 0.4);
  EXPECT_DOUBLE_EQ(replay->workload.classes[1].share, 0.4);

  PlannedGroup group;
  group.id = "g0";
  group.gpus = {"node0:0"};
  group.max_inflight = 8;
  const RequestShape plain = replay->workload.classes[0].shape;
  const double step = *cost.RequestMs(model, plain, group.layout) / plain.steps;
  std::vector<double> reference;
  for (const RequestClass& c : replay->workload.classes) {
    reference.push_back(*cost.RequestMs(model, c.shape, group.layout));
  }
  EXPECT_NEAR(reference[0], 8 * step, 1e-9);
  EXPECT_NEAR(reference[1], 5 * step + 3 * step / model.attention_layers(), 1e-9);
  EXPECT_NEAR(reference[2], 5 * step, 1e-9);

  // A batch of cached requests: members that skip leave the step's forward. Two fbcache requests
  // that each skip 3 of 8 steps run, on average, 2 x (5 + 3/57) / 8 rows per step: the lone step
  // plus that share over one row of the gap to a step of two rows.
  RequestShape plain_pair = plain;
  plain_pair.batch = 2;
  const double pair_step = *cost.RequestMs(model, plain_pair, group.layout) / plain.steps;
  const double share = 1.0 / model.attention_layers();
  const double rows = 2 * (5 + 3 * share) / 8;
  RequestShape cached_pair = replay->workload.classes[1].shape;
  cached_pair.batch = 2;
  const double fb_pair_ms = *cost.RequestMs(model, cached_pair, group.layout);
  EXPECT_NEAR(fb_pair_ms, 8 * (step + (pair_step - step) * (rows - 1)), 1e-9);
  // Below one row on average (teacache, four members skipping 7 of 8 steps): r lone steps.
  RequestShape sparse = replay->workload.classes[2].shape;
  sparse.batch = 4;
  sparse.skipped_steps = 7;
  EXPECT_NEAR(*cost.RequestMs(model, sparse, group.layout), 8 * step * (4.0 * 1 / 8), 1e-9);
  // Cheaper per request than alone, dearer per step than a lone cached request.
  EXPECT_LT(fb_pair_ms, 2 * reference[1]);
  EXPECT_GT(fb_pair_ms, reference[1]);
  RequestShape bad = plain;
  bad.skipped_steps = 1;  // without a method
  EXPECT_EQ(cost.RequestMs(model, bad, group.layout).status().code(),
            absl::StatusCode::kInvalidArgument);

  // With batching on, the two plain requests share their steps, and so do the two fbcache ones; the
  // teacache one runs alone (a class of its own).
  group.max_batch = 4;
  class AllOnOne : public SimPlacer {
   public:
    std::string name() const override { return "all-on-one"; }
    absl::StatusOr<size_t> Place(const SimRequest&, const std::vector<SimGroupView>&) override {
      return 0;
    }
  } placer;
  SimOptions options;
  options.trace = &replay->arrivals;
  absl::StatusOr<SimResult> r =
      Simulate(model, cost, {group}, replay->workload, reference, placer, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 5);
  // Arrival order: plain, fbcache, teacache, fbcache, plain. The first plain runs its first step
  // alone, the second plain joins it for the other seven, then the second plain's last step alone
  // (fifo keeps what runs going first); then the two fbcache ones, both waiting when their batch
  // forms, all eight steps together (each at the pair's mean), then the teacache one.
  const double expected = step + 7 * pair_step + step + fb_pair_ms + reference[2];
  EXPECT_NEAR(r->span_s * 1e3, expected, 1e-6);
}

}  // namespace
}  // namespace dgrid::planner
