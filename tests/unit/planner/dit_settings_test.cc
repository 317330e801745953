// Choosing the DiT settings within a memory budget (planner/dit_settings.h).
#include "planner/dit_settings.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace dgrid::planner {
namespace {

const DitCandidate* Find(const DitChoice& choice, absl::string_view name) {
  for (const DitCandidate& c : choice.candidates) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

Workload OneClass(int width, int height, int frames, bool cfg) {
  Workload w;
  RequestClass c;
  c.name = "largest";
  c.shape.width = width;
  c.shape.height = height;
  c.shape.frames = frames;
  c.shape.cfg = cfg;
  w.classes.push_back(c);
  return w;
}

DitChoice Choose(const ModelShape& model, const Workload& workload, double budget_mib,
                 PerformanceMode mode = PerformanceMode::kAuto, GroupShape layout = GroupShape()) {
  DitChoiceOptions options;
  options.mode = mode;
  absl::StatusOr<DitChoice> choice =
      ChooseDitSettings(BuiltInMemoryModel(), CostModel(Calibration(), LinkSpeeds()), model,
                        workload, layout, budget_mib, options);
  EXPECT_TRUE(choice.ok()) << choice.status();
  return *choice;
}

TEST(DitSettingsTest, PlainBf16WhenItFitsOffloadWhenOnlyThatFitsFp8Last) {
  const ModelShape flux = *LookupModelShape("flux-dev");
  const Workload w = OneClass(1024, 1024, 1, false);
  // 80 GiB: everything fits; plain bf16 is the fastest (offload is copy-bound, ~440 ms a step).
  DitChoice c = Choose(flux, w, 80 * 1024);
  ASSERT_TRUE(c.fits());
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16");
  EXPECT_TRUE(absl::StrContains(Find(c, "bf16 + offload prefetch 1")->verdict, "slower"));
  EXPECT_TRUE(absl::StrContains(Find(c, "fp8 (lossy)")->verdict, "lossy"));
  EXPECT_FALSE(Find(c, "sharded weights")->available);
  EXPECT_TRUE(c.candidates[c.chosen].DenoiserFlags().empty());

  // 16 GiB: bf16 does not fit; offload (lossless) is chosen over FP8, at its smallest depth since
  // every depth is equally fast.
  c = Choose(flux, w, 16 * 1024);
  ASSERT_TRUE(c.fits());
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16 + offload prefetch 1");
  EXPECT_TRUE(absl::StrContains(Find(c, "bf16")->verdict, "does not fit"));
  EXPECT_TRUE(absl::StrContains(Find(c, "bf16 + offload prefetch 2")->verdict, "as fast"));
  EXPECT_EQ(
      c.candidates[c.chosen].DenoiserFlags(),
      (std::vector<std::string>{"--dit-offload", "layerwise", "--dit-offload-prefetch", "1"}));
  // speed: FP8 (not slower by the cost model, no copies) beats the copy-bound offload.
  c = Choose(flux, w, 16 * 1024, PerformanceMode::kSpeed);
  EXPECT_EQ(c.candidates[c.chosen].name, "fp8 (lossy)");
  // memory: the smallest footprint even where bf16 fits.
  c = Choose(flux, w, 80 * 1024, PerformanceMode::kMemory);
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16 + offload prefetch 1");

  // Nothing fits 1 GiB: refused, naming the smallest candidate and the budget it needs.
  c = Choose(flux, w, 1024);
  EXPECT_FALSE(c.fits());
  const absl::Status refused = c.RefusalStatus();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(refused.message(), "bf16 + offload prefetch 1")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "flux-dev needs at least")) << refused;
}

