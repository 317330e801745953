// The memory model (planner/memory_model.h) against the peaks the benchmarks measured.
#include "planner/memory_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/match.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

using testing::SourceDir;

// The committed reports kBuiltInMemorySource names.
std::vector<std::string> BuiltInReports() {
  const std::string r = SourceDir() + "/bench/results/";
  std::vector<std::string> files;
  for (const char* size : {"512", "1024", "2048"}) {
    files.push_back(r + "2026-11-28-h100-85b3b27-dgrid-denoise-" + size + ".json");
  }
  for (const char* variant : {"fused", "fused-cfgbatch"}) {
    for (const char* shape : {"wan1.3b", "wan14b"}) {
      files.push_back(r + "2026-12-06-h100-b0ba836-dgrid-" + variant + "-" + shape +
                      "-480p81.json");
    }
  }
  for (const char* layout : {"u2", "u4", "r2", "r4", "cfg2", "cfg2u2"}) {
    files.push_back(r + "2026-11-28-h200x4-dgrid-" + layout + "-1024.json");
  }
  return files;
}

TEST(MemoryModelTest, BuiltInValuesAreTheFitOfTheirReports) {
  absl::StatusOr<std::vector<MemoryRow>> rows = ReadMemoryRows(BuiltInReports());
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 13u);
  absl::StatusOr<MemoryModel> fit = FitMemoryModel(*rows);
  ASSERT_TRUE(fit.ok()) << fit.status();
  const MemoryModel built_in = BuiltInMemoryModel();
  for (const auto& [family, f] : fit->families) {
    std::printf("%s: fixed %.3f MiB, per_token %.4f\n", family.c_str(), f.fixed_mib, f.per_token);
    ASSERT_TRUE(built_in.families.count(family)) << family;
    EXPECT_NEAR(built_in.families.at(family).fixed_mib, f.fixed_mib, 0.05) << family;
    EXPECT_NEAR(built_in.families.at(family).per_token, f.per_token, 0.005) << family;
  }
  std::printf("collective %.3f MiB\n", fit->collective_mib);
  EXPECT_NEAR(built_in.collective_mib, fit->collective_mib, 0.05);
}

// Every committed report with a measured peak, FP8 ones and other commits included, except Wan's
// unfused reference path (DGRID_WAN_FUSED=0, and the rows from before its fused blocks), which
// keeps more activations than the served path: the prediction (weights from the parameter counts,
// not the measured allocation) within 10% of the measured peak.
TEST(MemoryModelTest, PredictsEveryMeasuredPeakWithinTenPercent) {
  absl::StatusOr<std::vector<MemoryRow>> rows =
      ReadMemoryRows(ExpandJsonPaths(SourceDir() + "/bench/results"));
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_GE(rows->size(), 40u);
  const MemoryModel memory = BuiltInMemoryModel();
  int fp8 = 0, groups = 0, videos = 0, offloaded = 0;
  const std::vector<std::string> unfused_wan = {"2026-12-06-h100-38210f8-dgrid-wan1.3b-480p81",
                                                "2026-12-06-h100-38210f8-dgrid-wan14b-480p81",
                                                "2026-12-06-h100-b0ba836-dgrid-reference-wan1.3b"};
  double worst = 0;
  for (const MemoryRow& row : *rows) {
    if (std::any_of(unfused_wan.begin(), unfused_wan.end(),
                    [&](const std::string& name) { return absl::StrContains(row.label, name); })) {
      continue;
    }
    absl::StatusOr<MemoryEstimate> e =
        DenoiserPeak(memory, row.model, row.request, row.layout, row.precision, row.cfg_batched,
                     row.offload_prefetch);
    ASSERT_TRUE(e.ok()) << row.label << ": " << e.status();
    const double error = e->total_mib() / row.peak_mib - 1;
    worst = std::max(worst, std::abs(error));
    EXPECT_LT(std::abs(error), 0.10)
        << row.label << ": predicted " << e->total_mib() << " MiB, measured " << row.peak_mib;
    // The weights alone: the parameter counts against the allocation after loading (with offload
    // that allocation is the non-block weights alone, before any block is copied: see
    // PredictsTheMeasuredOffloadPeaks).
    if (row.offload_prefetch == 0) {
      EXPECT_LT(std::abs(e->weights_mib / row.weights_mib - 1), 0.02) << row.label;
    }
    offloaded += row.offload_prefetch > 0;
    fp8 += row.precision == DitPrecision::kFp8;
    groups += row.layout.size() > 1;
    videos += row.request.frames > 1;
  }
  std::printf("%zu rows, largest error %.1f%%\n", rows->size(), 100 * worst);
  EXPECT_GT(fp8, 0);
  EXPECT_GT(groups, 0);
  EXPECT_GT(videos, 0);
  EXPECT_GT(offloaded, 0);
}

