// Model offload of the DiT (--dit-offload model, services/denoiser/dit_placement.h) through the
// denoiser engine, on the committed default model (FLUX, float32 on the CPU, where the "device"
// copies are CPU tensors of their own) and on a tiny Wan2.2 A14B checkpoint (two experts): the
// latents equal the plain placement's bit for bit, for a lone request, two concurrent requests
// (two workers) and a step batch (--max-batch); the residency seam shows on the device during
// every step exactly the weights that step uses (A14B: the high-noise expert for the steps before
// the boundary, the low-noise one after, both only for a batch step whose members are on both or
// while overlapping requests are on both), each coming in once for requests that overlap and
// leaving when no step uses it; a batch's refused first member leaves nothing on the device, and
// an expert's failed copy ends the requests that needed it, holding nothing. Then the flags'
// refusals. Every wait is for an event (a step report, a request waiting in the batcher), never
// for time.
#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/config.h"
#include "common/dit_offload_flags.h"
#include "common/dit_shard_flags.h"
#include "common/model_offload.h"
#include "families/flux/flux_family.h"
#include "families/wan/wan_family.h"
#include "services/denoiser/batched_sampler.h"
#include "services/denoiser/denoiser_engine.h"
#include "services/denoiser/wan_batched_sampler.h"
#include "services/denoiser/wan_sampler.h"
#include "tests/unit/common/safetensors_writer.h"
#include "tests/unit/default_model.h"
#include "tests/unit/denoiser/tiny_wan_checkpoint.h"
#include "tests/unit/parallel/sp_tiny_wan.h"

namespace dgrid {
namespace {

bool StartsWith(const absl::Status& s, const std::string& prefix) {
  return s.message().rfind(prefix, 0) == 0;
}

TEST(DitModelOffloadFlagsTest, ParsesModelAndPassesItOn) {
  absl::StatusOr<DitOffload> o = ParseDitOffload("model", "1");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->model);
  EXPECT_FALSE(o->layerwise);
  EXPECT_EQ(DitOffloadArgs(*o), (std::vector<std::string>{"--dit-offload", "model"}));
  // As the stage, `dgrid up` and `dgrid generate --local` read it.
  Config config(DitOffloadSettings("test"));
  const char* argv[] = {"test", "--dit-offload", "model"};
  ASSERT_TRUE(config.ParseArgs(3, argv).ok());
  absl::StatusOr<DitOffload> read = ReadDitOffloadFlags(config);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->model);
  // Not sharded: the shard flags take it.
  EXPECT_TRUE(ParseDitShard("false", "1", *o).ok());
}