TEST(DitSettingsTest, WanFourteenBFitsOneTwentyFourGigabyteGpuOnlyWithOffload) {
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  const Workload w = OneClass(832, 480, 81, true);
  DitChoice c = Choose(wan, w, 24 * 1024);
  ASSERT_TRUE(c.fits()) << c.refusal;
  EXPECT_EQ(c.candidates[c.chosen].offload_prefetch, 1);
  EXPECT_FALSE(Find(c, "fp8 (lossy)")->available);  // FP8 is served for FLUX only
  EXPECT_TRUE(absl::StrContains(Find(c, "fp8 (lossy)")->verdict, "FLUX only"));
  // Wan's 480p81 step is compute-bound (seconds), so the copies hide behind it: offload costs
  // little there.
  const DitCandidate* plain = Find(c, "bf16");
  EXPECT_LT(c.candidates[c.chosen].step_ms, 1.1 * plain->step_ms);
  c = Choose(wan, w, 80 * 1024);
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16");
}

// Sharded weights are a candidate on groups of 2 or more GPUs, taken only where they are the
// fastest lossless candidate that fits: the part of their gathers the step does not hide (the first
// block's, the latencies) adds to it, so plain bf16 beats them wherever it fits.
TEST(DitSettingsTest, ShardedWeightsOnGroupsWhenTheyAreTheFastestThatFits) {
  const ModelShape flux = *LookupModelShape("flux-dev");
  const Workload w = OneClass(1024, 1024, 1, false);
  GroupShape u4;
  u4.ulysses = 4;
  // 80 GiB: bf16 fits and is faster than sharding by its exposed gathers.
  DitChoice c = Choose(flux, w, 80 * 1024, PerformanceMode::kAuto, u4);
  ASSERT_TRUE(c.fits());
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16");
  const DitCandidate* sharded = Find(c, "sharded weights prefetch 1");
  ASSERT_NE(sharded, nullptr);
  ASSERT_TRUE(sharded->available);
  EXPECT_TRUE(absl::StrContains(sharded->verdict, "slower")) << sharded->verdict;
  const CostModel cost{Calibration(), LinkSpeeds()};
  const double gather_ms =
      cost.Step(flux, w.classes[0].shape, u4, OffloadShape{0, false, 1})->gather_ms;
  EXPECT_NEAR(sharded->step_ms, Find(c, "bf16")->step_ms + gather_ms, 1e-9);
  EXPECT_NEAR(sharded->memory.weights_mib, ShardedWeightMib(flux, 4, 1), 1e-9);

  // 12 GiB: neither bf16 (22.6 GiB) nor FP8 (14.6 GiB) fits; sharding (about 7 GiB) and offload
  // do, and sharding's gathers over NVLink cost far less than offload's copies over PCIe.
  c = Choose(flux, w, 12 * 1024, PerformanceMode::kAuto, u4);
  ASSERT_TRUE(c.fits());
  EXPECT_EQ(c.candidates[c.chosen].name, "sharded weights prefetch 1");
  EXPECT_EQ(c.candidates[c.chosen].DenoiserFlags(),
            (std::vector<std::string>{"--dit-shard-weights=true", "--dit-shard-prefetch", "1"}));
  EXPECT_TRUE(absl::StrContains(Find(c, "bf16 + offload prefetch 1")->verdict, "slower"));
  EXPECT_TRUE(absl::StrContains(Find(c, "fp8 (lossy)")->verdict, "does not fit"));
  EXPECT_EQ(c.candidates[c.chosen].ToJson()["dit_shard_prefetch"], 1);
  EXPECT_TRUE(c.candidates[c.chosen].ToJson()["dit_shard_weights"].get<bool>());
  // speed agrees (the fastest that fits); memory takes offload's smaller footprint.
  c = Choose(flux, w, 12 * 1024, PerformanceMode::kSpeed, u4);
  EXPECT_EQ(c.candidates[c.chosen].name, "sharded weights prefetch 1");
  c = Choose(flux, w, 12 * 1024, PerformanceMode::kMemory, u4);
  EXPECT_EQ(c.candidates[c.chosen].name, "bf16 + offload prefetch 1");
  // One GPU: listed, not available.
  c = Choose(flux, w, 12 * 1024);
  ASSERT_NE(Find(c, "sharded weights"), nullptr);
  EXPECT_FALSE(Find(c, "sharded weights")->available);
  EXPECT_TRUE(absl::StrContains(Find(c, "sharded weights")->verdict, "2 or more GPUs"));

  // Wan2.1-14B on cfg2-ulysses2 within 16 GiB: offload's copies hide behind the long step, so
  // offload is faster by the model than sharding's exposed gathers (the first block's 1/40 of
  // 26.2 GiB x 3/4 at 450 GB/s and 40 latencies, about 1.6 ms on a step of 1.8 s): offload is
  // taken.
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  GroupShape cfg2u2;
  cfg2u2.cfg = 2;
  cfg2u2.ulysses = 2;
  const Workload video = OneClass(832, 480, 81, true);
  c = Choose(wan, video, 16 * 1024, PerformanceMode::kAuto, cfg2u2);
  ASSERT_TRUE(c.fits()) << c.refusal;
  EXPECT_EQ(c.candidates[c.chosen].offload_prefetch, 1);
  sharded = Find(c, "sharded weights prefetch 1");
  ASSERT_NE(sharded, nullptr);
  EXPECT_TRUE(sharded->fits);
  EXPECT_GT(sharded->step_ms, c.candidates[c.chosen].step_ms);
  EXPECT_NEAR(sharded->step_ms - c.candidates[c.chosen].step_ms,
              cost.Step(wan, video.classes[0].shape, cfg2u2, OffloadShape{0, false, 1})->gather_ms,
              1e-9);
  EXPECT_TRUE(absl::StrContains(sharded->verdict, "slower")) << sharded->verdict;
  // With offload ruled out (--dit-offload none given), sharding is what fits.
  DitChoiceOptions no_offload;
  no_offload.offload_prefetch = 0;
  absl::StatusOr<DitChoice> given =
      ChooseDitSettings(BuiltInMemoryModel(), cost, wan, video, cfg2u2, 16 * 1024, no_offload);
  ASSERT_TRUE(given.ok()) << given.status();
  ASSERT_TRUE(given->fits());
  EXPECT_EQ(given->candidates[given->chosen].name, "sharded weights prefetch 1");
  // --dit-shard-weights given with --dit-shard-prefetch 2: that candidate alone among the sharded
  // ones, and nothing unsharded.
  DitChoiceOptions shard_given;
  shard_given.shard_prefetch = 2;
  given = ChooseDitSettings(BuiltInMemoryModel(), cost, wan, video, cfg2u2, 16 * 1024, shard_given);
  ASSERT_TRUE(given.ok()) << given.status();
  ASSERT_EQ(given->candidates.size(), 1u);
  EXPECT_EQ(given->candidates[0].name, "sharded weights prefetch 2");
  EXPECT_TRUE(given->fits());
  EXPECT_NEAR(given->candidates[0].memory.weights_mib, ShardedWeightMib(wan, 4, 2), 1e-9);
}

TEST(DitSettingsTest, ExplicitFlagsNarrowTheCandidatesAndModesParse) {
  const ModelShape flux = *LookupModelShape("flux-dev");
  DitChoiceOptions options;
  options.offload_prefetch = 0;  // --dit-offload none given
  absl::StatusOr<DitChoice> c =
      ChooseDitSettings(BuiltInMemoryModel(), CostModel(Calibration(), LinkSpeeds()), flux,
                        OneClass(1024, 1024, 1, false), GroupShape(), 16 * 1024, options);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->candidates[c->chosen].name, "fp8 (lossy)");
  EXPECT_EQ(Find(*c, "bf16 + offload prefetch 1"), nullptr);
  EXPECT_EQ(*ParsePerformanceMode("speed", "--performance-mode"), PerformanceMode::kSpeed);
  EXPECT_EQ(*ParsePerformanceMode("memory", "--performance-mode"), PerformanceMode::kMemory);
  absl::StatusOr<PerformanceMode> bad = ParsePerformanceMode("fast", "--performance-mode");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "--performance-mode"));
}

}  // namespace
}  // namespace dgrid::planner