// Layerwise offload of the Wan2.1-14B shape (bench/gpu_wan_offload_run.sh, 2026-12-07, H100;
// 832x480x81 with CFG): two-pass CFG at prefetch 1 and 2 and batched CFG at prefetch 2, with
// their plain runs. None of these rows was fitted to.
TEST(MemoryModelTest, PredictsTheMeasuredWanOffloadPeaksWithinTenPercent) {
  const std::string r = SourceDir() + "/bench/results/2026-12-07-h100-db21085-wan-";
  absl::StatusOr<std::vector<MemoryRow>> rows =
      ReadMemoryRows({r + "wan14b-480p81.json", r + "wan14b-480p81-offload-1.json",
                      r + "wan14b-480p81-offload-2.json", r + "cfgbatch-wan14b-480p81.json",
                      r + "cfgbatch-wan14b-480p81-offload-2.json"});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 5u);
  const MemoryModel memory = BuiltInMemoryModel();
  for (const MemoryRow& row : *rows) {
    EXPECT_EQ(row.offload_prefetch == 0, !absl::StrContains(row.label, "offload")) << row.label;
    EXPECT_EQ(row.cfg_batched, absl::StrContains(row.label, "cfgbatch")) << row.label;
    absl::StatusOr<MemoryEstimate> e =
        DenoiserPeak(memory, row.model, row.request, row.layout, row.precision, row.cfg_batched,
                     row.offload_prefetch);
    ASSERT_TRUE(e.ok()) << e.status();
    const double error = e->total_mib() / row.peak_mib - 1;
    std::printf("%s prefetch %d%s: measured %.0f MiB, predicted %.0f MiB (weights %.0f), %+.1f%%\n",
                row.model.name.c_str(), row.offload_prefetch, row.cfg_batched ? " cfg-batched" : "",
                row.peak_mib, e->total_mib(), e->weights_mib, 100 * error);
    EXPECT_LT(std::abs(error), 0.10) << row.label;
  }
}

