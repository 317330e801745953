#include "planner/cost_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "nlohmann/json.hpp"
#include "planner/model_shape.h"
#include "tests/unit/planner/test_paths.h"

namespace dgrid::planner {
namespace {

std::vector<std::string> BenchFiles() {
  std::vector<std::string> files;
  for (const auto& e :
       std::filesystem::directory_iterator(testing::SourceDir() + "/bench/results")) {
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  }
  return files;
}

ModelShape Flux() { return *LookupModelShape("flux-dev"); }

CostModel Default() { return CostModel(Calibration(), LinkSpeeds()); }

TEST(CostModelTest, FitsTheMeasuredSingleGpuRowsWithin15Percent) {
  absl::StatusOr<std::vector<MeasuredRow>> rows = ReadBenchRows(BenchFiles());
  ASSERT_TRUE(rows.ok()) << rows.status();
  // Only dgrid's own rows (512^2, 1024^2, 2048^2 on H100) are read; diffusers reports are skipped.
  ASSERT_GE(rows->size(), 3u);
  absl::StatusOr<Calibration> fit = FitCalibration(Flux(), *rows);
  ASSERT_TRUE(fit.ok()) << fit.status();
  // The built-in calibration is this fit, rounded.
  EXPECT_NEAR(fit->overhead_ms, Calibration().overhead_ms, 1.0);
  EXPECT_NEAR(fit->rate_tflops, Calibration().rate_tflops, 5.0);
  const CostModel model(*fit, LinkSpeeds());
  for (const MeasuredRow& row : *rows) {
    absl::StatusOr<StepEstimate> e = model.Step(Flux(), row.request, GroupShape());
    ASSERT_TRUE(e.ok());
    const double error = e->total_ms() / row.step_ms - 1;
    std::printf("%dx%d measured %.1f ms predicted %.1f ms error %+.1f%%\n", row.request.width,
                row.request.height, row.step_ms, e->total_ms(), 100 * error);
    EXPECT_LT(std::fabs(error), 0.15) << row.label;
  }
}

TEST(CostModelTest, WeightBytesMatchTheMeasuredAllocation) {
  std::ifstream in(testing::SourceDir() + "/bench/results/2026-11-27-h100-dgrid-denoise-1024.json");
  ASSERT_TRUE(in.good());
  nlohmann::json report = nlohmann::json::parse(in);
  double after_weights_mb = 0;
  for (const auto& c : report["memory_checkpoints"]) {
    if (c["name"] == "after_weights") after_weights_mb = c["allocated_mb"].get<double>();
  }
  ASSERT_GT(after_weights_mb, 0);
  EXPECT_NEAR(Flux().WeightBytes() / (after_weights_mb * 1024 * 1024), 1.0, 0.05);
}

TEST(CostModelTest, ParallelismHelpsButLessThanLinearly) {
  const CostModel cost = Default();
  RequestShape r;
  r.width = r.height = 1024;
  GroupShape one, eight;
  eight.ulysses = 8;
  const double t1 = cost.Step(Flux(), r, one)->total_ms();
  const double t8 = cost.Step(Flux(), r, eight)->total_ms();
  EXPECT_LT(t8, t1);
  EXPECT_GT(t8, t1 / 8);
  // Bigger images scale better (the fixed per-step overhead is a smaller part).
  RequestShape big = r;
  big.width = big.height = 2048;
  const double speedup_big =
      cost.Step(Flux(), big, one)->total_ms() / cost.Step(Flux(), big, eight)->total_ms();
  EXPECT_GT(speedup_big, t1 / t8);
}

TEST(CostModelTest, SlowerLinksCostMore) {
  const CostModel cost = Default();
  RequestShape r;
  GroupShape nvlink, pcie;
  nvlink.ulysses = pcie.ulysses = 4;
  pcie.ulysses_link = LinkClass::kPcie;
  const StepEstimate a = *cost.Step(Flux(), r, nvlink);
  const StepEstimate b = *cost.Step(Flux(), r, pcie);
  EXPECT_DOUBLE_EQ(a.compute_ms, b.compute_ms);
  EXPECT_GT(b.ulysses_ms, a.ulysses_ms * 5);
  // Ring across nodes over a slow link exposes traffic that NVLink hides behind attention.
  GroupShape ring_fast, ring_slow;
  ring_fast.ring = ring_slow.ring = 2;
  ring_fast.ulysses = ring_slow.ulysses = 8;
  ring_slow.ring_link = LinkClass::kInterNode;
  RequestShape big;
  big.width = big.height = 2048;
  EXPECT_LE(cost.Step(Flux(), big, ring_fast)->ring_ms, cost.Step(Flux(), big, ring_slow)->ring_ms);
}

TEST(CostModelTest, CfgParallelHalvesTheWorkOfACfgRequestOnly) {
  const CostModel cost = Default();
  RequestShape with_cfg;
  with_cfg.cfg = true;
  RequestShape without = with_cfg;
  without.cfg = false;
  GroupShape cfg2, sp2;
  cfg2.cfg = 2;
  sp2.ulysses = 2;
  // A CFG request: each branch on its own GPU beats both passes split over two GPUs.
  EXPECT_LT(cost.Step(Flux(), with_cfg, cfg2)->total_ms(),
            cost.Step(Flux(), with_cfg, sp2)->total_ms());
  // Without CFG, half of the cfg=2 group idles: no faster than one GPU.
  EXPECT_GE(cost.Step(Flux(), without, cfg2)->total_ms(),
            cost.Step(Flux(), without, GroupShape())->total_ms());
}

TEST(CostModelTest, InvalidLayoutsAreClearErrors) {
  const CostModel cost = Default();
  GroupShape bad;
  bad.ulysses = 5;  // 24 heads
  absl::StatusOr<StepEstimate> e = cost.Step(Flux(), RequestShape(), bad);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("does not divide the 24 heads"), std::string::npos);
  GroupShape cfg3;
  cfg3.cfg = 3;
  EXPECT_EQ(cost.Step(Flux(), RequestShape(), cfg3).status().code(),
            absl::StatusCode::kInvalidArgument);
  RequestShape tiny;
  tiny.width = 8;
  EXPECT_FALSE(cost.Step(Flux(), tiny, GroupShape()).ok());
  EXPECT_FALSE(FitCalibration(Flux(), {}).ok());
}

TEST(ModelShapeTest, KnownNamesFoldersAndErrors) {
  EXPECT_TRUE(LookupModelShape("FLUX.1-dev").ok());
  EXPECT_FALSE(LookupModelShape("flux-schnell")->guidance_embeds);
  absl::StatusOr<ModelShape> unknown = ResolveModelShape("sd3-large");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("flux-dev"), std::string::npos);

  const std::string dir = ::testing::TempDir() + "/planner_model";
  std::filesystem::create_directories(dir + "/transformer");
  {
    std::ofstream(dir + "/transformer/config.json")
        << R"({"num_layers": 2, "num_single_layers": 1, "num_attention_heads": 4,
              "attention_head_dim": 16, "in_channels": 64, "joint_attention_dim": 32,
              "pooled_projection_dim": 32, "guidance_embeds": false})";
  }
  absl::StatusOr<ModelShape> tiny = ResolveModelShape(dir);
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->inner_dim(), 64);
  EXPECT_EQ(tiny->attention_layers(), 3);
  { std::ofstream(dir + "/transformer/config.json") << R"({"num_layers": "two"})"; }
  absl::StatusOr<ModelShape> broken = ResolveModelShape(dir);
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(broken.status().message().find("num_layers"), std::string::npos);
}

}  // namespace
}  // namespace dgrid::planner
