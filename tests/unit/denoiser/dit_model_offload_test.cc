// Model offload of the DiT (--dit-offload model, services/denoiser/dit_placement.h) through the
// denoiser engine, on the committed default model (FLUX, float32 on the CPU, where the "device"
// copies are CPU tensors of their own) and on a tiny Wan2.2 A14B checkpoint (two experts): the
// latents equal the plain placement's bit for bit, for a lone request, two concurrent requests
// (two workers) and a step batch (--max-batch); the residency seam shows the weights on the device
// during every step, coming in once for requests that overlap and leaving when the last one ends;
// a batch's refused first member leaves nothing on the device. Then the flags' refusals. Every
// wait is for an event (a step report, a request waiting in the batcher), never for time.
#include <functional>
#include <memory>
#include <optional>
#include <string>
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
#include "tests/unit/common/safetensors_writer.h"
#include "tests/unit/default_model.h"
#include "tests/unit/denoiser/tiny_wan_checkpoint.h"

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

  // A lone request: bitwise the plain one's; the transformers on the device for each step only.
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
    std::vector<bool> on_device;
    const absl::StatusOr<at::Tensor> got = offloaded->Denoise(
        input, token, [&](int, int, double) { on_device.push_back(AllOnDevice(*offloaded)); });
    ExpectBitwise(got, want, "a");
    EXPECT_EQ(on_device, std::vector<bool>(6, true));
    ExpectMoves(*offloaded, 1);
    // The next request copies the weights in again, and computes the same.
    ExpectBitwise(offloaded->Denoise(input, token, nullptr), want, "a again");
    ExpectMoves(*offloaded, 2);
  }

  // Two workers: b starts while a holds the weights (a waits in its first step's report until b
  // has made a step), so both run on one device copy.
  void ConcurrentRequestsShareOneCopy() {
    auto plain = Engine(ModelDir(), false);
    auto offloaded = Engine(ModelDir(), true, /*workers=*/2);
    ASSERT_NE(plain, nullptr);
    ASSERT_NE(offloaded, nullptr);
    const DenoiseInput a = Input("a", 0, 1, 4), b = Input("b", 1, 2, 3);
    Tracked ta, tb;
    absl::Notification b_stepped;
    ta.after_step = [&](int step) {
      if (step != 1) return;
      Enqueue(*offloaded, b, tb);
      b_stepped.WaitForNotification();
    };
    tb.after_step = [&](int step) {
      if (step == 1) b_stepped.Notify();
    };
    Enqueue(*offloaded, a, ta);
    Wait(ta);
    Wait(tb);
    const CancellationToken token;
    ExpectBitwise(ta.result, plain->Denoise(a, token, nullptr), "a");
    ExpectBitwise(tb.result, plain->Denoise(b, token, nullptr), "b");
    ExpectMoves(*offloaded, 1);
  }

  // --max-batch 2: b joins a's batch at a's second step; the batch holds one device copy from its
  // first member to its end. The plain engine runs the same scenario (a batch's latents differ
  // from a lone run's by the kernels' rounding, so the comparison is batch against batch).
  void BatchSharesOneCopy() {
    std::vector<absl::StatusOr<at::Tensor>> results[2];
    for (const bool offload : {false, true}) {
      auto engine = Engine(ModelDir(), offload, /*workers=*/1, /*max_batch=*/2);
      ASSERT_NE(engine, nullptr);
      ASSERT_NE(engine->batcher(), nullptr);
      const DenoiseInput a = Input("a", 0, 1, 5), b = Input("b", 1, 2, 3);
      Tracked ta, tb;
      DeviceExits exits(*engine);
      int batched_at_step_2 = 0;
      bool on_device_while_batched = true;
      ta.after_step = [&](int step) {
        if (step == 1) {
          Enqueue(*engine, b, tb);
          engine->batcher()->AwaitWaiting(1);
        }
        if (step == 2) batched_at_step_2 = engine->batcher()->batched();
        if (offload) on_device_while_batched = on_device_while_batched && AllOnDevice(*engine);
      };
      Enqueue(*engine, a, ta);
      Wait(ta);
      Wait(tb);
      EXPECT_EQ(batched_at_step_2, 2);
      EXPECT_TRUE(on_device_while_batched);
      if (offload) {
        // Once the lane drops the emptied batch, each transformer has left once.
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
};

TEST_F(FluxDitModelOffloadTest, LoneRequestIsBitwiseThePlainOne) { LoneRequest({"transformer"}); }
TEST_F(FluxDitModelOffloadTest, ConcurrentRequestsShareOneCopy) {
  ConcurrentRequestsShareOneCopy();
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

// --- Wan2.2 A14B: two experts, both held while a request denoises ---

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
  testing::ScratchDir dir_{"wan_model_offload"};
};

TEST_F(WanDitModelOffloadTest, LoneRequestIsBitwiseThePlainOne) {
  LoneRequest({"transformer", "transformer_2"});
}
TEST_F(WanDitModelOffloadTest, ConcurrentRequestsShareOneCopy) { ConcurrentRequestsShareOneCopy(); }
TEST_F(WanDitModelOffloadTest, BatchSharesOneCopy) { BatchSharesOneCopy(); }

}  // namespace
}  // namespace dgrid