// Layerwise offload (issue #20 item 4): the committed H100 runs of the FLUX.1-dev shape at prefetch
// 1, 2 and 4 (bench/gpu_offload_run.sh, 2026-12-07), predicted from the parameter counts (non-block
// weights + the largest prefetch + 1 consecutive blocks) and the activations fitted to plain runs:
// none of these rows was fitted to.
TEST(MemoryModelTest, PredictsTheMeasuredOffloadPeaksWithinTenPercent) {
  const std::string r = SourceDir() + "/bench/results/2026-12-07-h100-55379e5-offload-run-";
  std::vector<std::string> files;
  for (const char* depth : {"1", "2", "4"}) {
    for (const char* size : {"512", "1024"}) {
      files.push_back(r + "offload-" + depth + "-" + size + ".json");
    }
  }
  files.push_back(r + "plain-1024.json");
  absl::StatusOr<std::vector<MemoryRow>> rows = ReadMemoryRows(files);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 7u);
  const MemoryModel memory = BuiltInMemoryModel();
  for (const MemoryRow& row : *rows) {
    const bool plain = absl::StrContains(row.label, "plain");
    EXPECT_EQ(row.offload_prefetch == 0, plain) << row.label;
    absl::StatusOr<MemoryEstimate> e = DenoiserPeak(memory, row.model, row.request, row.layout,
                                                    row.precision, false, row.offload_prefetch);
    ASSERT_TRUE(e.ok()) << e.status();
    const double error = e->total_mib() / row.peak_mib - 1;
    std::printf(
        "%s prefetch %d %dx%d: measured %.0f MiB, predicted %.0f MiB (weights %.0f), %+.1f%%\n",
        row.model.name.c_str(), row.offload_prefetch, row.request.width, row.request.height,
        row.peak_mib, e->total_mib(), e->weights_mib, 100 * error);
    EXPECT_LT(std::abs(error), 0.10) << row.label;
    if (!plain) {
      // The blocks are in host memory: 22 GiB of FLUX.1-dev's 22.2 GiB.
      EXPECT_NEAR(e->host_mib, 22572.0, 1) << row.label;
      EXPECT_LT(e->total_mib(), 0.2 * 22572.0);
    }
  }
  // One more block of prefetch: one more joint block (36 D^2 bf16 = 648 MiB), as measured.
  const ModelShape flux = *LookupModelShape("flux-dev");
  EXPECT_NEAR(OffloadedWeightMib(flux, 2) - OffloadedWeightMib(flux, 1), 648, 0.5);
  // Past the 19 joint blocks the window straddles single ones; it never exceeds every block.
  EXPECT_NEAR(OffloadedWeightMib(flux, 100), flux.NonBlockWeightBytes() / 1048576.0 + 22572.0, 1);
  // FP8 with offload is refused, as the denoiser refuses it.
  RequestShape r1024;
  r1024.width = r1024.height = 1024;
  EXPECT_EQ(
      DenoiserPeak(memory, flux, r1024, GroupShape(), DitPrecision::kFp8, false, 1).status().code(),
      absl::StatusCode::kInvalidArgument);
  // Wan2.1-14B: 40 blocks of 670 MiB, 26.2 GiB in host memory.
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  EXPECT_EQ(wan.BlockWeightBytes().size(), 40u);
  EXPECT_NEAR(wan.BlockWeightBytes()[0] / 1048576.0, 670, 1);
}