TEST(DitModelOffloadFlagsTest, RefusesWhatMakesNoSenseNamingTheFlag) {
  const absl::Status mode = ParseDitOffload("disk", "1").status();
  EXPECT_EQ(mode.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mode.message().find("none, layerwise or model"), absl::string_view::npos) << mode;
  // A prefetch depth means nothing to model offload, given by value or given at all.
  const absl::Status prefetch = ParseDitOffload("model", "2").status();
  EXPECT_EQ(prefetch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(StartsWith(prefetch, "--dit-offload-prefetch: ")) << prefetch;
  Config config(DitOffloadSettings("test"));
  const char* argv[] = {"test", "--dit-offload", "model", "--dit-offload-prefetch", "1"};
  ASSERT_TRUE(config.ParseArgs(5, argv).ok());
  const absl::Status given = ReadDitOffloadFlags(config).status();
  EXPECT_EQ(given.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(StartsWith(given, "--dit-offload-prefetch: ")) << given;
  // Sharded weights keep 1/N of the blocks on each GPU for good: not with model offload.
  absl::StatusOr<DitOffload> model = ParseDitOffload("model", "1");
  ASSERT_TRUE(model.ok());
  const absl::Status shard = ParseDitShard("true", "1", *model).status();
  EXPECT_EQ(shard.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(StartsWith(shard, "--dit-shard-weights: ")) << shard;
  EXPECT_NE(shard.message().find("--dit-offload model"), absl::string_view::npos) << shard;
}

// One enqueued request's outcome, and what a test does after its steps.
struct Tracked {
  absl::Notification done;
  absl::StatusOr<at::Tensor> result = absl::UnknownError("not done");
  std::function<void(int step)> after_step;  // on the worker, after the step's report
};

void Enqueue(DenoiserEngine& engine, const DenoiseInput& input, Tracked& t) {
  const absl::Status queued = engine.Enqueue(
      input,
      [&t](int step, int /*total*/, double /*seconds*/) {
        if (t.after_step) t.after_step(step);
      },
      [&t](absl::StatusOr<at::Tensor> result) {
        t.result = std::move(result);
        t.done.Notify();
      });
  ASSERT_TRUE(queued.ok()) << queued;
}

void Wait(Tracked& t) {
  ASSERT_TRUE(t.done.WaitForNotificationWithTimeout(absl::Seconds(120))) << "never ended";
}

void ExpectBitwise(const absl::StatusOr<at::Tensor>& got, const absl::StatusOr<at::Tensor>& want,
                   const std::string& what) {
  ASSERT_TRUE(want.ok()) << what << " (plain): " << want.status();
  ASSERT_TRUE(got.ok()) << what << " (offloaded): " << got.status();
  EXPECT_TRUE(at::equal(*got, *want)) << what << " differs from the plain placement's";
}

std::unique_ptr<DenoiserEngine> Engine(const std::string& model, bool offload, int workers = 1,
                                       int max_batch = 1) {
  DenoiserEngineOptions options;
  options.model_path = model;
  options.load.device = "cpu";
  options.load.floating_dtype = "float32";
  options.load.dit_offload.model = offload;
  options.workers = workers;
  options.max_batch = max_batch;
  auto engine = DenoiserEngine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<std::string> Names(const DenoiserEngine& engine) {
  std::vector<std::string> names;
  for (const ModelResidency* r : engine.family_denoiser().residencies()) names.push_back(r->name());
  return names;
}

bool AnyOnDevice(const DenoiserEngine& engine) {
  for (const ModelResidency* r : engine.family_denoiser().residencies()) {
    if (r->on_device()) return true;
  }
  return false;
}

bool AllOnDevice(const DenoiserEngine& engine) {
  for (const ModelResidency* r : engine.family_denoiser().residencies()) {
    if (!r->on_device()) return false;
  }
  return true;
}

// Whether each residency (in residencies()' order) is on the device now.
std::vector<bool> Resident(const DenoiserEngine& engine) {
  std::vector<bool> out;
  for (const ModelResidency* r : engine.family_denoiser().residencies()) {
    out.push_back(r->on_device());
  }
  return out;
}

// Each residency's moves in and out since load.
void ExpectMoves(const DenoiserEngine& engine, int64_t moves) {
  for (const ModelResidency* r : engine.family_denoiser().residencies()) {
    EXPECT_FALSE(r->on_device()) << r->name();
    EXPECT_EQ(r->moves_in(), moves) << r->name();
    EXPECT_EQ(r->moves_out(), moves) << r->name();
  }
}

// Counts the times the weights of `engine`'s residencies left the device (the residency seam), so
// that a test can wait for a batch to let go of them: the step batcher answers a batch's last
// member before it drops the batch.
class DeviceExits {
 public:
  explicit DeviceExits(const DenoiserEngine& engine) : engine_(engine) {
    for (const ModelResidency* r : engine_.family_denoiser().residencies()) {
      r->SetObserverForTesting([this](absl::string_view, bool on_device) {
        absl::MutexLock lock(&mu_);
        if (!on_device) ++exits_;
      });
    }
  }
  ~DeviceExits() {
    for (const ModelResidency* r : engine_.family_denoiser().residencies()) {
      r->SetObserverForTesting(nullptr);
    }
  }
  // Whether `n` exits came (false only after two minutes without them: a failure, not a timing).
  bool Await(int n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return exits_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(120));
  }

 private:
  const DenoiserEngine& engine_;
  absl::Mutex mu_;
  int exits_ ABSL_GUARDED_BY(mu_) = 0;
};

// The plain and the offloaded engines of one model run the same scenarios.
class DitModelOffloadTest : public ::testing::Test {
 protected:
  virtual std::string ModelDir() = 0;
  virtual DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps) = 0;
  // Per residency, whether a step of the members (each: its step count, its step index) uses it.
  virtual std::vector<bool> Used(const std::vector<std::pair<int, int>>& members) = 0;

  // A lone request: bitwise the plain one's; on the device during each step what that step uses.
  void LoneRequest(const std::vector<std::string>& names) {
    auto plain = Engine(ModelDir(), false);
    auto offloaded = Engine(ModelDir(), true);
    ASSERT_NE(plain, nullptr);
    ASSERT_NE(offloaded, nullptr);
    EXPECT_TRUE(plain->family_denoiser().residencies().empty());
    EXPECT_EQ(Names(*offloaded), names);
    for (const ModelResidency* r : offloaded->family_denoiser().residencies()) {
      EXPECT_TRUE(r->device().is_cpu());
      EXPECT_GT(r->host_bytes(), 0);
    }
    ExpectMoves(*offloaded, 0);  // nothing on the device after load
    const DenoiseInput input = Input("a", 0, 1, 6);
    const CancellationToken token;
    const absl::StatusOr<at::Tensor> want = plain->Denoise(input, token, nullptr);
    std::vector<std::vector<bool>> on_device, used;
    for (int i = 0; i < 6; ++i) used.push_back(Used({{6, i}}));
    const absl::StatusOr<at::Tensor> got = offloaded->Denoise(
        input, token, [&](int, int, double) { on_device.push_back(Resident(*offloaded)); });
    ExpectBitwise(got, want, "a");
    EXPECT_EQ(on_device, used);
    ExpectMoves(*offloaded, 1);
    // The next request copies the weights in again, and computes the same.
    ExpectBitwise(offloaded->Denoise(input, token, nullptr), want, "a again");
    ExpectMoves(*offloaded, 2);
  }

  // Two workers, a (4 steps) and b (3): b is enqueued in a's report of its step `join` (reports
  // count from 1) and a waits there until b has reported its step `b_hold`; with `a_then` b then
  // waits there until a has reported its step `a_then`. So b starts while a holds the weights and
  // both run on one device copy of each transformer: bitwise the plain engine's, each copy in and
  // out once. Returns what was on the device (Resident) at each of a's and b's reports.
  using Seen = std::vector<std::vector<bool>>;
  void ConcurrentRequests(int join, int b_hold, int a_then, Seen& seen_a, Seen& seen_b) {
    auto plain = Engine(ModelDir(), false);
    auto offloaded = Engine(ModelDir(), true, /*workers=*/2);
    ASSERT_NE(plain, nullptr);
    ASSERT_NE(offloaded, nullptr);
    const DenoiseInput a = Input("a", 0, 1, 4), b = Input("b", 1, 2, 3);
    Tracked ta, tb;
    absl::Notification b_stepped, a_moved_on;
    seen_a.assign(4, {});
    seen_b.assign(3, {});
    ta.after_step = [&](int step) {
      seen_a[static_cast<size_t>(step - 1)] = Resident(*offloaded);
      if (step == join) {
        Enqueue(*offloaded, b, tb);
        b_stepped.WaitForNotification();
      }
      if (step == a_then) a_moved_on.Notify();
    };
    tb.after_step = [&](int step) {
      seen_b[static_cast<size_t>(step - 1)] = Resident(*offloaded);
      if (step == b_hold) {
        b_stepped.Notify();
        if (a_then > 0) a_moved_on.WaitForNotification();
      }
    };
    Enqueue(*offloaded, a, ta);
    Wait(ta);
    Wait(tb);
    const CancellationToken token;
    ExpectBitwise(ta.result, plain->Denoise(a, token, nullptr), "a");
    ExpectBitwise(tb.result, plain->Denoise(b, token, nullptr), "b");
    ExpectMoves(*offloaded, 1);
  }

  // --max-batch 2: a has 5 steps and b 3, enqueued at a's report of its step `join` (1-based), so
  // b's steps run with a's `join` + 1 to `join` + 3; the batch holds one device copy of what its
  // steps use from its first member to its end. The plain engine runs the same scenario (a batch's
  // latents differ from a lone run's by the kernels' rounding, so the comparison is batch against
  // batch).
  void BatchSharesOneCopy(int join = 1) {
    std::vector<absl::StatusOr<at::Tensor>> results[2];
    for (const bool offload : {false, true}) {
      auto engine = Engine(ModelDir(), offload, /*workers=*/1, /*max_batch=*/2);
      ASSERT_NE(engine, nullptr);
      ASSERT_NE(engine->batcher(), nullptr);
      const DenoiseInput a = Input("a", 0, 1, 5), b = Input("b", 1, 2, 3);
      Tracked ta, tb;
      DeviceExits exits(*engine);
      int batched_after_join = 0;
      // At each of a's steps (0-based k; b's step k - join): what is on the device.
      std::vector<std::vector<bool>> on_device, used;
      for (int k = 0; k < 5; ++k) {
        std::vector<std::pair<int, int>> members = {{5, k}};
        if (k >= join && k - join < 3) members.emplace_back(3, k - join);
        used.push_back(Used(members));
      }
      ta.after_step = [&](int step) {
        if (step == join) {
          Enqueue(*engine, b, tb);
          engine->batcher()->AwaitWaiting(1);
        }
        if (step == join + 1) batched_after_join = engine->batcher()->batched();
        if (offload) on_device.push_back(Resident(*engine));
      };
      Enqueue(*engine, a, ta);
      Wait(ta);
      Wait(tb);
      EXPECT_EQ(batched_after_join, 2);
      if (offload) {
        EXPECT_EQ(on_device, used);
        // Once the batch has ended, each transformer has come in and left once.
        ASSERT_TRUE(exits.Await(static_cast<int>(Names(*engine).size())));
        ExpectMoves(*engine, 1);
      }
      results[offload ? 1 : 0] = {ta.result, tb.result};
    }
    ExpectBitwise(results[1][0], results[0][0], "a");
    ExpectBitwise(results[1][1], results[0][1], "b");
  }
};

// --- FLUX: the default model ---

class FluxDitModelOffloadTest : public DitModelOffloadTest {
 protected:
  std::string ModelDir() override { return testing::DefaultModelDir(); }
  DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps) override {
    DenoiseInput in;
    in.request_id = id;
    in.width = 64;
    in.height = 64;
    in.num_inference_steps = steps;
    in.seed = seed;
    in.guidance_scale = 3.5;
    at::manual_seed(300 + prompt);
    in.positive[families::flux::kPromptEmbeds] = at::randn({1, 8, 64});
    in.positive[families::flux::kPooledPromptEmbeds] = at::randn({1, 64});
    return in;
  }
  std::vector<bool> Used(const std::vector<std::pair<int, int>>&) override { return {true}; }
};

TEST_F(FluxDitModelOffloadTest, LoneRequestIsBitwiseThePlainOne) { LoneRequest({"transformer"}); }
// b starts after a's first step, a waits until b has made one.
TEST_F(FluxDitModelOffloadTest, ConcurrentRequestsShareOneCopy) {
  Seen seen_a, seen_b;
  ConcurrentRequests(/*join=*/1, /*b_hold=*/1, /*a_then=*/0, seen_a, seen_b);
  EXPECT_EQ(seen_a, Seen(4, {true}));
  EXPECT_EQ(seen_b, Seen(3, {true}));
}
TEST_F(FluxDitModelOffloadTest, BatchSharesOneCopy) { BatchSharesOneCopy(); }

TEST_F(FluxDitModelOffloadTest, RefusedFirstMemberLeavesNothingOnTheDevice) {
  auto engine = Engine(ModelDir(), true);
  ASSERT_NE(engine, nullptr);
  std::unique_ptr<BatchedSampler> batch = engine->family_denoiser().NewBatch(nullptr);
  ASSERT_NE(batch, nullptr);
  EXPECT_FALSE(AnyOnDevice(*engine));  // an empty batch holds nothing
  DenoiseInput bad = Input("bad", 0, 1, 3);
  bad.positive[families::flux::kPooledPromptEmbeds] = at::randn({1, 63});
  EXPECT_EQ(batch->Add(0, bad, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(batch->size(), 0);
  ExpectMoves(*engine, 1);  // came in for the member, left with its refusal
  ASSERT_TRUE(batch->Add(1, Input("good", 1, 2, 2), {}).ok());
  EXPECT_TRUE(AllOnDevice(*engine));
  std::vector<BatchedSampler::Ended> ended;
  while (ended.empty()) ended = batch->Step();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_TRUE(ended[0].result.ok()) << ended[0].result.status();
  EXPECT_TRUE(AllOnDevice(*engine));  // until the batch goes
  batch.reset();
  ExpectMoves(*engine, 2);
}

// --- Wan2.2 A14B: two experts, each on the device while steps use it ---

class WanDitModelOffloadTest : public DitModelOffloadTest {
 protected:
  void SetUp() override { testing::WriteTinyWanCheckpoint(dir_.path()); }
  std::string ModelDir() override { return dir_.path(); }
  // 5 frames of 32x32; with 6 steps both experts run (boundary 0.875); CFG with a negative prompt
  // of another text length, and the second expert's own guidance.
  DenoiseInput Input(const std::string& id, int prompt, uint64_t seed, int steps) override {
    DenoiseInput in;
    in.request_id = id;
    in.width = 32;
    in.height = 32;
    in.num_frames = 5;
    in.num_inference_steps = steps;
    in.seed = seed;
    in.guidance_scale = 5.0;
    in.guidance_scale_2 = 3.0;
    at::manual_seed(100 + prompt);
    in.positive[families::wan::kPromptEmbeds] = at::randn({1, 7, 24});
    in.negative[families::wan::kPromptEmbeds] = at::randn({1, 5, 24});
    return in;
  }
  // Whether step `step` of a request of `steps` steps runs `transformer` (the high-noise expert),
  // as the loop decides it from the checkpoint's schedule and boundary.
  bool HighNoise(int steps, int step) {
    const testing::TinyWanPipeline p = testing::MakeTinyWanPipeline(testing::TinyWanVariant::kA14B);
    absl::StatusOr<WanSchedulerConfig> scheduler =
        LoadWanSchedulerConfig(dir_.path() + "/scheduler/scheduler_config.json");
    EXPECT_TRUE(scheduler.ok()) << scheduler.status();
    WanSamplerRequest r = testing::TinyWanRequest(testing::TinyWanVariant::kA14B, 5, 32, 32, true);
    r.num_inference_steps = steps;
    absl::StatusOr<WanSamplerState> state = WanSamplerState::Prepare(
        *p.transformer, p.transformer_2.get(), p.pipeline, *scheduler, r, nullptr);
    EXPECT_TRUE(state.ok()) << state.status();
    return state.ok() && state->FirstExpert(step);
  }
  std::vector<bool> Used(const std::vector<std::pair<int, int>>& members) override {
    std::vector<bool> used = {false, false};
    for (const auto& [steps, step] : members) used[HighNoise(steps, step) ? 0 : 1] = true;
    return used;
  }
  testing::ScratchDir dir_{"wan_model_offload"};
};

// Six steps: the high-noise expert alone for the first ones, then the low-noise one alone.
TEST_F(WanDitModelOffloadTest, LoneRequestIsBitwiseThePlainOne) {
  ASSERT_TRUE(HighNoise(6, 0));
  ASSERT_FALSE(HighNoise(6, 5));
  LoneRequest({"transformer", "transformer_2"});
}

// a (4 steps: high, high, low, low) and b (3 steps: high, low, low) on two workers: b starts
// while a holds the high-noise expert (a waits in its second step's report until b has made two
// steps, and b waits in its second step's report until a has made its third), so each expert
// comes in once for both, both are on the device while a is on one and b on the other, and the
// high-noise one leaves when a, its last user, moves on. (Step reports count from 1.)
TEST_F(WanDitModelOffloadTest, ConcurrentRequestsShareEachExpertsCopy) {
  const std::vector<bool> high = {true, false};
  const std::vector<bool> low = {false, true};
  ASSERT_EQ(Used({{4, 0}}), high);
  ASSERT_EQ(Used({{4, 1}}), high);
  ASSERT_EQ(Used({{4, 2}}), low);
  ASSERT_EQ(Used({{3, 0}}), high);
  ASSERT_EQ(Used({{3, 1}}), low);
  Seen seen_a, seen_b;
  ConcurrentRequests(/*join=*/2, /*b_hold=*/2, /*a_then=*/3, seen_a, seen_b);
  EXPECT_EQ(seen_a, (Seen{high, high, low, low}));
  EXPECT_EQ(seen_b, (Seen{high, {true, true}, low}));
}

// a (5 steps) and b (3 steps, joining at a's third): the batch's step that has a on the low-noise
// expert and b on the high-noise one holds both; the high-noise one leaves at the next step.
TEST_F(WanDitModelOffloadTest, BatchHoldsTheExpertsItsStepsUse) {
  ASSERT_EQ(Used({{5, 1}}), (std::vector<bool>{true, false}));
  ASSERT_EQ(Used({{5, 2}, {3, 0}}), (std::vector<bool>{true, true}));
  ASSERT_EQ(Used({{5, 3}, {3, 1}}), (std::vector<bool>{false, true}));
  BatchSharesOneCopy(/*join=*/2);
}

// An expert whose copy fails (RESOURCE_EXHAUSTED, as a device out of memory answers) ends the
// requests whose step needs it, with that status; nothing stays held. The experts here are the
// tiny models behind a `use` that counts the holds alive and fails for transformer_2.
class WanExpertCopyFailureTest : public ::testing::Test {
 protected:
  WanExperts FailingSecond() {
    WanExperts experts = WanExperts::Resident(*p_.transformer, p_.transformer_2.get());
    experts.use =
        [this](bool first) -> absl::StatusOr<std::shared_ptr<const WanTransformer3DModel>> {
      if (!first) return absl::ResourceExhaustedError("transformer_2: out of memory (test)");
      ++held_;
      return std::shared_ptr<const WanTransformer3DModel>(
          p_.transformer.get(), [this](const WanTransformer3DModel*) { --held_; });
    };
    return experts;
  }
  static WanSamplerRequest Request(const std::string& id) {
    WanSamplerRequest r = testing::TinyWanRequest(testing::TinyWanVariant::kA14B, 5, 32, 32, true);
    r.request_id = id;
    return r;
  }
  testing::TinyWanPipeline p_ = testing::MakeTinyWanPipeline(testing::TinyWanVariant::kA14B);
  int held_ = 0;  // one thread
};

TEST_F(WanExpertCopyFailureTest, LoneRequestEndsWithTheStatusHoldingNothing) {
  const WanSamplerRequest r = Request("a");
  ASSERT_TRUE(WanSamplerState::Prepare(*p_.transformer, p_.transformer_2.get(), p_.pipeline,
                                       p_.scheduler, r, nullptr)
                  ->FirstExpert(1));
  int steps = 0;
  int held_during_steps = 0;
  WanSamplerHooks hooks;
  hooks.on_step = [&](int, int, double) {
    ++steps;
    held_during_steps = std::max(held_during_steps, held_);
  };
  const absl::Status s =
      RunWanSampler(FailingSecond(), p_.pipeline, p_.scheduler, r, hooks).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(steps, 2);  // the high-noise steps ran
  EXPECT_EQ(held_during_steps, 1);
  EXPECT_EQ(held_, 0);
}

TEST_F(WanExpertCopyFailureTest, BatchEndsOnlyTheMembersThatNeedTheExpert) {
  WanBatchedSampler batch(
      FailingSecond(), p_.pipeline, p_.scheduler,
      [](const DenoiseInput&) -> absl::StatusOr<WanSamplerRequest> {
        return absl::UnimplementedError("requests come through AddRequest here");
      });
  ASSERT_TRUE(batch.AddRequest(0, Request("a"), {}).ok());
  EXPECT_EQ(held_, 0);                                            // nothing asked for before a step
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(batch.Step().empty());  // a's high-noise steps
  EXPECT_EQ(held_, 1);
  ASSERT_TRUE(batch.AddRequest(1, Request("b"), {}).ok());
  // a's first low-noise step fails; b's first (high-noise) step runs.
  std::vector<BatchedSampler::Ended> ended = batch.Step();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].id, 0);
  EXPECT_EQ(ended[0].result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(batch.size(), 1);
  EXPECT_EQ(held_, 1);
  EXPECT_TRUE(batch.Step().empty());  // b's second step, still high-noise
  ended = batch.Step();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].id, 1);
  EXPECT_EQ(ended[0].result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(batch.size(), 0);
  EXPECT_EQ(held_, 0);  // an emptied batch holds nothing
}

}  // namespace
}  // namespace dgrid