// Sharded weights (--dit-shard-weights, services/denoiser/models/sharded_blocks.h): per rank the
// non-block weights, 1/N of every block's buffer (padded to N elements) and the prefetch + 1
// gathered blocks a pass holds. The expected numbers are the parameter counts worked by hand; no
// sharded run has measured a peak yet.
TEST(MemoryModelTest, ShardedWeightsKeepOneNthOfTheBlocksPlusTheGatheredWindow) {
  constexpr double kMiB = 1048576.0;
  // Padding: a buffer of E elements (2 bytes each) is padded to a multiple of N elements.
  EXPECT_EQ(ShardBytesPerRank(10, 4), 4);  // 5 elements -> 8 -> 2 per rank
  EXPECT_EQ(ShardBytesPerRank(6, 4), 2);   // 3 -> 4 -> 1
  EXPECT_EQ(ShardBytesPerRank(16, 4), 4);  // 8 -> 8 -> 2: no padding
  EXPECT_EQ(ShardBytesPerRank(7, 2), 4);   // an odd byte count is a whole element more
  // FLUX.1-dev (D = 3072): 19 joint blocks of 36 D^2 bf16 (648 MiB) and 38 single ones of 15 D^2
  // (270 MiB), 22572 MiB in all; over 4 ranks 5643 MiB each (no padding: 36 D^2 and 15 D^2 are
  // multiples of 4), and a pass at prefetch 1 holds two gathered joint blocks (1296 MiB).
  const ModelShape flux = *LookupModelShape("flux-dev");
  const double outside = flux.NonBlockWeightBytes() / kMiB;
  EXPECT_NEAR(ShardedWeightMib(flux, 4, 1), outside + 22572.0 / 4 + 2 * 648, 1e-6);
  EXPECT_NEAR(ShardedWeightMib(flux, 4, 2), outside + 22572.0 / 4 + 3 * 648, 1e-6);
  EXPECT_NEAR(ShardedWeightMib(flux, 2, 1), outside + 22572.0 / 2 + 2 * 648, 1e-6);
  // Past the joint blocks the largest window is still the first one; a window longer than the
  // model holds every block gathered.
  EXPECT_NEAR(ShardedWeightMib(flux, 8, 100), outside + 22572.0 / 8 + 22572.0, 1e-6);
  // One forward gathers every block once, receiving (N - 1) / N of it.
  EXPECT_NEAR(ShardGatherBytesPerForward(flux, 4) / kMiB, 22572.0 * 3 / 4, 1e-6);
  EXPECT_NEAR(ShardGatherBytesPerForward(flux, 2) / kMiB, 22572.0 / 2, 1e-6);

  // The peak: the activations and collective buffers of the same layout, the sharded weights.
  const MemoryModel memory = BuiltInMemoryModel();
  RequestShape r1024;
  r1024.width = r1024.height = 1024;
  r1024.cfg = true;
  GroupShape u4;
  u4.ulysses = 4;
  const MemoryEstimate plain = *DenoiserPeak(memory, flux, r1024, u4, DitPrecision::kBf16);
  const MemoryEstimate sharded =
      *DenoiserPeak(memory, flux, r1024, u4, DitPrecision::kBf16, false, 0, /*shard_prefetch=*/1);
  EXPECT_NEAR(sharded.weights_mib, outside + 22572.0 / 4 + 2 * 648, 1e-6);
  EXPECT_EQ(sharded.activations_mib, plain.activations_mib);
  EXPECT_EQ(sharded.collective_mib, memory.collective_mib);
  EXPECT_EQ(sharded.host_mib, 0);
  // 22.2 GiB of weights become 7.0 GiB per rank.
  EXPECT_LT(sharded.weights_mib, 0.32 * plain.weights_mib);

  // Wan2.1-14B (D = 5120, FFN 13824): 40 blocks of 2 (8 D^2 + 2 D F) bytes = 702545920 bytes;
  // on cfg2-ulysses2 (4 ranks) a rank keeps 175636480 bytes of each and holds two whole ones.
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  GroupShape cfg2u2;
  cfg2u2.cfg = 2;
  cfg2u2.ulysses = 2;
  EXPECT_NEAR(ShardedWeightMib(wan, 4, 1),
              (wan.NonBlockWeightBytes() + 40 * 175636480.0 + 2 * 702545920.0) / kMiB, 1e-6);

  // What the denoiser refuses, the model refuses: one GPU, FP8, offload.
  const GroupShape one;
  EXPECT_EQ(
      DenoiserPeak(memory, flux, r1024, one, DitPrecision::kBf16, false, 0, 1).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DenoiserPeak(memory, flux, r1024, u4, DitPrecision::kFp8, false, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DenoiserPeak(memory, flux, r1024, u4, DitPrecision::kBf16, false, 1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemoryModelTest, ShapeOfThePrediction) {
  const MemoryModel memory = BuiltInMemoryModel();
  const ModelShape flux = *LookupModelShape("flux-dev");
  RequestShape r1024;
  r1024.width = r1024.height = 1024;
  RequestShape r2048 = r1024;
  r2048.width = r2048.height = 2048;
  GroupShape one, u4;
  u4.ulysses = 4;
  const MemoryEstimate a = *DenoiserPeak(memory, flux, r1024, one, DitPrecision::kBf16);
  const MemoryEstimate b = *DenoiserPeak(memory, flux, r2048, one, DitPrecision::kBf16);
  const MemoryEstimate c = *DenoiserPeak(memory, flux, r2048, u4, DitPrecision::kBf16);
  const MemoryEstimate d = *DenoiserPeak(memory, flux, r2048, one, DitPrecision::kFp8);
  EXPECT_GT(b.activations_mib, 3 * a.activations_mib);  // 4.5x the tokens (text included)
  EXPECT_NEAR(c.activations_mib - memory.families.at("flux").fixed_mib,
              (b.activations_mib - memory.families.at("flux").fixed_mib) / 4, 1e-6);
  EXPECT_EQ(c.collective_mib, memory.collective_mib);
  EXPECT_EQ(a.collective_mib, 0);
  EXPECT_NEAR(d.weights_mib / b.weights_mib, 0.636, 0.01);  // 912 of 2508 D^2 bytes saved
  EXPECT_EQ(d.activations_mib, b.activations_mib);

  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  RequestShape video;
  video.width = 832;
  video.height = 480;
  video.frames = 81;
  video.cfg = true;
  const MemoryEstimate single = *DenoiserPeak(memory, wan, video, one, DitPrecision::kBf16);
  const MemoryEstimate batched =
      *DenoiserPeak(memory, wan, video, one, DitPrecision::kBf16, /*cfg_batched=*/true);
  EXPECT_NEAR(batched.activations_mib, 2 * single.activations_mib, 1e-6);  // a batch of two
  absl::StatusOr<MemoryEstimate> wan_fp8 =
      DenoiserPeak(memory, wan, video, one, DitPrecision::kFp8);
  ASSERT_FALSE(wan_fp8.ok());
  EXPECT_TRUE(absl::StrContains(wan_fp8.status().message(), "FLUX only"));
  MemoryModel empty;
  EXPECT_EQ(DenoiserPeak(empty, flux, r1024, one, DitPrecision::kBf16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemoryModelTest, BudgetCheckSaysWhatItNeedsAndWhatWouldFit) {
  const MemoryModel memory = BuiltInMemoryModel();
  const ModelShape flux = *LookupModelShape("flux-dev");
  RequestShape largest;
  largest.width = largest.height = 2048;
  largest.cfg = true;
  GroupShape one;
  EXPECT_TRUE(CheckDenoiserBudget(memory, flux, largest, one, DitPrecision::kBf16, 80 * 1024).ok());
  // 2048^2 on one GPU: 22.0 GiB of weights and 1.6 GiB of activations; FP8 weights 14.0 GiB.
  absl::Status s = CheckDenoiserBudget(memory, flux, largest, one, DitPrecision::kBf16, 17 * 1024);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "flux-dev needs 23.6 GiB")) << s.message();
  EXPECT_TRUE(absl::StrContains(s.message(), "2048x2048")) << s.message();
  EXPECT_TRUE(absl::StrContains(s.message(), "--dit-precision fp8 it needs 15.6 GiB"))
      << s.message();
  EXPECT_TRUE(absl::StrContains(s.message(), "(fits)")) << s.message();
  EXPECT_TRUE(CheckDenoiserBudget(memory, flux, largest, one, DitPrecision::kFp8, 17 * 1024).ok());
  s = CheckDenoiserBudget(memory, flux, largest, one, DitPrecision::kFp8, 12 * 1024);
  EXPECT_TRUE(absl::StrContains(s.message(), "does not fit either")) << s.message();
  const ModelShape wan = *LookupModelShape("wan2.1-14b");
  RequestShape video;
  video.width = 1280;
  video.height = 720;
  video.frames = 81;
  s = CheckDenoiserBudget(memory, wan, video, one, DitPrecision::kBf16, 24 * 1024);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "FLUX only")) << s.message();

  EXPECT_NEAR(*ParseMemorySize("24GiB", "--x"), 24 * 1024, 1e-9);
  EXPECT_NEAR(*ParseMemorySize("80GB", "--x"), 80e9 / 1048576, 1e-6);
  EXPECT_NEAR(*ParseMemorySize("512MiB", "--x"), 512, 1e-9);
  for (const char* bad : {"24", "GiB", "-1GiB", "0GiB", "1TiB", "nanGiB", "infGiB"}) {
    absl::StatusOr<double> parsed = ParseMemorySize(bad, "--vram-budget");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_TRUE(absl::StrContains(parsed.status().message(), "--vram-budget")) << bad;
  }
}

TEST(MemoryModelTest, FitNeedsTwoTokenCountsPerFamily) {
  absl::StatusOr<std::vector<MemoryRow>> rows = ReadMemoryRows(
      {SourceDir() + "/bench/results/2026-11-28-h100-85b3b27-dgrid-denoise-1024.json"});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ(FitMemoryModel(*rows).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FitMemoryModel({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDitPrecision("int4").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseDitPrecision("fp8-fast"), DitPrecision::kFp8);
}

}  // namespace
}  // namespace dgrid::planner
